"""User-kNN: a user likes what the users most similar to them touched (Resnick et al., 1994).

Cosine similarity between users' binary training rows, each user's top-k neighbours kept
(recsys_models.itemknn.cosine_topk on the user rows, one bounded block at a time); score(u, j) =
sum over the neighbours v of sim(u, v) * X[v, j]. The model keeps the neighbour lists and the
sparse training rows and sums a batch's neighbourhoods when asked, so nothing U x I is ever
held (a dense table was 38 GB at 162k users x 59k items).

It scores by the user index, not by `history`: a user who had no training interactions (or an
index beyond the table) gets all-zero scores, every item ties and the ranking says nothing (ties
count against the model); such users need another model (item-kNN, popularity) in front.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from recsys_models.data import FeatureData
from recsys_models.itemknn import cosine_topk, interaction_matrix, neighbour_count
from recsys_models.spec import CLOSED_FORM, SCORE_GRAPH, ModelSpec, Range


@dataclass(frozen=True)
class Config:
    k: int = 50  # neighbours kept per user
    shrink: float = 0.0  # added to the cosine denominator: damps pairs with little overlap

    def __post_init__(self):
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.shrink < 0:
            raise ValueError(f"shrink must be >= 0, got {self.shrink}")


# What `recsys tune` searches (tasks/tune.py); every other field keeps params.yaml's value.
SEARCH_SPACE = {
    "k": Range(10, 400, log=True, integer=True),
    "shrink": Range(0.0, 50.0),
}


class UserKNN(nn.Module):
    def __init__(
        self,
        neighbours: torch.Tensor,
        sims: torch.Tensor,
        indptr: torch.Tensor,
        indices: torch.Tensor,
        n_items: int,
    ):
        super().__init__()
        self.register_buffer("neighbours", neighbours)  # [U+1, k] int64, 0 = no neighbour
        self.register_buffer("sims", sims)  # [U+1, k] float32
        self.register_buffer("indptr", indptr)  # [U+2] int64: user u's items are
        self.register_buffer("indices", indices)  # indices[indptr[u]:indptr[u+1]]
        self.n_items = n_items  # score columns: n_items + 1

    def score(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """sum_v sim(u, v) X[v] over each user's neighbours v, [B, I+1]; `history` unused.

        The neighbours' item lists are ragged (CSR); they are concatenated with plain tensor
        ops (cumsum, a scatter of segment starts, gathers) so the same code runs eager and
        exports to ONNX, and memory is the batch's neighbour items, never a U x I table.
        """
        neighbours, sims = self.neighbours[users], self.sims[users]  # [B, k]
        batch, k = neighbours.shape
        columns = self.n_items + 1
        starts = self.indptr[neighbours].reshape(-1)  # [B*k]
        lengths = self.indptr[neighbours + 1].reshape(-1) - starts
        offsets = torch.cumsum(lengths, 0) - lengths  # where each segment begins in the concat
        positions = torch.arange(lengths.sum() + 1, device=users.device)  # one spare slot
        marks = torch.zeros_like(positions).scatter_add(0, offsets, torch.ones_like(offsets))
        owner = torch.cumsum(marks, 0)[:-1] - 1  # the segment each position belongs to
        items = self.indices[starts[owner] + positions[:-1] - offsets[owner]]
        values = sims.reshape(-1)[owner]
        flat = torch.div(owner, k, rounding_mode="floor") * columns + items
        scores = torch.zeros(batch * columns, device=users.device, dtype=sims.dtype)
        return scores.scatter_add(0, flat, values).reshape(batch, columns)


def training_rows(data: FeatureData) -> sp.csr_matrix:
    """The binary [U+1, I+1] training matrix (sorted, duplicates counted once)."""
    return interaction_matrix(
        data.train_users, data.train_items, (data.n_users + 1, data.n_items + 1)
    )


def fit(data: FeatureData, config: Config, seed: int) -> UserKNN:
    """Similarities from the training interactions; `seed` is unused (nothing is random).
    cosine_topk computes them one bounded block of users at a time."""
    matrix = training_rows(data)
    neighbours, sims = cosine_topk(matrix, config.k, config.shrink)
    return _model(matrix, torch.from_numpy(neighbours), torch.from_numpy(sims), data.n_items)


def restore(data: FeatureData, config: Config) -> UserKNN:
    """Buffers of the fitted shapes, for saved weights to fill: only the number of distinct
    training pairs is counted (the CSR's length); no matrix is built, no neighbour searched."""
    rows = data.n_users + 2  # indptr: one more than the U+1 rows
    pairs = len(
        np.unique(data.train_users.astype(np.int64) * (data.n_items + 1) + data.train_items)
    )
    k = neighbour_count(data.n_users + 1, config.k)
    return UserKNN(
        torch.zeros(data.n_users + 1, k, dtype=torch.int64),
        torch.zeros(data.n_users + 1, k),
        torch.zeros(rows, dtype=torch.int64),
        torch.zeros(pairs, dtype=torch.int64),
        data.n_items,
    )


def _model(matrix: sp.csr_matrix, neighbours, sims, n_items: int) -> UserKNN:
    indptr = torch.from_numpy(matrix.indptr.astype(np.int64))
    indices = torch.from_numpy(matrix.indices.astype(np.int64))
    return UserKNN(neighbours, sims, indptr, indices, n_items)


SPEC = ModelSpec(
    name="userknn",
    kind=CLOSED_FORM,
    config=Config,
    restore=restore,
    export=SCORE_GRAPH,
    fit=fit,
    uses_history=False,
    search_space=SEARCH_SPACE,
)
