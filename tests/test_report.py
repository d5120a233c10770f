"""The evaluation report as a reader gets it: guardrail values beside their limits, the gradient
models' training curves, the run's metadata, the users behind each history bucket, and the
protocol paragraph once."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from tasks.errors import RecsysError
from tasks.evaluate import evaluate
from tasks.model_store import model_dir, read_record, validation_curve
from tasks.params import load_params
from tasks.train import train
from tests.conftest import synthetic_features


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """popularity, item-kNN and three epochs of BPR-MF on synthetic data, evaluated (seconds)."""
    root = tmp_path_factory.mktemp("report")
    synthetic_features(root, n_users=200, n_items=100, n_interactions=6000, seed=7)
    overrides = {
        "train.out": str(root / "models"),
        "train.accelerator": "cpu",
        "train.max_epochs": 3,
        "train.patience": 3,
        "train.bpr_mf": {"batch_size": 1024},
        "evaluate.protocols": ["loo"],
        "evaluate.artifacts": str(root / "artifacts"),
        "evaluate.bootstrap_samples": 200,
    }
    params = load_params(root / "absent.yaml", overrides)
    for name in ("popularity", "itemknn", "bpr_mf"):
        train(name, root / "features", model_dir(root / "models", name), params)
    out = root / "evaluation"
    evaluate(root / "features", root / "models", out, params, dvc_file=root / "none.dvc")
    return out, root / "models", params


def test_the_training_curve_is_read_through_the_model_store(evaluated, tmp_path: Path):
    _, models, _ = evaluated
    curve = validation_curve(models / "bpr_mf")
    assert len(curve) == 3 and all(0 <= v <= 1 for v in curve)  # one value per epoch
    metrics = json.loads((models / "bpr_mf" / "metrics.json").read_text())
    assert max(curve) == pytest.approx(metrics["ndcg@10"], abs=1e-6)  # the best epoch is kept
    assert validation_curve(tmp_path) == []  # no DVCLive folder: no curve
    bad = tmp_path / "dvclive/plots/metrics/val/ndcg@10.tsv"
    bad.parent.mkdir(parents=True)
    bad.write_text("step\tloss\n1\t0.5\n")
    with pytest.raises(RecsysError, match=r"ndcg@10\.tsv: not a DVCLive metric file"):
        validation_curve(tmp_path)


def test_the_report_shows_curves_run_metadata_guardrails_and_history_counts(evaluated):
    out, models, params = evaluated
    text = (out / "report.md").read_text()
    html = (out / "report.html").read_text()

    # training curves: the gradient model's epochs and best value, as figures and as a plot
    curve = validation_curve(models / "bpr_mf")
    best = max(curve)
    row = f"| bpr_mf | 3 | {curve.index(best) + 1} | {best:.4f} | {curve[-1]:.4f} |"
    assert row in text
    assert "| popularity |" not in text.split("## Training curves")[1].split("##")[0]
    assert "training curves: validation NDCG@10 per epoch" in html
    assert html.count("data:image/png;base64,") == 5  # bars, forest, history, bias, curves

    # run metadata: code commit, data version, each model's weights, the parameters
    run = text.split("## Run")[1].split("\n## ")[0]
    commit = re.search(r"code: git commit ([0-9a-f]{12})", run)
    assert commit, run  # the tests run inside the project's git checkout
    manifest = read_record(models / "bpr_mf")["data"]["manifest_sha256"]
    assert f"features manifest sha256 {manifest[:12]}" in run
    for name in ("popularity", "itemknn", "bpr_mf"):
        sha = read_record(models / name)["weights_sha256"]
        assert f"- model {name}: weights sha256 {sha[:12]}" in run
    assert f"bootstrap_samples={params.evaluate.bootstrap_samples}" in run
    assert "guardrails.max_coverage_drop=0.2" in run and "seed=" in run
    assert "Run</h2><ul><li>code: git commit" in html.replace("\n", "")

    # guardrails: each challenger's value beside its limit, as comparison.json has them
    comparison = json.loads((out / "comparison.json").read_text())
    decided = text.split("## Champion ")[1].split("\n## ")[0].splitlines()
    assert comparison["challengers"]
    for r in comparison["challengers"]:
        line = next(line for line in decided if line.startswith(f"| {r['challenger']} |"))
        for metric, bound in (("coverage@10", ">="), ("popularity_percentile@10", "<=")):
            check = r["guardrails"][metric]
            assert f"{check['challenger']:.3f} ({bound} {check['limit']:.3f})" in line

    # the users behind each history bucket, in the table and on the plot's caption
    per_user = json.loads((out / "metrics.json").read_text())["loo"]
    users = per_user["popularity"]["users"]
    table = text.split("by history length (interactions before the target)")[1]
    counts = re.search(r"\| test users \| ([^\n]*) \|", table).group(1).split(" | ")
    assert sum(int(c) for c in counts) == users
    assert "test users per bucket: " in html


def test_the_protocol_paragraph_appears_once(evaluated):
    out, _, _ = evaluated
    text = (out / "report.md").read_text()
    assert text.count("leave-one-out by time: each user's last interaction is the target") == 1
    assert text.count("Seen items removed from the candidates") == 1
    assert text.count("ties count against the model") == 1
    # each table still names its own card, with its ranking and users
    assert "Protocol `loo/sampled` (see Protocol): sampled" in text
    full = r"Protocol `loo/full` \(see Protocol\): full ranking; .*; \d+ test users"
    assert re.search(full, text)


def test_every_plot_is_readable_width(evaluated):
    out, _, _ = evaluated
    html = (out / "report.html").read_text()
    for data in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html):
        png = base64.b64decode(data)
        width = int.from_bytes(png[16:20], "big")  # the IHDR chunk's width
        assert 900 <= width <= 1400, width
    assert "img{max-width:100%}" in html


def test_the_code_commit_ignores_commits_of_outputs(tmp_path: Path, monkeypatch):
    """The report names the last commit of the code, so committing a run's outputs (dvc.lock,
    caches) leaves the report DVC hashed unchanged, and a clone reports the same commit."""
    import subprocess

    from tasks.evaluate import code_commit

    def git(*args: str, cwd: Path) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd,
                       check=True, capture_output=True)  # fmt: skip

    project = tmp_path / "project"
    (project / "tasks").mkdir(parents=True)
    (project / "tasks" / "stage.py").write_text("x = 1\n")
    (project / "params.yaml").write_text("seed: 1\n")
    git("init", "-q", cwd=project)
    git("add", "-A", cwd=project)
    git("commit", "-qm", "code", cwd=project)
    monkeypatch.chdir(project)
    first = code_commit()
    assert first and re.fullmatch(r"[0-9a-f]{12}", first)
    (project / "dvc.lock").write_text("outs\n")
    (project / "tasks" / "__pycache__").mkdir()
    (project / "tasks" / "__pycache__" / "stage.pyc").write_bytes(b"\0")
    git("add", "-A", cwd=project)
    git("commit", "-qm", "outputs", cwd=project)
    assert code_commit() == first
    git("clone", "-q", str(project), str(tmp_path / "clone"), cwd=tmp_path)
    monkeypatch.chdir(tmp_path / "clone")
    assert code_commit() == first
    (tmp_path / "clone" / "params.yaml").write_text("seed: 2\n")
    assert code_commit() == f"{first} + uncommitted changes"
    monkeypatch.chdir(tmp_path)  # not a git checkout
    assert code_commit() is None
