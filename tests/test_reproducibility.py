"""Determinism on one machine: every model of the registry, trained twice on the same features
with the same parameters and thread count, gives the same weights, bit for bit (CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys_models.registry import model_names
from tasks.io import file_sha256
from tasks.params import load_params
from tasks.train import train
from tests.conftest import synthetic_features

SMALL = {
    "train.accelerator": "cpu",
    "train.max_epochs": 2,
    "train.als": {"factors": 8, "iterations": 2},
    "train.neumf": {"dim": 8, "hidden": 8},
    "train.gru4rec": {"hidden": 16},
    "train.sasrec": {"hidden": 16},
    "train.two_tower": {"dim": 16, "hidden": 32},
}


@pytest.fixture(scope="module")
def features(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("determinism")
    synthetic_features(root, 150, 90, 4000, seed=11)
    return root / "features"


@pytest.mark.parametrize("name", model_names())
def test_training_twice_gives_the_same_weights(name: str, features: Path, tmp_path: Path):
    params = load_params(tmp_path / "absent.yaml", SMALL)
    hashes = []
    for run in ("first", "second"):
        out = tmp_path / run
        metrics = train(name, features, out, params)
        hashes.append((file_sha256(out / "weights.pt"), metrics["ndcg@10"]))
    assert hashes[0] == hashes[1]
