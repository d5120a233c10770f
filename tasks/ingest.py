"""The ingest stage: a named raw source in, the canonical tables of tasks/schema.py out.

Every problem with the input becomes a one-line RecsysError that names the file, because the
person running `recsys ingest` can fix a file but should not have to read a Polars traceback.
Rows keep their source order: the features stage breaks timestamp ties by it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from tasks.errors import RecsysError
from tasks.io import staged_dir, write_parquet
from tasks.metadata import describe, read_items, read_users
from tasks.movielens import read_movielens
from tasks.params import TIME_UNITS, ColumnsParams, MetadataParams
from tasks.readers import (
    Tables,
    check_columns,
    first_line,
    read_text,
    reading,
    require_file,
)
from tasks.schema import (
    INTERACTIONS_FILE,
    ITEMS_FILE,
    USER_ID,
    USERS_FILE,
    conform_interactions,
    conform_items,
)

MOVIELENS_SOURCES = (
    "movielens-100k",
    "movielens-1m",
    "movielens-20m",
    "movielens-25m",
    "movielens-latest",
)
SOURCES = (*MOVIELENS_SOURCES, "csv", "parquet", "seq")
SUFFIXES = {"csv": (".csv", ".tsv"), "parquet": (".parquet", ".pq"), "seq": (".txt",)}
# Delimiters worth suggesting when a CSV header comes back as one column.
LIKELY_SEPARATORS = (";", "\t", "|", ",")
TIMESTAMP_FORMS = "integer epoch seconds or a date/time"


# Integer epochs in these units become seconds (the canonical timestamp): units per second.
PER_SECOND = {unit: 1000**power for power, unit in enumerate(TIME_UNITS)}


@dataclass(frozen=True)
class ColumnMap:
    """Source column names for csv/parquet; None means the canonical name (user_id ...), and
    the unit of integer epochs in the time column (dates and datetimes need none).

    rating is optional: a missing `rating` column gives null ratings, unless a rating column was
    named explicitly, in which case its absence is an error.
    """

    user: str | None = None
    item: str | None = None
    time: str | None = None
    rating: str | None = None
    time_unit: str = "s"


def column_map(columns: ColumnsParams, **flags: str | None) -> ColumnMap:
    """params.yaml's ingest.columns as a ColumnMap; a flag given (not None), such as the
    CLI's --user-col, takes the place of its field."""
    fields = dataclasses.asdict(columns) | {k: v for k, v in flags.items() if v is not None}
    return ColumnMap(**fields)


def ingest(
    source: str,
    path: Path,
    out_dir: Path,
    columns: ColumnMap | None = None,
    sep: str | None = None,
    items: MetadataParams | None = None,
    users: MetadataParams | None = None,
    parts: Sequence[Path] = (),
) -> dict[str, Any]:
    """Read `path` as `source` and replace `out_dir` with the canonical tables, all or nothing.

    items/users: params.yaml's ingest.items / ingest.users, metadata files for the csv,
    parquet and seq sources (a MovieLens source brings its own).
    parts: interactions appended since (`appended_parts`), read after the source, in order.
    """
    path, out_dir = Path(path), Path(out_dir)
    columns = columns or ColumnMap()
    _check_options(source, columns, sep)
    metadata = {k: m for k, m in (("items", items), ("users", users)) if m and m.path}
    if metadata and source in MOVIELENS_SOURCES:
        raise RecsysError(
            f"ingest.{next(iter(metadata))}.path: {source} brings its own metadata; "
            "metadata files apply to csv, parquet and seq sources"
        )
    for given in [path, *(Path(str(m.path)) for m in metadata.values())]:
        if not given.exists():
            raise RecsysError(f"{given}: no such file or folder")
    tables = read_source(source, path, columns, sep)
    interactions = pl.concat(
        [conform_interactions(tables.interactions), *(read_part(Path(p)) for p in parts)]
    )
    if interactions.height == 0:
        raise RecsysError(f"{path}: no interactions found")
    item_table = read_items(metadata["items"]) if "items" in metadata else tables.items
    user_table = read_users(metadata["users"]) if "users" in metadata else tables.users
    outputs = {INTERACTIONS_FILE: interactions}
    if item_table is not None:
        outputs[ITEMS_FILE] = conform_items(item_table)
    if user_table is not None:
        outputs[USERS_FILE] = user_table.with_columns(pl.col(USER_ID).cast(pl.String))
    inputs = [path, *(Path(str(m.path)) for m in metadata.values()), *map(Path, parts)]
    with staged_dir(out_dir, inputs, owned=INTERACTIONS_FILE) as tmp:
        for name, frame in outputs.items():
            write_parquet(frame, tmp / name)
    return {
        "source": source,
        "path": str(path),
        "out": str(out_dir),
        "rows": interactions.height,
        "appended_parts": len(parts),
        "users": interactions["user_id"].drop_nulls().n_unique(),
        "items": interactions["item_id"].drop_nulls().n_unique(),
        "files": list(outputs),
        "item_metadata": describe(outputs.get(ITEMS_FILE)),
        "user_metadata": describe(outputs.get(USERS_FILE)),
    }


def appended_parts(folder: str | Path) -> list[Path]:
    """The appended parts of `folder` in the order they were added (their names start with
    the time they were written); none when the folder does not exist."""
    root = Path(folder)
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("*.parquet") if p.is_file() and not p.name.startswith("."))


def read_part(file: Path) -> pl.DataFrame:
    """One appended part: canonical interactions, as tasks/incoming.py wrote them."""
    with reading(file):
        frame = pl.read_parquet(file)
    check_columns(file, frame.columns, ["user_id", "item_id", "timestamp"])
    with reading(file):
        return conform_interactions(frame)


def _check_options(source: str, columns: ColumnMap, sep: str | None) -> None:
    """Refuse options the source would silently ignore."""
    if source not in SOURCES:
        raise RecsysError(f"unknown source {source!r}; valid sources: {', '.join(SOURCES)}")
    if columns != ColumnMap() and source not in ("csv", "parquet"):
        raise RecsysError(
            f"column names and time units (--user-col ...) apply to csv and parquet, not {source}"
        )
    if columns.time_unit not in PER_SECOND:
        raise RecsysError(f"time unit {columns.time_unit!r}: choose one of {', '.join(PER_SECOND)}")
    if sep is not None and source != "csv":
        raise RecsysError(f"--sep applies to csv, not {source}")


def read_source(source: str, path: Path, columns: ColumnMap, sep: str | None) -> Tables:
    """The source's own tables, before any appended part."""
    if source in MOVIELENS_SOURCES:
        return read_movielens(source, path)
    file = _single_file(path, source)
    if source == "csv":
        return read_csv_source(file, columns, sep)
    if source == "parquet":
        return read_parquet_source(file, columns)
    return read_seq(file)


def _single_file(path: Path, source: str) -> Path:
    """A folder is accepted only when exactly one file in it can be meant."""
    if not path.is_dir():
        return path
    suffixes = SUFFIXES[source]
    found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
    if len(found) != 1:
        names = ", ".join(p.name for p in found) or "none"
        raise RecsysError(
            f"{path}: is a folder with {len(found)} {'/'.join(suffixes)} files ({names}); "
            f"pass the {source} file itself"
        )
    return found[0]


# ---- generic sources: csv, parquet, seq ----------------------------------------------------


def read_csv_source(file: Path, columns: ColumnMap, sep: str | None = None) -> Tables:
    sep = _separator(sep)
    require_file(file)
    frame = pl.scan_csv(file, separator=sep, infer_schema=False)
    with reading(file):
        found = frame.collect_schema().names()
    names = _source_names(columns, found)
    check_columns(file, found, list(names.values()), _separator_hint(found, sep))
    with reading(file):
        raw = frame.select(pl.col(src).alias(name) for name, src in names.items()).collect()
    return Tables(_parse_interactions(raw, file, names, columns.time_unit))


def read_parquet_source(file: Path, columns: ColumnMap) -> Tables:
    require_file(file)
    frame = pl.scan_parquet(file)
    with reading(file):
        found = frame.collect_schema().names()
    names = _source_names(columns, found)
    check_columns(file, found, list(names.values()))
    with reading(file):
        raw = frame.select(pl.col(src).alias(name) for name, src in names.items()).collect()
    return Tables(_parse_interactions(raw, file, names, columns.time_unit))


def read_seq(file: Path) -> Tables:
    """`user item [item ...]` per line, whitespace-separated, lines and items in time order:
    both the `user item` pair form and the one-user-per-line form of the S3-Rec/FMLP-Rec
    benchmarks (`user item item item ...`), or a mix.

    The format has no timestamps, so each interaction gets its global position (from 0):
    monotone within every user, which is all the later stages need.
    """
    text = read_text(file)
    lines = pl.DataFrame({"line": text.splitlines()}).with_row_index("line_no", offset=1)
    tokens = lines.with_columns(tokens=pl.col("line").str.extract_all(r"\S+")).filter(
        pl.col("tokens").list.len() > 0
    )
    lonely = tokens.filter(pl.col("tokens").list.len() == 1)
    if lonely.height:
        row = lonely.row(0, named=True)
        raise RecsysError(
            f"{file}: line {row['line_no']} has a user but no item ({row['line'][:80]!r}); "
            "expected 'user item [item ...]' per line"
        )
    interactions = (
        tokens.select(user_id=pl.col("tokens").list.first(), item_id=pl.col("tokens").list.slice(1))
        .explode("item_id")
        .with_row_index("timestamp")
        .with_columns(pl.col("timestamp").cast(pl.Int64), rating=pl.lit(None, pl.Float64))
    )
    return Tables(conform_interactions(interactions))


def _separator(sep: str | None) -> str:
    if sep is None:
        return ","
    if sep in ("\\t", "tab"):
        return "\t"
    if len(sep) != 1:
        raise RecsysError(f"--sep must be one character (or '\\t'), got {sep!r}")
    return sep


def _separator_hint(found: list[str], sep: str) -> str:
    if len(found) != 1:
        return ""
    for candidate in LIKELY_SEPARATORS:
        if candidate != sep and candidate in found[0]:
            shown = "\\t" if candidate == "\t" else candidate
            return f"; the header looks {shown!r}-separated: try --sep '{shown}'"
    return ""


def _source_names(columns: ColumnMap, found: list[str]) -> dict[str, str]:
    """Canonical name -> source column; rating only where the source has it or it was named."""
    names = {
        "user_id": columns.user or "user_id",
        "item_id": columns.item or "item_id",
        "timestamp": columns.time or "timestamp",
    }
    rating = columns.rating or "rating"
    if columns.rating is not None or rating in found:
        names["rating"] = rating
    return names


def _parse_interactions(
    raw: pl.DataFrame, file: Path, names: dict[str, str], time_unit: str = "s"
) -> pl.DataFrame:
    """Canonical types; null ids pass through for the validate stage to report."""
    for name in ("user_id", "item_id"):
        _check_id_type(raw[name].dtype, file, names[name])
    rating = (
        to_float(raw["rating"], file, names["rating"])
        if "rating" in names
        else pl.lit(None, pl.Float64)
    )
    parsed = raw.with_columns(
        timestamp=to_epoch_seconds(raw["timestamp"], file, names["timestamp"], time_unit),
        rating=rating,
    )
    try:
        return conform_interactions(parsed)
    except pl.exceptions.PolarsError as exc:  # e.g. binary ids that are not UTF-8
        raise RecsysError(f"{file}: cannot convert to text ids ({first_line(exc)})") from exc


def _check_id_type(dtype: pl.DataType, file: Path, column: str) -> None:
    """Ids become strings. A list or struct has no string form that means one id: Polars
    refuses to cast a list and turns a struct into text like "{1}", so both are refused here."""
    if dtype.is_nested():
        raise RecsysError(
            f"{file}: column {column!r} has type {dtype}; expected one id per row, "
            "as text or an integer"
        )


def to_epoch_seconds(values: pl.Series, file: Path, column: str, unit: str = "s") -> pl.Series:
    """Integer epoch seconds from integers (epochs in `unit`), dates, datetimes or their text
    forms.

    Text is read as integers when the first value is one, else as dates/times (naive ones as
    UTC); a value that does not fit the chosen reading is an error, never a silent null. So a
    column that mixes forms (integer epochs in some rows, date strings in others) is refused,
    naming a row of each form: the first value's form is the one expected.
    """
    dtype = values.dtype
    per_second = PER_SECOND[unit]
    if dtype.is_integer():
        return values.cast(pl.Int64) // per_second
    if isinstance(dtype, pl.Datetime) or dtype == pl.Date:
        return values.dt.epoch("s")
    if dtype.is_float():
        whole = values.is_finite() & (values == values.floor())
        parsed = pl.select(pl.when(whole).then(values.cast(pl.Int64, strict=False))).to_series()
        _check_parsed(values, parsed, file, column, TIMESTAMP_FORMS)
        return parsed // per_second
    if dtype == pl.String:
        text = values.str.strip_chars()
        given = text.is_not_null().arg_true()
        if given.len() == 0:
            return text.cast(pl.Int64)
        first = int(given[0])
        if text[first : first + 1].cast(pl.Int64, strict=False).null_count() == 0:
            parsed, form = (
                text.cast(pl.Int64, strict=False) // per_second,
                "integer epoch seconds" if unit == "s" else f"integer epochs in {unit}",
            )
        else:
            parsed, form = _parse_datetimes(text), "dates/times"
        _check_timestamps(values, parsed, file, column, form, first)
        return parsed
    raise RecsysError(f"{file}: column {column!r} has type {dtype}; expected {TIMESTAMP_FORMS}")


def _check_timestamps(
    raw: pl.Series, parsed: pl.Series, file: Path, column: str, form: str, first: int
) -> None:
    """Name a row that does not fit and, as the example of what is expected, the first value.

    Rows are counted from 1 (the header not counted).
    """
    bad = (raw.is_not_null() & parsed.is_null()).arg_true()
    if bad.len() == 0:
        return
    row = int(bad[0])
    if row == first:  # the first value sets the form, and it is neither form
        raise RecsysError(
            f"{file}: column {column!r}: its first value {raw[row]!r} (row {row + 1}) is not "
            f"{TIMESTAMP_FORMS}"
        )
    raise RecsysError(
        f"{file}: column {column!r} has {bad.len()} value(s) that are not {form} like its "
        f"first value {raw[first]!r} (row {first + 1}), e.g. {raw[row]!r} (row {row + 1}); "
        "use one timestamp form in every row"
    )


def _parse_datetimes(text: pl.Series) -> pl.Series:
    try:
        return text.str.to_datetime(strict=False, time_unit="us").dt.epoch("s")
    except pl.exceptions.ComputeError:  # no date/time format fits the first value
        return pl.Series(text.name, [None] * len(text), dtype=pl.Int64)


def to_float(values: pl.Series, file: Path, column: str) -> pl.Series:
    if values.dtype.is_numeric():
        return values.cast(pl.Float64)
    if values.dtype == pl.String:
        parsed = values.str.strip_chars().cast(pl.Float64, strict=False)
        _check_parsed(values, parsed, file, column, "numbers")
        return parsed
    raise RecsysError(f"{file}: column {column!r} has type {values.dtype}; expected numbers")


def _check_parsed(
    raw: pl.Series, parsed: pl.Series, file: Path, column: str, expected: str
) -> None:
    bad = raw.filter(raw.is_not_null() & parsed.is_null())
    if bad.len():
        raise RecsysError(
            f"{file}: column {column!r} has {bad.len()} value(s) that are not {expected}, "
            f"e.g. {bad[0]!r}"
        )
