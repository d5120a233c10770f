"""Item text embeddings for the features stage: every item's text (title and any other text
column of items.parquet) encoded by the pretrained encoder (tasks/text_encoder.py).

Encoding is the slow part (tens of items per second on 2 CPU cores), so vectors are cached
outside data/features, keyed by the sha256 of the exact text under one encoder's weights: a
re-run encodes only texts it has not seen. Items with no text get a zero row and mask False,
so a model can tell "no text" from "text that embeds near zero". The feature table is
items/text_embeddings.npy [I+1, D] float32 with items/text_mask.npy [I+1] bool (row 0, padding,
is empty); the manifest names the encoder and its weights' sha256.
"""

from __future__ import annotations

import hashlib
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from tasks import text_encoder
from tasks.errors import RecsysError
from tasks.io import atomic_path
from tasks.params import TextParams

log = logging.getLogger(__name__)

EMBEDDINGS = "text_embeddings.npy"
MASK = "text_mask.npy"
SEPARATOR = ". "


def item_texts(items_path: Path, item_map: pl.DataFrame) -> tuple[list[str], list[str]]:
    """(text of each item_idx 1..I in order, "" when it has none; the columns used)."""
    texts = [""] * item_map.height
    if not Path(items_path).is_file():
        return texts, []
    try:
        items = pl.read_parquet(items_path)
    except pl.exceptions.PolarsError as exc:
        raise RecsysError(f"{items_path}: cannot read ({exc})") from exc
    if "item_id" not in items.columns:
        return texts, []
    items = items.with_columns(pl.col("item_id").cast(pl.String)).unique(
        "item_id", keep="first", maintain_order=True
    )
    found, columns = texts_of(items)
    if not columns:
        return texts, []
    table = item_map.join(
        items.select("item_id", pl.Series("text", found)), on="item_id", how="left"
    ).sort("item_idx")
    return [t or "" for t in table["text"].to_list()], columns


def texts_of(items: pl.DataFrame) -> tuple[list[str], list[str]]:
    """(the text of each row of an items table, "" when it has none; the columns used).

    The text is the item's string columns (title first) joined; ids are not text."""
    columns = [c for c, t in items.schema.items() if t == pl.String and c != "item_id"]
    columns.sort(key=lambda c: (c != "title", c))
    if not columns:
        return [""] * items.height, []
    joined = pl.concat_str(
        [pl.col(c).str.strip_chars() for c in columns], separator=SEPARATOR, ignore_nulls=True
    )
    texts = items.select(joined.alias("text"))["text"].to_list()
    return [(t or "").strip(SEPARATOR + " ") for t in texts], columns


def text_key(text: str) -> str:
    """The cache key: sha256 of the UTF-8 text."""
    return hashlib.sha256(text.encode()).hexdigest()


class EmbeddingCache:
    """Vectors by text sha256 under one encoder: a folder of .npz shards (keys, vectors), one
    per run that encoded something, each written atomically, never rewritten."""

    def __init__(self, root: Path, encoder_sha256: str, dim: int):
        self.folder = Path(root) / f"{encoder_sha256[:16]}-{text_encoder.MAX_TOKENS}"
        self.dim = dim

    def load(self) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        for shard in sorted(self.folder.glob("*.npz")):
            try:
                with np.load(shard, allow_pickle=False) as data:
                    keys, vectors = data["keys"], data["vectors"]
            except (OSError, ValueError, KeyError) as exc:
                log.warning("%s: unreadable cache shard, ignored (%s)", shard, exc)
                continue
            if vectors.shape != (len(keys), self.dim):
                log.warning("%s: cache shard of shape %s ignored", shard, vectors.shape)
                continue
            found.update(zip(keys.astype(str).tolist(), vectors, strict=True))
        return found

    def add(self, keys: list[str], vectors: np.ndarray) -> None:
        if not keys:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        name = hashlib.sha256("".join(sorted(keys)).encode()).hexdigest()[:24]
        with atomic_path(self.folder / f"{name}.npz") as tmp, open(tmp, "wb") as f:
            np.savez(f, keys=np.array(keys, dtype="S64"), vectors=vectors.astype(np.float32))


def wanted(params: TextParams) -> bool:
    """Whether to build text features: `auto` logs the one line of what they would need."""
    if params.enabled == "false":
        return False
    reason = text_encoder.missing()
    if reason is None:
        return True
    if params.enabled == "true":
        raise RecsysError(f"params.yaml features.text.enabled=true: {reason}")
    print(reason, file=sys.stderr)  # the one line: the stage goes on without text
    return False


def embed_texts(
    texts: list[str], params: TextParams, encoder: Any = None
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """([N, D] float32 unit rows, zero where the text is empty; [N] bool mask; counts of texts
    encoded now and read from the cache). Only texts missing from the cache reach the encoder."""
    encoder = encoder or text_encoder.load_encoder()
    cache = EmbeddingCache(Path(params.cache), encoder.weights_sha256, encoder.dim)
    mask = np.array([bool(t) for t in texts], dtype=bool)
    keys = [text_key(t) if t else "" for t in texts]
    known = cache.load()
    todo = sorted({k: t for k, t in zip(keys, texts, strict=True) if t and k not in known}.items())
    if todo:
        vectors = encoder.encode([t for _, t in todo], batch_size=params.batch_size)
        cache.add([k for k, _ in todo], vectors)
        known.update(zip([k for k, _ in todo], vectors, strict=True))
    out = np.zeros((len(texts), encoder.dim), dtype=np.float32)
    for row in np.flatnonzero(mask):
        out[row] = known[keys[row]]
    return out, mask, {"encoded": len(todo), "cached": len({k for k in keys if k}) - len(todo)}


def write_text_features(
    items_path: Path, item_map: pl.DataFrame, params: TextParams, folder: Path
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write items/text_embeddings.npy and items/text_mask.npy (rows by item_idx, 0 padding).

    Returns (what the manifest records: deterministic for the same inputs and encoder,
    what the run did: texts encoded and read from the cache, for the summary)."""
    if not wanted(params):
        why = "features.text.enabled is false" if params.enabled == "false" else "extra absent"
        return {"enabled": False, "why": why}, {"text": f"off ({why})"}
    texts, columns = item_texts(items_path, item_map)
    encoder = text_encoder.load_encoder()
    vectors, mask, counts = embed_texts(texts, params, encoder)
    rows = np.zeros((len(texts) + 1, encoder.dim), dtype=np.float32)
    rows[1:] = vectors
    has_text = np.concatenate([[False], mask])
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / EMBEDDINGS, rows)
    np.save(folder / MASK, has_text)
    info = {
        "enabled": True,
        "encoder": encoder.name,
        "package": text_encoder.REQUIREMENT,
        "weights_sha256": encoder.weights_sha256,
        "dim": encoder.dim,
        "pooling": "mean over tokens, L2-normalised",
        "columns": columns,
        "items_with_text": int(mask.sum()),
        "items_without_text": int((~mask).sum()),
        "meaning": "text_mask False: no text, zero row",
    }
    return info, {"text": counts}
