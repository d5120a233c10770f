"""NeuMF (He et al., 2017): a GMF tower (element-wise product of user and item vectors) and an
MLP tower (over their concatenation), fused by one linear layer into a score.

Trained with the BPR pairwise loss on the same (user, positive) pairs and rejection-sampled
negatives as BPR-MF (recsys_models.bpr_mf supplies both), so the two differ only in the scoring
function: the comparison "does an MLP beat a dot product" (Rendle et al., 2020, say it does not
when the dot product is tuned) is made on equal terms.

Scoring every item for a batch of users splits the MLP's first layer into a user part and an
item part (W [u; i] = W_u u + W_i i), so the [B, I+1, hidden] block is formed by one broadcast
add instead of concatenating B x I pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from recsys_models.bpr_mf import BPRData, BPRModule
from recsys_models.data import FeatureData
from recsys_models.dropout import Dropout
from recsys_models.spec import GRADIENT, SCORE_GRAPH, Choice, ModelSpec, Range


@dataclass(frozen=True)
class Config:
    dim: int = 32  # GMF vectors and the MLP's input vectors
    hidden: int = 32  # the MLP's first layer; the second has hidden // 2
    dropout: float = 0.1
    lr: float = 2e-3
    weight_decay: float = 1e-4
    batch_size: int = 1024
    eval_batch_size: int = 256
    resample_tries: int = 5  # redraws of a negative that hits one of the user's items

    def __post_init__(self):
        if min(self.dim, self.hidden // 2, self.batch_size, self.eval_batch_size) < 1:
            raise ValueError("dim, batch_size, eval_batch_size >= 1 and hidden >= 2")
        if self.lr <= 0 or self.weight_decay < 0 or not 0 <= self.dropout < 1:
            raise ValueError("lr must be > 0, weight_decay >= 0, dropout in [0, 1)")


# What `recsys tune` searches (tasks/tune.py); every other field keeps params.yaml's value.
SEARCH_SPACE = {
    "dim": Choice((16, 32, 64)),
    "dropout": Range(0.0, 0.5),
    "lr": Range(5e-4, 1e-2, log=True),
    "weight_decay": Range(1e-6, 1e-3, log=True),
}


class NeuMF(nn.Module):
    def __init__(self, n_users: int, n_items: int, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.gmf_user = nn.Embedding(n_users + 1, dim)
        self.gmf_item = nn.Embedding(n_items + 1, dim)
        self.mlp_user = nn.Embedding(n_users + 1, dim)
        self.mlp_item = nn.Embedding(n_items + 1, dim)
        self.first_user = nn.Linear(dim, hidden)  # the first MLP layer's user half (with bias)
        self.first_item = nn.Linear(dim, hidden, bias=False)  # ... and its item half
        self.second = nn.Linear(hidden, hidden // 2)
        self.drop = Dropout(dropout)
        self.fuse = nn.Linear(dim + hidden // 2, 1)
        for emb in (self.gmf_user, self.gmf_item, self.mlp_user, self.mlp_item):
            nn.init.normal_(emb.weight, std=0.1)

    def _mlp(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.relu(self.second(self.drop(F.relu(hidden))))

    def pair_scores(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """score(users[b], items[b]) for each b, [B]."""
        gmf = self.gmf_user(users) * self.gmf_item(items)
        mlp = self._mlp(
            self.first_user(self.mlp_user(users)) + self.first_item(self.mlp_item(items))
        )
        return self.fuse(torch.cat([gmf, mlp], dim=-1))[:, 0]

    def score(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """Every item for each user, [B, I+1]; `history` is not used (no sequence)."""
        w_gmf, w_mlp = (
            self.fuse.weight[0, : self.gmf_user.embedding_dim],
            self.fuse.weight[0, self.gmf_user.embedding_dim :],
        )
        gmf = (self.gmf_user(users) * w_gmf) @ self.gmf_item.weight.T  # [B, I+1]
        user_part = self.first_user(self.mlp_user(users))  # [B, H]
        item_part = self.first_item(self.mlp_item.weight)  # [I+1, H]
        mlp = self._mlp(user_part[:, None, :] + item_part[None, :, :])  # [B, I+1, H / 2]
        return gmf + mlp @ w_mlp + self.fuse.bias


class NeuMFModule(BPRModule):
    """BPR-MF's training (pairs, negatives, logging) with NeuMF's scores and AdamW."""

    def loss(self, pairs: torch.Tensor) -> torch.Tensor:
        users, positives = pairs[:, 0], pairs[:, 1]
        negatives = self.sample_negatives(users)
        margin = self.model.pair_scores(users, positives) - self.model.pair_scores(users, negatives)
        return -F.logsigmoid(margin).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            self.model.parameters(),
            lr=self.config.lr,
            weight_decay=self.config.weight_decay,
            fused=True,
        )


def restore(data: FeatureData, config: Config) -> NeuMF:
    """The bare NeuMF for `data`'s users and items, untrained: the module that saved weights
    load into, and the one build() initialises."""
    return NeuMF(data.n_users, data.n_items, config.dim, config.hidden, config.dropout)


def build(data: FeatureData, config: Config, seed: int) -> tuple[NeuMFModule, BPRData]:
    """The LightningModule (its `.model` is the NeuMF) and the DataModule of `data`."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)  # the same seed gives the same initial weights
        model = restore(data, config)
    return NeuMFModule(model, data, config), BPRData(data, config, seed)


SPEC = ModelSpec(
    name="neumf",
    kind=GRADIENT,
    config=Config,
    restore=restore,
    export=SCORE_GRAPH,
    build=build,
    uses_history=False,
    search_space=SEARCH_SPACE,
)
