"""BPR matrix factorisation (Rendle et al., 2009): the classic learned, non-sequential baseline.

score(u, i) = <p_u, q_i> + b_i, trained so that a user's training item outscores an item drawn
uniformly from those the user never touched. The user vector knows only the training split, so
on the test split the validation item is not folded in; that is how MF is evaluated everywhere.
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
from recsys_models.spec import GRADIENT, SCORE_GRAPH, Choice, ModelSpec, Range


@dataclass(frozen=True)
class Config:
    dim: int = 64
    lr: float = 5e-3
    l2: float = 1e-2  # on the embeddings and biases a batch uses, per example
    batch_size: int = 1024
    eval_batch_size: int = 512
    resample_tries: int = 5  # redraws of a negative that hits one of the user's items

    def __post_init__(self):
        if self.dim < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError("dim, batch_size and eval_batch_size must be >= 1")
        if self.lr <= 0 or self.l2 < 0 or self.resample_tries < 0:
            raise ValueError("lr must be > 0, l2 and resample_tries >= 0")


# What `recsys tune` searches (tasks/tune.py); every other field keeps params.yaml's value.
SEARCH_SPACE = {
    "dim": Choice((32, 64, 128)),
    "lr": Range(1e-3, 3e-2, log=True),
    "l2": Range(1e-4, 1e-1, log=True),
}


class BPRMF(nn.Module):
    def __init__(self, n_users: int, n_items: int, dim: int):
        super().__init__()
        self.user_emb = nn.Embedding(n_users + 1, dim)
        self.item_emb = nn.Embedding(n_items + 1, dim)
        self.item_bias = nn.Embedding(n_items + 1, 1)
        nn.init.normal_(self.user_emb.weight, std=0.1)
        nn.init.normal_(self.item_emb.weight, std=0.1)
        nn.init.zeros_(self.item_bias.weight)

    def pair_scores(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """score(users[b], items[b]) for each b, [B]."""
        return (self.user_emb(users) * self.item_emb(items)).sum(-1) + self.item_bias(items)[:, 0]

    def score(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """Every item for each user, [B, I+1]; `history` is not used (MF has no sequence)."""
        return self.user_emb(users) @ self.item_emb.weight.T + self.item_bias.weight[:, 0]


class BPRData(L.LightningDataModule):
    """The (user, positive item) training pairs, reshuffled every epoch; negatives are drawn in
    the training step, so every epoch (every step) sees fresh ones."""

    def __init__(self, data: FeatureData, config: Config, seed: int):
        super().__init__()
        self.data, self.config = data, config
        users = torch.as_tensor(data.train_users, dtype=torch.int64)
        items = torch.as_tensor(data.train_items, dtype=torch.int64)
        self.pairs = torch.stack([users, items], dim=1)
        self.generator = torch.Generator().manual_seed(seed)

    def train_dataloader(self) -> DataLoader:
        return shuffled_batches(self.pairs, self.config.batch_size, self.generator)

    def val_dataloader(self) -> DataLoader:
        return eval_loader(self.data, "val", self.config.eval_batch_size)


def interaction_keys(users: np.ndarray, items: np.ndarray, n_items: int) -> torch.Tensor:
    """Sorted unique user * (n_items + 1) + item: membership tests by binary search."""
    keys = np.unique(np.asarray(users, np.int64) * (n_items + 1) + np.asarray(items, np.int64))
    return torch.from_numpy(keys)


class BPRModule(RankingModule):
    def __init__(self, model: BPRMF, data: FeatureData, config: Config):
        super().__init__()
        self.model, self.config, self.n_items = model, config, data.n_items
        keys = interaction_keys(data.train_users, data.train_items, data.n_items)
        # Not persistent: derived from the data, so checkpoints hold only what training learns.
        self.register_buffer("known", keys, persistent=False)

    def sample_negatives(self, users: torch.Tensor) -> torch.Tensor:
        """Items drawn uniformly from 1..I, redrawn while they hit one of the user's items."""
        negatives = torch.randint(1, self.n_items + 1, users.shape, device=users.device)
        for _ in range(self.config.resample_tries):
            keys = users * (self.n_items + 1) + negatives
            place = torch.searchsorted(self.known, keys).clamp(max=len(self.known) - 1)
            hit = self.known[place] == keys
            if not hit.any():
                break
            redraw = torch.randint(1, self.n_items + 1, users.shape, device=users.device)
            negatives = torch.where(hit, redraw, negatives)
        return negatives

    def loss(self, pairs: torch.Tensor) -> torch.Tensor:
        users, positives = pairs[:, 0], pairs[:, 1]
        negatives = self.sample_negatives(users)
        m = self.model
        margin = m.pair_scores(users, positives) - m.pair_scores(users, negatives)
        used = (
            m.user_emb(users).pow(2).sum(-1)
            + m.item_emb(positives).pow(2).sum(-1)
            + m.item_emb(negatives).pow(2).sum(-1)
            + m.item_bias(positives)[:, 0].pow(2)
            + m.item_bias(negatives)[:, 0].pow(2)
        )
        # L2 on the rows a batch touches (not Adam's weight decay, which would shrink every
        # row at every step, however rarely its item is seen).
        return -F.logsigmoid(margin).mean() + self.config.l2 * used.mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.model.parameters(), lr=self.config.lr, fused=True)


def restore(data: FeatureData, config: Config) -> BPRMF:
    """The bare BPRMF for `data`'s users and items, untrained: the module that saved weights
    load into, and the one build() initialises."""
    return BPRMF(data.n_users, data.n_items, config.dim)


def build(data: FeatureData, config: Config, seed: int) -> tuple[BPRModule, BPRData]:
    """The LightningModule (its `.model` is the BPRMF) and the DataModule of `data`."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)  # the same seed gives the same initial weights
        model = restore(data, config)
    return BPRModule(model, data, config), BPRData(data, config, seed)


def dot_vectors(model: BPRMF) -> tuple[torch.Tensor, torch.Tensor]:
    """[user, 1] . [item, bias] = score: the bias folded into one more dimension."""
    users = model.user_emb.weight
    items = torch.cat([model.item_emb.weight, model.item_bias.weight], dim=1)
    return torch.cat([users, torch.ones(len(users), 1, dtype=users.dtype)], dim=1), items


SPEC = ModelSpec(
    name="bpr_mf",
    kind=GRADIENT,
    config=Config,
    restore=restore,
    export=SCORE_GRAPH,
    build=build,
    uses_history=False,
    item_vectors="item_emb.weight",
    dot_vectors=dot_vectors,
    search_space=SEARCH_SPACE,
)
