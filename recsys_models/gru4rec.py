"""GRU4Rec (Hidasi et al., 2016): a GRU reads the user's items in order, its last state scores
the next item against the (shared) item embeddings.

Trained exactly like SASRec (recsys_models.sequence_training): the same training windows,
batches and losses (full-softmax cross-entropy at every position, the loss that made GRU4Rec
competitive again, Hidasi & Czapienko, 2023; or the sampled ones on a large catalogue), so the
two differ only in the sequence encoder.

Padding-safe by construction: histories are left-padded with item 0, whose embedding is zero,
and the GRU has no biases, so from the zero initial state a padded step leaves the state at
exactly zero (every gate's input is zero, the candidate state is tanh(0) = 0). The state at the
first real item is therefore the same whatever padding precedes it, and no mask or Python loop
over time is needed: one nn.GRU call, which exports to the ONNX GRU operator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from recsys_models.data import FeatureData
from recsys_models.dropout import Dropout
from recsys_models.item_attributes import ItemAttributes, attribute_ids, item_vectors
from recsys_models.item_table import CachedItemTable
from recsys_models.sequence_training import (
    NextItemModule,
    WindowData,
    check_loss_fields,
    next_item_training,
)
from recsys_models.spec import GRADIENT, HISTORY_GRAPH, Choice, ModelSpec, Range


@dataclass(frozen=True)
class Config:
    hidden: int = 64
    layers: int = 1
    dropout: float = 0.2  # on the item embeddings and the GRU's output
    # ce|bce|sampled|gbce|auto, and the fields below: as SASRec's (sequence_training)
    loss: str = "auto"
    negatives: int = 2048
    negative_sampler: str = "mixed"
    gbce_t: float = 0.75
    full_softmax_max_items: int = 10_000
    lr: float = 3e-3
    weight_decay: float = 0.0
    batch_size: int = 128
    eval_batch_size: int = 256
    min_context: int = 0  # as SASRec's: earlier items each training target reads at least
    item_features: bool = False  # as SASRec's: attribute embeddings beside the item id

    def __post_init__(self):
        if min(self.hidden, self.layers, self.batch_size, self.eval_batch_size) < 1:
            raise ValueError("hidden, layers, batch_size and eval_batch_size must be >= 1")
        if self.lr <= 0 or self.weight_decay < 0 or not 0 <= self.dropout < 1:
            raise ValueError("lr must be > 0, weight_decay >= 0, dropout in [0, 1)")
        check_loss_fields(self)


# What `recsys tune` searches (tasks/tune.py); every other field keeps params.yaml's value.
SEARCH_SPACE = {
    "hidden": Choice((32, 64, 128)),
    "layers": Range(1, 2, integer=True),
    "dropout": Range(0.0, 0.5),
    "lr": Range(3e-4, 1e-2, log=True),
}


class GRU4Rec(CachedItemTable):
    def __init__(
        self,
        n_items: int,
        hidden: int = 64,
        layers: int = 1,
        dropout: float = 0.2,
        attributes: np.ndarray | None = None,
    ):
        """attributes: item_attributes.attribute_ids of the catalogue, or None (ids alone)."""
        super().__init__()
        self.item_emb = nn.Embedding(n_items + 1, hidden, padding_idx=0)
        self.item_attributes = None if attributes is None else ItemAttributes(attributes, hidden)
        self.gru = nn.GRU(hidden, hidden, num_layers=layers, bias=False, batch_first=True)
        self.drop = Dropout(dropout)
        nn.init.normal_(self.item_emb.weight, std=hidden**-0.5)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        """GRU state after every position, [B, L, H]; zero at padded positions."""
        real = (history > 0).unsqueeze(-1)
        # Dropout on the embedding keeps padding at zero (0 * mask = 0); the mask by `real`
        # makes that explicit and guards against a non-zero padding row after loading weights.
        states, _ = self.gru(self.drop(self.item_embeddings(history)) * real)
        return self.drop(states) * real

    def score(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """Scores of every item (column 0 is padding) after the last position, [B, I+1]."""
        return self(history)[:, -1] @ self.item_table().T

    def item_embeddings(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """The vectors of `items` (None: the catalogue, [I+1, H]) that input and output share."""
        return item_vectors(self.item_emb, self.item_attributes, items)


def restore(data: FeatureData, config: Config) -> GRU4Rec:
    """The bare GRU4Rec for `data`'s catalogue, untrained: the module that saved weights load
    into, and the one build() initialises."""
    attributes = (
        attribute_ids(data.item_genres, data.item_year_bucket) if config.item_features else None
    )
    return GRU4Rec(data.n_items, config.hidden, config.layers, config.dropout, attributes)


def build(data: FeatureData, config: Config, seed: int) -> tuple[NextItemModule, WindowData]:
    """The shared next-item LightningModule around a GRU4Rec (its `.model`) and the windows."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)  # the same seed gives the same initial weights
        model = restore(data, config)
    return next_item_training(model, data, config, seed)


SPEC = ModelSpec(
    name="gru4rec",
    kind=GRADIENT,
    config=Config,
    restore=restore,
    export=HISTORY_GRAPH,
    build=build,
    search_space=SEARCH_SPACE,
)
