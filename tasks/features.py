"""The features stage: canonical tables -> id maps, splits, padded sequences, item/user tensors.

Everything downstream (training, evaluation, export, serving) reads only this folder, so it is
built to be trusted: the whole folder is swapped in atomically, the same inputs and params give
byte-identical files (no clocks, no unordered output), and manifest.json records the hashes of
what was read and written.

Conventions (the contract for the DataModule, see manifest.json for the sizes):
- Index 0 is padding for users and items. Real users are 1..U and real items 1..I, numbered in
  the order they first appear in interactions.parquet (source order), counting only the users and
  items that survive the k-core filter. Source order is the only order every source has.
- Every interaction table is sorted by user_idx, then timestamp, then original row order, so a
  user's rows read top to bottom are that user's history in time, ties broken by the source.
- Leave-one-out: per user the last interaction is test, the one before validation,
  the rest train; users with fewer than 3 interactions go to train only.
- Temporal split: one global cut per boundary, at timestamp quantiles; all rows sharing the cut
  timestamp fall on the later side.
- items/popularity.npy holds raw interaction counts over loo/train.parquet only, so it never
  sees a validation or test target.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from tasks.errors import RecsysError
from tasks.io import dir_hashes, file_sha256, staged_dir, write_json, write_parquet
from tasks.kcore import kcore_losses, kcore_mask
from tasks.params import FeaturesParams, as_dict
from tasks.schema import (
    INTERACTIONS,
    INTERACTIONS_FILE,
    ITEMS,
    ITEMS_FILE,
    USER_ID,
    USERS_FILE,
    conform_interactions,
    conform_items,
)
from tasks.sequences import padded_tail, rank_from_end
from tasks.text_features import write_text_features

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
VALIDATED_FILE = "validated.json"  # tasks/validate.py writes it; stages never import each other

TRAIN, VAL, TEST = 0, 1, 2
SPLITS = {"train": TRAIN, "val": VAL, "test": TEST}
SPLIT_COLUMNS = ["user_idx", "item_idx", "timestamp", "rating"]
DEDUPE_KEY = ["u", "i", "timestamp", "rating"]  # the four canonical columns, ids as codes
NUMERIC_BINS = 5  # a numeric metadata column becomes this many quantile-bin tags
# Padded-sequence arrays alive at once in _write_sequences: the train and the test inputs.
SEQUENCE_ARRAYS = 2

# Lower bounds of the MovieLens-1M age groups: ML-1M's pre-coded ages (1, 18, 25, ...) and raw
# ages (ML-100K) land in the same buckets, so models see one vocabulary for both.
AGE_EDGES = [18, 25, 35, 45, 50, 56]
AGE_LABELS = ["<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+"]


def build_features(
    interim_dir: Path,
    out_dir: Path,
    params: FeaturesParams,
    seed: int,
    validation_dir: Path | None,
) -> dict[str, Any]:
    """Build data/features from data/interim; return a short summary for printing.

    `seed` is accepted for a uniform stage signature: nothing here is random.
    """
    interim_dir, out_dir = Path(interim_dir), Path(out_dir)
    _check_params(params)
    source = interim_dir / INTERACTIONS_FILE
    if not source.is_file():
        raise RecsysError(f"{source}: not found; run `recsys ingest` first")
    input_hashes = dir_hashes(interim_dir)
    if validation_dir is not None:
        check_validation(interim_dir, Path(validation_dir), input_hashes)

    frame, user_map, item_map, counts = clean_interactions(source, params)
    n_users, n_items = user_map.height, item_map.height
    check_sequence_memory(n_users, params.max_seq_len, available_memory())
    seq_users = frame["user_idx"].to_numpy()
    seq_items = frame["item_idx"].to_numpy()
    loo, short_users = loo_labels(seq_users, n_users)
    timestamps = frame["timestamp"].to_numpy()
    val_start, test_start = temporal_cuts(
        timestamps, params.temporal_val_fraction, params.temporal_test_fraction
    )
    temporal = temporal_labels(timestamps, val_start, test_start)

    inputs = [interim_dir] + ([validation_dir] if validation_dir is not None else [])
    with staged_dir(out_dir, inputs, owned=MANIFEST_FILE) as tmp:
        write_parquet(user_map, tmp / "user_map.parquet")
        write_parquet(item_map, tmp / "item_map.parquet")
        write_parquet(frame, tmp / "interactions.parquet")
        loo_sizes = _write_splits(frame, loo, tmp / "loo")
        temporal_sizes = _write_splits(frame, temporal, tmp / "temporal")
        _write_sequences(seq_users, seq_items, loo, n_users, params.max_seq_len, tmp / "loo")
        item_info = _write_item_features(
            interim_dir / ITEMS_FILE, item_map, seq_items[loo == TRAIN], params, tmp / "items"
        )
        user_info = _write_user_features(interim_dir / USERS_FILE, user_map, tmp / "users")
        text_info, text_run = write_text_features(
            interim_dir / ITEMS_FILE, item_map, params.text, tmp / "items"
        )
        counts |= {
            "rows": frame.height,
            "users": n_users,
            "items": n_items,
            "loo": {**loo_sizes, "users_train_only": short_users},
            "temporal": temporal_sizes,
        }
        manifest = {
            "format_version": FORMAT_VERSION,
            "counts": counts,
            "max_seq_len": params.max_seq_len,
            "temporal_cuts": {"val_start": val_start, "test_start": test_start},
            "item_features": item_info,
            "user_features": user_info,
            "text_features": text_info,
            "params": as_dict(params),
            "inputs": input_hashes,
            "files": _output_hashes(tmp),
        }
        write_json(manifest, tmp / MANIFEST_FILE)

    return {
        "out": str(out_dir),
        "rows": frame.height,
        "users": n_users,
        "items": n_items,
        "duplicates_removed": counts["duplicates_removed"],
        "kcore_rows_removed": counts["kcore_rows_removed"],
        "kcore_dropped": _kcore_brief(counts["kcore"]),
        "loo": counts["loo"],
        "temporal": {**temporal_sizes, "val_start": val_start, "test_start": test_start},
        **text_run,
    }


def clean_interactions(
    source: Path, params: FeaturesParams
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, dict[str, int]]:
    """Deduplicated, k-core filtered, id-mapped interactions sorted by user, time, source order.

    Returns (interactions, user_map, item_map, counts). Kept apart from build_features so the
    string-keyed intermediate frames are freed before the outputs are built (peak memory).
    """
    coded, user_ids, item_ids = encode_ids(_read_interactions(source))
    raw_rows = coded.height
    coded = coded.unique(subset=DEDUPE_KEY, keep="first", maintain_order=True)
    users, items = coded["u"].to_numpy(), coded["i"].to_numpy()
    keep, rounds = kcore_mask(
        users, items, params.min_user_interactions, params.min_item_interactions
    )
    if not keep.any():
        raise RecsysError(
            f"{source}: nothing left after the k-core filter (min_user_interactions="
            f"{params.min_user_interactions}, min_item_interactions={params.min_item_interactions})"
        )
    user_map, user_new = contiguous_map(user_ids, users[keep], "user_id", "user_idx")
    item_map, item_new = contiguous_map(item_ids, items[keep], "item_id", "item_idx")
    frame = (
        coded.filter(pl.Series(keep))
        .with_columns(
            user_idx=pl.Series(user_new[users[keep]]),
            item_idx=pl.Series(item_new[items[keep]]),
        )
        .sort(["user_idx", "timestamp", "row"])
        .select(SPLIT_COLUMNS)
    )
    counts = {
        "raw_rows": raw_rows,
        "duplicates_removed": raw_rows - coded.height,
        "kcore_rows_removed": coded.height - frame.height,
        "kcore_rounds": rounds,
        # what the filter cost, so a run on sparse data says how much of the catalogue it lost
        "kcore": kcore_losses(users, items, keep),
    }
    return frame, user_map, item_map, counts


def _kcore_brief(losses: dict[str, Any]) -> str:
    """One line for the CLI: `12 rows (0.5%), 3 users (1.0%), 40 items (2.4% of the catalogue)`."""
    parts = [
        f"{losses[f'{name}_removed']} {name} ({100 * losses[f'{name}_share']:.1f}%{tail})"
        for name, tail in (("rows", ""), ("users", ""), ("items", " of the catalogue"))
    ]
    return ", ".join(parts)


def _check_params(params: FeaturesParams) -> None:
    val, test = params.temporal_val_fraction, params.temporal_test_fraction
    if min(params.min_user_interactions, params.min_item_interactions) < 1:
        problem = "min_user_interactions and min_item_interactions must be >= 1"
    elif min(params.max_seq_len, params.year_bucket_size) < 1:
        problem = "max_seq_len and year_bucket_size must be >= 1"
    elif not (test > 0 and val >= 0 and val + test < 1):
        problem = "temporal fractions need test > 0, val >= 0 and val + test < 1"
    else:
        return
    raise RecsysError(f"params.yaml features: {problem}")


def check_sequence_memory(n_users: int, max_seq_len: int, available: int | None) -> None:
    """Refuse a max_seq_len whose padded arrays cannot fit, before allocating them.

    Each is (n_users + 1) x max_seq_len int32 and SEQUENCE_ARRAYS are held at once; without
    this a large max_seq_len ends in numpy's MemoryError ("Unable to allocate 1.10 TiB") after
    the whole stage has run. `available` None (unknown) skips the check.
    """
    needed = SEQUENCE_ARRAYS * (n_users + 1) * max_seq_len * np.dtype(np.int32).itemsize
    if available is not None and needed > available:
        raise RecsysError(
            f"params.yaml features.max_seq_len={max_seq_len}: the padded sequences of "
            f"{n_users} users need {_size(needed)} of memory, {_size(available)} is available"
        )


def available_memory() -> int | None:
    """Bytes of memory available now (Linux's MemAvailable, else free pages), None if unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _size(size: int) -> str:
    return f"{size / 2**30:.2f} GiB" if size >= 2**30 else f"{size / 2**20:.1f} MiB"


def check_validation(interim_dir: Path, validation_dir: Path, input_hashes: dict) -> None:
    """Refuse to build from data the validate stage has not passed in exactly this version.

    Reads validated.json, the validate stage's stable record (input hashes, verdict, warnings;
    no clock, no drift figures), so `dvc repro` reruns features only when the data changed.
    """
    path = validation_dir / VALIDATED_FILE
    if not path.is_file() and (validation_dir / "summary.json").is_file():
        # validate writes validated.json only when it passes; its report stays beside it
        raise RecsysError(
            f"{path}: not found: validation did not pass (see {validation_dir / 'summary.json'}); "
            "fix the data and rerun validate"
        )
    if not path.is_file():
        raise RecsysError(
            f"{path}: not found; run `recsys validate` first (or pass --skip-validation-check)"
        )
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RecsysError(f"{path}: not readable JSON ({exc})") from exc
    if not isinstance(record, dict) or record.get("verdict") != "passed":
        raise RecsysError(f"{path}: validation did not pass; fix the data and rerun validate")
    recorded = record.get("input_hashes")
    if recorded != input_hashes:
        recorded = recorded if isinstance(recorded, dict) else {}
        changed = sorted(
            name
            for name in set(recorded) | set(input_hashes)
            if recorded.get(name) != input_hashes.get(name)
        )
        raise RecsysError(
            f"{path}: {', '.join(changed)} in {interim_dir} changed after validation; "
            "rerun `recsys validate`"
        )


def _read_interactions(path: Path) -> pl.DataFrame:
    """The canonical columns plus `row`, the source order every later tie-break relies on."""
    try:
        schema = pl.read_parquet_schema(path)
        missing = [name for name in INTERACTIONS if name not in schema]
        if missing:
            raise RecsysError(f"{path}: missing column(s) {', '.join(missing)}")
        df = conform_interactions(pl.read_parquet(path, columns=list(INTERACTIONS)))
    except pl.exceptions.PolarsError as exc:
        raise RecsysError(f"{path}: cannot read ({_first_line(exc)})") from exc
    if df.height == 0:
        raise RecsysError(f"{path}: no rows")
    nulls = {name: n for name, n in df.null_count().row(0, named=True).items() if n}
    nulls.pop("rating", None)
    if nulls:
        name, n = next(iter(nulls.items()))
        raise RecsysError(f"{path}: {n} row(s) with a null {name}")
    return df.with_row_index("row")


def encode_ids(df: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Replace the string ids by integer codes in order of first appearance.

    Dedupe and k-core then work on integers, and the codes already carry the final order.
    """
    tables = []
    for column, code in (("user_id", "u"), ("item_id", "i")):
        ids = (
            df.group_by(column)
            .agg(pl.col("row").min())
            .sort("row")
            .with_row_index(code)
            .select(column, code)
        )
        df = df.join(ids, on=column, how="left", maintain_order="left").drop(column)
        tables.append(ids)
    return df, tables[0], tables[1]


def contiguous_map(
    ids: pl.DataFrame, kept_codes: np.ndarray, id_column: str, idx_column: str
) -> tuple[pl.DataFrame, np.ndarray]:
    """The id map (1..N, 0 left for padding) and a code -> index lookup array."""
    alive = np.bincount(kept_codes, minlength=ids.height) > 0
    lookup = np.cumsum(alive, dtype=np.int32)
    table = ids.filter(pl.Series(alive)).select(
        pl.col(id_column), pl.int_range(1, int(alive.sum()) + 1, dtype=pl.Int32).alias(idx_column)
    )
    return table, lookup


def loo_labels(users: np.ndarray, n_users: int) -> tuple[np.ndarray, int]:
    """Leave-one-out split per row (rows sorted by user, time, source order); users too short."""
    counts = np.bincount(users, minlength=n_users + 1)
    from_end = rank_from_end(users, n_users)
    eligible = counts[users] >= 3
    labels = np.full(len(users), TRAIN, dtype=np.int8)
    labels[eligible & (from_end == 1)] = VAL
    labels[eligible & (from_end == 0)] = TEST
    short_users = int(((counts >= 1) & (counts < 3)).sum())
    return labels, short_users


def temporal_cuts(timestamps: np.ndarray, val_fraction: float, test_fraction: float):
    """(val_start, test_start): the timestamps at the quantiles 1-test-val and 1-test.

    The quantile is the timestamp at sorted position ceil(q * (n - 1)) (numpy's "higher"), so a
    cut is always a timestamp that occurs; rounding keeps float noise from moving it by a row.
    """
    n = len(timestamps)
    positions = [
        min(n - 1, math.ceil(round(q * (n - 1), 9)))
        for q in (1 - test_fraction - val_fraction, 1 - test_fraction)
    ]
    ordered = np.partition(timestamps, positions)
    return int(ordered[positions[0]]), int(ordered[positions[1]])


def temporal_labels(timestamps: np.ndarray, val_start: int, test_start: int) -> np.ndarray:
    labels = np.full(len(timestamps), TRAIN, dtype=np.int8)
    labels[timestamps >= val_start] = VAL
    labels[timestamps >= test_start] = TEST
    return labels


def _write_splits(frame: pl.DataFrame, labels: np.ndarray, folder: Path) -> dict[str, int]:
    sizes = {}
    for name, label in SPLITS.items():
        part = frame.filter(pl.Series(labels == label))
        write_parquet(part, folder / f"{name}.parquet")
        sizes[name] = part.height
    return sizes


def _targets(users: np.ndarray, items: np.ndarray, n_users: int) -> np.ndarray:
    out = np.zeros(n_users + 1, dtype=np.int32)
    out[users] = items
    return out


def _write_sequences(
    users: np.ndarray,
    items: np.ndarray,
    loo: np.ndarray,
    n_users: int,
    max_len: int,
    folder: Path,
) -> None:
    train = loo == TRAIN
    before_test = loo != TEST
    train_seq = padded_tail(users[train], items[train], n_users, max_len)
    _save_npy(train_seq, folder / "train_seq.npy")
    _save_npy(train_seq, folder / "val_input.npy")
    _save_npy(_targets(users[loo == VAL], items[loo == VAL], n_users), folder / "val_target.npy")
    test_input = padded_tail(users[before_test], items[before_test], n_users, max_len)
    _save_npy(test_input, folder / "test_input.npy")
    _save_npy(_targets(users[loo == TEST], items[loo == TEST], n_users), folder / "test_target.npy")


def _read_side_table(path: Path, required: list[str]) -> pl.DataFrame | None:
    """items.parquet / users.parquet if present, one row per id (the first one wins)."""
    if not path.is_file():
        return None
    try:
        df = pl.read_parquet(path)
    except pl.exceptions.PolarsError as exc:
        raise RecsysError(f"{path}: cannot read ({_first_line(exc)})") from exc
    missing = [name for name in required if name not in df.columns]
    if missing:
        raise RecsysError(f"{path}: missing column(s) {', '.join(missing)}")
    return df.unique(subset=required[0], keep="first", maintain_order=True)


def _write_item_features(
    path: Path,
    item_map: pl.DataFrame,
    train_items: np.ndarray,
    params: FeaturesParams,
    folder: Path,
) -> dict[str, Any]:
    items = _read_side_table(path, list(ITEMS))
    if items is None:
        items = pl.DataFrame(schema=ITEMS)
    try:
        items = conform_items(items)
    except pl.exceptions.PolarsError as exc:
        raise RecsysError(f"{path}: wrong column types ({_first_line(exc)})") from exc
    joined = item_map.join(items, on="item_id", how="left", maintain_order="left")
    extras = [name for name in items.columns if name not in ITEMS]
    tags = _feature_tags(joined, extras)
    # The served catalogue's genres are the item's tags, so a genre filter on any tag of
    # genres.json (a brand, an S3-Rec attribute) finds the items that have it.
    catalog = joined.with_columns(tags["genres"]).select("item_idx", *ITEMS)
    write_parquet(catalog, folder / "items.parquet")
    n_rows = item_map.height + 1

    genres, vocab = genre_multi_hot(tags, n_rows)
    _save_npy(genres, folder / "genres.npy")
    write_json(vocab, folder / "genres.json")

    buckets, year_info = year_buckets(catalog, n_rows, params.year_bucket_size)
    _save_npy(buckets, folder / "year_bucket.npy")
    write_json(year_info, folder / "year_buckets.json")

    popularity = np.bincount(train_items, minlength=n_rows).astype(np.float32)
    _save_npy(popularity, folder / "popularity.npy")
    return {
        "with_metadata": int(item_map["item_id"].is_in(items["item_id"].implode()).sum()),
        "genres": len(vocab),
        # genres.npy's columns come from these: genres as they are, the others as
        # "column=value" (numbers as "column=q1".."q{NUMERIC_BINS}", their quantile bins)
        "columns": ["genres", *extras],
        "year_buckets": year_info["n_buckets"],
        "popularity": "interaction counts in loo/train.parquet",
    }


def _feature_tags(joined: pl.DataFrame, extras: list[str]) -> pl.DataFrame:
    """item_idx and `genres`: every categorical value of the item as one tag list, so any
    metadata (an S3-Rec attribute list, a brand, a price) becomes columns of the item feature
    tensor, not only MovieLens genres. genres keep their names (the serving filters and the
    diversity metric use them); other columns tag as "column=value", numbers by quantile bin.
    """
    tags = [pl.col("genres").fill_null(pl.lit([], dtype=pl.List(pl.String)))]
    for name in extras:
        dtype = joined.schema[name]
        if dtype.is_numeric():
            tags.append(_quantile_tags(joined[name]))
            continue
        values = pl.col(name) if isinstance(dtype, pl.List) else pl.concat_list(pl.col(name))
        values = values.cast(pl.List(pl.String)).list.eval(pl.lit(f"{name}=") + pl.element())
        tags.append(values.fill_null(pl.lit([], dtype=pl.List(pl.String))))
    if len(tags) == 1:
        return joined.select("item_idx", "genres")
    merged = pl.concat_list(tags).list.eval(pl.element().drop_nulls()).alias("genres")
    return joined.select("item_idx", merged)


def _quantile_tags(values: pl.Series) -> pl.Expr:
    """A number column as one tag per item, its quantile bin: "price=q1" .. "price=q5"."""
    numbers = values.cast(pl.Float64)
    known = numbers.drop_nulls().drop_nans()
    if known.len() == 0:
        return pl.lit([], dtype=pl.List(pl.String))
    edges = np.unique(np.quantile(known.to_numpy(), np.linspace(0, 1, NUMERIC_BINS + 1)[1:-1]))
    bins = np.searchsorted(edges, numbers.fill_nan(None).to_numpy(), side="right") + 1
    labels = [
        None if v is None else f"{values.name}=q{b}"
        for v, b in zip(numbers.fill_nan(None).to_list(), bins.tolist(), strict=True)
    ]
    return pl.concat_list(pl.lit(pl.Series(labels, dtype=pl.String)))


def genre_multi_hot(catalog: pl.DataFrame, n_rows: int) -> tuple[np.ndarray, list[str]]:
    """uint8 [n_rows, G] multi-hot; column g is vocab[g] (genres sorted by name)."""
    pairs = catalog.select("item_idx", "genres").explode("genres").drop_nulls("genres")
    vocab = pairs["genres"].unique().sort().to_list()
    # Dense rank of a sorted unique vocabulary is the position in it, plus one.
    columns = pairs["genres"].rank("dense").to_numpy().astype(np.int64) - 1
    out = np.zeros((n_rows, len(vocab)), dtype=np.uint8)
    out[pairs["item_idx"].to_numpy(), columns] = 1
    return out, vocab


def year_buckets(
    catalog: pl.DataFrame, n_rows: int, bucket_size: int
) -> tuple[np.ndarray, dict[str, Any]]:
    """int64 [n_rows]: 0 unknown, else 1 + (year - min_year) // bucket_size."""
    known = catalog.filter(pl.col("year").is_not_null())
    out = np.zeros(n_rows, dtype=np.int64)
    if known.height == 0:
        return out, {"min_year": None, "bucket_size": bucket_size, "n_buckets": 0, "edges": []}
    years = known["year"].to_numpy().astype(np.int64)
    min_year = int(years.min())
    out[known["item_idx"].to_numpy()] = 1 + (years - min_year) // bucket_size
    n_buckets = int(out.max())
    return out, {
        "min_year": min_year,
        "bucket_size": bucket_size,
        "n_buckets": n_buckets,
        "edges": [min_year + k * bucket_size for k in range(n_buckets + 1)],
        "meaning": "bucket 0 = unknown; bucket k covers edges[k-1] <= year < edges[k]",
    }


def _write_user_features(path: Path, user_map: pl.DataFrame, folder: Path) -> dict[str, Any]:
    users = _read_side_table(path, [USER_ID])
    if users is None:
        return {"columns": []}
    try:
        users = users.with_columns(pl.col(USER_ID).cast(pl.String))
    except pl.exceptions.PolarsError as exc:
        raise RecsysError(f"{path}: user_id is not a string ({_first_line(exc)})") from exc
    table = user_map.join(users, on=USER_ID, how="left", maintain_order="left")
    columns = [name for name in users.columns if name != USER_ID]
    codes = np.zeros((user_map.height + 1, len(columns)), dtype=np.int64)
    vocabularies = {}
    for k, name in enumerate(columns):
        codes[1:, k], vocabularies[name] = _categorical_codes(table[name], path)
    _save_npy(codes, folder / "user_features.npy")
    info = {
        "columns": columns,
        "vocabularies": vocabularies,
        "age_edges": AGE_EDGES,
        "meaning": "code 0 = unknown; code k = vocabularies[column][k - 1]",
    }
    write_json(info, folder / "user_features.json")
    return {"columns": columns}


def _categorical_codes(values: pl.Series, path: Path) -> tuple[np.ndarray, list[str]]:
    """Codes 1..K over the sorted distinct values (age: its fixed buckets), 0 for null."""
    if values.name == "age" and values.dtype.is_numeric():
        age = values.to_numpy().astype(np.float64)
        codes = 1 + np.searchsorted(AGE_EDGES, age, side="right")
        return np.where(np.isnan(age), 0, codes), AGE_LABELS
    if values.dtype.is_float():  # a measured number (ingest.users.columns.numeric): binned
        numbers = values.fill_nan(None).to_numpy().astype(np.float64)
        known = numbers[~np.isnan(numbers)]
        if known.size == 0:
            return np.zeros(len(numbers), dtype=np.int64), []
        edges = np.unique(np.quantile(known, np.linspace(0, 1, NUMERIC_BINS + 1)[1:-1]))
        codes = 1 + np.searchsorted(edges, numbers, side="right")
        labels = [f"q{k}" for k in range(1, len(edges) + 2)]
        return np.where(np.isnan(numbers), 0, codes), labels
    try:
        text = values.cast(pl.String)
    except pl.exceptions.PolarsError as exc:
        raise RecsysError(
            f"{path}: column {values.name} ({values.dtype}) cannot be a categorical feature"
        ) from exc
    vocab = text.drop_nulls().unique().sort().to_list()
    return text.rank("dense").fill_null(0).to_numpy().astype(np.int64), vocab


def _save_npy(array: np.ndarray, path: Path) -> None:
    # Only ever called inside the staged folder, which is swapped in whole: no temp name needed.
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array)


def _output_hashes(folder: Path) -> dict[str, str]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)
    return {p.relative_to(folder).as_posix(): file_sha256(p) for p in files}


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]
