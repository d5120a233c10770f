"""Most-popular: every user gets the catalogue ranked by training interaction count.

The floor every personalised model must clear; if one does not beat it, the model (or the
evaluation) is broken.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from recsys_models.data import FeatureData
from recsys_models.spec import CLOSED_FORM, SCORE_VECTOR, ModelSpec


@dataclass(frozen=True)
class Config:
    """No hyper-parameters: the counts are the model."""


class Popularity(nn.Module):
    def __init__(self, counts: torch.Tensor):
        super().__init__()
        # A buffer, so the counts travel in the state_dict like any other model's weights.
        self.register_buffer("counts", counts.float())

    def score(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """The same scores for every user, [B, I+1]."""
        return self.counts.expand(len(users), -1)


def fit(data: FeatureData, config: Config, seed: int) -> Popularity:
    """Counts over the training split only (FeatureData.item_popularity), never the targets."""
    counts = torch.as_tensor(data.item_popularity, dtype=torch.float32).clone()
    counts[0] = 0.0
    return Popularity(counts)


def restore(data: FeatureData, config: Config) -> Popularity:
    """All-zero counts of the catalogue's size, for saved weights to fill."""
    return Popularity(torch.zeros(data.n_items + 1))


SPEC = ModelSpec(
    name="popularity",
    kind=CLOSED_FORM,
    config=Config,
    restore=restore,
    export=SCORE_VECTOR,
    fit=fit,
)
