"""The canonical tables every ingest source produces (README.md, "Stages and their files").

Ids are strings so that any source's ids (numeric, hashed, text) fit one schema; the features
stage maps them to contiguous integers.
"""

from __future__ import annotations

import polars as pl

INTERACTIONS = {
    "user_id": pl.String,
    "item_id": pl.String,
    "timestamp": pl.Int64,
    "rating": pl.Float64,
}
ITEMS = {
    "item_id": pl.String,
    "title": pl.String,
    "genres": pl.List(pl.String),
    "year": pl.Int32,
}
# users.parquet holds user_id (String) plus whatever attributes the source has.
USER_ID = "user_id"

INTERACTIONS_FILE = "interactions.parquet"
ITEMS_FILE = "items.parquet"
USERS_FILE = "users.parquet"


def conform_interactions(df: pl.DataFrame) -> pl.DataFrame:
    """Select and order the canonical columns with their canonical types."""
    return df.select(pl.col(name).cast(dtype) for name, dtype in INTERACTIONS.items())


def conform_items(df: pl.DataFrame) -> pl.DataFrame:
    """The canonical item columns with their types first, then any further metadata columns
    (categorical lists, numbers) as they are: the features stage uses those too."""
    extras = [name for name in df.columns if name not in ITEMS]
    return df.select(*(pl.col(name).cast(dtype) for name, dtype in ITEMS.items()), *extras)
