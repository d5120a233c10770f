"""The project's structure, enforced: an acyclic import graph, stages that never import each
other, one model registry that params.yaml, the CLI and dvc.yaml agree with, and dvc.yaml
dependencies that cover every stage's import closure (so `dvc repro` and the code agree on
what is stale)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml
from prefect.utilities.callables import parameter_schema

from cli.main import build_parser
from flows.pipeline import recsys_pipeline
from recsys_models.registry import model_names, model_spec
from recsys_models.spec import CLOSED_FORM, GRADIENT
from tasks.params import load_params

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("recsys_models", "tasks", "flows", "deploy", "cli")
STAGES = ("ingest", "validate", "features", "train", "evaluate", "export")


def project_modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the project's packages (no __init__ files:
    they hold docstrings only)."""
    return {
        ".".join(f.relative_to(ROOT).with_suffix("").parts): f
        for pkg in PACKAGES
        for f in (ROOT / pkg).rglob("*.py")
        if f.name != "__init__.py"
    }


def imports(path: Path, modules: dict[str, Path]) -> list[tuple[str, bool]]:
    """(module imported, whether the import statement is inside a function) for each
    import of a project module, read from the source."""
    tree = ast.parse(path.read_text())
    inside = {
        id(node)
        for fn in ast.walk(tree)
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
        for node in ast.walk(fn)
    }
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        found += [(name, id(node) in inside) for name in names if name in modules]
    return found


MODULES = project_modules()
GRAPH = {name: {target for target, _ in imports(path, MODULES)} for name, path in MODULES.items()}


def closure(entries: list[str]) -> set[str]:
    seen, todo = set(), list(entries)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += GRAPH[name]
    return seen


def test_the_import_graph_has_no_cycle():
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for target in sorted(GRAPH[name]):
            if state.get(target) == "open":
                cycle = path[path.index(target) :] + [target]
                pytest.fail(f"import cycle: {' -> '.join(cycle)}")
            if target not in state:
                visit(target, path + [target])
        state[name] = "done"

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])


def test_no_stage_imports_another_stage():
    stage_modules = {f"tasks.{stage}" for stage in STAGES}
    crossing = [
        f"{name} -> {target}"
        for name in stage_modules
        for target in GRAPH[name]
        if target in stage_modules
    ]
    assert crossing == []


def test_layers_point_down():
    """recsys_models imports nothing of the platform; tasks never import flows, deploy or the
    CLI; flows never import deploy or the CLI."""
    above = {
        "recsys_models": ("tasks", "flows", "deploy", "cli"),
        "tasks": ("flows", "deploy", "cli"),
        "flows": ("deploy", "cli"),
    }
    wrong = [
        f"{name} -> {target}"
        for name, targets in GRAPH.items()
        for target in targets
        if target.split(".")[0] in above.get(name.split(".")[0], ())
    ]
    assert wrong == []


# Libraries that take seconds to import: a module that loads one at import time is heavy.
HEAVY_LIBRARIES = {"torch", "lightning", "great_expectations", "prefect", "onnx", "onnxruntime"}


def heavy_modules() -> set[str]:
    """Project modules that load a heavy library at import time, themselves or through the
    project modules they import at the top."""
    direct = set()
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        for node in tree.body:  # top-level statements only
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                roots = {node.module.split(".")[0]}
            else:
                continue
            if roots & HEAVY_LIBRARIES:
                direct.add(name)
    top = {
        name: {target for target, inside in imports(path, MODULES) if not inside}
        for name, path in MODULES.items()
    }
    heavy, changed = set(direct), True
    while changed:
        grown = {name for name, targets in top.items() if targets & heavy}
        changed = not grown <= heavy
        heavy |= grown
    return heavy


def test_a_project_import_inside_a_function_is_only_of_a_heavy_module():
    """The CLI and the Prefect tasks import torch-, Great Expectations- or Prefect-loading
    stages when they run, so `recsys --help` and a flow's start stay fast; any other import
    belongs at the top of the file."""
    heavy = heavy_modules()
    light_inside = [
        f"{name}: {target}"
        for name, path in MODULES.items()
        for target, inside in imports(path, MODULES)
        if inside and target not in heavy and target.rsplit(".", 1)[0] not in heavy
    ]
    assert light_inside == []


# --- one model registry ------------------------------------------------------------------------


def dvc_stages() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def test_the_registry_params_cli_and_dvc_agree():
    names = set(model_names())
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    sections = {key for key, value in params["train"].items() if isinstance(value, dict)}
    assert sections == names, "params.yaml train.<model> sections must match the registry"
    assert set(load_params(ROOT / "params.yaml").train.models) <= names

    stages = dvc_stages()
    closed = {n for n in names if model_spec(n).kind == CLOSED_FORM}
    gradient = {n for n in names if model_spec(n).kind == GRADIENT}
    assert set(stages["fit"]["foreach"]) == closed
    assert set(stages["train"]["foreach"]) == gradient
    assert set(stages["temporal"]["foreach"]) == names

    help_text = build_parser().format_help()
    train_help = next(
        action
        for action in build_parser()._subparsers._group_actions[0].choices["train"]._actions
        if "--model" in action.option_strings
    ).help
    assert all(name in train_help for name in names) and "train" in help_text


def test_the_top_level_plots_combine_every_model_of_the_registry():
    """`dvc plots show` draws one chart per figure with a line per model: the validation curve
    of every gradient model, the popularity bias and the history curve of every model."""
    plots = {
        plot_id: props
        for entry in yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
        for plot_id, props in entry.items()
    }
    names = model_names()
    gradient = [n for n in names if model_spec(n).kind == GRADIENT]
    template = "${train.out}/%s/dvclive/plots/metrics/val/ndcg@10.tsv"
    assert plots["validation_ndcg"]["y"] == {template % n: "ndcg@10" for n in gradient}
    assert plots["validation_ndcg"]["x"] == "step"  # DVCLive's column: the training step
    bias = "${evaluate.out}/plots/popularity_bias/%s.csv"
    assert plots["popularity_bias"]["y"] == {bias % n: "share" for n in names}
    history = "${evaluate.out}/plots/by_history/loo/%s.csv"
    assert plots["ndcg_by_history"]["y"] == {history % n: "ndcg@10" for n in names}
    for props in plots.values():  # coloured by model (a template of the project's .dvc/plots)
        assert (ROOT / ".dvc" / "plots" / f"{props['template']}.json").is_file()
    # no stage declares plots of its own (they drew one chart per file)
    assert not [name for name, stage in dvc_stages().items() if "plots" in stage.get("do", stage)]


# --- dvc.yaml dependencies cover each stage's import closure -------------------------------------


def stage_entries() -> dict[str, list[str]]:
    """Each dvc.yaml stage (foreach expanded) and the modules its command runs."""
    stages = dvc_stages()
    entries = {
        "ingest": ["tasks.ingest"],
        "validate": ["tasks.validate"],
        "features": ["tasks.features"],
        "evaluate": ["tasks.evaluate", *(f"recsys_models.{n}" for n in model_names())],
    }
    for group in ("fit", "train", "temporal"):
        for name in stages[group]["foreach"]:
            entries[f"{group}@{name}"] = ["tasks.train", f"recsys_models.{name}"]
    return entries


def stage_deps(name: str) -> list[str]:
    """The stage's dependencies as written in dvc.yaml, with ${key}/${item.*} filled in."""
    stages = dvc_stages()
    if "@" not in name:
        return stages[name]["deps"]
    group, key = name.split("@")
    item = stages[group]["foreach"][key]
    deps = []
    for dep in stages[group]["do"]["deps"]:
        dep = dep.replace("${key}", key)
        for field, value in (item or {}).items():
            dep = dep.replace(f"${{item.{field}}}", str(value))
        deps.append(dep)
    return deps


@pytest.mark.parametrize("stage", sorted(stage_entries()))
def test_dvc_dependencies_cover_the_stage_import_closure(stage: str):
    deps = [Path(d) for d in stage_deps(stage)]
    needed = sorted(MODULES[m].relative_to(ROOT) for m in closure(stage_entries()[stage]))
    missing = [str(f) for f in needed if not any(f == d or d in f.parents for d in deps)]
    assert missing == [], f"dvc.yaml stage {stage} does not list {missing}"


def test_the_prefect_run_form_offers_the_registry_models():
    schema = parameter_schema(recsys_pipeline.fn).model_dump()["definitions"]["Training"]
    assert schema["properties"]["models"]["items"]["enum"] == list(model_names())


def test_the_committed_dvc_lock_is_current_for_code_and_params():
    """dvc.lock was made from the committed code and params.yaml: every stage of dvc.yaml is
    in it, every project file a stage depends on has the md5 the lock records, and every
    parameter the value. So a fresh clone's `dvc status` can only report the data a run makes
    (tests/test_pipeline_e2e.py checks that the runs write what the lock records). After
    changing code or parameters a stage uses, `dvc repro` and commit dvc.lock with them."""
    import hashlib

    lock = yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"]
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert sorted(lock) == sorted(stage_entries()), "dvc.lock and dvc.yaml list other stages"
    stale = []
    for name, stage in lock.items():
        for dep in stage.get("deps", []):
            path = ROOT / dep["path"]
            code = path.suffix == ".py" and path.is_file()
            if code and hashlib.md5(path.read_bytes()).hexdigest() != dep["md5"]:
                stale.append(f"{name}: {dep['path']}")
        for key, value in stage.get("params", {}).get("params.yaml", {}).items():
            current = params
            for part in key.split("."):
                current = (current or {}).get(part)
            if current != value:
                stale.append(f"{name}: params.yaml {key}")
    assert stale == [], "dvc.lock is older than: " + ", ".join(stale[:10])


def test_git_keeps_the_metrics_summary_so_dvc_metrics_diff_has_a_baseline():
    """reports/ is git-ignored, except the evaluation's short metrics.json that dvc.yaml
    declares as a metric (cache: false): committed with dvc.lock, it is what `dvc metrics diff`
    compares a new run with."""
    import subprocess

    def ignored(path: str) -> bool:
        done = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT, check=False)
        return done.returncode == 0

    assert not ignored("reports/evaluation/metrics.json")
    assert ignored("reports/evaluation/report.md") and ignored("reports/validation/summary.json")
    tracked = subprocess.run(
        ["git", "ls-files", "reports"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert tracked == ["reports/evaluation/metrics.json"]
