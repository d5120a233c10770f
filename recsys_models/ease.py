"""EASE (Steck, 2019): a linear item-to-item model with a closed-form solution.

B = argmin ||X - X B||^2 + lambda ||B||^2 subject to diag(B) = 0, which is
B = I - P diag(1 / diag(P)) with P = (X^T X + lambda I)^-1, i.e. B_ij = -P_ij / P_jj off the
diagonal. One matrix inverse of catalogue size (I x I): seconds at MovieLens scale, a dense
I^2 matrix in memory, so not for catalogues beyond ~50k items: fit estimates its peak memory
first and refuses a catalogue over train.ease.max_memory_gib.

A user's scores are their (recency-weighted) history row times B. As in item-kNN, the row is
built from `history` (newest item weight 1, the one before `decay`, ...) rather than from
per-user state, so the graph exports as a gather and a matmul and unknown users are scored from
their history; decay 1.0 gives the paper's binary row over the last max_seq_len items.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch
from torch import nn

from recsys_models.data import FeatureData
from recsys_models.itemknn import interaction_matrix
from recsys_models.spec import CLOSED_FORM, SCORE_GRAPH, ModelSpec, Range


@dataclass(frozen=True)
class Config:
    l2: float = 500.0  # lambda on the diagonal of the Gram matrix
    decay: float = 1.0  # weight of an item per step back from the newest
    max_memory_gib: float = 8.0  # fit refuses a catalogue whose dense matrices need more

    def __post_init__(self):
        if self.max_memory_gib <= 0:
            raise ValueError(f"max_memory_gib must be > 0, got {self.max_memory_gib}")
        if self.l2 <= 0:
            raise ValueError(f"l2 must be > 0, got {self.l2}")
        if not 0 < self.decay <= 1:
            raise ValueError(f"decay must be in (0, 1], got {self.decay}")


# What `recsys tune` searches (tasks/tune.py); every other field keeps params.yaml's value.
SEARCH_SPACE = {
    "l2": Range(10.0, 10_000.0, log=True),
    "decay": Range(0.1, 1.0),
}


class EASE(nn.Module):
    def __init__(self, weights: torch.Tensor, decay: float):
        super().__init__()
        self.register_buffer("weights", weights)  # B, [I+1, I+1], zero diagonal
        self.decay = decay

    def score(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """Recency-weighted sum of B's rows over the items in history, [B, I+1]."""
        length = history.shape[1]
        age = torch.arange(length - 1, -1, -1, device=history.device, dtype=self.weights.dtype)
        weight = self.decay**age * (history > 0)  # [B, L]; padding weighs nothing
        rows = torch.zeros(history.shape[0], self.weights.shape[0], device=history.device)
        rows = rows.scatter_add(1, history, weight)  # [B, I+1] history row, no [B, L, I] block
        return rows @ self.weights


# Bytes per item pair at the peak of fit: the float64 Gram matrix (inverted in place by LAPACK),
# then the float32 weights beside it; building the Gram matrix holds a float32 and a float64 copy
# for a moment, the same 12. float64 for the inverse, whose l2-regularised Gram matrix spans
# several orders of magnitude; float32 for what is kept. (numpy.linalg.inv, which works on a
# copy and solves against an identity matrix, peaked at 32 bytes per pair.)
BYTES_PER_PAIR = 8 + 4


def memory_needed(n_items: int) -> int:
    """Bytes fit() holds at its peak for n_items (+1 padding row): dense by nature."""
    return BYTES_PER_PAIR * (n_items + 1) ** 2


def check_memory(n_items: int, budget_gib: float) -> None:
    """Refuse before allocating anything when the dense matrices would not fit the budget."""
    need = memory_needed(n_items)
    if need > budget_gib * 2**30:
        raise ValueError(
            f"{n_items:,} items need {need / 2**30:.1f} GiB for EASE's dense item x item "
            f"matrices (Gram, inverse, weights), over the budget of {budget_gib:g} GiB "
            "(train.ease.max_memory_gib in params.yaml); use item-kNN for this catalogue"
        )


def closed_form(gram: np.ndarray, l2: float) -> np.ndarray:
    """B from the Gram matrix X^T X (float64 for the inverse), diagonal zero, float32."""
    gram[np.diag_indices_from(gram)] += l2
    # symmetric, so its transpose (a Fortran-ordered view) is the same matrix, which LAPACK
    # inverts in place: no copy of catalogue size
    p = scipy.linalg.inv(gram.T, overwrite_a=True, check_finite=False).T
    del gram
    p /= -np.diag(p).copy()[None, :]  # column j over -P_jj (a copy: p changes under it)
    np.fill_diagonal(p, 0.0)
    return p.astype(np.float32)


def fit(data: FeatureData, config: Config, seed: int) -> EASE:
    """B from the training interactions; `seed` is unused (nothing is random). Refuses (one
    ValueError line) when the catalogue's dense matrices exceed config.max_memory_gib."""
    check_memory(data.n_items, config.max_memory_gib)
    matrix = interaction_matrix(
        data.train_users, data.train_items, (data.n_users + 1, data.n_items + 1)
    )
    gram = (matrix.T @ matrix).toarray().astype(np.float64)
    return EASE(torch.from_numpy(closed_form(gram, config.l2)), config.decay)


def restore(data: FeatureData, config: Config) -> EASE:
    """All-zero weights of the fitted shape, for saved weights to fill: no catalogue-sized
    inverse is computed, which is the whole cost of fit()."""
    return EASE(torch.zeros(data.n_items + 1, data.n_items + 1), config.decay)


SPEC = ModelSpec(
    name="ease",
    kind=CLOSED_FORM,
    config=Config,
    restore=restore,
    export=SCORE_GRAPH,
    fit=fit,
    search_space=SEARCH_SPACE,
)
