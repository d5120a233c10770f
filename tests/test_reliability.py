"""Nothing lost, nothing stale: output folders that can never destroy inputs, swaps and model
saves that survive a kill at every write step, the pipeline lock around CLI stages, and
lineage checked at export. Kills are real SIGKILLs at named points (tasks/io.crash_point)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cli.main import main
from flows.locking import pipeline_lock
from tasks import model_store
from tasks.errors import RecsysError
from tasks.export import export
from tasks.feature_store import load_features, manifest_sha256
from tasks.io import CRASH_ENV
from tasks.params import load_params
from tasks.train import train
from tests.conftest import synthetic_features

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def features(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("reliability")
    synthetic_features(root, 120, 80, 3000, seed=3)
    return root / "features"


def recsys(*args: str, cwd: Path, crash_at: str | None = None) -> subprocess.CompletedProcess:
    """The real CLI in a process of its own, killed at `crash_at` when given."""
    env = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
    env["PYTHONPATH"] = str(ROOT)
    if crash_at:
        env[CRASH_ENV] = crash_at
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


# --- 1. an output folder never destroys what it does not own ---------------------------------


def test_out_never_replaces_inputs_the_project_or_foreign_folders(
    tmp_path: Path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    raw = tmp_path / "data" / "raw" / "in.csv"
    raw.parent.mkdir(parents=True)
    raw.write_text(
        "user_id,item_id,timestamp\n" + "".join(f"u{i % 7},i{i % 5},{i}\n" for i in range(60))
    )
    keep = tmp_path / "data" / "features" / "manifest.json"
    keep.parent.mkdir(parents=True)
    keep.write_text("{}")
    ingest = ["ingest", "--source", "csv", "--path", str(raw), "--params", "absent.yaml"]

    assert "overlaps the input" in one_line_error(capsys, [*ingest, "--out", "data"])
    assert "project folder" in one_line_error(capsys, [*ingest, "--out", "."])
    assert "overlaps the input" in one_line_error(capsys, [*ingest, "--out", "data/raw"])
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not the stage's")
    assert "did not write" in one_line_error(capsys, [*ingest, "--out", "mine"])
    assert raw.is_file() and keep.is_file() and (foreign / "notes.txt").is_file()

    assert main([*ingest, "--out", "data/interim"]) == 0
    assert main([*ingest, "--out", "data/interim"]) == 0  # its own folder: replaced
    features = ["features", "--interim", "data/interim", "--skip-validation-check"]
    assert "overlaps the input" in one_line_error(capsys, [*features, "--out", "data/interim"])
    assert (tmp_path / "data" / "interim" / "interactions.parquet").is_file()


# --- 8. kills at every write step of the folder swap and the model save ----------------------


@pytest.mark.parametrize("point", ["swap:before", "swap:between-renames", "swap:after"])
def test_a_killed_features_run_leaves_loadable_features(features: Path, tmp_path: Path, point):
    out = tmp_path / "features"
    interim = features.parent / "interim"
    args = ["features", "--interim", str(interim), "--out", str(out), "--skip-validation-check"]
    assert recsys(*args, cwd=tmp_path).returncode == 0
    before = manifest_sha256(out)

    killed = recsys(*args, "--set", "features.max_seq_len=20", cwd=tmp_path, crash_at=point)
    assert killed.returncode == -9, killed.stderr
    data = load_features(out)  # the previous folder, or the new one when the swap got through
    assert data.max_seq_len == (20 if point == "swap:after" else 50)
    if point != "swap:after":
        assert manifest_sha256(out) == before

    assert recsys(*args, cwd=tmp_path).returncode == 0  # and the next run cleans up
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    assert load_features(out).max_seq_len == 50


@pytest.mark.parametrize("point", ["write:weights.pt", "save_model:between-weights-and-config"])
def test_a_killed_model_save_leaves_the_previous_model_loadable(
    features: Path, tmp_path: Path, point
):
    out = tmp_path / "itemknn"
    params = load_params(tmp_path / "absent.yaml", {"train.itemknn": {"k": 5}})
    train("itemknn", features, out, params)
    data = load_features(features)
    history = torch.as_tensor(data.test_input[1:9], dtype=torch.long)
    users = torch.arange(1, 9)
    expected = model_store.load_model(out, data).score(users, history)

    args = ["train", "--model", "itemknn", "--features", str(features), "--out", str(out)]
    args += ["--set", "train.itemknn={k: 9}", "--params", str(tmp_path / "absent.yaml")]
    killed = recsys(*args, cwd=tmp_path, crash_at=point)
    assert killed.returncode == -9, killed.stderr
    restored = model_store.load_model(out, data)
    assert torch.equal(restored.score(users, history), expected)
    assert model_store.read_record(out)["config"]["k"] == 5

    assert recsys(*args, cwd=tmp_path).returncode == 0
    assert model_store.read_record(out)["config"]["k"] == 9
    model_store.load_model(out, data)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


# --- 7. the CLI stages hold the pipeline lock ----------------------------------------------


def test_cli_stages_wait_for_or_refuse_a_held_pipeline_lock(
    features: Path, tmp_path: Path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    args = ["train", "--model", "popularity", "--features", str(features), "--out", "m"]
    with pipeline_lock(holder="a test"):  # the file the tests' RECSYS_LOCK_FILE names
        refused = recsys("--lock-timeout", "0", *args, cwd=tmp_path)
    assert refused.returncode == 2
    assert refused.stderr.count("\n") <= 2 and "held by" in refused.stderr
    assert not (tmp_path / "m").exists()


def test_two_trainings_of_one_model_at_once_both_finish(features: Path, tmp_path: Path):
    args = ["train", "--model", "bpr_mf", "--features", str(features), "--out", "m"]
    args += ["--set", "train.max_epochs=1", "--set", "train.accelerator=cpu"]
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "cli.main", *args]
    procs = [
        subprocess.Popen(command, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    errors = [proc.communicate(timeout=600)[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], errors
    model_store.load_model(tmp_path / "m", load_features(features))


# --- 2. lineage at export ------------------------------------------------------------------


def test_export_refuses_a_model_trained_on_other_features(features: Path, tmp_path: Path):
    params = load_params(tmp_path / "absent.yaml")
    train("popularity", features, tmp_path / "models" / "popularity", params)
    other = tmp_path / "other"
    other.mkdir()
    for path in features.rglob("*"):
        if path.is_file():
            target = other / path.relative_to(features)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    manifest = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps(manifest | {"note": "re-ingested"}))
    with pytest.raises(RecsysError) as err:
        export("popularity", tmp_path / "models", other, tmp_path / "artifacts")
    assert manifest_sha256(features)[:12] in str(err.value)
    assert manifest_sha256(other)[:12] in str(err.value)
    assert not (tmp_path / "artifacts" / "popularity").exists()
