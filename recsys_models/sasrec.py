"""SASRec: causal self-attention over the user's recent items (Kang & McAuley, 2018).

Pre-LN transformer blocks written with plain tensor ops (linear, matmul, masked softmax) so the
graph exports with the TorchScript ONNX exporter, and input and output item embeddings are
shared. Histories are left-padded with 0; the attention mask lets every query see itself, so a
padded position never has all of its keys masked and nothing turns into NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from recsys_models.data import FeatureData
from recsys_models.sequence_training import NextItemModule, WindowData
from recsys_models.spec import GRADIENT, HISTORY_GRAPH, ModelSpec


@dataclass(frozen=True)
class Config:
    hidden: int = 64
    blocks: int = 2
    heads: int = 1
    ffn_mult: int = 1  # feed-forward width = ffn_mult * hidden; 1 as in the paper, cheap on CPU
    dropout: float = 0.3
    loss: str = "ce"  # "ce": softmax over the catalogue; "bce": one sampled negative (the paper)
    lr: float = 3e-3
    weight_decay: float = 0.0
    batch_size: int = 128
    eval_batch_size: int = 256
    # Earlier items every training target reads at least (sequence_training.training_windows);
    # 0: disjoint windows
    min_context: int = 0


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
            nn.Dropout(dropout),
            nn.Linear(ffn_mult * hidden, hidden),
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """x: [B, L, H]; allowed: bool [B, 1, L, L], True where query i may read key j."""
        b, n, h = x.shape
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        # [B, heads, L, H / heads]
        q, k, v = (t.reshape(b, n, self.heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        logits = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
        weights = self.drop(torch.softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1))
        attended = (weights @ v).transpose(1, 2).reshape(b, n, h)
        x = x + self.drop(self.out(attended))
        return x + self.drop(self.ffn(self.norm2(x)))


class SASRec(nn.Module):
    def __init__(
        self,
        n_items: int,
        max_len: int,
        hidden: int = 64,
        blocks: int = 2,
        heads: int = 1,
        ffn_mult: int = 1,
        dropout: float = 0.3,
    ):
        super().__init__()
        self.max_len = max_len
        self.item_emb = nn.Embedding(n_items + 1, hidden, padding_idx=0)
        self.pos_emb = nn.Embedding(max_len, hidden)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(_Block(hidden, heads, ffn_mult, dropout) for _ in range(blocks))
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
        x = self.item_emb(history) * math.sqrt(self.item_emb.embedding_dim)
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
        return self(history)[:, -1] @ self.item_emb.weight.T


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
    )


def build(data: FeatureData, config: Config, seed: int) -> tuple[NextItemModule, WindowData]:
    """The LightningModule (its `.model` is the SASRec) and the DataModule of `data`."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)  # the same seed gives the same initial weights
        model = restore(data, config)
    return NextItemModule(model, data.n_items, config), WindowData(data, config, seed)


SPEC = ModelSpec(
    name="sasrec",
    kind=GRADIENT,
    config=Config,
    restore=restore,
    export=HISTORY_GRAPH,
    build=build,
)
