"""Biased matrix factorisation on explicit ratings (Koren, Bell & Volinsky, 2009).

r_hat(u, i) = mu + b_u + b_i + <p_u, q_i>, trained on squared error with L2 on the rows a batch
uses (the regularised SGD objective of the Netflix-prize models and scikit-surprise's SVD), and
evaluated by RMSE. For the ranking protocol every item is scored by its predicted rating, which
is not what rating models are made for: a film everybody who saw it loved outranks the film the
user will actually watch next, and the benchmark shows the price.

It needs FeatureData.train_ratings; a source without ratings is refused at build time.
"""

from __future__ import annotations

from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from recsys_models.data import FeatureData, eval_loader, shuffled_batches
from recsys_models.lightning_base import RankingModule
from recsys_models.spec import GRADIENT, RATINGS, SCORE_GRAPH, ModelSpec


@dataclass(frozen=True)
class Config:
    dim: int = 32
    lr: float = 5e-2
    l2: float = 0.15  # on the factors and biases a batch uses, per example
    batch_size: int = 16384  # large batches: the embeddings' backward dominates a step
    eval_batch_size: int = 512

    def __post_init__(self):
        if self.dim < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError("dim, batch_size and eval_batch_size must be >= 1")
        if self.lr <= 0 or self.l2 < 0:
            raise ValueError("lr must be > 0 and l2 >= 0")


class RatingMF(nn.Module):
    def __init__(self, n_users: int, n_items: int, dim: int, global_mean: float):
        super().__init__()
        self.user_emb = nn.Embedding(n_users + 1, dim)
        self.item_emb = nn.Embedding(n_items + 1, dim)
        self.user_bias = nn.Embedding(n_users + 1, 1)
        self.item_bias = nn.Embedding(n_items + 1, 1)
        self.register_buffer("global_mean", torch.tensor(float(global_mean)))
        for emb in (self.user_emb, self.item_emb):
            nn.init.normal_(emb.weight, std=0.1)
        for bias in (self.user_bias, self.item_bias):
            nn.init.zeros_(bias.weight)

    def predict(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Predicted rating of users[b] for items[b], [B]."""
        return self.predict_and_norm(users, items)[0]

    def predict_and_norm(
        self, users: torch.Tensor, items: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(predictions [B], squared L2 norm of the rows each prediction used [B]): one gather
        per table, since the embeddings' backward dominates a step's time."""
        p, q = self.user_emb(users), self.item_emb(items)
        bu, bi = self.user_bias(users)[:, 0], self.item_bias(items)[:, 0]
        predicted = self.global_mean + bu + bi + (p * q).sum(-1)
        norm = p.pow(2).sum(-1) + q.pow(2).sum(-1) + bu.pow(2) + bi.pow(2)
        return predicted, norm

    def score(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """Predicted rating of every item for each user, [B, I+1]; `history` is not used."""
        dots = self.user_emb(users) @ self.item_emb.weight.T
        return self.global_mean + self.user_bias(users) + self.item_bias.weight[:, 0] + dots


def rating_rows(users: np.ndarray, items: np.ndarray, ratings: np.ndarray) -> torch.Tensor:
    """[N, 3] float64 (user, item, rating): one tensor, so batches are one gather; float64
    holds every index below 2**53 exactly."""
    return torch.from_numpy(np.stack([users, items, ratings], axis=1).astype(np.float64))


def rmse(model: RatingMF, rows: torch.Tensor) -> float:
    """Root mean squared error of the model on (user, item, rating) rows."""
    with torch.no_grad():
        predicted = model.predict(rows[:, 0].long(), rows[:, 1].long())
        return float(F.mse_loss(predicted, rows[:, 2].to(predicted.dtype)).sqrt())


class RatingData(L.LightningDataModule):
    """The training ratings, reshuffled every epoch; validation is the ranking protocol, so the
    train stage's early stopping and checkpoints work as for every other model."""

    def __init__(self, data: FeatureData, config: Config, seed: int):
        super().__init__()
        self.data, self.config = data, config
        self.rows = rating_rows(data.train_users, data.train_items, data.train_ratings)
        self.generator = torch.Generator().manual_seed(seed)

    def train_dataloader(self) -> DataLoader:
        return shuffled_batches(self.rows, self.config.batch_size, self.generator)

    def val_dataloader(self) -> DataLoader:
        return eval_loader(self.data, "val", self.config.eval_batch_size)


class RatingModule(RankingModule):
    def __init__(self, model: RatingMF, config: Config):
        super().__init__()
        self.model, self.config = model, config

    def loss(self, rows: torch.Tensor) -> torch.Tensor:
        users, items = rows[:, 0].long(), rows[:, 1].long()
        predicted, norm = self.model.predict_and_norm(users, items)
        error = F.mse_loss(predicted, rows[:, 2].to(predicted.dtype))
        return error + self.config.l2 * norm.mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.model.parameters(), lr=self.config.lr, fused=True)


def restore(data: FeatureData, config: Config) -> RatingMF:
    """The bare RatingMF for `data`'s users and items, untrained (global mean 0 until the
    weights load): restoring needs no ratings, only the catalogue sizes."""
    return RatingMF(data.n_users, data.n_items, config.dim, 0.0)


def build(data: FeatureData, config: Config, seed: int) -> tuple[RatingModule, RatingData]:
    """The LightningModule (its `.model` is the RatingMF) and the DataModule of `data`."""
    if data.train_ratings is None:
        raise ValueError(
            "rating_mf needs explicit ratings, but the training split has none "
            "(no rating column in loo/train.parquet, or some rows lack one)"
        )
    if len(data.train_ratings) != len(data.train_users):
        raise ValueError("train_ratings must have one rating per training row")
    with torch.random.fork_rng():
        torch.manual_seed(seed)  # the same seed gives the same initial weights
        model = restore(data, config)
    # The mean is a statistic of the training ratings, not a draw: set outside the seeded fork.
    mean = float(np.mean(data.train_ratings)) if len(data.train_ratings) else 0.0
    model.global_mean.fill_(mean)
    return RatingModule(model, config), RatingData(data, config, seed)


SPEC = ModelSpec(
    name="rating_mf",
    kind=GRADIENT,
    config=Config,
    restore=restore,
    export=SCORE_GRAPH,
    build=build,
    needs=frozenset({RATINGS}),
    uses_history=False,
)
