"""The train stage on tiny synthetic features: the files it writes, resuming, and its errors."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from cli.main import main
from recsys_models import bpr_mf, itemknn, registry
from recsys_models.data import eval_loader
from recsys_models.metrics import evaluate
from tasks import feature_store, model_store
from tasks import train as train_stage
from tasks.errors import RecsysError
from tasks.io import file_sha256
from tasks.params import load_params
from tests.conftest import synthetic_features

METRICS = {"ndcg@5", "ndcg@10", "ndcg@20", "hr@5", "hr@10", "hr@20", "mrr", "users"}


@pytest.fixture(scope="module")
def features(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("train")
    synthetic_features(root, 300, 200, 15_000, seed=0)
    return root / "features"


def params(tmp_path: Path, **overrides):
    base = {"train.accelerator": "cpu", "train.bpr_mf": {"batch_size": 1024}}
    return load_params(tmp_path / "absent.yaml", base | overrides)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_closed_form_model_writes_weights_config_metrics_and_curves(
    features: Path, tmp_path: Path, capsys
):
    out = tmp_path / "models" / "itemknn"
    defaults = str(tmp_path / "absent.yaml")
    argv = ["train", "--model", "itemknn", "--features", str(features), "--out", str(out)]
    assert main([*argv, "--params", defaults]) == 0
    assert "ndcg@10" in capsys.readouterr().out

    metrics = read_json(out / "metrics.json")
    assert set(metrics) >= METRICS and metrics["epochs"] == 0
    assert metrics["users"] == 300 and 0 < metrics["ndcg@10"] <= 1
    config = read_json(out / "config.json")
    assert config["model"] == "itemknn" and config["config"] == asdict(itemknn.Config())
    assert config["weights_sha256"] == file_sha256(out / "weights.pt")
    assert config["data"]["manifest_sha256"] == file_sha256(features / "manifest.json")
    assert (out / "dvclive/plots/metrics/val/ndcg@10.tsv").is_file()

    # weights.pt is a plain state_dict that a freshly fitted module accepts.
    state = torch.load(out / "weights.pt", weights_only=True)
    data = feature_store.load_features(features)
    model = itemknn.fit(data, itemknn.Config(), seed=0)
    model.load_state_dict(state)
    assert evaluate(model.score, eval_loader(data, "val"))["ndcg@10"] == pytest.approx(
        metrics["ndcg@10"]
    )


def test_gradient_model_trains_resumes_and_restarts_on_a_new_config(features: Path, tmp_path: Path):
    out = tmp_path / "bpr_mf"
    last = out / "checkpoints" / "last.ckpt"

    first = train_stage.train("bpr_mf", features, out, params(tmp_path, **{"train.max_epochs": 1}))
    assert first["epochs"] == 1 and first["best_epoch"] == 1
    steps = torch.load(last, weights_only=True)["global_step"]
    assert steps > 0

    # max_epochs raised: the run continues from last.ckpt instead of starting again.
    second = train_stage.train("bpr_mf", features, out, params(tmp_path, **{"train.max_epochs": 2}))
    ckpt = torch.load(last, weights_only=True)
    assert second["epochs"] == 2 and ckpt["epoch"] == 1 and ckpt["global_step"] == 2 * steps
    curve = (out / "dvclive/plots/metrics/val/ndcg@10.tsv").read_text().splitlines()
    assert len(curve) == 1 + 2  # header, then one point per epoch across both runs
    assert second["train_seconds"] >= first["train_seconds"]
    # validation's share is counted too, across the resume, and within the epochs' time
    assert 0 < first["validation_seconds"] <= second["validation_seconds"]
    assert second["validation_seconds"] < second["train_seconds"]

    # The best epoch's weights are what weights.pt holds and what metrics.json reports.
    data = feature_store.load_features(features)
    module, _ = bpr_mf.build(data, bpr_mf.Config(batch_size=1024), seed=0)
    module.model.load_state_dict(torch.load(out / "weights.pt", weights_only=True))
    ndcg = evaluate(module.model.score, eval_loader(data, "val"))["ndcg@10"]
    assert ndcg == pytest.approx(second["ndcg@10"])

    # The same settings again: the run is complete, nothing is trained.
    stamp = last.stat().st_mtime_ns
    third = train_stage.train("bpr_mf", features, out, params(tmp_path, **{"train.max_epochs": 2}))
    assert last.stat().st_mtime_ns == stamp and third["ndcg@10"] == second["ndcg@10"]

    # A different model config never resumes someone else's checkpoint.
    changed = params(tmp_path, **{"train.max_epochs": 1, "train.bpr_mf": {"lr": 0.01}})
    fresh = train_stage.train("bpr_mf", features, out, changed)
    assert fresh["epochs"] == 1
    assert read_json(out / "checkpoints/run.json")["config"]["lr"] == 0.01


def test_a_change_to_the_models_code_trains_afresh(features: Path, tmp_path: Path, monkeypatch):
    """`dvc repro` reruns the stage after a change in recsys_models/: the model must then
    train with the new code, not finish (or reuse) the old run's checkpoints."""
    out = tmp_path / "bpr_mf"
    settings = params(tmp_path, **{"train.max_epochs": 1})
    train_stage.train("bpr_mf", features, out, settings)
    run = read_json(out / "checkpoints/run.json")
    assert run["models_code_sha256"] == train_stage._models_code_sha()
    last = out / "checkpoints" / "last.ckpt"
    stamp = last.stat().st_mtime_ns
    train_stage.train("bpr_mf", features, out, settings)
    assert last.stat().st_mtime_ns == stamp  # the same code: the run is complete, kept

    monkeypatch.setattr(train_stage, "_models_code_sha", lambda: "0" * 64)
    again = train_stage.train("bpr_mf", features, out, settings)
    assert again["epochs"] == 1 and last.stat().st_mtime_ns != stamp  # trained anew
    assert read_json(out / "checkpoints/run.json")["models_code_sha256"] == "0" * 64


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_bad_model_name_is_a_one_line_error(features: Path, tmp_path: Path, capsys):
    argv = ["train", "--model", "nope", "--features", str(features), "--out", str(tmp_path)]
    assert "unknown model 'nope'" in one_line_error(capsys, argv)


@pytest.mark.parametrize(
    ("name", "damage"),
    [
        ("loo/val_target.npy", "delete"),
        ("items/popularity.npy", "garble"),
        ("loo/train.parquet", "garble"),
        ("manifest.json", "delete"),
    ],
)
def test_missing_or_damaged_features_file_is_named(
    features: Path, tmp_path: Path, capsys, name: str, damage: str
):
    copy = tmp_path / "features"
    shutil.copytree(features, copy)
    if damage == "delete":
        (copy / name).unlink()
    else:
        (copy / name).write_bytes(b"not what the features stage wrote")
    argv = ["train", "--model", "popularity", "--features", str(copy), "--out", str(tmp_path)]
    assert name in one_line_error(capsys, argv)


def test_model_section_keys_are_checked_against_the_model_config(
    features: Path, tmp_path: Path, capsys
):
    argv = ["train", "--model", "itemknn", "--features", str(features)]
    argv += ["--params", str(tmp_path / "absent.yaml"), "--set"]
    assert "train.itemknn.kk" in one_line_error(capsys, [*argv, "train.itemknn={kk: 5}"])
    assert "k must be >= 1" in one_line_error(capsys, [*argv, "train.itemknn={k: 0}"])


def test_a_model_that_cannot_be_imported_is_a_clear_error(monkeypatch):
    names = (*registry.model_names(), "not_written_yet")
    monkeypatch.setattr(registry, "model_names", lambda: names)
    with pytest.raises(RecsysError, match="recsys_models.not_written_yet"):
        model_store.spec("not_written_yet")


def test_precision_auto_is_full_precision_on_cpu():
    assert train_stage.resolve_precision("auto", "cpu") == "32-true"
    assert train_stage.resolve_precision("16-mixed", "gpu") == "16-mixed"


def test_last_checkpoint_follows_the_last_epoch_and_early_stopping_ends_the_run(
    features: Path, tmp_path: Path
):
    # A learning rate this small changes no ranking: epoch 1 stays the best, patience 1 stops
    # the run after epoch 2, and last.ckpt must still be epoch 2 (the one to resume from).
    out = tmp_path / "bpr_mf"
    frozen = {"train.max_epochs": 5, "train.patience": 1, "train.bpr_mf": {"lr": 1e-12}}
    metrics = train_stage.train("bpr_mf", features, out, params(tmp_path, **frozen))
    assert metrics["best_epoch"] == 1 and metrics["epochs"] == 2
    assert torch.load(out / "checkpoints/last.ckpt", weights_only=True)["epoch"] == 1
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "best-epoch=0.ckpt",
        "last.ckpt",
        "run.json",
    ]


@pytest.mark.slow
def test_data_parallel_training_on_two_cpu_processes_agrees_with_one(
    features: Path, tmp_path: Path
):
    """DDP with the gloo backend: two real processes (Lightning starts the second by running
    the same `recsys train` command), identical weights on both at the end, and a model close
    to one process trained on batches twice as large. Not equal: each process averages its
    loss over its own half batch before the gradients are averaged, and an odd last batch is
    dropped so both processes take the same number of steps."""
    import subprocess
    import sys

    import yaml

    def run(name: str, devices: int, batch_size: int) -> dict:
        # Ids only: the tolerance below was set at that model's level (with the synthetic
        # genres NDCG@10 doubles, and the two runs' gap with it: 0.41 against 0.47, seeds 1, 2).
        sasrec = {"hidden": 32, "dropout": 0.0, "batch_size": batch_size, "item_features": False}
        train = {"accelerator": "cpu", "devices": devices, "max_epochs": 3, "patience": 3}
        train |= {"strategy": "ddp" if devices > 1 else "auto", "sasrec": sasrec}
        params = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())
        params["train"].update(train)
        params_file = tmp_path / f"{name}.yaml"
        params_file.write_text(yaml.safe_dump(params))
        out = tmp_path / name
        cmd = [str(Path(sys.executable).parent / "recsys"), "train", "--model", "sasrec"]
        cmd += ["--features", str(features), "--out", str(out), "--params", str(params_file)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return read_json(out / "metrics.json")

    parallel = run("ddp", devices=2, batch_size=64)
    single = run("single", devices=1, batch_size=128)
    assert parallel["data_parallel"] == {"world_size": 2, "ranks_agree": True}
    assert "data_parallel" not in single
    assert parallel["epochs"] == single["epochs"] == 3
    assert parallel["ndcg@10"] == pytest.approx(single["ndcg@10"], abs=0.05)


def test_validation_on_a_sample_of_users_is_seeded_and_leaves_training_alone(features: Path):
    data = feature_store.load_features(features)
    users = np.flatnonzero(data.val_target > 0)
    assert train_stage.validation_sample(data, 0, 42) is data
    assert train_stage.validation_sample(data, len(users), 42) is data
    sample = train_stage.validation_sample(data, 10, 42)
    kept = np.flatnonzero(sample.val_target > 0)
    assert len(kept) == 10 and np.isin(kept, users).all()
    assert (sample.val_target[kept] == data.val_target[kept]).all()
    assert np.array_equal(
        np.flatnonzero(train_stage.validation_sample(data, 10, 42).val_target), kept
    )
    assert not np.array_equal(
        np.flatnonzero(train_stage.validation_sample(data, 10, 7).val_target), kept
    )
    assert sample.train_items is data.train_items and sample.test_target is data.test_target
    for got, want in zip(sample.seen("test"), data.seen("test"), strict=True):
        assert np.array_equal(got, want)
