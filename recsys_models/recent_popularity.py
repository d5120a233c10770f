"""Recent popularity: the catalogue ranked by how often each item was consumed just before the
end of the training log.

Plain popularity counts the whole history, so an item that was a hit a year ago still ranks
first. On time-based splits the items people consume next are mostly the ones in fashion right
now, which makes this one of the strongest non-personalised baselines in published
comparisons: the promotion gate must face it, not only all-time popularity.

The window ends at the last training interaction and reaches back `days` days (timestamps in
seconds, as the features stage writes them) or, with `days: 0`, the last `interactions`
training rows (for sources whose time column is only an order). All-time counts break ties, so
items outside the window are still ranked rather than left in arbitrary order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from recsys_models.data import FeatureData
from recsys_models.spec import CLOSED_FORM, SCORE_VECTOR, ModelSpec

DAY_SECONDS = 86_400


@dataclass(frozen=True)
class Config:
    days: float = 14.0  # the window: the last `days` days before the end of the training log
    interactions: int = 10_000  # with days 0: the last this many training rows instead
    tie_break: float = (
        1e-3  # times normalised all-time counts: orders items with equal recent counts
    )

    def __post_init__(self):
        if self.days < 0 or self.interactions < 1:
            raise ValueError("days must be >= 0 and interactions >= 1")
        if not 0 <= self.tie_break < 1:
            raise ValueError("tie_break must be in [0, 1)")


class RecentPopularity(nn.Module):
    def __init__(self, scores: torch.Tensor):
        super().__init__()
        # A buffer, so the scores travel in the state_dict like any other model's weights.
        self.register_buffer("scores", scores.float())

    def score(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """The same scores for every user, [B, I+1]."""
        return self.scores.expand(len(users), -1)


def window_rows(times: np.ndarray, config: Config) -> np.ndarray:
    """Indices of the training rows inside the recency window."""
    if config.days > 0:
        start = times.max() - config.days * DAY_SECONDS
        return np.flatnonzero(times > start)
    order = np.argsort(times, kind="stable")  # ties keep the features' row order
    return order[-config.interactions :]


def fit(data: FeatureData, config: Config, seed: int) -> RecentPopularity:
    """Counts inside the window plus the tie-break; training rows only, never the targets."""
    if data.train_times is None or len(data.train_times) == 0:
        raise ValueError("recent popularity needs the training rows' timestamps")
    rows = window_rows(data.train_times, config)
    recent = np.bincount(data.train_items[rows], minlength=data.n_items + 1).astype(np.float64)
    overall = np.asarray(data.item_popularity, dtype=np.float64)
    scores = recent + config.tie_break * overall / max(overall.max(), 1.0)
    scores[0] = 0.0
    return RecentPopularity(torch.as_tensor(scores, dtype=torch.float32))


def restore(data: FeatureData, config: Config) -> RecentPopularity:
    """All-zero scores of the catalogue's size, for saved weights to fill."""
    return RecentPopularity(torch.zeros(data.n_items + 1))


SPEC = ModelSpec(
    name="recent_popularity",
    kind=CLOSED_FORM,
    config=Config,
    restore=restore,
    export=SCORE_VECTOR,
    fit=fit,
)
