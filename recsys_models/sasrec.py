"""SASRec: causal self-attention over the user's recent items (Kang & McAuley, 2018).

Pre-LN transformer blocks written with plain tensor ops (linear, matmul, masked softmax) so the
graph exports with the TorchScript ONNX exporter, and input and output item embeddings are
shared. Histories are left-padded with 0; the attention mask lets every query see itself, so a
padded position never has all of its keys masked and nothing turns into NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from recsys_models.data import FeatureData
from recsys_models.dropout import Dropout
from recsys_models.item_attributes import ItemAttributes, attribute_ids, item_vectors
from recsys_models.item_table import CachedItemTable
from recsys_models.sequence_training import (
    NextItemModule,
    WindowData,
    check_loss_fields,
    next_item_training,
)
from recsys_models.spec import GRADIENT, HISTORY_GRAPH, Choice, ModelSpec, Range

BLOCKS = ("transformer", "ligr")


@dataclass(frozen=True)
class Config:
    hidden: int = 64
    blocks: int = 2
    heads: int = 1
    ffn_mult: int = 1  # feed-forward width = ffn_mult * hidden; 1 as in the paper, cheap on CPU
    dropout: float = 0.3
    # "ce": softmax over the catalogue; "bce": one sampled negative (the paper); "sampled":
    # softmax over `negatives` shared negatives, logQ-corrected; "gbce": gSASRec's calibrated BCE;
    # "auto": "ce" up to full_softmax_max_items items, "sampled" above (sequence_training)
    loss: str = "auto"
    negatives: int = 2048  # per batch, for "sampled" and "gbce"
    negative_sampler: str = "mixed"  # "sampled" only: uniform|in_batch|mixed
    gbce_t: float = 0.75  # gBCE calibration: 0 plain BCE, 1 fully calibrated
    full_softmax_max_items: int = 10_000  # "auto": the largest catalogue trained with "ce"
    # "transformer": pre-LN blocks; "ligr": eSASRec's LiGR layers (gated residuals, SwiGLU)
    block: str = "transformer"
    # Add the mean of the item's attribute embeddings (categories, year bucket) to its id's
    # (recsys_models/item_attributes.py), where the features have attributes
    item_features: bool = True
    lr: float = 3e-3
    weight_decay: float = 0.0
    batch_size: int = 128
    eval_batch_size: int = 256
    # Earlier items every training target reads at least (sequence_training.training_windows);
    # 0: disjoint windows
    min_context: int = 0

    def __post_init__(self):
        check_loss_fields(self)
        if self.block not in BLOCKS:
            raise ValueError(f"block must be one of {BLOCKS}, got {self.block!r}")


# What `recsys tune` searches (tasks/tune.py); every other field keeps params.yaml's value.
SEARCH_SPACE = {
    "hidden": Choice((32, 64, 128)),
    "blocks": Range(1, 3, integer=True),
    "dropout": Range(0.0, 0.5),
    "lr": Range(3e-4, 1e-2, log=True),
    "weight_decay": Choice((0.0, 1e-5, 1e-4)),
}


class _Block(nn.Module):
    """Pre-LN: attention and feed-forward each read a normalised copy and add to the residual."""

    def __init__(self, hidden: int, heads: int, ffn_mult: int, dropout: float):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden ({hidden}) must be divisible by heads ({heads})")
        self.heads, self.head_dim = heads, hidden // heads
        self.norm1 = nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden)
        self.ffn = nn.Sequential(
            nn.Linear(hidden, ffn_mult * hidden),
            nn.GELU(),
            Dropout(dropout),
            nn.Linear(ffn_mult * hidden, hidden),
        )
        self.drop = Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """x: [B, L, H]; allowed: bool [B, 1, L, L], True where query i may read key j."""
        x = x + self.drop(self.attend(self.norm1(x), allowed))
        return x + self.drop(self.ffn(self.norm2(x)))

    def attend(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """Multi-head causal self-attention of the (normalised) x, projected back: [B, L, H]."""
        b, n, h = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        # [B, heads, L, H / heads]
        q, k, v = (t.reshape(b, n, self.heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        logits = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
        weights = self.drop(torch.softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1))
        return self.out((weights @ v).transpose(1, 2).reshape(b, n, h))


class _SwiGLU(nn.Module):
    """Feed-forward w2(silu(w1 x) * w3 x) (Shazeer, 2020): the gated form LiGR layers use."""

    def __init__(self, hidden: int, width: int, dropout: float):
        super().__init__()
        self.w1, self.w3 = nn.Linear(hidden, width), nn.Linear(hidden, width)
        self.w2 = nn.Linear(width, hidden)
        self.drop = Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(self.drop(nn.functional.silu(self.w1(x)) * self.w3(x)))


class _LiGRBlock(_Block):
    """eSASRec's layer (LiGR, Govind et al., 2025): pre-norm, and each sub-layer's output is
    scaled by a learned sigmoid gate of its normalised input before it joins the residual, so a
    block can pass the residual through unchanged where it does not help; SwiGLU feed-forward.
    The attention is _Block's (the same mask, so padding stays NaN-free)."""

    def __init__(self, hidden: int, heads: int, ffn_mult: int, dropout: float):
        super().__init__(hidden, heads, ffn_mult, dropout)
        self.ffn = _SwiGLU(hidden, ffn_mult * hidden, dropout)
        self.gate1, self.gate2 = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """x: [B, L, H]; allowed: bool [B, 1, L, L], True where query i may read key j."""
        normed = self.norm1(x)
        x = x + self.drop(torch.sigmoid(self.gate1(normed)) * self.attend(normed, allowed))
        normed = self.norm2(x)
        return x + self.drop(torch.sigmoid(self.gate2(normed)) * self.ffn(normed))


class SASRec(CachedItemTable):
    def __init__(
        self,
        n_items: int,
        max_len: int,
        hidden: int = 64,
        blocks: int = 2,
        heads: int = 1,
        ffn_mult: int = 1,
        dropout: float = 0.3,
        block: str = "transformer",
        attributes: np.ndarray | None = None,
    ):
        """attributes: item_attributes.attribute_ids of the catalogue, or None (ids alone)."""
        super().__init__()
        if block not in BLOCKS:
            raise ValueError(f"block must be one of {BLOCKS}, got {block!r}")
        self.max_len = max_len
        self.item_emb = nn.Embedding(n_items + 1, hidden, padding_idx=0)
        self.item_attributes = None if attributes is None else ItemAttributes(attributes, hidden)
        self.pos_emb = nn.Embedding(max_len, hidden)
        self.drop = Dropout(dropout)
        kind = _LiGRBlock if block == "ligr" else _Block
        self.blocks = nn.ModuleList(kind(hidden, heads, ffn_mult, dropout) for _ in range(blocks))
        self.norm = nn.LayerNorm(hidden)
        self.register_buffer(
            "causal", torch.ones(max_len, max_len, dtype=torch.bool).tril(), persistent=False
        )
        nn.init.normal_(self.item_emb.weight, std=hidden**-0.5)
        nn.init.normal_(self.pos_emb.weight, std=hidden**-0.5)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        """Hidden state at every position, [B, L, H]; padded positions are exactly zero."""
        n = history.shape[1]
        real = (history > 0).unsqueeze(-1)  # [B, L, 1]
        x = self.item_embeddings(history) * math.sqrt(self.item_emb.embedding_dim)
        # Positions are counted from the right, so the newest item always has the last one.
        x = self.drop(x + self.pos_emb.weight[self.max_len - n :])
        x = x * real
        causal = self.causal[:n, :n]
        # Query i reads key j <= i if j is a real item; a padded query reads every key up to
        # itself instead, so no row has all of its keys masked (a softmax over nothing is NaN).
        # Its output is zeroed afterwards, so what it read never matters.
        allowed = (causal & (real.transpose(1, 2) | ~real)).unsqueeze(1)
        for block in self.blocks:
            x = block(x, allowed) * real
        return self.norm(x) * real

    def score(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """Scores of every item (column 0 is padding) after the last position, [B, I+1]."""
        return self(history)[:, -1] @ self.item_table().T

    def item_embeddings(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """The vectors of `items` (None: the catalogue, [I+1, H]) that input and output share."""
        return item_vectors(self.item_emb, self.item_attributes, items)


def restore(data: FeatureData, config: Config) -> SASRec:
    """The bare SASRec for `data`'s catalogue and max_seq_len, untrained: the module that saved
    weights load into, and the one build() initialises."""
    return SASRec(
        data.n_items,
        data.max_seq_len,
        config.hidden,
        config.blocks,
        config.heads,
        config.ffn_mult,
        config.dropout,
        config.block,
        attribute_ids(data.item_genres, data.item_year_bucket) if config.item_features else None,
    )


def build(data: FeatureData, config: Config, seed: int) -> tuple[NextItemModule, WindowData]:
    """The LightningModule (its `.model` is the SASRec) and the DataModule of `data`."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)  # the same seed gives the same initial weights
        model = restore(data, config)
    return next_item_training(model, data, config, seed)


SPEC = ModelSpec(
    name="sasrec",
    kind=GRADIENT,
    config=Config,
    restore=restore,
    export=HISTORY_GRAPH,
    build=build,
    search_space=SEARCH_SPACE,
)
