"""The catalogue's item vectors, built once per evaluation instead of once per batch.

A model whose scores are user vector . item vectors (SASRec, GRU4Rec, two-tower) needs the whole
[I+1, H] table for every batch it scores. When the table is computed (item attributes, an item
tower), building it costs more than the batch: 14 ms a call at Amazon Beauty's 12,101 items, paid
by each of the hundreds of batches of a full-ranking validation. In eval mode the weights do not
change, so the table is kept until anything could change them: training mode, loading a state
dict, or moving the module to another device or dtype.
"""

from __future__ import annotations

import torch
from torch import nn


class CachedItemTable(nn.Module):
    """Base of the models above: item_table() is item_embeddings() (which the subclass defines),
    cached in eval mode."""

    def item_embeddings(self, items: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def item_table(self) -> torch.Tensor:
        """[I+1, H]: every item's vector, row 0 padding."""
        if self.training:
            return self.item_embeddings()
        # Kept in the instance's __dict__: nn.Module would take a tensor attribute for a buffer.
        if self.__dict__.get("_item_table") is None:
            with torch.no_grad():
                self.__dict__["_item_table"] = self.item_embeddings()
        return self.__dict__["_item_table"]

    def train(self, mode: bool = True) -> CachedItemTable:
        self.__dict__.pop("_item_table", None)
        return super().train(mode)

    def _apply(self, fn, recurse=True):
        self.__dict__.pop("_item_table", None)
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self.__dict__.pop("_item_table", None)
        super()._load_from_state_dict(*args, **kwargs)
