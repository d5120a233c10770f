"""What every gradient model's LightningModule shares: one training step around its own loss,
and the full-ranking validation metrics under the names early stopping and DVCLive read; and
TrainClock, the callback that times training for the train stage.

Each model's module subclasses RankingModule, sets `self.model` (the nn.Module with `score`) and
defines `loss(batch)` and `configure_optimizers()`; nothing else about training is per model.
"""

from __future__ import annotations

import time

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


class TrainClock(L.Callback):
    """Seconds spent in training epochs (validation included), summed over resumed runs: its
    state rides in the checkpoints, so a resumed run reports the time of all its epochs. The
    validations' share is counted apart as well (on a large data set it is a real part)."""

    def __init__(self):
        self.seconds, self.start = 0.0, None
        self.validation_seconds, self.validation_start = 0.0, None

    @property
    def state_key(self) -> str:
        return "TrainClock"

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.validation_start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Before ModelCheckpoint's hook (Lightning runs checkpoint callbacks last), so the
        # checkpoint written at the end of this epoch already counts it. The sanity check's
        # validation runs before any epoch and is not training time.
        now = time.perf_counter()
        if self.start is not None and not trainer.sanity_checking:
            self.seconds += now - self.start
            self.validation_seconds += now - self.validation_start
            self.start = None

    def state_dict(self) -> dict[str, float]:
        return {"seconds": self.seconds, "validation_seconds": self.validation_seconds}

    def load_state_dict(self, state_dict: dict[str, float]) -> None:
        self.seconds = float(state_dict["seconds"])
        self.validation_seconds = float(state_dict.get("validation_seconds", 0.0))
