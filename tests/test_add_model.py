"""The README's "Adding a model" section, followed step by step in a copy of the project: a toy
model's file, its params.yaml section and its dvc.yaml entries are all it takes for the CLI to
offer it, train it, evaluate it and export it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Step 1: the model's file (the README's template, filled in).
TOY = '''"""Toy: item popularity raised to a power, for the add-a-model test."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from recsys_models.data import FeatureData
from recsys_models.spec import CLOSED_FORM, SCORE_GRAPH, ModelSpec


@dataclass(frozen=True)
class Config:
    power: float = 0.5


class Toy(nn.Module):
    def __init__(self, scores: torch.Tensor):
        super().__init__()
        self.register_buffer("scores", scores)

    def score(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(history[:, :1], dtype=torch.float32) + self.scores


def fit(data: FeatureData, config: Config, seed: int) -> Toy:
    counts = torch.as_tensor(data.item_popularity, dtype=torch.float32)
    return Toy(counts.pow(config.power))


def restore(data: FeatureData, config: Config) -> Toy:
    return Toy(torch.zeros(data.n_items + 1))


SPEC = ModelSpec(
    name="toy", kind=CLOSED_FORM, config=Config, fit=fit, restore=restore, export=SCORE_GRAPH
)
'''


def project_copy(dest: Path) -> Path:
    """The tracked files of the project as they are in the work tree (a fresh clone's)."""
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, files):
        if not (ROOT / name.decode()).is_file():  # deleted in the work tree, not yet committed
            continue
        target = dest / name.decode()
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name.decode(), target)
    return dest


@pytest.mark.slow
def test_a_new_model_is_one_file_plus_its_params_and_dvc_entries(tmp_path: Path):
    proj = project_copy(tmp_path / "project")
    (proj / "recsys_models" / "toy.py").write_text(TOY)
    # Step 2: its params.yaml section.
    params = (proj / "params.yaml").read_text()
    params = params.replace("\n  popularity: {}\n", "\n  popularity: {}\n  toy:\n    power: 0.5\n")
    (proj / "params.yaml").write_text(params)
    # Step 3: the fit and temporal lists of dvc.yaml.
    dvc = (proj / "dvc.yaml").read_text()
    entry = "      popularity: {uses: recsys_models/data.py}\n"
    assert dvc.count(entry) == 2  # fit and temporal
    dvc = dvc.replace(entry, entry + "      toy: {uses: recsys_models/data.py}\n")
    # ... and its line in the charts of every model (the top-level plots)
    for chart, column in (("popularity_bias", "share"), ("by_history/loo", "ndcg@10")):
        line = f"        ${{evaluate.out}}/plots/{chart}/%s.csv: {column}\n"
        assert dvc.count(line % "popularity") == 1
        dvc = dvc.replace(line % "popularity", line % "popularity" + line % "toy")
    (proj / "dvc.yaml").write_text(dvc)

    env = os.environ | {"PYTHONPATH": str(proj)}  # the copy's packages, not the checkout's

    def recsys(*args: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "cli.main", *args],
            cwd=proj,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout

    assert "toy" in recsys("train", "--help")
    recsys("synth", "--users", "200", "--items", "120", "--interactions", "6000", "--out", "in")
    recsys("features", "--interim", "in", "--out", "feat", "--skip-validation-check")
    for name in ("popularity", "toy"):
        trained = recsys("train", "--model", name, "--features", "feat", "--set", "train.out=m")
        assert "ndcg@10" in trained
    report = recsys(
        "evaluate", "--features", "feat", "--models", "m", "--out", "report",
        "--params", "params.yaml",
    )  # fmt: skip
    assert "toy" in report
    exported = recsys(
        "export", "--model", "toy", "--models-dir", "m", "--features", "feat", "--out", "art"
    )
    assert "top-10 agreement 1.0000" in exported
    # The copy's own structure tests agree that the three places list the model. (Not the two
    # about the committed repository: the copy has no git history, and its dvc.lock predates
    # the toy model until a `dvc repro`.)
    committed = "not committed_dvc_lock and not git_keeps"
    checks = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", committed]
        + ["tests/test_structure.py"],
        cwd=proj,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert checks.returncode == 0, checks.stdout[-3000:]
