"""SASRec: causal self-attention over the user's recent items (Kang & McAuley, 2018).

Pre-LN transformer blocks written with plain tensor ops (linear, matmul, masked softmax) so the
graph exports with the TorchScript ONNX exporter, and input and output item embeddings are
shared. Histories are left-padded with 0; the attention mask lets every query see itself, so a
padded position never has all of its keys masked and nothing turns into NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from recsys_models.data import FeatureData, eval_loader, shuffled_batches
from recsys_models.lightning_base import RankingModule

LOSSES = ("ce", "bce")


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
    # Earlier items every training target reads at least (training_windows); 0: disjoint windows
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


def training_windows(
    users: np.ndarray, items: np.ndarray, n_users: int, max_len: int, min_context: int = 0
) -> np.ndarray:
    """[W, 2, max_len] int64 (inputs, targets) windows of the users' training sequences.

    Rows must be sorted by user then time. Every transition (item t -> item t+1) is a target in
    exactly one window; elsewhere the target is 0 (no loss there). Windows are cut from the end
    of each user's sequence backwards, so the most recent one is always there, and they overlap
    so that each target reads at least `min_context` earlier items, or its whole history when
    that is shorter: without the overlap a target at the start of a window sees almost nothing
    of a long history, which is where SASRec's accuracy is lost. min_context=0 gives disjoint
    windows (the cheapest epoch; max_len / (max_len - min_context) times more windows else).
    The earliest window starts at the user's first item; users with one item give no window.
    """
    if not 0 <= min_context < max_len:
        raise ValueError(f"min_context must be in [0, max_len={max_len}), got {min_context}")
    stride = max_len - min_context
    counts = np.bincount(users, minlength=n_users + 1)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    transitions = np.maximum(counts - 1, 0)
    # Full windows (their inputs hold max_len real items) count their last `stride` targets;
    # one more window, anchored at the first item, counts whatever earlier targets remain.
    full = np.where(transitions > max_len, -(-(transitions - max_len) // stride), 0)
    per_user = np.where(transitions > 0, full + 1, 0)
    owner = np.repeat(np.arange(n_users + 1), per_user)
    step = np.arange(len(owner)) - (np.cumsum(per_user) - per_user)[owner]
    first, last = starts[owner], starts[owner] + transitions[owner]  # item indices
    anchored = step == full[owner]
    end = np.where(anchored, first + np.minimum(transitions[owner], max_len), last - step * stride)
    low = np.where(anchored, first, end - stride)  # targets counted: index in (low, high]
    high = np.where(anchored, last - full[owner] * stride, end)
    index = end[:, None] + np.arange(-max_len, 1)  # [W, max_len + 1] item indices
    items = np.asarray(items, dtype=np.int64)
    window = np.where(index >= first[:, None], items[np.maximum(index, 0)], 0)
    target_index = index[:, 1:]
    counted = (target_index > low[:, None]) & (target_index <= high[:, None])
    return np.stack([window[:, :-1], np.where(counted, window[:, 1:], 0)], axis=1)


class SASRecData(L.LightningDataModule):
    def __init__(self, data: FeatureData, config: Config, seed: int):
        super().__init__()
        self.data, self.config, self.seed = data, config, seed
        windows = training_windows(
            data.train_users,
            data.train_items,
            data.n_users,
            data.max_seq_len,
            config.min_context,
        )
        self.windows = torch.from_numpy(windows)
        self.generator = torch.Generator().manual_seed(seed)

    def train_dataloader(self) -> DataLoader:
        return shuffled_batches(self.windows, self.config.batch_size, self.generator)

    def val_dataloader(self) -> DataLoader:
        return eval_loader(self.data, "val", self.config.eval_batch_size)


class SASRecModule(RankingModule):
    def __init__(self, model: SASRec, n_items: int, config: Config):
        super().__init__()
        if config.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {config.loss!r}")
        self.model, self.n_items, self.config = model, n_items, config

    def loss(self, windows: torch.Tensor) -> torch.Tensor:
        inputs, targets = windows[:, 0], windows[:, 1]  # training_windows: 0 = no target
        mask = targets > 0
        hidden = self.model(inputs)[mask]  # [N, H]: only the positions that have a target
        targets = targets[mask]
        emb = self.model.item_emb.weight
        if self.config.loss == "ce":
            # Softmax over the real items only: column 0 (padding) never competes.
            return F.cross_entropy(hidden @ emb[1:].T, targets - 1)
        negatives = torch.randint(1, self.n_items + 1, targets.shape, device=targets.device)
        pos = (hidden * emb[targets]).sum(-1)
        neg = (hidden * emb[negatives]).sum(-1)
        return F.binary_cross_entropy_with_logits(
            torch.cat([pos, neg]), torch.cat([torch.ones_like(pos), torch.zeros_like(neg)])
        )

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            self.parameters(),
            lr=self.config.lr,
            weight_decay=self.config.weight_decay,
            betas=(0.9, 0.98),
        )


def build(data: FeatureData, config: Config, seed: int) -> tuple[SASRecModule, SASRecData]:
    """The LightningModule (its `.model` is the SASRec) and the DataModule of `data`."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)  # the same seed gives the same initial weights
        model = SASRec(
            data.n_items,
            data.max_seq_len,
            config.hidden,
            config.blocks,
            config.heads,
            config.ffn_mult,
            config.dropout,
        )
    return SASRecModule(model, data.n_items, config), SASRecData(data, config, seed)
