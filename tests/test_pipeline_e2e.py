"""End to end: the real `recsys` CLI, `dvc repro` and the Prefect flow on small synthetic data."""

from __future__ import annotations

import json
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

from tests.conftest import api_call, prefect_env

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("e2e")]


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, check: bool = True):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def clean_env(tmp: Path, api_url: str | None = None) -> dict[str, str]:
    return prefect_env(tmp / "prefect-home", api_url)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A throw-away git + DVC project with the repo's stage graph and a synthetic raw file."""
    proj = tmp_path / "proj"
    proj.mkdir()
    # .gitignore too: git then holds what a clone of the repository holds (of the reports,
    # reports/evaluation/metrics.json alone)
    for name in ("dvc.yaml", "data.dvc", ".dvcignore", ".gitignore"):
        shutil.copy(ROOT / name, proj / name)
    for package in ("tasks", "recsys_models"):
        shutil.copytree(
            ROOT / package, proj / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["ingest"].update(source="parquet", path="data/raw/synth/interactions.parquet")
    # the generator's item table as metadata, so content_based (which needs it) trains too
    params["ingest"]["items"].update(path="data/raw/synth/items.parquet")
    params["ingest"]["items"]["columns"].update(title="title", categories="genres", year="year")
    params["train"].update(max_epochs=2, patience=1)  # the stages run, briefly
    (proj / "params.yaml").write_text(yaml.safe_dump(params))
    env = clean_env(tmp_path)
    run(["git", "init", "-q"], proj)
    run(["dvc", "init", "-q"], proj, env)
    shutil.copytree(ROOT / ".dvc/plots", proj / ".dvc/plots")  # the charts' template
    # a first commit, as any clone has: DVCLive 3.49 fails on a git repo without one
    run(["git", "add", "-A"], proj, env)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], proj, env)
    run(
        [
            "recsys",
            "synth",
            "--users",
            "200",
            "--items",
            "150",
            "--interactions",
            "8000",
            "--out",
            "data/raw/synth",
        ],
        proj,
        env,
    )
    return proj


def test_dvc_repro_runs_the_stages_and_a_second_repro_changes_nothing(
    project: Path, tmp_path: Path, prefect_server: str
):
    env = clean_env(tmp_path)
    run(["dvc", "commit", "-q", "-f", "data.dvc"], project, env)
    first = run(["dvc", "repro"], project, env)
    stages = ["ingest", "validate", "features", "fit@popularity", "fit@itemknn"]
    stages += ["fit@content_based", "fit@userknn", "fit@ease", "fit@als"]
    stages += ["train@bpr_mf", "train@sasrec", "train@two_tower"]
    stages += ["train@rating_mf", "train@neumf", "train@gru4rec"]
    stages += ["temporal@sasrec", "temporal@ease", "evaluate"]
    for stage in stages:
        assert f"Running stage '{stage}'" in first.stdout
    assert json.loads((project / "models/sasrec/metrics.json").read_text())["ndcg@10"] >= 0
    decision = json.loads((project / "reports/evaluation/decision.json").read_text())
    assert decision["primary"]["card"]["id"] == "loo/full"
    shown = run(["dvc", "metrics", "show", "--json"], project, env).stdout
    assert "ndcg@10" in shown and "reports/evaluation/metrics.json" in shown
    plots = json.loads(run(["dvc", "plots", "show", "--json"], project, env).stdout)
    assert "errors" not in plots, plots.get("errors")  # every file of every chart was there
    assert set(plots["data"]) == {"validation_ndcg", "popularity_bias", "ndcg_by_history"}
    lines = {  # chart -> the models drawn in it, one line (file) each
        chart: {row["filename"].split("/")[0].removesuffix(".csv") for row in values}
        for chart, [drawn] in plots["data"].items()
        for values in [drawn["content"]["data"]["values"]]
    }
    gradient = {"bpr_mf", "sasrec", "two_tower", "rating_mf", "neumf", "gru4rec"}
    assert lines["validation_ndcg"] == gradient
    assert lines["popularity_bias"] == lines["ndcg_by_history"] >= gradient | {"popularity"}
    manifest = json.loads((project / "data/features/manifest.json").read_text())
    assert manifest
    summary = json.loads((project / "reports/validation/summary.json").read_text())
    assert summary["success"] is True
    lock = (project / "dvc.lock").read_text()

    second = run(["dvc", "repro"], project, env)
    assert "Running stage" not in second.stdout
    assert (project / "dvc.lock").read_text() == lock
    status = run(["dvc", "status"], project, env)
    assert "up to date" in status.stdout
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    run([*git, "add", "-A"], project, env)
    run([*git, "commit", "-qm", "baseline"], project, env)

    # `make demo` on a fresh clone: the Prefect flow writes byte for byte what `dvc repro`
    # recorded in the committed dvc.lock, so once its outputs are in DVC's cache (`dvc commit`,
    # as the Makefile's demo does) `dvc status` has nothing to report and dvc.lock is unchanged.
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path, env)
    shutil.copytree(project / "data/raw", clone / "data/raw")  # what `make data` fetches
    run(["recsys", "flow", "run", "--no-fetch"], clone, clean_env(tmp_path, prefect_server))
    status = run(["dvc", "status"], clone, env).stdout
    assert "not in cache" in status  # and nothing else: no output or dependency differs
    assert "modified" not in status and "changed deps" not in status, status
    run(["dvc", "commit", "-q", "-f"], clone, env)
    assert run(["git", "status", "--porcelain", "dvc.lock"], clone, env).stdout == ""
    assert "up to date" in run(["dvc", "status"], clone, env).stdout

    # A DVC experiment changes one hyper-parameter: only SASRec's stages and the evaluation
    # rerun, and DVC compares the experiment's metrics and plots with the workspace's.
    exp = run(["dvc", "exp", "run", "-n", "wide", "-S", "train.sasrec.hidden=16"], project, env)
    assert "Running stage 'train@sasrec'" in exp.stdout
    assert "Running stage 'evaluate'" in exp.stdout
    assert "Running stage 'fit@ease'" not in exp.stdout
    shown = json.loads(run(["dvc", "exp", "show", "--json"], project, env).stdout)
    assert "wide" in json.dumps(shown) and '"hidden": 16' in json.dumps(shown)
    diff = run(["dvc", "metrics", "diff", "HEAD", "--json"], project, env).stdout
    assert "reports/evaluation/metrics.json" in diff
    run(["dvc", "plots", "diff", "HEAD", "--json"], project, env)


def test_cli_chain_then_bad_raw_file_leaves_outputs_intact(project: Path, tmp_path):
    env = clean_env(tmp_path)
    for stage in ("ingest", "validate", "features"):
        run(["recsys", stage], project, env)
    outputs = [*(project / "data/interim").rglob("*"), *(project / "data/features").rglob("*")]
    before = {p: p.read_bytes() for p in outputs if p.is_file()}
    (project / "data/raw/synth/interactions.parquet").write_bytes(b"PAR1 not really parquet")
    proc = run(["recsys", "ingest"], project, env, check=False)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "interactions.parquet" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert {p: p.read_bytes() for p in outputs if p.is_file()} == before


def test_flow_run_on_a_real_server_completes_and_publishes_the_artifact(
    project: Path, tmp_path: Path, prefect_server: str
):
    env = clean_env(tmp_path, api_url=prefect_server)
    proc = run(["recsys", "flow", "run", "--no-fetch"], project, env)
    assert "recsys pipeline: data summary" in proc.stdout  # the CLI shows the artifact
    interactions = pl.read_parquet(project / "data/features/interactions.parquet")
    assert interactions.height > 0

    runs = api_call(prefect_server, "/flow_runs/filter", {"limit": 5})
    runs = [r for r in runs if r["parent_task_run_id"] is None]  # not the train-models subflow
    assert [r["state_type"] for r in runs] == ["COMPLETED"]
    artifacts = api_call(
        prefect_server, "/artifacts/filter", {"artifacts": {"key": {"any_": ["data-summary"]}}}
    )
    assert len(artifacts) == 1 and artifacts[0]["flow_run_id"] == runs[0]["id"]
    assert "| rows | 8000 |" in artifacts[0]["data"]
    report = api_call(
        prefect_server, "/artifacts/filter", {"artifacts": {"key": {"any_": ["evaluation-report"]}}}
    )
    assert len(report) == 1 and "Champion" in report[0]["data"]
    assert "decision:" in proc.stdout
    assert "report: reports/evaluation/report.html" in proc.stdout
    assert "ranking by ndcg@10 (leave-one-out test split, full ranking):" in proc.stdout
    logged = proc.stdout + proc.stderr  # one line per trained model, its validation figures
    assert re.search(r"popularity \(loo\): validation NDCG@10 0\.\d{4}, HR@10", logged)
    assert (project / "reports/evaluation/decision.json").is_file()

    # Nothing pickled is kept: Prefect persisted no result; the stage cache is JSON data.
    home = tmp_path / "prefect-home"
    assert [p for p in (home / "storage").rglob("*") if p.is_file()] == []
    records = sorted((home / "recsys-stage-cache").glob("*.json"))
    assert records and all(isinstance(json.loads(r.read_text()), dict) for r in records)
    # A record replaced by a crafted pickle is refused, never executed: the stage reruns.
    marker = tmp_path / "executed"
    bomb = pickle.dumps(Bomb(str(marker)))
    for record in records:
        record.write_bytes(bomb)
    run(["recsys", "flow", "run", "--no-fetch"], project, env)
    assert not marker.exists()
    # the data stages (same inputs, so the same records) ran again and wrote them afresh
    rewritten = [json.loads(r.read_bytes()) for r in records if r.read_bytes()[:1] == b"{"]
    outs = {record["out"] for record in rewritten}
    assert {"data/interim", "reports/validation"} <= outs


class Bomb:
    """Unpickling it would create `path`: the proof that a cache record was executed."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path(self.path).touch, ())


def test_flow_trains_models_side_by_side_on_a_dask_cluster(
    project: Path, tmp_path: Path, prefect_server: str
):
    """train.parallel: dask: the trainings of the train-models subflow overlap in time."""
    env = clean_env(tmp_path, api_url=prefect_server)
    sets = ["train.parallel=dask", "train.workers=2", "train.models=[popularity, bpr_mf]"]
    cmd = ["recsys", "flow", "run", "--no-fetch", "--no-release"]
    proc = run([*cmd, *[arg for s in sets for arg in ("--set", s)]], project, env)
    runs = api_call(prefect_server, "/task_runs/filter", {"limit": 50})
    trains = [  # "train <model> (<protocol>)"; the subflow's own run is train-models-N
        r for r in runs if r["name"].startswith("train ") and r["state_type"] == "COMPLETED"
    ]
    assert len(trains) == 4, proc.stdout[-2000:]  # two models, two protocols
    spans = sorted((r["start_time"], r["end_time"]) for r in trains)
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:], strict=False))
    for model in ("popularity", "bpr_mf"):
        assert (project / "models" / model / "temporal" / "weights.pt").is_file()
