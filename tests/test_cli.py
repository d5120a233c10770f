"""The `recsys` command's own verbs: --version, and `models`, which lists every registered
model with its training state on the current features, its versions and the champion."""

from __future__ import annotations

import json
from pathlib import Path

from cli.main import main
from recsys_models.registry import model_names
from tasks import registry
from tasks.export import export
from tasks.params import load_params
from tasks.train import train
from tests.conftest import synthetic_features


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
