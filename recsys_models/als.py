"""Implicit-feedback ALS (Hu, Koren & Volinsky, 2008), written in torch.

Every training interaction is a preference p_ui = 1 with confidence c_ui = 1 + alpha (the
rest: p = 0, c = 1). Alternating exact least squares: with the item factors Y fixed, each user's
factors solve (Y^T Y + alpha Y_u^T Y_u + reg I) x_u = (1 + alpha) Y_u^T 1, where Y_u are the rows
of the items u touched; then the same for items with the users fixed. Y^T Y is shared and Y_u^T Y_u
costs only the user's own items, so a block of users is one gather, one batched matmul and one
batched Cholesky solve: no Python loop per user, work proportional to the interactions.
Scored like BPR-MF: <x_u, y_i>, so a user without training interactions scores all zero.

The same model the `implicit` library fits (its conjugate-gradient solver approximates these
exact solves); bench/bench_classic.py compares the two on the same matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from recsys_models.data import FeatureData
from recsys_models.itemknn import interaction_matrix
from recsys_models.spec import CLOSED_FORM, SCORE_GRAPH, Choice, ModelSpec, Range

# Gathered factor rows per block (rows x longest row in the block): 2**14 x factors float32,
# 4 MiB at 64 factors: small blocks also keep the padding to each block's longest row small.
BLOCK_VALUES = 1 << 14


@dataclass(frozen=True)
class Config:
    factors: int = 64
    reg: float = 0.01  # L2 on the factors (the `implicit` library's default)
    alpha: float = 1.0  # confidence of an observed interaction: 1 + alpha
    iterations: int = 15  # alternating sweeps (users, then items)

    def __post_init__(self):
        if self.factors < 1 or self.iterations < 1:
            raise ValueError("factors and iterations must be >= 1")
        if self.reg <= 0 or self.alpha < 0:
            raise ValueError("reg must be > 0 and alpha >= 0")


# What `recsys tune` searches (tasks/tune.py); every other field keeps params.yaml's value.
SEARCH_SPACE = {
    "factors": Choice((32, 64, 128)),
    "reg": Range(1e-3, 1.0, log=True),
    "alpha": Range(0.1, 40.0, log=True),
}


class ALS(nn.Module):
    def __init__(self, user_factors: torch.Tensor, item_factors: torch.Tensor):
        super().__init__()
        self.register_buffer("user_factors", user_factors)  # [U+1, F]
        self.register_buffer("item_factors", item_factors)  # [I+1, F]

    def score(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """Every item for each user, [B, I+1]; `history` is not used (MF has no sequence)."""
        return self.user_factors[users] @ self.item_factors.T


def solve_side(
    matrix: sp.csr_matrix, fixed: torch.Tensor, reg: float, alpha: float
) -> torch.Tensor:
    """The exact weighted least-squares factors of every row of `matrix` given the other side.

    Rows are taken in order of length and cut into blocks of about BLOCK_VALUES gathered
    factor rows, so each block is padded only up to its own longest row and the work is
    proportional to the number of interactions, not rows x catalogue.
    """
    n, f = matrix.shape[0], fixed.shape[1]
    gram = fixed.T @ fixed + reg * torch.eye(f, dtype=fixed.dtype)
    padded = torch.cat([fixed, torch.zeros(1, f, dtype=fixed.dtype)])  # last row: padding
    counts = np.diff(matrix.indptr)
    order = np.argsort(counts, kind="stable")
    out = torch.zeros(n, f, dtype=fixed.dtype)
    start = 0
    while start < n:
        longest = max(int(counts[order[start]]), 1)
        stop = start + 1
        # Sorted by length, so the block's longest row is its last; grow while it fits.
        while stop < n and (stop + 1 - start) * max(int(counts[order[stop]]), 1) <= BLOCK_VALUES:
            longest = max(int(counts[order[stop]]), 1)
            stop += 1
        rows = order[start:stop]
        position = np.arange(longest)
        inside = position[None, :] < counts[rows, None]
        index = matrix.indptr[rows, None] + position[None, :]
        cols = np.where(
            inside, matrix.indices[np.minimum(index, max(matrix.nnz - 1, 0))], len(fixed)
        )
        gathered = padded[torch.from_numpy(cols)]  # [b, longest, F], padding rows are zero
        a = gram + alpha * gathered.transpose(1, 2) @ gathered  # [b, F, F]
        rhs = (1 + alpha) * gathered.sum(1, keepdim=True).transpose(1, 2)  # [b, F, 1]
        solved = torch.cholesky_solve(rhs, torch.linalg.cholesky(a))[..., 0]
        out[torch.from_numpy(rows)] = solved
        start = stop
    return out


def fit(data: FeatureData, config: Config, seed: int) -> ALS:
    """Alternating sweeps from small random item factors drawn from `seed`; float32 solves
    (reg I + Y^T Y keeps the systems well conditioned)."""
    matrix = interaction_matrix(
        data.train_users, data.train_items, (data.n_users + 1, data.n_items + 1)
    )
    transposed = matrix.T.tocsr()
    generator = torch.Generator().manual_seed(seed)
    items = 0.01 * torch.randn(data.n_items + 1, config.factors, generator=generator)
    users = torch.zeros(data.n_users + 1, config.factors)
    for _ in range(config.iterations):
        users = solve_side(matrix, items, config.reg, config.alpha)
        items = solve_side(transposed, users, config.reg, config.alpha)
    return ALS(users, items)


def restore(data: FeatureData, config: Config) -> ALS:
    """All-zero factors of the fitted shapes, for saved weights to fill without refitting."""
    return ALS(
        torch.zeros(data.n_users + 1, config.factors), torch.zeros(data.n_items + 1, config.factors)
    )


def dot_vectors(model: ALS) -> tuple[torch.Tensor, torch.Tensor]:
    """The factors themselves: score = user factors . item factors."""
    return model.user_factors, model.item_factors


SPEC = ModelSpec(
    name="als",
    kind=CLOSED_FORM,
    config=Config,
    restore=restore,
    export=SCORE_GRAPH,
    fit=fit,
    uses_history=False,
    item_vectors="item_factors",
    dot_vectors=dot_vectors,
    search_space=SEARCH_SPACE,
)
