"""The `recsys` command's own verbs: --version, and `models`, which lists every registered
model with its training state on the current features, its versions and the champion."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from cli.main import main
from recsys_models.registry import model_names
from tasks import registry
from tasks.export import export
from tasks.params import load_params
from tasks.train import train
from tests.conftest import free_port, synthetic_features

ROOT = Path(__file__).resolve().parents[1]


def test_version(capsys):
    try:
        main(["--version"])
    except SystemExit as done:
        assert done.code == 0
    assert capsys.readouterr().out.startswith("recsys ")


def test_models_lists_training_state_versions_and_the_champion(tmp_path: Path, capsys):
    synthetic_features(tmp_path, 80, 50, 2000, seed=5)
    features, models, artifacts = tmp_path / "features", tmp_path / "models", tmp_path / "art"
    sets = {"features.out": str(features), "train.out": str(models)}
    sets["evaluate.out"] = str(tmp_path / "evaluation")  # not the checkout's reports/
    params = load_params(tmp_path / "absent.yaml", sets)
    train("popularity", features, models / "popularity", params)
    train("itemknn", features, models / "itemknn", params)
    version = export("popularity", models, features, artifacts, parity_users=16, latency_calls=5)
    registry.promote(artifacts, "popularity", version["version"], "test")
    config = json.loads((models / "itemknn" / "config.json").read_text())
    config["data"]["manifest_sha256"] = "0" * 64  # as if trained on an older data version
    (models / "itemknn" / "config.json").write_text(json.dumps(config))

    argv = ["models", "--artifacts", str(artifacts), "--params", str(tmp_path / "absent.yaml")]
    argv += [arg for key, value in sets.items() for arg in ("--set", f"{key}={value}")]
    assert main(argv) == 0
    lines = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()}
    assert set(model_names()) <= set(lines)
    # model, kind, loo model, temporal model, versions, latest / champion
    assert lines["popularity"] == ["popularity", "closed-form", "current", "-", "1"] + [
        version["version"],
        "(champion)",
    ]
    assert lines["itemknn"][2] == "stale"
    assert lines["sasrec"] == ["sasrec", "gradient", "-", "-", "0", "-"]
    # the champion with its figures: never evaluated here, so its export's figures only
    assert lines["champion:"][1] == f"popularity/{version['version']},"
    assert lines["reason:"] == ["reason:", "test"]
    assert lines["export:"][:3] == ["export:", "latency", "p50"]
    assert "not in" in " ".join(lines["test"])


# --- what the commands print --------------------------------------------------------------------

LIGHTNING_NOISE = ("GPU available", "TPU available", "Tip:", "litlogger", "litmodels", "deprecated")
LONG_FIGURE = re.compile(r"\d\.\d{5,}")  # a float printed with more than 4 decimals


def recsys(args: list[str], cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    """`recsys ARGS` as a user runs it, its output captured (so stderr is not a terminal)."""
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "cli.main", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, **kwargs)


def test_train_prints_epoch_lines_figures_to_4_digits_and_where_it_wrote(tmp_path: Path):
    synthetic_features(tmp_path, 60, 40, 1500, seed=3)
    sets = ["--set", "train.max_epochs=2", "--set", "train.patience=5", "--set", "train.out=models"]
    sets += ["--set", "features.out=features"]
    done = recsys(["train", "--model", "bpr_mf", "--params", "absent.yaml", *sets], tmp_path)
    assert done.returncode == 0, done.stderr
    output = done.stdout + done.stderr
    assert not [line for line in output.splitlines() if any(n in line for n in LIGHTNING_NOISE)]
    epochs = [line for line in done.stderr.splitlines() if line.startswith("bpr_mf epoch")]
    assert [line.split(",")[0] for line in epochs] == ["bpr_mf epoch 1/2", "bpr_mf epoch 2/2"]
    assert all("val NDCG@10 0." in line and "left" in line for line in epochs)
    assert not LONG_FIGURE.search(output)
    assert re.search(r"^  ndcg@10: 0\.\d{4}$", done.stdout, re.MULTILINE)
    last = done.stdout.splitlines()[-1]
    assert last.startswith("wrote models/bpr_mf/ (") and "weights.pt" in last


def test_evaluate_ends_with_a_ranking_the_decision_and_the_report_path(tmp_path: Path, capsys):
    synthetic_features(tmp_path, 80, 50, 2000, seed=5)
    features, models, out = tmp_path / "features", tmp_path / "models", tmp_path / "evaluation"
    sets = {
        "features.out": str(features),
        "train.out": str(models),
        "evaluate.out": str(out),
        "evaluate.artifacts": str(tmp_path / "artifacts"),
    }
    params = load_params(tmp_path / "absent.yaml", sets)
    sets["evaluate.protocols"] = "[loo]"  # as YAML on the command line
    for name in ("popularity", "itemknn"):
        train(name, features, models / name, params)
    argv = ["evaluate", "--params", str(tmp_path / "absent.yaml")]
    argv += [arg for key, value in sets.items() for arg in ("--set", f"{key}={value}")]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    start = lines.index("ranking by ndcg@10 (leave-one-out test split, full ranking):")
    table = lines[start + 1 : start + 4]
    assert table[0].split() == ["#", "model", "ndcg@10", "hr@10", "mrr"]
    ranked = [row.split()[1] for row in table[1:]]
    assert sorted(ranked) == ["itemknn", "popularity"]
    figures = [float(row.split()[-3]) for row in table[1:]]
    assert figures == sorted(figures, reverse=True)
    assert all(re.fullmatch(r"0\.\d{4}", cell) for row in table[1:] for cell in row.split()[-3:])
    assert lines[start + 4].startswith("decision: ")
    assert lines[start + 5].startswith(f"report: {out / 'report.html'}")
    assert (out / "report.html").is_file()
    assert lines[-1].startswith(f"wrote {out}/ (") and "decision.json" in lines[-1]
    assert len(lines) - start < 10 and not any(line.startswith("|") for line in lines)


def test_serve_answers_healthz_on_loopback_then_stops(tmp_path: Path):
    synthetic_features(tmp_path, 60, 40, 1500, seed=3)
    features, models, artifacts = tmp_path / "features", tmp_path / "models", tmp_path / "art"
    params = load_params(tmp_path / "absent.yaml", {"features.out": str(features)})
    train("popularity", features, models / "popularity", params)
    version = export("popularity", models, features, artifacts, parity_users=16, latency_calls=5)
    registry.promote(artifacts, "popularity", version["version"], "test")

    port = free_port()
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "cli.main", "serve", "--artifacts", str(artifacts)]
    cmd += ["--port", str(port), "--log-level", "warning"]
    log = tmp_path / "serve.log"
    with open(log, "w") as sink:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline, answer = time.monotonic() + 60, None
        while answer is None:
            url = f"http://127.0.0.1:{port}/healthz"
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=5) as r:
                answer = (r.status, json.loads(r.read()))
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        assert answer == (200, {"status": "ok"})
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert log.read_text().startswith(f"serving the champion of {artifacts} on ")
