"""Item-kNN: items are similar when the same users interacted with both (Sarwar et al., 2001).

Cosine similarity over the binary user-item training matrix, pruned to each item's top-k
neighbours; a user's score for item j is the sum of sim(i, j) over the items i in `history`,
the newest weighted 1, the one before `decay`, then decay**2, ... The strongest simple baseline
on MovieLens-style data, so it is the bar a neural model must clear.

Why `history` and a recency decay rather than the whole training history: the leave-one-out
target is the user's next item, and it follows the last few far more than the rest. On
ML-100K validation (NDCG@10, k=50): whole training history 0.070, the last 50 items unweighted
0.080, the last 50 with decay 0.5: 0.116. It also keeps the model free of per-user state, so a
user unknown at training time is scored from their history like anyone else.

`interaction_matrix` and `cosine_topk` work on any rows, so user-kNN can reuse them on the
transposed matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from recsys_models.data import FeatureData
from recsys_models.spec import CLOSED_FORM, NEIGHBOURS, ModelSpec, Range

# The dense similarity block cosine_topk holds at once: 2**24 float32 values, 64 MiB.
BLOCK_VALUES = 1 << 24


@dataclass(frozen=True)
class Config:
    k: int = 50  # neighbours kept per item
    shrink: float = 0.0  # added to the cosine denominator: damps pairs with little support
    decay: float = 0.5  # weight of an item per step back from the newest; 1.0: plain sum

    def __post_init__(self):
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.shrink < 0:
            raise ValueError(f"shrink must be >= 0, got {self.shrink}")
        if not 0 < self.decay <= 1:
            raise ValueError(f"decay must be in (0, 1], got {self.decay}")


# What `recsys tune` searches (tasks/tune.py); every other field keeps params.yaml's value.
SEARCH_SPACE = {
    "k": Range(10, 400, log=True, integer=True),
    "shrink": Range(0.0, 50.0),
    "decay": Range(0.1, 1.0),
}


def interaction_matrix(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    """Binary float32 CSR with sorted column indices: a repeated (row, col) pair counts once."""
    values = np.ones(len(rows), dtype=np.float32)
    matrix = sp.csr_matrix((values, (rows, cols)), shape=shape)  # sums duplicates
    matrix.data[:] = 1.0
    matrix.sort_indices()
    return matrix


def neighbour_count(n: int, k: int) -> int:
    """How many neighbours cosine_topk keeps per row among n rows: k, but at least one and
    never more than the n - 1 other rows. restore() reads the shapes from it too."""
    return max(1, min(k, n - 1))


def cosine_topk(
    vectors: sp.csr_matrix, k: int, shrink: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """The k most cosine-similar other rows of every row: (indices [n, k] int64, sims float32).

    Rows with fewer than k neighbours of positive similarity are padded with index 0 and
    similarity 0, so padding adds nothing to a score. The similarities are computed one block of
    rows at a time, so memory stays at BLOCK_VALUES floats however large the catalogue.
    """
    vectors = sp.csr_matrix(vectors, dtype=np.float32)
    n = vectors.shape[0]
    k = neighbour_count(n, k)
    norms = np.sqrt(np.asarray(vectors.multiply(vectors).sum(axis=1)).ravel())
    transposed = vectors.T.tocsr()
    indices = np.zeros((n, k), dtype=np.int64)
    sims = np.zeros((n, k), dtype=np.float32)
    block = max(1, BLOCK_VALUES // max(n, 1))
    for start in range(0, n, block):
        stop = min(n, start + block)
        dots = (vectors[start:stop] @ transposed).toarray()
        denominator = norms[start:stop, None] * norms[None, :] + shrink
        cos = np.divide(dots, denominator, out=np.zeros_like(dots), where=denominator > 0)
        cos[np.arange(stop - start), np.arange(start, stop)] = 0.0  # not its own neighbour
        top = np.argpartition(-cos, k - 1, axis=1)[:, :k]
        values = np.take_along_axis(cos, top, axis=1)
        order = np.argsort(-values, axis=1, kind="stable")
        top, values = np.take_along_axis(top, order, 1), np.take_along_axis(values, order, 1)
        keep = values > 0
        indices[start:stop] = np.where(keep, top, 0)
        sims[start:stop] = np.where(keep, values, 0.0)
    return indices, sims


class ItemKNN(nn.Module):
    def __init__(self, neighbours: torch.Tensor, sims: torch.Tensor, decay: float):
        super().__init__()
        self.register_buffer("neighbours", neighbours)  # [I+1, k] int64, row 0 all padding
        self.register_buffer("sims", sims)  # [I+1, k] float32, row 0 all zero
        self.decay = decay

    def score(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """Recency-weighted sum of sim(i, j) over the items i in history, every j: [B, I+1].

        One scatter-add of the history's neighbour lists ([B, L*k] values), never an item x
        item matrix; it exports to ONNX as ScatterElements with reduction add, which sums
        repeated indices as eager does (index_put_ exported as a ScatterND that overwrote).
        """
        batch, length = history.shape
        age = torch.arange(length - 1, -1, -1, device=history.device, dtype=self.sims.dtype)
        weight = self.decay**age * (history > 0)  # [B, L]; padding weighs nothing
        columns = self.neighbours[history].reshape(batch, -1)  # [B, L*k]
        values = (self.sims[history] * weight[..., None]).reshape(batch, -1)
        scores = torch.zeros(batch, self.neighbours.shape[0], device=history.device)
        return scores.scatter_add(1, columns, values.to(scores.dtype))


def fit(data: FeatureData, config: Config, seed: int) -> ItemKNN:
    """Similarities from the training interactions; `seed` is unused (nothing is random)."""
    matrix = interaction_matrix(
        data.train_users, data.train_items, (data.n_users + 1, data.n_items + 1)
    )
    neighbours, sims = cosine_topk(matrix.T.tocsr(), config.k, config.shrink)
    return ItemKNN(torch.from_numpy(neighbours), torch.from_numpy(sims), config.decay)


def restore(data: FeatureData, config: Config) -> ItemKNN:
    """Empty neighbour lists of the fitted shape, for saved weights to fill: no similarities are
    computed, which is the whole cost of fit()."""
    rows = data.n_items + 1
    k = neighbour_count(rows, config.k)
    neighbours = torch.zeros(rows, k, dtype=torch.int64)
    return ItemKNN(neighbours, torch.zeros(rows, k), config.decay)


SPEC = ModelSpec(
    name="itemknn",
    kind=CLOSED_FORM,
    config=Config,
    restore=restore,
    export=NEIGHBOURS,
    fit=fit,
    search_space=SEARCH_SPACE,
)
