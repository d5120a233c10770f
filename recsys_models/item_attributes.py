"""Item attributes (categories, brand, year bucket) as a learned vector beside the item's id.

An item seen a handful of times in training has a poorly trained id embedding; its attributes are
shared with many items, so their embeddings carry what was learned there. The sequence encoders
(SASRec, GRU4Rec) add the mean of an item's attribute embeddings to its id embedding, on the input
side and on the output side alike (the tables are shared), so an item is always one vector.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def attribute_ids(genres: np.ndarray, year_bucket: np.ndarray) -> np.ndarray | None:
    """[I+1, A] int64: each item's attribute ids, counted from 1 and left 0-padded to the largest
    count A. The multi-hot `genres` [I+1, G] give ids 1..G, a known year bucket b > 0 the id
    G + b. Row 0 (padding) has none. None when no item has any attribute."""
    genres = np.asarray(genres) > 0
    columns = [np.where(genres, np.arange(1, genres.shape[1] + 1), 0)]
    year_bucket = np.asarray(year_bucket, dtype=np.int64)
    if year_bucket.size and year_bucket.max() > 0:
        columns.append(np.where(year_bucket > 0, genres.shape[1] + year_bucket, 0)[:, None])
    ids = np.concatenate(columns, axis=1).astype(np.int64)
    ids[0] = 0
    width = int((ids > 0).sum(axis=1).max(initial=0))
    if width == 0:
        return None
    # Non-zero ids first in each row (a stable sort keeps their order), then cut to the widest row.
    order = np.argsort(ids == 0, axis=1, kind="stable")
    return np.take_along_axis(ids, order, axis=1)[:, :width]


class ItemAttributes(nn.Module):
    """forward(items) -> the mean of each item's attribute embeddings, [*items.shape, H]; zero for
    an item without attributes and for padding. The attribute ids travel as a buffer, so the
    state dict alone restores the model for the features it was trained on."""

    def __init__(self, ids: np.ndarray, hidden: int):
        super().__init__()
        self.register_buffer("ids", torch.as_tensor(ids, dtype=torch.long))
        self.emb = nn.Embedding(int(self.ids.max()) + 1, hidden, padding_idx=0)
        nn.init.normal_(self.emb.weight, std=hidden**-0.5)
        with torch.no_grad():
            self.emb.weight[0].zero_()

    def forward(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """items: item ids of any shape; None: the whole catalogue, padding row included."""
        ids = self.ids if items is None else self.ids[items]  # [..., A]
        count = (ids > 0).sum(-1, keepdim=True).clamp_min(1)
        return self.emb(ids).sum(-2) / count


def item_vectors(
    id_emb: nn.Embedding, attributes: ItemAttributes | None, items: torch.Tensor | None = None
) -> torch.Tensor:
    """Id embedding plus attribute mean of `items` (None: the whole table, [I+1, H])."""
    vectors = id_emb.weight if items is None else id_emb(items)
    return vectors if attributes is None else vectors + attributes(items)
