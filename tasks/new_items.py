"""Items that arrive after export, placed by their text alone (`recsys embed-items`).

A new item has no interactions, so no model has a vector for it; its text does. Its title and
other text columns are encoded by the same pretrained encoder as the features stage's (the
same cache), and the vectors land in artifacts/new_items/ (tasks/artifact_store.py), where the
service finds them: `/items/{id}/similar` for such an item ranks the served catalogue by text
similarity, torch- and encoder-free. The encoder must be the one the served artifact's text
embeddings came from, or the two spaces would not compare.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tasks import text_encoder
from tasks.artifact_store import write_new_items
from tasks.errors import RecsysError
from tasks.metadata import read_items
from tasks.params import MetadataParams, TextParams
from tasks.text_features import embed_texts, texts_of


def embed_items(
    items: MetadataParams, artifacts_dir: str | Path, text: TextParams, encoder: Any = None
) -> dict[str, Any]:
    """Encode the items of `items` (a metadata file read with its column map) into
    artifacts/new_items/; return what was done. Items without any text are refused by id."""
    reason = text_encoder.missing()
    if encoder is None and reason is not None:
        raise RecsysError(f"embed-items: {reason}")
    encoder = encoder or text_encoder.load_encoder()
    frame = read_items(items)
    texts, columns = texts_of(frame)
    if not columns:
        raise RecsysError(f"{items.path}: no text column (title or other text) to encode")
    empty = [item for item, t in zip(frame["item_id"], texts, strict=True) if not t]
    if empty:
        shown = ", ".join(repr(i) for i in empty[:5]) + (" ..." if len(empty) > 5 else "")
        raise RecsysError(f"{items.path}: {len(empty)} item(s) have no text: {shown}")
    vectors, _, counts = embed_texts(texts, text, encoder)
    info = {
        "encoder": encoder.name,
        "package": text_encoder.REQUIREMENT,
        "weights_sha256": encoder.weights_sha256,
        "dim": encoder.dim,
        "columns": columns,
    }
    folder = write_new_items(artifacts_dir, frame, vectors, info)
    return {"items": frame.height, "columns": columns, "folder": str(folder), **counts}
