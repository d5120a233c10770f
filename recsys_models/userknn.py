"""User-kNN: a user likes what the users most similar to them touched (Resnick et al., 1994).

Cosine similarity between users' binary training rows, each user's top-k neighbours kept
(recsys_models.itemknn.cosine_topk on the user rows); score(u, j) = sum over the neighbours v of
sim(u, v) * X[v, j]. The neighbourhood sums are computed once at fit time into a [U+1, I+1]
table, so scoring is one row lookup and the graph exports as a gather.

It scores by the user index, not by `history`: a user who had no training interactions (or an
index beyond the table) gets all-zero scores, every item ties and the ranking says nothing (ties
count against the model); such users need another model (item-kNN, popularity) in front.
The table is U x I floats: right for MovieLens-100K/1M, not for catalogues of millions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from recsys_models.data import FeatureData
from recsys_models.itemknn import cosine_topk, interaction_matrix
from recsys_models.spec import CLOSED_FORM, SCORE_GRAPH, ModelSpec


@dataclass(frozen=True)
class Config:
    k: int = 50  # neighbours kept per user
    shrink: float = 0.0  # added to the cosine denominator: damps pairs with little overlap

    def __post_init__(self):
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.shrink < 0:
            raise ValueError(f"shrink must be >= 0, got {self.shrink}")


class UserKNN(nn.Module):
    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.register_buffer("table", table)  # [U+1, I+1] neighbourhood sums

    def score(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """The users' rows of the table, [B, I+1]; `history` is not used."""
        return self.table[users]


def neighbourhood_table(matrix: sp.csr_matrix, k: int, shrink: float) -> np.ndarray:
    """sum_v sim(u, v) X[v] over each user's top-k cosine neighbours, dense [U, I] float32."""
    neighbours, sims = cosine_topk(matrix, k, shrink)
    n = matrix.shape[0]
    rows = np.repeat(np.arange(n), neighbours.shape[1])
    weights = sp.csr_matrix((sims.ravel(), (rows, neighbours.ravel())), shape=(n, n))
    return np.asarray((weights @ matrix).toarray(), dtype=np.float32)


def fit(data: FeatureData, config: Config, seed: int) -> UserKNN:
    """Similarities from the training interactions; `seed` is unused (nothing is random)."""
    matrix = interaction_matrix(
        data.train_users, data.train_items, (data.n_users + 1, data.n_items + 1)
    )
    table = neighbourhood_table(matrix, config.k, config.shrink)
    return UserKNN(torch.from_numpy(table))


def restore(data: FeatureData, config: Config) -> UserKNN:
    """An all-zero table of the fitted shape, for saved weights to fill: no neighbours are
    searched, which is the whole cost of fit()."""
    return UserKNN(torch.zeros(data.n_users + 1, data.n_items + 1))


SPEC = ModelSpec(
    name="userknn",
    kind=CLOSED_FORM,
    config=Config,
    restore=restore,
    export=SCORE_GRAPH,
    fit=fit,
    uses_history=False,
)
