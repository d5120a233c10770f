"""Item and user metadata files for the csv, parquet and seq sources (params.yaml
ingest.items / ingest.users), read into the form the MovieLens readers already write:
items.parquet with item_id, title, genres (list), year, then any further categorical (list of
text) and numeric (float) columns by their own names; users.parquet with user_id and its
columns. The features stage turns every such column into the feature tensors.

Used by the ingest stage only; each problem is one line naming the file and the column.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl

from tasks.errors import RecsysError
from tasks.params import MetadataParams
from tasks.readers import check_columns, first_line, read_text, reading, require_file
from tasks.schema import ITEMS, USER_ID

ITEM_ID = "item_id"
LIST = pl.List(pl.String)


def read_items(meta: MetadataParams) -> pl.DataFrame:
    """items.parquet's frame from ingest.items: canonical columns first, then the extras."""
    file = Path(str(meta.path))
    if file.suffix.lower() == ".json":
        return _attribute_json(file, meta)
    cols = meta.columns
    raw = _read_table(file, meta, cols.id or ITEM_ID)
    key = cols.id or ITEM_ID
    list_sep = meta.list_sep
    frame = raw.select(
        _id(raw, key, file).alias(ITEM_ID),
        _text(raw, cols.title).alias("title"),
        _values(raw, cols.categories, list_sep).alias("genres"),
        _year(raw, cols.year, file).alias("year"),
        *(_values(raw, name, list_sep).alias(name) for name in cols.categorical),
        *(_number(raw, name, file).alias(name) for name in cols.numeric),
    )
    _check_extra_names(file, [*cols.categorical, *cols.numeric], list(ITEMS))
    return _one_row_per_key(frame, ITEM_ID, file)


def read_users(meta: MetadataParams) -> pl.DataFrame:
    """users.parquet's frame from ingest.users: user_id, then categorical (text) and numeric
    (float) columns by their own names."""
    file = Path(str(meta.path))
    if file.suffix.lower() == ".json":
        raise RecsysError(
            f"{file}: JSON metadata is read for items only; give users as csv/parquet"
        )
    cols = meta.columns
    key = cols.id or USER_ID
    raw = _read_table(file, meta, key)
    frame = raw.select(
        _id(raw, key, file).alias(USER_ID),
        *(_text(raw, name).alias(name) for name in cols.categorical),
        *(_number(raw, name, file).alias(name) for name in cols.numeric),
    )
    _check_extra_names(file, [*cols.categorical, *cols.numeric], [USER_ID])
    return _one_row_per_key(frame, USER_ID, file)


def _attribute_json(file: Path, meta: MetadataParams) -> pl.DataFrame:
    """{"item": [attribute ids]} (S3-Rec's item2attributes.json): the attributes become the
    item's categories (genres), as text ids; no title, no year."""
    if meta.columns.named():
        raise RecsysError(
            f"{file}: a JSON attribute file has no columns to name; "
            "leave ingest.items.columns empty"
        )
    try:
        data = json.loads(read_text(file))
    except ValueError as exc:
        raise RecsysError(f"{file}: not valid JSON ({first_line(exc)})") from exc
    if not isinstance(data, dict):
        raise RecsysError(f'{file}: expected an object {{"item": [attribute ids]}}, got a list')
    bad = next((k for k, v in data.items() if not isinstance(v, list)), None)
    if bad is not None:
        raise RecsysError(f"{file}: item {bad!r}: expected a list of attribute ids")
    return pl.DataFrame(
        {
            ITEM_ID: list(data),
            "title": pl.Series([None] * len(data), dtype=pl.String),
            "genres": pl.Series([[str(a) for a in v] for v in data.values()], dtype=LIST),
            "year": pl.Series([None] * len(data), dtype=pl.Int32),
        }
    )


def _read_table(file: Path, meta: MetadataParams, key: str) -> pl.DataFrame:
    require_file(file)
    suffix = file.suffix.lower()
    with reading(file):
        if suffix in (".parquet", ".pq"):
            frame = pl.read_parquet(file)
        else:
            sep = meta.sep or ("\t" if suffix == ".tsv" else ",")
            sep = "\t" if sep in ("\\t", "tab") else sep
            frame = pl.read_csv(file, separator=sep, infer_schema=False)
    check_columns(file, frame.columns, list(dict.fromkeys([key, *meta.columns.named()])))
    return frame


def _check_extra_names(file: Path, extras: list[str], reserved: list[str]) -> None:
    clash = [name for name in extras if name in reserved]
    if clash:
        raise RecsysError(
            f"{file}: column {clash[0]!r} is a canonical column name; map it with its own key "
            "(id, title, categories, year) instead of categorical/numeric"
        )


def _id(raw: pl.DataFrame, column: str, file: Path) -> pl.Expr:
    if raw[column].dtype.is_nested():
        raise RecsysError(f"{file}: column {column!r} has type {raw[column].dtype}; expected ids")
    return pl.col(column).cast(pl.String)


def _text(raw: pl.DataFrame, column: str | None) -> pl.Expr:
    """A text column; empty strings are missing values."""
    if column is None:
        return pl.lit(None, pl.String)
    text = pl.col(column).cast(pl.String).str.strip_chars()
    return pl.when(text != "").then(text)


def _values(raw: pl.DataFrame, column: str | None, list_sep: str) -> pl.Expr:
    """A multi-valued column as a list of text: a list column as it is, text split on
    list_sep; empty values dropped, a missing cell an empty list."""
    if column is None:
        return pl.lit([], dtype=LIST)
    dtype = raw[column].dtype
    if isinstance(dtype, pl.List):
        values = pl.col(column).cast(LIST)
    else:
        values = pl.col(column).cast(pl.String).str.split(list_sep)
    cleaned = values.list.eval(pl.element().str.strip_chars()).list.eval(
        pl.element().filter(pl.element() != "")
    )
    return cleaned.fill_null(pl.lit([], dtype=LIST))


def _year(raw: pl.DataFrame, column: str | None, file: Path) -> pl.Expr:
    if column is None:
        return pl.lit(None, pl.Int32)
    parsed = raw[column].cast(pl.String).str.strip_chars().cast(pl.Int32, strict=False)
    _check_parsed(raw[column], parsed, file, "whole years")
    return pl.lit(parsed)


def _number(raw: pl.DataFrame, column: str, file: Path) -> pl.Expr:
    values = raw[column]
    parsed = (
        values.cast(pl.Float64)
        if values.dtype.is_numeric()
        else values.cast(pl.String).str.strip_chars().cast(pl.Float64, strict=False)
    )
    _check_parsed(values, parsed, file, "numbers")
    return pl.lit(parsed).alias(column)


def _check_parsed(raw: pl.Series, parsed: pl.Series, file: Path, expected: str) -> None:
    """Missing cells (null or empty) are fine; a value that is there but not a number is not."""
    text = raw.cast(pl.String).str.strip_chars()
    bad = raw.filter(text.is_not_null() & (text != "") & parsed.is_null())
    if bad.len():
        raise RecsysError(
            f"{file}: column {raw.name!r} has {bad.len()} value(s) that are not {expected}, "
            f"e.g. {bad[0]!r}"
        )


def _one_row_per_key(frame: pl.DataFrame, key: str, file: Path) -> pl.DataFrame:
    """Null keys are an error (a row that describes nothing); a repeated key keeps its first row."""
    nulls = frame[key].is_null().sum()
    if nulls:
        raise RecsysError(f"{file}: {nulls} row(s) with no {key}")
    return frame.unique(subset=key, keep="first", maintain_order=True)


def describe(frame: pl.DataFrame | None) -> dict[str, Any] | None:
    """What ingest prints about a metadata table: rows and columns."""
    if frame is None:
        return None
    return {"rows": frame.height, "columns": frame.columns[1:]}
