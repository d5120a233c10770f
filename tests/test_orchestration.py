"""Orchestration end to end: a real Prefect server, a process work pool with a real worker, the
deployments of deploy/prefect.yaml, flow runs started the way the UI starts them (REST, and a
real Chromium clicking "Run" -> "Quick run"), the retrain flow on appended data.

Tiny synthetic data and two fast models (popularity, itemknn) keep a pipeline run to seconds.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml

from tests.browser import SCREENSHOTS, Browser
from tests.conftest import api_call, prefect_env, start_prefect_server, stop

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
POOL = "recsys-process"
ARTIFACT_KEYS = (
    "data-summary",
    "validation-result",
    "metrics-table",
    "decision",
    "decision-table",
    "model-version",
    "evaluation-report",
)
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("e2e")]


# --- helpers ----------------------------------------------------------------------------------


def run(cmd: list[str], cwd: Path, env: dict[str, str], check: bool = True, timeout: int = 600):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def make_project(
    root: Path, models: tuple[str, ...] = ("popularity", "itemknn"), default_source: bool = False
) -> Path:
    """A throw-away project: the code, params.yaml on a synthetic parquet raw file.

    default_source: params.yaml's own source instead (MovieLens-100K in data/raw/ml-100k, as
    synthetic ratings in u.data's layout: CI cannot download MovieLens), with DVC tracking
    data/raw through data.dvc as in the repository.
    """
    from tasks.synth import synthesize

    proj = root / "proj"
    proj.mkdir(parents=True)
    for package in ("tasks", "recsys_models", "flows"):
        shutil.copytree(
            ROOT / package, proj / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    (proj / "deploy").mkdir()
    for name in ("prefect.yaml", "prefect_deploy.py"):
        shutil.copy(ROOT / "deploy" / name, proj / "deploy" / name)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"].update(max_epochs=1, patience=1, models=list(models))
    synthesize(proj / "data/raw/synth", n_users=200, n_items=150, n_interactions=8000, seed=42)
    if default_source:
        raw = proj / params["ingest"]["path"]
        raw.mkdir(parents=True)
        ratings = pl.read_parquet(proj / "data/raw/synth/interactions.parquet")
        write_u_data(ratings, raw / "u.data")
        shutil.rmtree(proj / "data/raw/synth")
        (proj / "data.dvc").write_text("outs:\n- path: data/raw\n")
        dvc = [str(BIN / "dvc")]
        for cmd in (["init", "--no-scm", "-q"], ["commit", "-f", "-q", "data.dvc"]):
            subprocess.run([*dvc, *cmd], cwd=proj, check=True, capture_output=True)
    else:
        params["ingest"].update(source="parquet", path="data/raw/synth/interactions.parquet")
    (proj / "params.yaml").write_text(yaml.safe_dump(params))
    return proj


def write_u_data(interactions: pl.DataFrame, path: Path) -> None:
    """MovieLens-100K's u.data layout: user, item, integer rating, epoch seconds; tabs."""
    rows = interactions.select(
        "user_id", "item_id", pl.col("rating").round().cast(pl.Int64), "timestamp"
    )
    rows.write_csv(path, separator="\t", include_header=False)


def wait_for_runs(api: str, ids: list[str], timeout: float = 600) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        runs = [api_call(api, f"/flow_runs/{i}", method="GET") for i in ids]
        if all(r["state_type"] in TERMINAL for r in runs):
            return runs
        if time.monotonic() > deadline:
            states = {r["name"]: r["state_type"] for r in runs}
            raise AssertionError(f"flow runs not finished after {timeout:.0f} s: {states}")
        time.sleep(2)


def artifacts_by_key(api: str, key: str) -> list[dict]:
    return api_call(api, "/artifacts/filter", {"artifacts": {"key": {"any_": [key]}}})


def logs_of(api: str, flow_run_id: str) -> list[dict]:
    body = {"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200, "sort": "TIMESTAMP_ASC"}
    return api_call(api, "/logs/filter", body)


def first_log(logs: list[dict], text: str) -> str:
    found = [entry["timestamp"] for entry in logs if text in entry["message"]]
    assert found, f"no log line with {text!r}"
    return found[0]


def champion(proj: Path) -> dict | None:
    path = proj / "artifacts" / "champion.json"
    return json.loads(path.read_text()) if path.is_file() else None


# --- the stack: server, work pool, deployments, worker ----------------------------------------


class Stack:
    def __init__(self, api: str, proj: Path, env: dict[str, str], worker_log: Path):
        self.api, self.proj, self.env, self.worker_log = api, proj, env, worker_log

    def deployment(self, full_name: str) -> dict:
        return api_call(self.api, f"/deployments/name/{full_name}", method="GET")

    def start(self, full_name: str, parameters: dict | None = None) -> str:
        """POST /deployments/{id}/create_flow_run: what the UI's Run button sends."""
        deployment_id = self.deployment(full_name)["id"]
        body = {"parameters": parameters} if parameters else {}
        created = api_call(self.api, f"/deployments/{deployment_id}/create_flow_run", body)
        return created["id"]


@contextlib.contextmanager
def running_stack(tmp: Path, proj: Path) -> Iterator[Stack]:
    """A server, a process work pool, the deployments of `proj` and a worker started in it."""
    home = tmp / "prefect-home"
    server, api = start_prefect_server(home, tmp / "prefect-server.log")
    worker = None
    try:
        env = prefect_env(home, api) | {"PREFECT_WORKER_QUERY_SECONDS": "2"}
        run([str(BIN / "prefect"), "work-pool", "create", POOL, "--type", "process"], proj, env)
        out = run([str(BIN / "python"), "deploy/prefect_deploy.py"], proj, env).stdout
        assert "recsys-pipeline/full registered" in out, out
        worker_log = tmp / "worker.log"
        with open(worker_log, "w") as log:
            worker = subprocess.Popen(
                [str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--type", "process"],
                cwd=proj,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        yield Stack(api, proj, env, worker_log)
    finally:
        if worker is not None:
            stop(worker)
        stop(server)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One stack shared by this module's UI tests (starting it takes most of a minute on two
    busy cores)."""
    tmp = tmp_path_factory.mktemp("orchestration")
    with running_stack(tmp, make_project(tmp)) as stack:
        yield stack


# --- tests ------------------------------------------------------------------------------------


def test_deployments_are_registered_with_a_form_and_a_weekly_retrain_schedule(stack: Stack):
    full = stack.deployment("recsys-pipeline/full")
    assert full["work_pool_name"] == POOL
    assert full["pull_steps"][0]["prefect.deployments.steps.set_working_directory"] == {
        "directory": str(stack.proj.resolve())
    }
    schema = full["parameter_openapi_schema"]
    form = schema["properties"]
    assert {"training", "data", "params_path", "overrides", "incoming", "release"} <= set(form)
    assert all(field.get("description") for field in form.values())  # the UI shows them
    models = schema["definitions"]["Training"]["properties"]["models"]
    assert models["type"] == "array" and "popularity" in models["items"]["enum"]
    retrain = stack.deployment("recsys-pipeline/retrain")
    assert retrain["parameters"]["incoming"] == "data/incoming"
    assert [s["schedule"]["cron"] for s in retrain["schedules"]] == ["0 3 * * 1"]
    # the server's scheduler turns the cron into runs: Mondays, 03:00 UTC
    body = {"deployments": {"id": {"any_": [retrain["id"]]}}, "limit": 10}
    deadline = time.monotonic() + 120
    while not (scheduled := api_call(stack.api, "/flow_runs/filter", body)):
        assert time.monotonic() < deadline, "the scheduler created no run for the retrain cron"
        time.sleep(2)
    for flow_run in scheduled:
        assert flow_run["state_type"] == "SCHEDULED"
        assert flow_run["expected_start_time"].endswith("T03:00:00Z")
    for name in ("validate-only/validate-only", "evaluate-only/evaluate-only"):
        assert stack.deployment(name)["work_pool_name"] == POOL


def test_two_full_runs_at_once_through_the_rest_api_complete_one_after_the_other(stack: Stack):
    first = stack.start("recsys-pipeline/full")
    second = stack.start("recsys-pipeline/full")
    runs = wait_for_runs(stack.api, [first, second])
    assert [r["state_type"] for r in runs] == ["COMPLETED", "COMPLETED"], (
        stack.worker_log.read_text()[-3000:]
    )

    # serialised: whichever got the lock second acquired it after the other released it
    logs = {r["id"]: logs_of(stack.api, r["id"]) for r in runs}
    acquired = {i: first_log(entries, ".lock acquired") for i, entries in logs.items()}
    one, two = sorted(acquired, key=acquired.get)
    assert acquired[two] >= first_log(logs[one], ".lock released")
    assert any("waiting for the pipeline lock" in e["message"] for e in logs[two])

    # cached: the later run recomputed no data stage (their inputs and params did not change)
    subflows = api_call(  # the trainings run in the train-models subflow
        stack.api, "/flow_runs/filter", {"flow_runs": {"parent_flow_run_id": {"any_": [two]}}}
    )
    ids = [two, *(f["id"] for f in subflows)]
    tasks_of_two = api_call(
        stack.api, "/task_runs/filter", {"flow_runs": {"id": {"any_": ids}}, "limit": 50}
    )
    trains = {  # "train <model> (<protocol>)"; the subflow's own run is train-models-N
        t["name"]: t["state_name"] for t in tasks_of_two if t["name"].startswith("train ")
    }
    assert any(name.endswith(" (loo)") for name in trains), trains
    assert set(trains.values()) == {"Cached"}, trains
    states = {t["name"].rsplit("-", 1)[0]: t["state_name"] for t in tasks_of_two}
    for stage in ("ingest", "validate", "features"):
        assert states[stage] == "Cached", states

    # the artifacts: every key, once per run
    for key in ARTIFACT_KEYS:
        found = artifacts_by_key(stack.api, key)
        assert {a["flow_run_id"] for a in found} == {one, two}, key
    for key in ("metrics-table", "decision-table"):
        assert {a["type"] for a in artifacts_by_key(stack.api, key)} == {"table"}, key
    validation = artifacts_by_key(stack.api, "validation-result")[0]["data"]
    assert "Validation: passed" in validation and "data_docs/index.html" in validation

    # the registry: the first deployment promoted the best baseline, exported once, intact
    from tasks.registry import champion_folder, list_versions, verify_version

    pointer = champion(stack.proj)
    decision = json.loads((stack.proj / "reports/evaluation/decision.json").read_text())
    assert pointer is not None  # the later run scored the promoted champion as served
    assert decision["champion"] == f"{pointer['model']}@{pointer['version']}"
    assert pointer["reason"].startswith("first deployment")
    verify_version(champion_folder(stack.proj / "artifacts", pointer))
    assert len(list_versions(stack.proj / "artifacts")) == 1
    versions = [a["data"] for a in artifacts_by_key(stack.api, "model-version")]
    assert all(f"{pointer['model']}/{pointer['version']}" in text for text in versions)
    assert sum("promoted this run: yes" in text for text in versions) == 1


def test_evaluate_only_and_validate_only_deployments_complete(stack: Stack):
    champion = stack.proj / "artifacts" / "champion.json"
    if not champion.is_file():  # run alone or on a fresh stack: first train and promote
        (run_id,) = [stack.start("recsys-pipeline/full")]
        assert wait_for_runs(stack.api, [run_id])[0]["state_type"] == "COMPLETED"
    before = champion.read_bytes()
    ids = [stack.start("validate-only/validate-only"), stack.start("evaluate-only/evaluate-only")]
    runs = wait_for_runs(stack.api, ids)
    assert [r["state_type"] for r in runs] == ["COMPLETED", "COMPLETED"]
    assert (stack.proj / "artifacts" / "champion.json").read_bytes() == before
    keys = {a["key"] for a in api_call(stack.api, "/artifacts/filter", {"limit": 200})
            if a["flow_run_id"] in ids}  # fmt: skip
    assert {"validation-result", "data-summary", "metrics-table", "decision"} <= keys


# --- the Prefect UI in a browser ------------------------------------------------------------------


def test_quick_run_from_the_prefect_ui_in_chromium(stack: Stack, tmp_path: Path):
    deployment = stack.deployment("recsys-pipeline/full")
    before = {
        r["id"]
        for r in api_call(
            stack.api, "/flow_runs/filter", {"deployments": {"id": {"any_": [deployment["id"]]}}}
        )
    }
    ui = stack.api.removesuffix("/api")
    browser = Browser(tmp_path / "chromium-profile")
    try:
        browser.send("Page.enable")
        browser.send("Page.navigate", url=f"{ui}/deployments/deployment/{deployment['id']}")
        browser.wait_js("document.body && document.body.innerText.includes('full')", "the page")
        browser.wait_js(
            "[...document.querySelectorAll('button')].some(b => b.innerText.trim() === 'Run')",
            "the Run button",
        )
        assert browser.click_text("button", "Run")
        browser.wait_js(
            "document.body.innerText.includes('Quick run')", "the Quick run menu entry", 30
        )
        time.sleep(1)  # the menu opens with a transition
        assert browser.click_text("button, [role=menuitem]", "Quick run")
        deadline = time.monotonic() + 60
        new: list[str] = []
        while not new and time.monotonic() < deadline:
            runs = api_call(
                stack.api,
                "/flow_runs/filter",
                {"deployments": {"id": {"any_": [deployment["id"]]}}},
            )
            new = [r["id"] for r in runs if r["id"] not in before]
            time.sleep(1)
        if len(new) != 1:
            browser.screenshot(SCREENSHOTS / "prefect-ui-failure.png")
        assert len(new) == 1, "the Quick run click created no flow run (prefect-ui-failure.png)"
        (finished,) = wait_for_runs(stack.api, new)
        assert finished["state_type"] == "COMPLETED"
        browser.send("Page.navigate", url=f"{ui}/runs/flow-run/{new[0]}")
        browser.wait_js("document.body.innerText.includes('Completed')", "the Completed state")
        shot = browser.screenshot(SCREENSHOTS / "prefect-quick-run.png")
        assert shot.stat().st_size > 10_000
    finally:
        browser.close()


# The models' multi-select of the run form is a native <select multiple>: a user's pick sets
# its options' `selected` and fires input and change, which is what this does.
PICK_MODELS = """(() => {
  const select = [...document.querySelectorAll('select[multiple]')]
    .find(s => [...s.options].some(o => o.value === 'sasrec'));
  if (!select) return null;
  for (const o of select.options) o.selected = %s.includes(o.value);
  select.dispatchEvent(new Event('input', {bubbles: true}));
  select.dispatchEvent(new Event('change', {bubbles: true}));
  return [...select.selectedOptions].map(o => o.value);
})()"""
SELECTED_MODELS = """[...[...document.querySelectorAll('select[multiple]')]
  .find(s => [...s.options].some(o => o.value === 'sasrec')).selectedOptions].map(o => o.value)"""


def submit_run_form(browser: Browser, stack: Stack, query: dict, before: set) -> list[dict]:
    """Click Submit and return the flow run it created. Prefect's SQLite backend can answer a
    write with "database is locked" when the two cores are saturated; the UI then shows
    "Something went wrong" and creates nothing, and a user clicks Submit again: so does this,
    once. The API calls that failed are named in the assertion."""
    for attempt in range(2):
        assert browser.click_text("button", "Submit")
        deadline, new = time.monotonic() + 90, []
        while not new and time.monotonic() < deadline:
            new = [
                r for r in api_call(stack.api, "/flow_runs/filter", query) if r["id"] not in before
            ]
            toast = "document.body.innerText.includes('Something went wrong')"
            if not new and attempt == 0 and browser.js(toast):
                break
            time.sleep(1)
        if new or attempt:
            break
        time.sleep(2)  # the toast stays; the second wait does not look at it
    if len(new) != 1:
        browser.screenshot(SCREENSHOTS / "prefect-ui-failure.png")
    failed = [
        f"{e['params']['response']['status']} {e['params']['response']['url']}"
        for e in browser.events
        if e["method"] == "Network.responseReceived" and e["params"]["response"]["status"] >= 400
    ]
    assert len(new) == 1, f"Submit created {len(new)} flow runs; failed calls: {failed}"
    return new


def test_custom_run_form_in_chromium_picks_two_models(stack: Stack, tmp_path: Path):
    """The deployment's run form shows typed fields; two models picked there are the ones
    trained (not params.yaml's), in task runs named for them, with the table artifacts."""
    deployment = stack.deployment("recsys-pipeline/full")
    query = {"deployments": {"id": {"any_": [deployment["id"]]}}}
    before = {r["id"] for r in api_call(stack.api, "/flow_runs/filter", query)}
    ui = stack.api.removesuffix("/api")
    picked = ["popularity", "bpr_mf"]  # params.yaml of the project trains popularity, itemknn
    browser = Browser(tmp_path / "chromium-profile")
    try:
        browser.send("Page.enable")
        browser.send("Page.navigate", url=f"{ui}/deployments/deployment/{deployment['id']}/run")
        browser.wait_js("document.body && document.body.innerText.includes('Models')", "the form")
        text = browser.js("document.body.innerText")
        for label in ("Models", "Protocols", "Epochs (at most)", "Patience", "Source", "release"):
            assert label in text, label
        sources = browser.js(
            "[...document.querySelectorAll('select')].map(s => [...s.options].map(o => o.value))"
            ".find(values => values.includes('csv'))"
        )
        assert sources and "movielens-100k" in sources and "parquet" in sources
        assert sorted(browser.js(PICK_MODELS % json.dumps(picked))) == sorted(picked)
        time.sleep(1)  # the form re-renders from its model: the pick must have reached it
        assert sorted(browser.js(SELECTED_MODELS)) == sorted(picked)
        browser.screenshot(SCREENSHOTS / "prefect-run-form.png")
        browser.send("Network.enable")
        new = submit_run_form(browser, stack, query, before)
    finally:
        browser.close()
    assert sorted(new[0]["parameters"]["training"]["models"]) == sorted(picked)
    (finished,) = wait_for_runs(stack.api, [new[0]["id"]])
    assert finished["state_type"] == "COMPLETED", stack.worker_log.read_text()[-3000:]

    subflows = api_call(
        stack.api,
        "/flow_runs/filter",
        {"flow_runs": {"parent_flow_run_id": {"any_": [finished["id"]]}}},
    )
    ids = [finished["id"], *(f["id"] for f in subflows)]
    names = {
        t["name"]
        for t in api_call(
            stack.api, "/task_runs/filter", {"flow_runs": {"id": {"any_": ids}}, "limit": 50}
        )
    }
    trained = {n for n in names if n.startswith("train ")}
    assert {f"train {m} (loo)" for m in picked} <= trained
    assert not any("itemknn" in name for name in trained), trained
    # The worker ships its logs to the API in batches, after the run's state: wait for them.
    deadline = time.monotonic() + 120
    while True:
        logged = [e["message"] for i in ids for e in logs_of(stack.api, i)]
        missing = [
            m
            for m in picked
            if not any(line.startswith(f"{m} (loo): validation NDCG@10 ") for line in logged)
        ]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert not missing, missing
    for key in ("metrics-table", "decision-table"):
        mine = [a for a in artifacts_by_key(stack.api, key) if a["flow_run_id"] == finished["id"]]
        assert [a["type"] for a in mine] == ["table"], key


# --- retrain ----------------------------------------------------------------------------------


def run_flow(proj: Path, env: dict[str, str], check: bool = True, **kwargs: Any):
    """One flow run in its own process, against the test's server."""
    code = (
        "import json, sys\n"
        "from flows.pipeline import recsys_pipeline\n"
        "summary = recsys_pipeline(**json.loads(sys.argv[1]))\n"
        "print('SKIPPED' if summary.get('skipped') else 'DONE')\n"
    )
    cmd = [str(BIN / "python"), "-c", code, json.dumps({"fetch": False, **kwargs})]
    return run(cmd, proj, env, check=check)


def new_interactions(
    proj: Path, rows: int, seed: int, raw: pl.DataFrame | None = None
) -> pl.DataFrame:
    """Synthetic interactions of the same users and items, later than everything so far
    (`raw`, by default the project's synthetic parquet source)."""
    from tasks.synth import synthesize

    folder = proj.parent / f"synth-{seed}"
    synthesize(folder, n_users=200, n_items=150, n_interactions=max(rows, 1000), seed=seed)
    new = pl.read_parquet(folder / "interactions.parquet").head(rows)
    if raw is None:
        raw = pl.read_parquet(proj / "data/raw/synth/interactions.parquet")
    shift = int(raw["timestamp"].max()) - int(new["timestamp"].min()) + 1
    return new.with_columns(pl.col("timestamp") + shift)


def test_retrain_appends_new_data_and_changes_the_champion_exactly_when_the_decision_says(
    tmp_path: Path, prefect_server: str
):
    proj = make_project(tmp_path)
    env = prefect_env(tmp_path / "prefect-home", prefect_server)
    raw = proj / "data/raw/synth/interactions.parquet"
    incoming = proj / "data/incoming"

    # the first deployment, with popularity alone: it becomes the champion
    run_flow(proj, env, overrides={"train.models": ["popularity"]})
    first = champion(proj)
    assert first is not None and first["model"] == "popularity"

    # nothing arrived: nothing is retrained, the champion stays (through the CLI this time)
    cli = [str(BIN / "recsys"), "flow", "run", "--no-fetch", "--incoming", "data/incoming"]
    assert "nothing retrained" in run(cli, proj, env).stdout
    assert champion(proj) == first

    # new interactions arrive; retrain with item-kNN as the challenger
    incoming.mkdir(parents=True)
    new_interactions(proj, 2000, seed=7).write_parquet(incoming / "week-1.parquet")
    raw_bytes = raw.read_bytes()
    run_flow(proj, env, incoming="data/incoming")
    assert raw.read_bytes() == raw_bytes  # appended as a part; the source is never rewritten
    assert len(list((proj / "data/raw/appended").glob("*.parquet"))) == 1
    assert pl.read_parquet(proj / "data/interim/interactions.parquet").height == 8000 + 2000
    assert not list(incoming.glob("*.parquet"))
    assert len(list((incoming / "processed").rglob("week-1.parquet"))) == 1
    decision = json.loads((proj / "reports/evaluation/decision.json").read_text())
    # compared against the registry's champion, scored from the version the service serves
    assert decision["champion"] == f"popularity@{first['version']}"
    after = champion(proj)
    verdict = decision["verdict"]
    assert (after != first) == verdict["promote"]
    if verdict["promote"]:
        assert after["model"] == verdict["model"] and after["version"] != first["version"]

    # data that drifts too far is rejected: the flow fails, raw data and champion untouched
    pointer = (proj / "artifacts/champion.json").read_bytes()
    new_interactions(proj, 12000, seed=8).write_parquet(incoming / "week-2.parquet")
    failed = run_flow(proj, env, check=False, incoming="data/incoming")
    assert failed.returncode != 0
    assert raw.read_bytes() == raw_bytes
    assert (proj / "artifacts/champion.json").read_bytes() == pointer
    (rejected,) = (incoming / "rejected").rglob("week-2.parquet")
    assert "row_change" in (rejected.parent / "REASON.txt").read_text()
    results = artifacts_by_key(prefect_server, "validation-result")
    assert any("Validation: FAILED" in a["data"] for a in results)

    # a file that does not fit the raw data is rejected before anything is ingested
    (incoming / "week-3.csv").write_text("user,item\n1,2\n")
    assert run_flow(proj, env, check=False, incoming="data/incoming").returncode != 0
    (bad,) = (incoming / "rejected").rglob("week-3.csv")
    assert "missing column(s)" in (bad.parent / "REASON.txt").read_text()
    assert raw.read_bytes() == raw_bytes
    assert len(list((proj / "data/raw/appended").glob("*.parquet"))) == 1
    assert (proj / "artifacts/champion.json").read_bytes() == pointer


def test_the_retrain_deployment_appends_a_file_to_the_default_project(tmp_path: Path):
    """The shipped params.yaml (a MovieLens-100K source), its weekly `retrain` deployment run
    by a worker: a file in u.data's layout dropped into data/incoming/ becomes a part of the
    raw store, which DVC records in data.dvc; u.data itself is never rewritten."""
    proj = make_project(tmp_path, models=("popularity",), default_source=True)
    u_data = proj / "data/raw/ml-100k/u.data"
    before = u_data.read_bytes()
    recorded = (proj / "data.dvc").read_text()
    with running_stack(tmp_path, proj) as stack:
        first = stack.start("recsys-pipeline/full")
        (done,) = wait_for_runs(stack.api, [first])
        assert done["state_type"] == "COMPLETED", stack.worker_log.read_text()[-3000:]
        assert champion(proj) is not None

        incoming = proj / "data/incoming"
        incoming.mkdir()
        new = new_interactions(
            proj,
            800,
            seed=7,
            raw=pl.read_csv(
                u_data,
                separator="\t",
                has_header=False,
                new_columns=["user_id", "item_id", "rating", "timestamp"],
            ),
        )
        write_u_data(new, incoming / "week-1.data")
        retrain = stack.start("recsys-pipeline/retrain")
        (done,) = wait_for_runs(stack.api, [retrain])
        assert done["state_type"] == "COMPLETED", stack.worker_log.read_text()[-3000:]

    assert u_data.read_bytes() == before
    assert len(list((proj / "data/raw/appended").glob("*.parquet"))) == 1
    assert len(list((incoming / "processed").rglob("week-1.data"))) == 1
    interactions = pl.read_parquet(proj / "data/interim/interactions.parquet")
    assert interactions.height == 8000 + 800
    assert (proj / "data.dvc").read_text() != recorded
    status = run([str(BIN / "dvc"), "status", "-q", "data.dvc"], proj, stack.env, check=False)
    assert status.returncode == 0, status.stdout  # the new raw version is the recorded one
    decision = json.loads((proj / "reports/evaluation/decision.json").read_text())
    assert decision["champion"].startswith("popularity@")
