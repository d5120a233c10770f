"""The train stage: data/features -> models/<name>/ for one model of the registry.

Layout of models/<name>/:
- weights.pt    the nn.Module's state_dict (torch.save), nothing else
- config.json   model config, trainer settings, the features manifest's sha256, the weights' sha256
- metrics.json  validation metrics of the best model (full ranking), epochs, best epoch, seconds
- dvclive/      training curves (`dvc plots show`); closed-form models log one point
- checkpoints/  Lightning checkpoints (best and last.ckpt) and run.json, for gradient models

weights.pt, config.json and metrics.json are each written atomically and only at the end, in that
order, so an interrupted run leaves the previous complete set in place; config.json names the
weights' hash, so a mismatched pair is detectable. checkpoints/ is written while training and
kept: a rerun with the same model config, seed, precision and features resumes from last.ckpt
(raising train.max_epochs continues training); anything else starts the folder afresh.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import shutil
import time
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import polars as pl

from tasks.errors import RecsysError
from tasks.io import atomic_path, file_sha256, write_json
from tasks.params import MODEL_NAMES, Params, TrainParams, build_config

MODELS = {name: f"recsys_models.{name}" for name in MODEL_NAMES}
MONITOR = "val_ndcg@10"
RUN_FILE = "run.json"
METRIC_KEYS = ("ndcg@5", "ndcg@10", "ndcg@20", "hr@5", "hr@10", "hr@20", "mrr", "users")


def train(
    model: str, features_dir: Path, out_dir: Path, params: Params, protocol: str = "loo"
) -> dict[str, Any]:
    """Train (or fit) `model` on the features, write models/<name>/, return its val metrics.

    protocol "temporal" trains on the global temporal split instead (load_features); its models
    go to models/<name>/temporal/ so the evaluation can score both protocols.
    """
    features_dir, out_dir = Path(features_dir), Path(out_dir)
    module = import_model(model)
    config = model_config(module, model, params.train)
    data = load_features(features_dir, protocol)
    manifest_sha = file_sha256(features_dir / "manifest.json")
    import lightning  # only now: a wrong name or a missing file fails fast

    lightning.seed_everything(params.seed, workers=True, verbose=False)
    settings = trainer_settings(params)
    identity = _run_identity(config, settings, manifest_sha) | {"protocol": protocol}
    if hasattr(module, "fit"):
        net, run = _fit_closed_form(module, data, config, params, out_dir, identity)
    elif hasattr(module, "build"):
        net, run = _fit_gradient(module, data, config, params, out_dir, identity)
    else:
        raise RecsysError(f"model {model}: {MODELS[model]} has neither fit() nor build()")
    if run.get("worker"):  # a data-parallel worker: rank 0 evaluates and writes
        return {}

    metrics = _evaluate(net, data, params.train.eval_batch_size, settings["accelerator"])
    metrics = {key: metrics[key] for key in METRIC_KEYS} | run
    if run["epochs"] == 0:
        _log_single_point(out_dir / "dvclive", metrics)
    with atomic_path(out_dir / "weights.pt") as tmp:
        _save_state_dict(net, tmp)
    write_json(
        {
            "model": model,
            "module": MODELS[model],
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
            "weights_sha256": file_sha256(out_dir / "weights.pt"),
        },
        out_dir / "config.json",
    )
    write_json(metrics, out_dir / "metrics.json")
    return metrics


def import_model(name: str) -> ModuleType:
    """The model's module from the registry, imported only when asked for (torch is heavy)."""
    if name not in MODELS:
        raise RecsysError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    try:
        return importlib.import_module(MODELS[name])
    except ImportError as exc:
        raise RecsysError(f"model {name}: cannot import {MODELS[name]} ({exc})") from exc


def model_config(module: ModuleType, name: str, params: TrainParams) -> Any:
    """params.yaml `train.<name>` as the model's Config; unknown keys and bad values are errors."""
    try:
        return build_config(module.Config, getattr(params, name), f"train.{name}")
    except (ValueError, TypeError) as exc:
        raise RecsysError(f"params.yaml: train.{name}: {exc}") from exc


def trainer_settings(params: Params) -> dict[str, Any]:
    t = params.train
    return {
        "seed": params.seed,
        "max_epochs": t.max_epochs,
        "patience": t.patience,
        "eval_batch_size": t.eval_batch_size,
        "accelerator": t.accelerator,
        "precision": resolve_precision(t.precision, t.accelerator),
    }


def resolve_precision(precision: str, accelerator: str) -> str:
    """ "auto": bf16 mixed precision where a GPU will be used, full fp32 on CPU."""
    if precision != "auto":
        return precision
    import torch

    gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return "bf16-mixed" if gpu else "32-true"


# --- reading the features stage's output -------------------------------------------------------


PROTOCOLS = ("loo", "temporal")


def load_features(features_dir: Path, protocol: str = "loo"):
    """FeatureData from data/features; a missing or damaged file is a one-line RecsysError.

    Every file read is checked against the sha256 the features stage recorded in manifest.json,
    so a model is never trained on a half-copied or hand-edited folder.

    protocol "loo" is leave-one-out by time (DESIGN.md); "temporal" is the global temporal split:
    training rows are those before the validation cut, validation asks for each user's first
    item after it, and the test targets are every item a user consumed after the test cut, with
    everything before that cut as history (what a model deployed at the cut would face).
    """
    from recsys_models.data import FeatureData

    if protocol not in PROTOCOLS:
        raise RecsysError(f"protocol {protocol!r}: choose one of {', '.join(PROTOCOLS)}")
    folder = Path(features_dir)
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        raise RecsysError(f"{manifest_path}: not found; run `recsys features` first")
    try:
        manifest = json.loads(manifest_path.read_text())
        counts, recorded = manifest["counts"], manifest["files"]
        n_users, n_items = int(counts["users"]), int(counts["items"])
        max_len = int(manifest["max_seq_len"])
        user_columns = manifest["user_features"]["columns"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RecsysError(f"{manifest_path}: not a features manifest ({exc!r})") from exc

    def path(name: str) -> Path:
        p = folder / name
        if not p.is_file():
            raise RecsysError(f"{p}: not found; rerun `recsys features`")
        if recorded.get(name) != file_sha256(p):
            raise RecsysError(f"{p}: does not match manifest.json; rerun `recsys features`")
        return p

    def array(name: str, shape: tuple[int | None, ...]) -> np.ndarray:
        p = path(name)
        try:
            a = np.load(p, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise RecsysError(f"{p}: not a readable .npy file ({exc})") from exc
        expected = all(want in (None, got) for want, got in zip(shape, a.shape, strict=False))
        if a.ndim != len(shape) or not expected:
            raise RecsysError(f"{p}: shape {a.shape}, expected {shape} (None: any)")
        return a

    def table(name: str) -> pl.DataFrame:
        """A split's rows sorted by user, then time (ties keep the file's order)."""
        p = path(name)
        try:
            columns = pl.read_parquet_schema(p)
            keep = [c for c in ("user_idx", "item_idx", "timestamp", "rating") if c in columns]
            frame = pl.read_parquet(p, columns=keep)
        except (OSError, pl.exceptions.PolarsError) as exc:
            raise RecsysError(f"{p}: cannot read ({str(exc).splitlines()[0]})") from exc
        order = ["user_idx", "timestamp"] if "timestamp" in frame.columns else ["user_idx"]
        return frame.sort(order, maintain_order=True)

    rows, seq = (n_users + 1,), (n_users + 1, max_len)
    common = {
        "n_users": n_users,
        "n_items": n_items,
        "max_seq_len": max_len,
        "item_genres": array("items/genres.npy", (n_items + 1, None)),
        "item_year_bucket": array("items/year_bucket.npy", (n_items + 1,)),
        "user_features": (
            array("users/user_features.npy", (n_users + 1, len(user_columns)))
            if user_columns
            else None
        ),
    }
    if protocol == "temporal":
        splits = {name: table(f"temporal/{name}.parquet") for name in ("train", "val", "test")}
        return _temporal_data(FeatureData, common, **splits)
    frame = table("loo/train.parquet")
    return FeatureData(
        **common,
        train_users=frame["user_idx"].to_numpy().astype(np.int64),
        train_items=frame["item_idx"].to_numpy().astype(np.int64),
        val_input=array("loo/val_input.npy", seq),
        val_target=array("loo/val_target.npy", rows),
        test_input=array("loo/test_input.npy", seq),
        test_target=array("loo/test_target.npy", rows),
        item_popularity=array("items/popularity.npy", (n_items + 1,)),
        train_ratings=_ratings(frame),
    )


def _temporal_data(cls, common: dict[str, Any], train, val, test):
    """FeatureData of the global temporal split (see load_features). Users with no history
    before a cut have nothing to predict from there and get no target for it."""
    from tasks.features import padded_tail

    n_users, n_items, max_len = common["n_users"], common["n_items"], common["max_seq_len"]

    def ids(frame: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        return frame["user_idx"].to_numpy().astype(np.int64), frame["item_idx"].to_numpy()

    def csr(users: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        counts = np.bincount(users, minlength=n_users + 1)
        return np.concatenate([[0], np.cumsum(counts)]), items.astype(np.int64)

    def first_after(frame: pl.DataFrame, has_history: np.ndarray) -> np.ndarray:
        users, items = ids(frame.unique("user_idx", keep="first", maintain_order=True))
        out = np.zeros(n_users + 1, dtype=np.int64)
        keep = has_history[users]
        out[users[keep]] = items[keep]
        return out

    train_users, train_items = ids(train)
    before_test = pl.concat([train, val]).sort(["user_idx", "timestamp"], maintain_order=True)
    before_users, before_items = ids(before_test)
    has_train = np.bincount(train_users, minlength=n_users + 1) > 0
    has_before = np.bincount(before_users, minlength=n_users + 1) > 0
    # Every item consumed after the test cut, once, by users with a history before it.
    targets = test.filter(pl.Series(has_before[test["user_idx"].to_numpy()]))
    targets = targets.unique(["user_idx", "item_idx"], keep="first", maintain_order=True)
    return cls(
        **common,
        train_users=train_users,
        train_items=train_items.astype(np.int64),
        val_input=padded_tail(train_users, train_items, n_users, max_len),
        val_target=first_after(val, has_train),
        test_input=padded_tail(before_users, before_items, n_users, max_len),
        test_target=first_after(test, has_before),
        item_popularity=np.bincount(train_items, minlength=n_items + 1).astype(np.float32),
        train_ratings=_ratings(train),
        test_seen=csr(before_users, before_items),
        test_target_sets=csr(*ids(targets)),
    )


def _ratings(frame: pl.DataFrame) -> np.ndarray | None:
    """The training rows' ratings as float32, or None when any is missing (rating models only)."""
    if "rating" not in frame.columns or frame["rating"].null_count() > 0:
        return None
    return frame["rating"].to_numpy().astype(np.float32)


# --- fitting ----------------------------------------------------------------------------------


def _fit_closed_form(module, data, config, params: Params, out_dir: Path, identity: dict):
    _reset_checkpoints(out_dir / "checkpoints", identity)  # nothing to resume but run.json
    start = time.perf_counter()
    net = module.fit(data, config, params.seed)
    seconds = time.perf_counter() - start
    return net, {"epochs": 0, "best_epoch": 0, "train_seconds": round(seconds, 3)}


def _fit_gradient(module, data, config, params: Params, out_dir: Path, identity: dict):
    import lightning
    import torch
    from dvclive.lightning import DVCLiveLogger
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    class TrainClock(lightning.Callback):
        """Seconds spent in training epochs (validation included), summed over resumed runs:
        its state rides in the checkpoints."""

        def __init__(self):
            self.seconds, self.start = 0.0, None

        @property
        def state_key(self) -> str:
            return "TrainClock"

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self.start = time.perf_counter()

        def on_validation_end(self, trainer, pl_module) -> None:
            # Before ModelCheckpoint's hook (Lightning runs checkpoint callbacks last).
            if self.start is not None and not trainer.sanity_checking:
                self.seconds += time.perf_counter() - self.start
                self.start = None

        def state_dict(self) -> dict[str, float]:
            return {"seconds": self.seconds}

        def load_state_dict(self, state_dict: dict[str, float]) -> None:
            self.seconds = float(state_dict["seconds"])

    settings = trainer_settings(params)
    ckpt_dir = out_dir / "checkpoints"
    worker = _launched_worker()
    if worker:  # rank 0 already decided: never reset the folder it is writing into
        last = ckpt_dir / "last.ckpt" if (ckpt_dir / "last.ckpt").is_file() else None
    else:
        last = _resumable(ckpt_dir, identity)
    try:
        lit, datamodule = module.build(data, config, params.seed)
    except ValueError as exc:  # data the model cannot use, e.g. rating_mf without ratings
        raise RecsysError(str(exc)) from exc
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
        max_epochs=params.train.max_epochs,
        accelerator=params.train.accelerator,
        devices=params.train.devices,
        strategy=params.train.strategy,
        # The models' loaders shard batches themselves (recsys_models.data.shuffled_batches)
        # and every process validates on all users, so each computes the same early-stopping
        # metric; Lightning's sampler replacement would break the batch-at-once loaders.
        use_distributed_sampler=False,
        precision=settings["precision"],
        callbacks=[
            EarlyStopping(monitor=MONITOR, mode="max", patience=params.train.patience),
            TrainClock(),
            best_checkpoint,
            last_checkpoint,  # after best_checkpoint, so its state in last.ckpt is current
        ],
        logger=DVCLiveLogger(
            dir=str(out_dir / "dvclive"),
            resume=last is not None,
            save_dvc_exp=False,  # never touch git: the lead commits, DVC tracks the outputs
            dvcyaml=False,  # the stage's plots are declared in the project's dvc.yaml
        ),
        enable_progress_bar=True,
        enable_model_summary=False,
        log_every_n_steps=1,
        default_root_dir=str(out_dir),
    )
    if last is None or not _finished(last, params.train):
        with warnings.catch_warnings():
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

    final = _load_checkpoint(ckpt_dir / "last.ckpt")
    # By name inside ckpt_dir: the recorded path is absolute, and the project may have moved.
    best_state = _callback_state(final, best_checkpoint.state_key)
    best_name = Path(best_state.get("best_model_path") or "").name
    if not best_name or not (ckpt_dir / best_name).is_file():
        raise RecsysError(f"{ckpt_dir}: no best checkpoint was saved (did validation run?)")
    best = _load_checkpoint(ckpt_dir / best_name)
    lit.load_state_dict(best["state_dict"])
    net = lit.model.to(torch.device("cpu"))
    return net, {
        "epochs": int(final["epoch"]) + 1,
        "best_epoch": int(best["epoch"]) + 1,
        "train_seconds": round(_callback_state(final, "TrainClock").get("seconds", 0.0), 3),
    } | ({"data_parallel": parallel} if parallel else {})


def _launched_worker() -> bool:
    """Whether this process is a data-parallel worker Lightning started (rank > 0): it trains
    in step with rank 0 but writes nothing; rank 0 owns the checkpoints and outputs."""
    import os

    return int(os.environ.get("LOCAL_RANK", "0")) > 0 or int(os.environ.get("NODE_RANK", "0")) > 0


def _ranks_agree(lit) -> bool:
    """Every process holds the same weights after data-parallel training (a collective call)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return True
    flat = torch.cat([p.detach().double().flatten().cpu() for p in lit.parameters()])
    mine = torch.stack([flat.sum(), (flat * flat).sum(), flat.abs().max()])
    everyone = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(everyone, mine)
    return all(torch.equal(other, everyone[0]) for other in everyone)


def _run_identity(config, settings: dict[str, Any], manifest_sha: str) -> dict[str, Any]:
    """What must not change for a checkpoint to be resumed (max_epochs and patience may)."""
    return {
        "config": dataclasses.asdict(config),
        "seed": settings["seed"],
        "precision": settings["precision"],
        "manifest_sha256": manifest_sha,
    }


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
    import torch

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


def load_model(model_dir: Path, data: Any, seed: int = 0) -> Any:
    """The trained nn.Module of models/<name>/, rebuilt from config.json with weights.pt loaded.

    The weights' sha256 must match the one config.json recorded, so a weights file from another
    run is refused rather than silently scored.
    """
    import torch

    model_dir = Path(model_dir)
    config_file, weights = model_dir / "config.json", model_dir / "weights.pt"
    for path in (config_file, weights):
        if not path.is_file():
            raise RecsysError(f"{path}: missing (train the model first: recsys train)")
    try:
        recorded = json.loads(config_file.read_text())
        name, fields = recorded["model"], recorded["config"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise RecsysError(f"{config_file}: not a model config ({exc})") from exc
    if file_sha256(weights) != recorded.get("weights_sha256"):
        raise RecsysError(f"{weights}: sha256 differs from the one {config_file} records")
    module = import_model(name)
    config = build_config(module.Config, fields, f"{config_file}: config")
    if hasattr(module, "empty"):  # closed form, but too slow to refit just for the shapes
        net = module.empty(data, config)
    elif hasattr(module, "fit"):
        net = module.fit(data, config, seed)
    else:
        net = module.build(data, config, seed)[0].model
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return net.eval()


def evaluate_model(net, data, split: str, batch_size: int = 512, accelerator: str = "auto") -> dict:
    """Full-ranking metrics (DESIGN.md protocol) of a trained model on the val or test split."""
    return _evaluate(net, data, batch_size, accelerator, split)


def _evaluate(net, data, batch_size: int, accelerator: str, split: str = "val") -> dict:
    """Full-ranking metrics of a split, on the GPU when training would use one."""
    import torch

    from recsys_models.data import eval_loader
    from recsys_models.metrics import evaluate

    gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    net = net.to(device).eval()

    def score(users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        return net.score(users.to(device), history.to(device))

    metrics = evaluate(score, eval_loader(data, split, batch_size))
    net.to(torch.device("cpu"))
    return metrics


def _log_single_point(folder: Path, metrics: dict[str, Any]) -> None:
    """A closed-form model's curves: one point, so every model's dvclive/ looks the same."""
    from dvclive import Live

    live = Live(dir=str(folder), save_dvc_exp=False, dvcyaml=False)
    for key in ("ndcg@10", "hr@10", "mrr"):
        live.log_metric(f"val/{key}", metrics[key])  # the names DVCLiveLogger gives val_<key>
    live.end()


def _save_state_dict(net, path: Path) -> None:
    import torch

    torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, path)
