"""Training shared by the sequence encoders (SASRec, GRU4Rec): next-item windows and the loss.

Both models map a left-padded history to a hidden state per position (forward(history) ->
[B, L, H]) and score items against their own `item_emb` table, so one windows DataModule and one
LightningModule train either; the two then differ only in the encoder, which is the comparison
the benchmark is meant to make.
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from recsys_models.data import FeatureData, eval_loader, shuffled_batches
from recsys_models.lightning_base import RankingModule

LOSSES = ("ce", "bce")


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


class WindowData(L.LightningDataModule):
    """training_windows of the features, reshuffled every epoch, and the validation batches.

    config needs min_context, batch_size and eval_batch_size (SASRec's and GRU4Rec's have them).
    """

    def __init__(self, data: FeatureData, config, seed: int):
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


class NextItemModule(RankingModule):
    """Every position of a window predicts its next item from the encoder's hidden state.

    `model` is any nn.Module with forward(history) -> [B, L, H], `item_emb` (the output item
    embeddings) and score(); config needs loss ("ce": softmax over the catalogue, "bce": one
    sampled negative per target), lr and weight_decay.
    """

    def __init__(self, model: nn.Module, n_items: int, config):
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
