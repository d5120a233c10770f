"""Validate stage: check the canonical tables with Great Expectations before anything trusts them.

Scale is the design constraint (25M interactions on 2 cores): Great Expectations evaluates the
column checks over the raw rows (nulls, ranges) on an Arrow-backed pandas view, while everything
that needs grouping (per-user counts, item membership, duplicates, drift) is aggregated in Polars
first and handed to Great Expectations as small derived frames. Every verdict still comes from a
Great Expectations expectation, so the Data Docs show every check that decided the run.

Two severities: errors stop the run and name every failed check (missing columns,
null ids, timestamps out of range, ratings out of range, drift, metadata tables whose keys match
nothing); facts about the data's shape are warnings with counts (users below the minimum, what the
k-core filter will drop, duplicates, items without metadata): real logs always have many users
with one or two interactions, and refusing such a file helps nobody. validated.json holds only
what is a pure function of the input (file hashes, verdict, warnings), so the features stage can
depend on it without rerunning whenever the report's clock or drift figures change.

The previous successful run's item-popularity profile is kept in the report folder; the drift
check compares against it, and only a successful validation replaces it.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import polars as pl
import pyarrow as pa

from tasks import schema
from tasks.errors import RecsysError, ValidationFailed
from tasks.io import dir_hashes, staged_dir, write_json, write_parquet
from tasks.kcore import kcore_losses, kcore_mask
from tasks.params import ValidateParams

# Before the import: the variable is read when Great Expectations starts.
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
import great_expectations as gx  # noqa: E402
from great_expectations import expectations as gxe  # noqa: E402
from great_expectations.data_context.types.base import (  # noqa: E402
    DataContextConfig,
    InMemoryStoreBackendDefaults,
    ProgressBarsConfig,
)

REFERENCE_FILE = "reference_profile.parquet"
SUMMARY_FILE = "summary.json"
VALIDATED_FILE = "validated.json"  # the stable record the features stage checks
DOCS_DIR = "data_docs"
DAY_SECONDS = 86_400
MAX_EXAMPLES = 5
# Control characters (NUL, tab, newline, ..., DEL) inside an id: a broken export or encoding.
# Such ids print like clean ones, so "u1\x00" silently becomes a second, phantom user "u1".
CONTROL_CHARACTERS = r"[\x00-\x1f\x7f]"
KCORE_UNITS = ("rows", "users", "items")
SHOWN_ID_CHARACTERS = 40  # a longer id is cut short in the failure lines
# Asks GX for counts, a sample of failing values and their row positions, not every failing row.
RESULT_FORMAT = {"result_format": "SUMMARY", "partial_unexpected_count": 20}


@dataclass
class Batch:
    """One frame for Great Expectations and the expectations it must meet."""

    name: str  # the suite's name in the Data Docs (and a file name there: no spaces)
    source: str  # the input file the failure lines name
    frame: pd.DataFrame
    expectations: list[gxe.Expectation]
    unit: str | None = None  # what one row is ("rows", "users", "items"); None: a one-row frame
    id_column: str | None = None  # shown as the example of a failing row
    # Derived columns whose failures are shown as "row N (value)": the value alone (NaN) would
    # not say which row of the input holds it.
    located: tuple[str, ...] = ()
    # One-row frames of derived figures: the count a warning on a column reports (the
    # duplicate rows behind duplicate_fraction), where one failing row would say nothing.
    counts: dict[str, tuple[int, str]] | None = None


@dataclass
class Outcome:
    """One evaluated expectation, as summary.json and the error lines report it."""

    source: str
    table: str
    expectation: str
    column: str | None
    bounds: str
    success: bool
    unexpected_count: int
    examples: list[Any]
    unit: str | None
    error: str | None = None
    severity: str = "error"  # "warning": reported with its count, never fails the run
    count: int | None = None  # what a warning counts; None: unexpected_count (in `unit`)
    count_unit: str | None = None  # what `count` counts: "duplicate rows", "rows dropped" ...
    observed: bool = False  # a check of the whole column (one observed value), not per row

    def record(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "expectation": self.expectation,
            "column": self.column,
            "severity": self.severity,
            "success": self.success,
            "unexpected_count": self.unexpected_count,
            "examples": self.examples,
        }

    def warning(self) -> dict[str, Any]:
        """A failed warning as summary.json and validated.json list it: the check and a count."""
        return {
            "table": self.table,
            "column": self.column,
            "check": f"{self.expectation} {self.bounds}".strip(),
            "count": self.unexpected_count if self.count is None else self.count,
            "unit": self.unit or self.count_unit,
            "line": self.line(),
        }

    def line(self) -> str:
        head = " ".join(p for p in (self.column, self.expectation, self.bounds) if p)
        shown = ", ".join(str(round(e, 4) if isinstance(e, float) else e) for e in self.examples)
        if self.error:
            detail = f"error: {self.error}"
        elif self.unit is None or self.observed:
            detail = f"got {shown}"
        else:
            detail = f"{self.unexpected_count} {self.unit}" + (f", e.g. {shown}" if shown else "")
        if self.count is not None and self.unit is None:
            detail += f" ({self.count} {self.count_unit})"
        return f"{self.source}: {head}: {detail}"


def validate(
    interim_dir: Path,
    out_dir: Path,
    params: ValidateParams,
    kcore: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Validate interim_dir's tables, write the report to out_dir, raise if any error-level
    check failed; warnings are reported with their counts and let the run go on.

    kcore: the features stage's (min_user_interactions, min_item_interactions), so the report
    says beforehand what its filter will drop; None leaves those warnings out.
    """
    interim_dir, out_dir = Path(interim_dir), Path(out_dir)
    paths = _input_paths(interim_dir)
    reference = _read_reference(out_dir / REFERENCE_FILE)
    hashes = dir_hashes(interim_dir)

    batches, usable = _schema_batches(paths)
    figures: dict[str, Any] = dict.fromkeys(
        ("rows", "users", "items", "duplicates", "duplicate_fraction")
    )
    drift = None
    profile = None
    losses = None
    if usable[schema.INTERACTIONS_FILE]:
        df = _read_parquet(paths[schema.INTERACTIONS_FILE], pl.read_parquet)
        user_counts, profile = _counts(df, "user_id"), _counts(df, "item_id")
        duplicates = _count_duplicates(df)
        figures = {
            "rows": df.height,
            "users": user_counts.height,
            "items": profile.height,
            "duplicates": duplicates,
            "duplicate_fraction": duplicates / df.height if df.height else 0.0,
        }
        if reference is not None:
            drift = _drift(reference, profile, df.height, params)
        if kcore is not None:
            losses = _kcore_figures(df, *kcore)
        batches.append(_row_batch(df, params))
        del df  # the pandas view above holds what the row checks need
        side = {
            name: paths[name] for name in (schema.ITEMS_FILE, schema.USERS_FILE) if usable.get(name)
        }
        batches += _aggregate_batches(user_counts, profile, side, figures, drift, params, kcore)
        if losses is not None:
            batches.append(_kcore_batch(losses))

    with staged_dir(out_dir, [interim_dir], owned=SUMMARY_FILE) as stage:
        outcomes = _run_great_expectations(batches, stage / DOCS_DIR)
        errors = [o for o in outcomes if not o.success and o.severity != "warning"]
        warnings = [o.warning() for o in outcomes if not o.success and o.severity == "warning"]
        success = not errors
        if drift is not None:
            drift["success"] = all(o.success for o in outcomes if o.table == "drift")
        summary = {
            "success": success,
            "input_hashes": hashes,
            **figures,
            "kcore": losses,
            "errors": [o.line() for o in errors],
            "warnings": warnings,
            "expectations": [o.record() for o in outcomes],
            "drift": drift,
            "data_docs": str(out_dir / DOCS_DIR / "index.html"),
        }
        write_json(summary, stage / SUMMARY_FILE)
        if success:
            stable = {"verdict": "passed", "input_hashes": hashes, "kcore": losses}
            write_json(stable | {"warnings": warnings}, stage / VALIDATED_FILE)
        _keep_reference(stage / REFERENCE_FILE, profile if success else None, out_dir)

    if errors:
        raise ValidationFailed(
            f"{interim_dir} (report: {out_dir / SUMMARY_FILE})", [o.line() for o in errors]
        )
    return {
        **figures,
        "expectations": f"{len(outcomes)} evaluated, 0 errors, {len(warnings)} warning(s)",
        "warnings": [w["line"] for w in warnings] or "none",
        "drift": _drift_brief(drift),
        "data_docs": summary["data_docs"],
    }


def _kcore_figures(df: pl.DataFrame, min_user: int, min_item: int) -> dict[str, Any]:
    """What the features stage's k-core filter will drop from this log, computed the way it
    will: exact duplicates removed first, then the filter to its fixed point."""
    rows = df.filter(pl.struct(pl.all()).is_first_distinct()).select(
        users=pl.col("user_id").cast(pl.Categorical).to_physical(),
        items=pl.col("item_id").cast(pl.Categorical).to_physical(),
    )
    rows = rows.drop_nulls()
    users, items = rows["users"].to_numpy(), rows["items"].to_numpy()
    keep, _ = kcore_mask(users, items, min_user, min_item)
    thresholds = {"min_user_interactions": min_user, "min_item_interactions": min_item}
    return thresholds | kcore_losses(users, items, keep)


def _input_paths(interim_dir: Path) -> dict[str, Path]:
    interactions = interim_dir / schema.INTERACTIONS_FILE
    if not interactions.is_file():
        raise RecsysError(f"{interactions}: not found (run the ingest stage first)")
    names = (schema.INTERACTIONS_FILE, schema.ITEMS_FILE, schema.USERS_FILE)
    return {name: interim_dir / name for name in names if (interim_dir / name).is_file()}


def _read_parquet(path: Path, reader: Callable[[Path], Any]) -> Any:
    """Turn a corrupt or unreadable file into one line naming it, not a Polars traceback."""
    try:
        return reader(path)
    except (pl.exceptions.PolarsError, OSError, pa.ArrowException) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RecsysError(f"{path}: not a readable Parquet file ({first})") from exc


# --- the frames Great Expectations validates -------------------------------------------------


def _schema_batches(paths: dict[str, Path]) -> tuple[list[Batch], dict[str, bool]]:
    """One-row frames of dtype names, so the types are checked exactly (Int32 is not Int64).

    Also says which files have the columns and types the data checks rely on: those checks
    run only on such files (the interactions need exactly the canonical columns; the item and
    user tables may carry more).
    """
    wanted = {
        schema.INTERACTIONS_FILE: (schema.INTERACTIONS, True),
        schema.ITEMS_FILE: (schema.ITEMS, False),
        schema.USERS_FILE: ({schema.USER_ID: pl.String}, False),
    }
    batches, usable = [], {}
    for name, path in paths.items():
        expected, exact = wanted[name]
        found = dict(_read_parquet(path, pl.read_parquet_schema))
        batches.append(_schema_batch(name, found, expected, exact))
        typed = all(found.get(col) == dtype for col, dtype in expected.items())
        usable[name] = typed and (set(found) == set(expected) or not exact)
    return batches, usable


def _schema_batch(name: str, found: dict, expected: dict, exact: bool) -> Batch:
    frame = pd.DataFrame({col: [str(dtype)] for col, dtype in found.items()})
    checks: list[gxe.Expectation] = [
        gxe.ExpectTableColumnsToMatchSet(column_set=list(expected), exact_match=exact)
    ]
    checks += [
        gxe.ExpectColumnValuesToBeInSet(
            column=col, value_set=[str(dtype)], notes="the column's Parquet/Polars type"
        )
        for col, dtype in expected.items()
        if col in found
    ]
    return Batch(f"{Path(name).stem}_schema", name, frame, checks)


def _aggregate_batches(
    user_counts: pl.DataFrame,
    profile: pl.DataFrame,
    side: dict[str, Path],
    figures: dict[str, Any],
    drift: dict[str, Any] | None,
    params: ValidateParams,
    kcore: tuple[int, int] | None,
) -> list[Batch]:
    min_user, min_item = kcore if kcore is not None else (None, None)
    batches = [
        _user_batch(user_counts, params, min_user, side.get(schema.USERS_FILE)),
        _item_batch(profile, side.get(schema.ITEMS_FILE), params, min_item),
    ]
    if schema.ITEMS_FILE in side:
        batches.append(_item_table_batch(profile, side[schema.ITEMS_FILE]))
    if schema.USERS_FILE in side:
        batches.append(_user_table_batch(user_counts, side[schema.USERS_FILE]))
    batches.append(_duplicates_batch(figures, params))
    if drift is not None:
        batches.append(_drift_batch(drift))
    return batches


def _row_batch(df: pl.DataFrame, params: ValidateParams) -> Batch:
    """The per-row checks. Ratings may be null (implicit feedback) but never NaN or infinite:
    pandas reads NaN as null, so the range check alone would pass NaN, and one NaN rating
    turns a rating model's loss into NaN. A derived text column names each NaN/inf rating; the
    rating column itself shows them as null, so each is reported once, not also as out of range.
    """
    rating = pl.col("rating")
    finite = rating.is_finite() | rating.is_null()
    df = df.with_columns(
        rating_not_finite=pl.when(rating.is_nan())
        .then(pl.lit("NaN"))
        .when(~finite)
        .then(pl.when(rating > 0).then(pl.lit("inf")).otherwise(pl.lit("-inf"))),
        rating=pl.when(finite).then(rating),
    )
    latest = int(time.time()) + params.timestamp_max_future_days * DAY_SECONDS
    checks = [
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
        gxe.ExpectColumnValuesToNotBeNull(column="user_id"),
        gxe.ExpectColumnValuesToNotBeNull(column="item_id"),
        gxe.ExpectColumnValuesToNotBeNull(column="timestamp"),
        gxe.ExpectColumnValuesToBeBetween(
            column="timestamp",
            min_value=params.timestamp_min,
            max_value=latest,
            notes=f"latest allowed: now + {params.timestamp_max_future_days} day(s)",
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="rating",
            min_value=params.rating_min,
            max_value=params.rating_max,
            notes="nulls are allowed (implicit feedback)",
        ),
        gxe.ExpectColumnValuesToBeNull(
            column="rating_not_finite",
            notes="derived: the rating where it is NaN or infinite, else null",
        ),
    ]
    return Batch(
        "interactions",
        schema.INTERACTIONS_FILE,
        _pandas_view(df),
        checks,
        unit="rows",
        located=("rating_not_finite",),
    )


def _pandas_view(df: pl.DataFrame) -> pd.DataFrame:
    """Strings stay Arrow-backed (no Python objects); numbers become numpy columns because GX
    compares numpy columns vectorised but maps a Python function over every Arrow-backed value.
    """
    return df.to_arrow().to_pandas(types_mapper=_arrow_strings, split_blocks=True)


def _arrow_strings(dtype: pa.DataType) -> pd.ArrowDtype | None:
    textual = pa.types.is_string(dtype) or pa.types.is_large_string(dtype)
    return pd.ArrowDtype(dtype) if textual or pa.types.is_string_view(dtype) else None


def _counts(df: pl.DataFrame, key: str) -> pl.DataFrame:
    """Interactions per user or per item (Int64: GX compares numpy int64 vectorised, not uint32).

    The item counts are also the popularity profile that drift compares and the next run keeps.
    """
    return (
        df.lazy()
        .filter(pl.col(key).is_not_null())
        .group_by(key)
        .agg(pl.len().cast(pl.Int64).alias("interactions"))
        .sort(key)
        .collect()
    )


def _count_duplicates(df: pl.DataFrame) -> int:
    """Exact duplicate rows, without a row-wise unique over the whole table (slow at 25M rows).

    Equal rows have equal hashes, so only rows whose hash repeats are compared value by value;
    a hash collision is never counted as a duplicate.
    """
    row_hash = pl.struct(pl.all()).hash()
    hashes = df.select(row_hash)[:, 0]
    if hashes.n_unique() == df.height:
        return 0
    candidates = df.filter(hashes.is_duplicated())
    return candidates.height - candidates.n_unique()


def _id_checks(column: str, params: ValidateParams) -> list[gxe.Expectation]:
    """Checked once per distinct id, not per row: the frames are small and the examples name
    the offending ids."""
    return [
        gxe.ExpectColumnValuesToNotMatchRegex(
            column=column,
            regex=CONTROL_CHARACTERS,
            notes="control characters (NUL, tab, newline, ...) in an id: a broken export",
        ),
        gxe.ExpectColumnValueLengthsToBeBetween(
            column=column,
            min_value=1,
            max_value=params.max_id_length,
            notes="characters; validate.max_id_length in params.yaml",
        ),
    ]


def _warning(expectation: type[gxe.Expectation], notes: str, **kwargs: Any) -> gxe.Expectation:
    """A check whose failure is a fact about the data, not a reason to stop: counted in the
    summary and the Data Docs (its notes say so), never raised."""
    notes = f"Warning only (the run goes on): {notes}"
    return expectation(severity="warning", notes=notes, **kwargs)


def _user_batch(
    user_counts: pl.DataFrame,
    params: ValidateParams,
    min_user: int | None,
    users_path: Path | None = None,
) -> Batch:
    """One row per user of the log: its count and, where users.parquet exists, whether the
    user has a row there (a user without one gets no user features: a warning)."""
    counts = user_counts.rename({"interactions": "interactions_per_user"})
    checks = [
        *_id_checks("user_id", params),
        _warning(
            gxe.ExpectColumnValuesToBeBetween,
            "one row per user; leave-one-out puts users with fewer than 3 interactions in "
            "training only (validate.min_interactions_per_user)",
            column="interactions_per_user",
            min_value=params.min_interactions_per_user,
        ),
    ]
    if min_user is not None:
        checks.append(_below_kcore("user", min_user))
    if users_path is not None:
        counts, check = _metadata_coverage(counts, users_path, "user", schema.USERS_FILE)
        checks.append(check)
    frame = _pandas_view(counts)
    return Batch(
        "interactions_per_user", schema.INTERACTIONS_FILE, frame, checks, "users", "user_id"
    )


def _below_kcore(kind: str, threshold: int):
    """The warning for users or items below the features stage's k-core threshold."""
    return _warning(
        gxe.ExpectColumnValuesToBeBetween,
        f"{kind}s below the k-core threshold (features.min_{kind}_interactions), before "
        "the filter iterates",
        column=f"interactions_per_{kind}",
        min_value=threshold,
    )


def _metadata_coverage(
    counts: pl.DataFrame, table: Path, kind: str, table_name: str
) -> tuple[pl.DataFrame, Any]:
    """`counts` with a flag saying whether each user or item has a row in its metadata table,
    and the warning for those without one."""
    key, flag = f"{kind}_id", f"in_{kind}_table"
    known = _read_parquet(table, lambda p: pl.read_parquet(p, columns=[key]))
    known = known.unique().with_columns(pl.lit(True).alias(flag))
    counts = counts.join(known, on=key, how="left").with_columns(pl.col(flag).fill_null(False))
    check = _warning(
        gxe.ExpectColumnValuesToBeInSet,
        f"{kind}s of the interactions without a row in {table_name} (no metadata)",
        column=flag,
        value_set=[True],
    )
    return counts, check


def _item_batch(
    profile: pl.DataFrame, items_path: Path | None, params: ValidateParams, min_item: int | None
) -> Batch:
    """One row per distinct interaction item: its count, and where the item table exists a
    flag saying whether the item is in it (the item table's ids never go into the suite itself:
    a value set of every item id would bloat the suite and the Data Docs)."""
    frame = profile.rename({"interactions": "interactions_per_item"})
    checks = _id_checks("item_id", params)
    if min_item is not None:
        checks.append(_below_kcore("item", min_item))
    if items_path is not None:
        frame, check = _metadata_coverage(frame, items_path, "item", schema.ITEMS_FILE)
        checks.append(check)
    return Batch(
        "interaction_items",
        schema.INTERACTIONS_FILE,
        _pandas_view(frame),
        checks,
        "items",
        "item_id",
    )


def _key_batch(name: str, path: Path, key: str, present: pl.DataFrame, what: str) -> Batch:
    """A metadata table's keys against the interactions: keys that match none of them are a
    warning (a catalogue may list items nobody touched yet); a table none of whose keys match
    is an error (its ids are in another form, say "0042" against "42", or it is the wrong file).
    """
    keys = _read_parquet(path, lambda p: pl.read_parquet(p, columns=[key])).unique().sort(key)
    flag = f"{key}_in_interactions"
    frame = keys.with_columns(pl.col(key).is_in(present[key].implode()).alias(flag))
    frame = frame.with_columns(pl.col(flag).cast(pl.Int64).alias(f"{key}s_matching"))
    checks = [
        gxe.ExpectColumnSumToBeBetween(
            column=f"{key}s_matching",
            min_value=1,
            notes=f"at least one key of {path.name} must be a {what} of the interactions",
        ),
        _warning(
            gxe.ExpectColumnValuesToBeInSet,
            f"rows of {path.name} whose {key} is no {what} of the interactions",
            column=flag,
            value_set=[True],
        ),
    ]
    unit = f"{what}s"
    return Batch(name, path.name, _pandas_view(frame), checks, unit, key)


def _user_table_batch(user_counts: pl.DataFrame, users_path: Path) -> Batch:
    return _key_batch("user_table", users_path, "user_id", user_counts, "user")


def _item_table_batch(profile: pl.DataFrame, items_path: Path) -> Batch:
    return _key_batch("item_table", items_path, "item_id", profile, "item")


def _duplicates_batch(figures: dict[str, Any], params: ValidateParams) -> Batch:
    frame = pd.DataFrame({"duplicate_fraction": [figures["duplicate_fraction"]]})
    check = _warning(
        gxe.ExpectColumnValuesToBeBetween,
        f"{figures['duplicates']} exact duplicate rows of {figures['rows']}; "
        "the features stage removes them",
        column="duplicate_fraction",
        min_value=0.0,
        max_value=params.max_duplicate_fraction,
    )
    counts = {"duplicate_fraction": (figures["duplicates"], "duplicate rows")}
    return Batch("duplicates", schema.INTERACTIONS_FILE, frame, [check], counts=counts)


def _kcore_batch(losses: dict[str, Any]) -> Batch:
    """The shares of rows, users and items the features stage's k-core filter will drop."""
    frame = pd.DataFrame({f"kcore_{k}_dropped": [losses[f"{k}_share"]] for k in KCORE_UNITS})
    thresholds = (
        f"features.min_user_interactions={losses['min_user_interactions']}, "
        f"min_item_interactions={losses['min_item_interactions']}"
    )
    checks = [
        _warning(
            gxe.ExpectColumnValuesToBeBetween,
            f"share of the {unit}{' (the catalogue)' if unit == 'items' else ''} the k-core "
            f"filter will drop ({thresholds})",
            column=f"kcore_{unit}_dropped",
            min_value=0.0,
            max_value=0.0,
        )
        for unit in KCORE_UNITS
    ]
    counts = {f"kcore_{k}_dropped": (losses[f"{k}_removed"], k) for k in KCORE_UNITS}
    return Batch("kcore", schema.INTERACTIONS_FILE, frame, checks, counts=counts)


# --- drift against the previous validated version ---------------------------------------------


def _read_reference(path: Path) -> pl.DataFrame | None:
    return _read_parquet(path, pl.read_parquet) if path.is_file() else None


def _drift(
    reference: pl.DataFrame, profile: pl.DataFrame, rows: int, params: ValidateParams
) -> dict[str, Any]:
    old_rows = int(reference["interactions"].sum())
    new_total = max(int(profile["interactions"].sum()), 1)
    both = reference.join(profile, on="item_id", how="full", coalesce=True, suffix="_new")
    shares = both.fill_null(0).select(
        old=pl.col("interactions") / old_rows, new=pl.col("interactions_new") / new_total
    )
    shift = 0.5 * float((shares["old"] - shares["new"]).abs().sum())
    return {
        "reference_rows": old_rows,
        "rows": rows,
        "row_change": abs(rows - old_rows) / old_rows,
        "max_row_change": params.drift.max_row_change,
        "popularity_shift": shift,
        "max_popularity_shift": params.drift.max_popularity_shift,
        "success": None,
    }


def _drift_batch(drift: dict[str, Any]) -> Batch:
    frame = pd.DataFrame({k: [drift[k]] for k in ("row_change", "popularity_shift")})
    checks = [
        gxe.ExpectColumnValuesToBeBetween(
            column="row_change",
            min_value=0.0,
            max_value=drift["max_row_change"],
            notes=f"|rows - previous rows| / previous rows; previous: {drift['reference_rows']}",
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="popularity_shift",
            min_value=0.0,
            max_value=drift["max_popularity_shift"],
            notes="total variation distance between the item-popularity distributions",
        ),
    ]
    return Batch("drift", schema.INTERACTIONS_FILE, frame, checks)


def _keep_reference(target: Path, profile: pl.DataFrame | None, out_dir: Path) -> None:
    """Write the new profile after a success; otherwise carry the previous one over unchanged."""
    if profile is not None:
        write_parquet(profile, target)
    elif (out_dir / REFERENCE_FILE).is_file():
        shutil.copy2(out_dir / REFERENCE_FILE, target)


def _drift_brief(drift: dict[str, Any] | None) -> Any:
    if drift is None:
        return "no previous validated version"
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in drift.items()}


# --- running Great Expectations -----------------------------------------------------------------


def _run_great_expectations(batches: list[Batch], docs_dir: Path) -> list[Outcome]:
    """Validate every batch in one in-memory context and build the Data Docs into docs_dir."""
    context = gx.get_context(mode="ephemeral", project_config=_context_config(docs_dir))
    source = context.data_sources.add_pandas("recsys")
    outcomes = []
    for batch in batches:
        asset = source.add_dataframe_asset(batch.name)
        definition = asset.add_batch_definition_whole_dataframe(batch.name)
        suite = context.suites.add(gx.ExpectationSuite(name=batch.name))
        for expectation in batch.expectations:
            suite.add_expectation(expectation)
        run = context.validation_definitions.add(
            gx.ValidationDefinition(name=batch.name, data=definition, suite=suite)
        )
        result_format = dict(RESULT_FORMAT)
        if batch.id_column:
            result_format["unexpected_index_column_names"] = [batch.id_column]
        result = run.run(batch_parameters={"dataframe": batch.frame}, result_format=result_format)
        outcomes += [_outcome(batch, r) for r in result.results]
    context.build_data_docs()
    return outcomes


def _context_config(docs_dir: Path) -> DataContextConfig:
    site = {
        "class_name": "SiteBuilder",
        "show_how_to_buttons": False,
        "store_backend": {
            "class_name": "TupleFilesystemStoreBackend",
            "base_directory": str(docs_dir.resolve()),  # GX refuses a relative one
        },
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
    }
    return DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        data_docs_sites={"local_site": site},
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )


def _outcome(batch: Batch, result: Any) -> Outcome:
    config = result.expectation_config
    kwargs = config.kwargs
    info = result.exception_info or {}
    error = info.get("exception_message") if info.get("raised_exception") else None
    details = result.result or {}
    count, count_unit = (batch.counts or {}).get(kwargs.get("column"), (None, None))
    severity = getattr(config, "severity", None)
    return Outcome(
        source=batch.source,
        table=batch.name,
        expectation=config.type,
        column=kwargs.get("column"),
        bounds=_bounds(kwargs),
        success=bool(result.success) and error is None,
        unexpected_count=int(details.get("unexpected_count") or (0 if result.success else 1)),
        examples=[] if result.success else _examples(batch, kwargs.get("column"), details),
        unit=batch.unit,
        error=error,
        severity=getattr(severity, "value", severity) or "error",
        count=count,
        count_unit=count_unit,
        observed="observed_value" in details and "unexpected_count" not in details,
    )


def _bounds(kwargs: dict[str, Any]) -> str:
    if "regex" in kwargs:
        return kwargs["regex"]
    if "value_set" in kwargs:
        return str(list(kwargs["value_set"]))
    if "column_set" in kwargs:
        return str(sorted(kwargs["column_set"]))
    if "min_value" in kwargs or "max_value" in kwargs:
        return f"[{_number(kwargs.get('min_value'))}, {_number(kwargs.get('max_value'))}]"
    return ""


def _number(value: Any) -> Any:
    """GX stores every bound as a float: show 1795507100, not 1795507100.0."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _examples(batch: Batch, column: str | None, details: dict[str, Any]) -> list[Any]:
    """A few failing values; the row's id where a value alone would not say which row (nulls)."""
    if "observed_value" in details:
        return [_observed(details)]
    if column in batch.located:
        values = details.get("partial_unexpected_list", [])
        rows = details.get("partial_unexpected_index_list", [])
        picks = [f"row {row} ({value})" for row, value in zip(rows, values, strict=False)]
    elif batch.id_column:
        picks = [_row_example(row, batch.id_column) for row in _index_rows(details)]
    elif all(pd.isna(v) for v in details.get("partial_unexpected_list", [])):
        picks = [f"row {i}" for i in details.get("partial_unexpected_index_list", [])]
    else:
        picks = [_plain(v) for v in details.get("partial_unexpected_list", [])]
    return list(dict.fromkeys(picks))[:MAX_EXAMPLES]


def _row_example(row: dict[str, Any], id_column: str) -> str:
    """`u7 (1)` for a count; just `i9` for a flag, where the value adds nothing."""
    values = [_plain(v) for k, v in row.items() if k != id_column]
    values = [v for v in values if not isinstance(v, bool)]
    shown = _shown_id(row[id_column])
    return f"{shown} ({values[0]})" if values else shown


def _shown_id(value: Any) -> str:
    """An id as it can be printed on one line: quoted with escapes where it holds a control
    character (a NUL or newline would corrupt the line) or is empty, cut short where long."""
    text = str(value)
    head = text[:SHOWN_ID_CHARACTERS]
    shown = head if head.isprintable() and head else repr(head)
    return shown if len(text) == len(head) else f"{shown}... ({len(text)} characters)"


def _index_rows(details: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in details.get("partial_unexpected_index_list", []) if isinstance(r, dict)]


def _observed(details: dict[str, Any]) -> Any:
    mismatched = (details.get("details") or {}).get("mismatched")
    if mismatched:
        return "; ".join(f"{k} {sorted(v)}" for k, v in mismatched.items() if v)
    return _plain(details["observed_value"])


def _plain(value: Any) -> Any:
    """numpy scalars to Python ones, so summary.json and the lines show 7.0, not np.float64(7.0)."""
    if pd.isna(value):
        return None
    return value.item() if hasattr(value, "item") else value
