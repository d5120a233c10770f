"""The train stage: data/features -> models/<name>/ for one model of the registry.

The model store (tasks/model_store.py) says what a model folder holds. weights.pt, config.json
and metrics.json are each written atomically and only at the end, in that order, so an
interrupted run leaves the previous complete set in place; config.json names the weights' hash,
so a mismatched pair is detectable. checkpoints/ is written while training and kept: a rerun
with the same model config, seed, precision, features and model code (recsys_models/) resumes
from last.ckpt (raising train.max_epochs continues training); anything else starts the folder
afresh.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning
import numpy as np
import torch
import torch.distributed as dist
from dvclive import Live
from dvclive.lightning import DVCLiveLogger
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, RichProgressBar

import recsys_models
from recsys_models.data import FeatureData, eval_loader
from recsys_models.lightning_base import TrainClock
from recsys_models.metrics import evaluate
from recsys_models.spec import (
    CLOSED_FORM,
    ITEM_FEATURES,
    NEED_TEXT,
    RATINGS,
    USER_FEATURES,
    ModelSpec,
)
from tasks import model_store
from tasks.errors import RecsysError
from tasks.feature_store import load_features, manifest_sha256
from tasks.io import write_json
from tasks.params import Params, TrainParams

MONITOR = "val_ndcg@10"
RUN_FILE = "run.json"
# Where the data a model requires comes from, for the refusal line.
NEED_HINT = {
    ITEM_FEATURES: "give an item metadata file in params.yaml ingest.items",
    USER_FEATURES: "give a user metadata file in params.yaml ingest.users",
}
METRIC_KEYS = ("ndcg@5", "ndcg@10", "ndcg@20", "hr@5", "hr@10", "hr@20", "mrr", "users")


class Unusable(RecsysError):
    """The features lack data the model cannot do without (ModelSpec.required)."""


def train(
    model: str,
    features_dir: Path,
    out_dir: Path,
    params: Params,
    protocol: str = "loo",
    skip_unusable: bool = False,
) -> dict[str, Any]:
    """Train (or fit) `model` on the features, write models/<name>/, return its val metrics.

    protocol "temporal" trains on the global temporal split instead (tasks/feature_store.py);
    its models go to models/<name>/temporal/ so the evaluation can score both protocols.
    skip_unusable: where the features lack data the model requires, leave a placeholder that
    says why (model_store.save_skipped) instead of failing: how `dvc repro` runs every
    registered model on data that has no item metadata.
    """
    features_dir, out_dir = Path(features_dir), Path(out_dir)
    spec = model_store.spec(model)
    config = model_store.model_config(model, params.train.section(model), f"train.{model}")
    data = validation_sample(
        load_features(features_dir, protocol), params.train.validation_users, params.seed
    )
    try:
        missing = check_needs(spec, data)
    except Unusable as exc:
        if not skip_unusable:
            raise
        model_store.save_skipped(out_dir, str(exc), manifest_sha256(features_dir))
        print(f"skipped: {exc}")
        return {"skipped": str(exc)}
    manifest_sha = manifest_sha256(features_dir)
    lightning.seed_everything(params.seed, workers=True, verbose=False)
    settings = trainer_settings(params)
    identity = _run_identity(config, settings, manifest_sha) | {"protocol": protocol}
    if spec.kind == CLOSED_FORM:
        net, run = _fit_closed_form(spec, data, config, params, out_dir, identity)
    else:
        net, run = _fit_gradient(spec, data, config, params, out_dir, identity)
    if run.get("worker"):  # a data-parallel worker: rank 0 evaluates and writes
        return {}

    metrics = _evaluate(net, data, params.train.eval_batch_size, settings["accelerator"])
    metrics = {key: metrics[key] for key in METRIC_KEYS} | run
    if missing:
        metrics["missing_data"] = missing
    if run["epochs"] == 0:
        _log_single_point(out_dir / "dvclive", metrics)
    record = {
        "model": model,
        "config": dataclasses.asdict(config),
        "trainer": settings,
        "data": {
            "features_dir": str(features_dir),
            "protocol": protocol,
            "manifest_sha256": manifest_sha,
            "n_users": data.n_users,
            "n_items": data.n_items,
            "max_seq_len": data.max_seq_len,
        },
    }
    model_store.save_model(net, out_dir, record, metrics)
    return metrics


def check_needs(spec: ModelSpec, data: FeatureData) -> list[str]:
    """Refuse, in one line, a model that cannot train on these features (rating models
    without ratings, content-based without item metadata); return what it will miss where it
    can train without it, so the loss of quality is said and recorded, never silent."""
    present = {
        RATINGS: data.train_ratings is not None,
        ITEM_FEATURES: bool(
            np.asarray(data.item_genres).any() or np.asarray(data.item_year_bucket).any()
        ),
        USER_FEATURES: data.user_features is not None,
    }
    for need in sorted(spec.required()):
        if not present[need]:
            raise Unusable(
                f"model {spec.name} needs {NEED_TEXT[need]}; the features have none"
                + (f" ({NEED_HINT[need]})" if need in NEED_HINT else "")
            )
    missing = [NEED_TEXT[need] for need in sorted(spec.needs) if not present[need]]
    for what in missing:
        print(f"warning: model {spec.name}: the features have no {what}; it ranks without them")
    return missing


def validation_sample(data: FeatureData, users: int, seed: int) -> FeatureData:
    """`data` with validation targets for `users` users only, a sample drawn with `seed` (the
    same users every epoch and every run), or unchanged when users is 0 or covers them all.

    On a large data set the full-ranking validation of every user is a real part of each epoch;
    early stopping needs a ranking figure, not all of it. Only the validation split changes:
    training reads train_* alone, and the test split stays as it was.
    """
    has_target = np.flatnonzero(data.val_target > 0)
    if users == 0 or len(has_target) <= users:
        return data
    keep = np.random.default_rng(seed).choice(has_target, size=users, replace=False)
    target = np.zeros_like(data.val_target)
    target[keep] = data.val_target[keep]
    # The test split's seen items include the validation targets: fixed before they go.
    return dataclasses.replace(data, val_target=target, test_seen=data.seen("test"))


def trainer_settings(params: Params) -> dict[str, Any]:
    t = params.train
    return {
        "seed": params.seed,
        "max_epochs": t.max_epochs,
        "patience": t.patience,
        "eval_batch_size": t.eval_batch_size,
        "validation_users": t.validation_users,
        "accelerator": t.accelerator,
        "precision": resolve_precision(t.precision, t.accelerator),
    }


def resolve_precision(precision: str, accelerator: str) -> str:
    """ "auto": bf16 mixed precision where a GPU will be used, full fp32 on CPU."""
    if precision != "auto":
        return precision
    return "bf16-mixed" if _gpu(accelerator) else "32-true"


def _gpu(accelerator: str) -> bool:
    return accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


# --- fitting ----------------------------------------------------------------------------------


def _fit_closed_form(spec: ModelSpec, data, config, params: Params, out_dir: Path, identity):
    _reset_checkpoints(out_dir / "checkpoints", identity)  # nothing to resume but run.json
    start = time.perf_counter()
    try:
        net = spec.fit(data, config, params.seed)
    except ValueError as exc:  # data the model cannot use (or too large for it)
        raise RecsysError(f"model {spec.name}: {exc}") from exc
    seconds = time.perf_counter() - start
    return net, {"epochs": 0, "best_epoch": 0, "train_seconds": round(seconds, 3)}


def _fit_gradient(spec: ModelSpec, data, config, params: Params, out_dir: Path, identity):
    """Lightning training with early stopping on val NDCG@10, resumable from last.ckpt; the
    best epoch's weights are the model."""
    ckpt_dir = out_dir / "checkpoints"
    worker = _launched_worker()
    if worker:  # rank 0 already decided: never reset the folder it is writing into
        last = ckpt_dir / "last.ckpt" if (ckpt_dir / "last.ckpt").is_file() else None
    else:
        last = _resumable(ckpt_dir, identity)
    try:
        lit, datamodule = spec.build(data, config, params.seed)
    except ValueError as exc:  # data the model cannot use
        raise RecsysError(f"model {spec.name}: {exc}") from exc
    with quiet_lightning():
        trainer, best_checkpoint = _trainer(params, out_dir, spec.name, resume=last is not None)
        if last is None or not _finished(last, params.train):
            # run.json is always there, and on a resume so are the checkpoints: expected.
            warnings.filterwarnings("ignore", message="Checkpoint directory .* not empty")
            trainer.fit(lit, datamodule=datamodule, ckpt_path=last, weights_only=True)
    parallel = {}
    if trainer.world_size > 1:
        parallel = {"world_size": trainer.world_size, "ranks_agree": _ranks_agree(lit)}
        if not parallel["ranks_agree"]:
            raise RecsysError(f"{out_dir}: data-parallel processes ended with different weights")
    if worker:
        return None, {"worker": True}
    final, best = _final_and_best(ckpt_dir, best_checkpoint.state_key)
    lit.load_state_dict(best["state_dict"])
    net = lit.model.to(torch.device("cpu"))
    clock = _callback_state(final, "TrainClock")
    return net, {
        "epochs": int(final["epoch"]) + 1,
        "best_epoch": int(best["epoch"]) + 1,
        "train_seconds": round(clock.get("seconds", 0.0), 3),
        "validation_seconds": round(clock.get("validation_seconds", 0.0), 3),
    } | ({"data_parallel": parallel} if parallel else {})


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Lightning's informational lines (GPU/TPU availability, tips advertising its cloud
    products, "`Trainer.fit` stopped") and third-party deprecation warnings hidden while a model
    trains: they say nothing a user of this project can act on and bury the epoch lines.
    Lightning's own warnings about the run (PossibleUserWarning and others) still show."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
                warnings.filterwarnings("ignore", category=category)
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


class EpochLines(lightning.Callback):
    """One line per epoch for logs (stderr is not a terminal, where a live bar would only show
    its final state): the epoch, the training loss, validation NDCG@10 and the best so far, the
    epoch's time and the time left at most (to train.max_epochs; early stopping may end sooner).
    """

    def __init__(self, name: str, stream: Any = None):
        self.name, self.stream = name, stream
        self.start, self.seconds, self.epochs = 0.0, 0.0, 0
        self.best: float | None = None

    def on_train_epoch_start(self, trainer: lightning.Trainer, pl_module: Any) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer: lightning.Trainer, pl_module: Any) -> None:
        if trainer.sanity_checking or trainer.global_rank != 0:
            return
        took = time.perf_counter() - self.start
        self.seconds, self.epochs = self.seconds + took, self.epochs + 1
        epoch, total = trainer.current_epoch + 1, trainer.max_epochs
        found = trainer.callback_metrics
        parts = [f"{self.name} epoch {epoch}/{total}"]
        if "train_loss" in found:
            parts.append(f"train loss {float(found['train_loss']):.4f}")
        if MONITOR in found:
            value = float(found[MONITOR])
            self.best = value if self.best is None else max(self.best, value)
            parts.append(f"val NDCG@10 {value:.4f} (best {self.best:.4f})")
        left = (total - epoch) * self.seconds / self.epochs
        parts.append(f"{took:.1f} s/epoch, at most {_duration(left)} left")
        print(", ".join(parts), file=self.stream or sys.stderr, flush=True)


class LiveBar(RichProgressBar):
    """Lightning's live bar for a terminal, with the time left to train.max_epochs at most
    beside validation NDCG@10, and without the logger's version field (DVCLive's `_run`)."""

    def __init__(self):
        super().__init__()
        self.start, self.seconds, self.epochs = 0.0, 0.0, 0

    def on_train_epoch_start(self, trainer: lightning.Trainer, pl_module: Any) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer: lightning.Trainer, pl_module: Any) -> None:
        self.seconds, self.epochs = self.seconds + time.perf_counter() - self.start, self.epochs + 1
        super().on_train_epoch_end(trainer, pl_module)

    def get_metrics(self, trainer: lightning.Trainer, pl_module: Any) -> dict[str, Any]:
        shown = super().get_metrics(trainer, pl_module)
        shown.pop("v_num", None)
        if self.epochs:
            left = (trainer.max_epochs - trainer.current_epoch) * self.seconds / self.epochs
            shown["left at most"] = _duration(left)
        return shown


def _duration(seconds: float) -> str:
    """12 s, 3 min 05 s, 1 h 02 min: a time left at the precision a person reads."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _trainer(
    params: Params, out_dir: Path, name: str, resume: bool
) -> tuple[lightning.Trainer, Any]:
    """The Lightning Trainer of every gradient model, and its best-checkpoint callback: a live
    progress bar on a terminal, one line per epoch (EpochLines) in a log."""
    t = params.train
    live_bar = sys.stderr.isatty()
    ckpt_dir = out_dir / "checkpoints"
    best_checkpoint = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="best-{epoch}",
        monitor=MONITOR,
        mode="max",
        save_top_k=1,
        enable_version_counter=False,
    )
    # A callback of its own for last.ckpt: Lightning 2.6's save_last only rewrites it when the
    # best checkpoint changes, and a resume must start from the last epoch, not the best one.
    last_checkpoint = ModelCheckpoint(
        dirpath=ckpt_dir, filename="last", save_top_k=1, enable_version_counter=False
    )
    trainer = lightning.Trainer(
        max_epochs=t.max_epochs,
        accelerator=t.accelerator,
        devices=t.devices,
        strategy=t.strategy,
        # The models' loaders shard batches themselves (recsys_models.data.shuffled_batches)
        # and every process validates on all users, so each computes the same early-stopping
        # metric; Lightning's sampler replacement would break the batch-at-once loaders.
        use_distributed_sampler=False,
        precision=resolve_precision(t.precision, t.accelerator),
        callbacks=[
            EarlyStopping(monitor=MONITOR, mode="max", patience=t.patience),
            TrainClock(),
            best_checkpoint,
            last_checkpoint,  # after best_checkpoint, so its state in last.ckpt is current
            LiveBar() if live_bar else EpochLines(name),
        ],
        logger=DVCLiveLogger(
            dir=str(out_dir / "dvclive"),
            resume=resume,
            save_dvc_exp=False,  # never touch git: the lead commits, DVC tracks the outputs
            dvcyaml=False,  # the stage's plots are declared in the project's dvc.yaml
        ),
        enable_progress_bar=live_bar,
        enable_model_summary=False,
        log_every_n_steps=1,
        default_root_dir=str(out_dir),
    )
    return trainer, best_checkpoint


def _final_and_best(ckpt_dir: Path, best_key: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """last.ckpt and the best checkpoint it names (by name inside ckpt_dir: the recorded path
    is absolute, and the project may have moved)."""
    final = _load_checkpoint(ckpt_dir / "last.ckpt")
    best_name = Path(_callback_state(final, best_key).get("best_model_path") or "").name
    if not best_name or not (ckpt_dir / best_name).is_file():
        raise RecsysError(f"{ckpt_dir}: no best checkpoint was saved (did validation run?)")
    return final, _load_checkpoint(ckpt_dir / best_name)


def _launched_worker() -> bool:
    """Whether this process is a data-parallel worker Lightning started (rank > 0): it trains
    in step with rank 0 but writes nothing; rank 0 owns the checkpoints and outputs."""
    return int(os.environ.get("LOCAL_RANK", "0")) > 0 or int(os.environ.get("NODE_RANK", "0")) > 0


def _ranks_agree(lit) -> bool:
    """Every process holds the same weights after data-parallel training (a collective call)."""
    if not (dist.is_available() and dist.is_initialized()):
        return True
    flat = torch.cat([p.detach().double().flatten().cpu() for p in lit.parameters()])
    mine = torch.stack([flat.sum(), (flat * flat).sum(), flat.abs().max()])
    everyone = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(everyone, mine)
    return all(torch.equal(other, everyone[0]) for other in everyone)


def _run_identity(config, settings: dict[str, Any], manifest_sha: str) -> dict[str, Any]:
    """What must not change for a checkpoint to be resumed (max_epochs and patience may).
    The models' code is part of it: after a change there, `dvc repro` reruns the stage and
    the model must train with the new code, not finish the old run."""
    return {
        "config": dataclasses.asdict(config),
        "seed": settings["seed"],
        "precision": settings["precision"],
        "manifest_sha256": manifest_sha,
        "models_code_sha256": _models_code_sha(),
    }


def _models_code_sha() -> str:
    """sha256 over recsys_models/*.py (names and contents)."""
    digest = hashlib.sha256()
    for path in sorted(Path(recsys_models.__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _resumable(ckpt_dir: Path, identity: dict[str, Any]) -> Path | None:
    """last.ckpt when it belongs to this very run; otherwise an emptied folder and None."""
    run_file, last = ckpt_dir / RUN_FILE, ckpt_dir / "last.ckpt"
    try:
        same = json.loads(run_file.read_text()) == json.loads(json.dumps(identity))
    except (OSError, ValueError):
        same = False
    if same and last.is_file():
        try:
            _load_checkpoint(last)
            return last
        except RecsysError as exc:
            print(f"warning: {exc}; training from the start")
    _reset_checkpoints(ckpt_dir, identity)
    return None


def _reset_checkpoints(ckpt_dir: Path, identity: dict[str, Any]) -> None:
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    ckpt_dir.mkdir(parents=True)
    write_json(identity, ckpt_dir / RUN_FILE)


def _finished(last: Path, params: TrainParams) -> bool:
    """Whether last.ckpt is the end of a run with these limits: resuming would train past it."""
    ckpt = _load_checkpoint(last)
    wait = _callback_state(ckpt, "EarlyStopping").get("wait_count", 0)
    return int(ckpt["epoch"]) + 1 >= params.max_epochs or wait >= params.patience


def _load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint is the same problem
        raise RecsysError(f"{path}: unreadable checkpoint ({type(exc).__name__})") from exc


def _callback_state(ckpt: dict[str, Any], key: str) -> dict[str, Any]:
    """A callback's saved state; `key` is its state_key or, if unique, the start of one."""
    states = ckpt.get("callbacks", {})
    if key in states:
        return states[key]
    matches = [state for name, state in states.items() if name.startswith(key)]
    return matches[0] if len(matches) == 1 else {}


def evaluate_model(net, data, split: str, batch_size: int = 512, accelerator: str = "auto") -> dict:
    """Full-ranking metrics (the evaluation protocol) of a model on the val or test split."""
    return _evaluate(net, data, batch_size, accelerator, split)


def _evaluate(net, data, batch_size: int, accelerator: str, split: str = "val") -> dict:
    """Full-ranking metrics of a split, on the GPU when training would use one."""
    device = torch.device("cuda" if _gpu(accelerator) else "cpu")
    net = net.to(device).eval()

    def score(users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        return net.score(users.to(device), history.to(device))

    metrics = evaluate(score, eval_loader(data, split, batch_size))
    net.to(torch.device("cpu"))
    return metrics


def _log_single_point(folder: Path, metrics: dict[str, Any]) -> None:
    """A closed-form model's curves: one point, so every model's dvclive/ looks the same."""
    live = Live(dir=str(folder), save_dvc_exp=False, dvcyaml=False)
    for key in ("ndcg@10", "hr@10", "mrr"):
        live.log_metric(f"val/{key}", metrics[key])  # the names DVCLiveLogger gives val_<key>
    live.end()
