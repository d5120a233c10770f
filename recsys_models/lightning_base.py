"""What every gradient model's LightningModule shares: one training step around its own loss,
and the full-ranking validation metrics under the names early stopping and DVCLive read.

Each model's module subclasses RankingModule, sets `self.model` (the nn.Module with `score`) and
defines `loss(batch)` and `configure_optimizers()`; nothing else about training is per model.
"""

from __future__ import annotations

import lightning as L
import torch

from recsys_models.metrics import evaluate_batch


def batch_size(batch: torch.Tensor | dict[str, torch.Tensor]) -> int:
    """Rows of a training batch: a tensor's first dimension, or the length of its targets."""
    return len(batch["target"]) if isinstance(batch, dict) else len(batch)


class RankingModule(L.LightningModule):
    def loss(self, batch) -> torch.Tensor:
        raise NotImplementedError

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=batch_size(batch))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        metrics = evaluate_batch(self.model.score, batch)
        log = {"on_epoch": True, "batch_size": len(batch["target"])}
        self.log("val_ndcg@10", metrics["ndcg@10"].mean(), prog_bar=True, **log)
        self.log("val_hr@10", metrics["hr@10"].mean(), **log)
        self.log("val_mrr", metrics["mrr"].mean(), **log)
