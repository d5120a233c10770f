"""The Prefect flows, composed from the stage functions of tasks/:

- `recsys-pipeline` (deployments `full` and `retrain`): [append incoming files ->] ingest ->
  validate -> features -> train (each model of train.models, both protocols) -> evaluate ->
  export + promote as tasks/release.py decides;
- `validate-only`: ingest -> validate;
- `evaluate-only`: evaluate the models already trained (no export, no promotion).

The tasks are thin wrappers: all logic lives in tasks/, so `dvc repro` and these flows run the
very same code. Bad input (RecsysError) is never retried; I/O that can fail transiently is.
Stages are cached on their input files' content and parameters (flows/caching.py) and every
flow holds the project's pipeline lock (flows/locking.py) for its whole stage chain.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

from flows import artifacts
from flows.caching import NO_PERSIST, cached_stage, run_stage
from flows.form import DataSource, Training
from flows.locking import pipeline_lock
from recsys_models.registry import model_spec
from recsys_models.spec import NEED_TEXT
from tasks.errors import RecsysError, ValidationFailed
from tasks.feature_store import available_data, manifest_sha256
from tasks.features import build_features
from tasks.incoming import (
    BadIncomingFile,
    commit_incoming,
    pending_files,
    reject_incoming,
    stage_incoming,
)
from tasks.ingest import appended_parts, column_map, ingest
from tasks.model_store import model_dir
from tasks.movielens import fetch_movielens
from tasks.params import AnnParams, Params, TrainParams, as_dict, load_params
from tasks.registry import CHAMPION, promote, read_champion
from tasks.release import release_plan

SUMMARY_FILE = "summary.json"  # tasks/validate.py's, without importing Great Expectations


def _transient(task_, task_run, state) -> bool:
    """Retry network and file-system hiccups, never a problem with the data itself."""
    try:
        state.result()
    except RecsysError:
        return False
    except OSError:
        return True
    except Exception:  # noqa: BLE001
        return False
    return False


def _train_part(params: Params, parameters: dict[str, Any]) -> dict[str, Any]:
    """What one model's training reads of the parameters: the seed, the trainer, its section."""
    t = params.train
    trainer = ("max_epochs", "patience", "eval_batch_size", "accelerator", "devices", "strategy")
    trainer += ("precision",)
    return {
        "seed": params.seed,
        **{name: getattr(t, name) for name in trainer},
        "model": t.section(parameters["model"]),
    }


def _evaluate_part(params: Params, parameters: dict[str, Any]) -> dict[str, Any]:
    return {"seed": params.seed, "evaluate": params.evaluate}


@task(
    name="fetch",
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=_transient,
    **NO_PERSIST,
)
def fetch_task(dataset: str, out: str) -> str:
    return str(fetch_movielens(dataset, Path(out)))


@task(name="stage-incoming", **NO_PERSIST)
def stage_incoming_task(incoming: str, params: Any) -> dict[str, Any]:
    return stage_incoming(incoming, params)


@task(name="commit-incoming", **NO_PERSIST)
def commit_incoming_task(staged: dict[str, Any], incoming: str) -> dict[str, Any]:
    return commit_incoming(staged, incoming)


@task(name="reject-incoming", **NO_PERSIST)
def reject_incoming_task(staged: dict[str, Any], incoming: str, reason: str) -> dict[str, Any]:
    return reject_incoming(staged, incoming, reason)


@task(
    name="ingest",
    retries=1,
    retry_delay_seconds=2,
    retry_condition_fn=_transient,
    **NO_PERSIST,
)
@cached_stage("path", "metadata", "parts", out="out")
def ingest_task(
    source: str,
    path: str,
    out: str,
    params: Any,
    metadata: list[str] | None = None,
    parts: list[str] | None = None,
) -> dict[str, Any]:
    """`params`: params.yaml's ingest section (the column map and separator of the source).
    `metadata`: the item/user metadata files it names, hashed by content like `path`, so a
    changed items file reruns ingest instead of returning the cached result. `parts`: the
    appended parts, committed and staged (hashed by content too: a part committed since is
    the same input)."""
    return ingest(
        source=source,
        path=Path(path),
        out_dir=Path(out),
        columns=column_map(params.columns),
        sep=params.sep,
        items=params.items,
        users=params.users,
        parts=[Path(p) for p in parts or []],
    )


@task(name="validate", **NO_PERSIST)
@cached_stage("interim", out="out")
def validate_task(
    interim: str, out: str, params: Any, kcore: list[int] | None = None
) -> dict[str, Any]:
    """kcore: features' [min_user_interactions, min_item_interactions], for the warnings that
    say what the k-core filter will drop."""
    from tasks.validate import validate  # heavy (Great Expectations): imported when it runs

    thresholds = (int(kcore[0]), int(kcore[1])) if kcore else None
    return validate(interim_dir=Path(interim), out_dir=Path(out), params=params, kcore=thresholds)


@task(name="features", **NO_PERSIST)
@cached_stage("interim", "validation", out="out")
def features_task(interim: str, out: str, params: Any, seed: int, validation: str) -> dict:
    return build_features(
        interim_dir=Path(interim),
        out_dir=Path(out),
        params=params,
        seed=seed,
        validation_dir=Path(validation),
    )


# Each training run is named for what it trains, so the UI tells models and protocols apart.
@task(name="train", task_run_name="train {model} ({protocol})", **NO_PERSIST)
@cached_stage(
    "features",
    out="out",
    exclude=lambda parameters: _exclude(parameters["protocol"]),
    narrow={"params": _train_part},
)
def train_task(
    model: str, features: str, out: str, params: Any, protocol: str = "loo"
) -> dict[str, Any]:
    from tasks.train import train  # heavy (torch, Lightning): imported when it runs

    return train(
        model=model, features_dir=Path(features), out_dir=Path(out), params=params,
        protocol=protocol,
    )  # fmt: skip


@task(
    name="evaluate",
    **NO_PERSIST,
)
@cached_stage("features", "models", "champion", out="out", narrow={"params": _evaluate_part})
def evaluate_task(
    features: str,
    models: str,
    out: str,
    params: Any,
    champion: str | None = None,
    only: list[str] | None = None,
) -> dict[str, Any]:
    """`champion` (artifacts/champion.json) is read by evaluate itself; named here so that a
    new champion invalidates the cached evaluation. `only`: the models this run trained."""
    from tasks.evaluate import evaluate  # heavy (torch): imported when it runs

    return evaluate(
        features_dir=Path(features), models_dir=Path(models), out_dir=Path(out), params=params,
        only=only,
    )  # fmt: skip


@task(name="export", task_run_name="export {name}", **NO_PERSIST)
@cached_stage(
    "model",
    "features",
    out=lambda parameters, manifest: (
        Path(parameters["artifacts_dir"]) / parameters["name"] / manifest["version"]
    ),
)
def export_task(
    name: str, model: str, features: str, artifacts_dir: str, ann: dict[str, Any] | None = None
) -> dict[str, Any]:
    """`model` is models/<name>: exporting the same weights again reuses the cached version.
    `ann`: params.yaml's export.ann (a plain mapping, part of the cache key)."""
    from tasks.export import export  # heavy (torch, onnx): imported when it runs

    return export(
        name=name,
        models_dir=Path(model).parent,
        features_dir=Path(features),
        artifacts_dir=Path(artifacts_dir),
        ann_params=AnnParams(**ann) if ann else None,
    )


@task(name="promote", **NO_PERSIST)
def promote_task(
    artifacts_dir: str, name: str, version: str, reason: str, features_sha256: str
) -> dict[str, Any]:
    return promote(Path(artifacts_dir), name, version, reason, features_sha256)


def _exclude(protocol: str) -> tuple[str, ...]:
    """The leave-one-out model folder holds the temporal one: not part of its output."""
    return ("temporal",) if protocol == "loo" else ()


TRAIN_COLUMNS = ("ndcg@10", "hr@10", "mrr", "ndcg@20", "hr@20", "epochs", "train_seconds")


def summary_markdown(summary: dict[str, Any]) -> str:
    lines = ["# recsys pipeline: data summary", ""]
    apart = ("train", "evaluate", "metrics", "report", "release", "incoming")
    for stage, figures in summary.items():
        if stage in apart or not figures:
            continue
        lines += [f"## {stage}", "", "| field | value |", "| --- | --- |"]
        lines += [f"| {k} | {v} |" for k, v in figures.items() if not isinstance(v, (dict, list))]
        lines.append("")
    if summary.get("train"):
        lines += [
            "## train (validation, full ranking)",
            "",
            "| model | " + " | ".join(TRAIN_COLUMNS) + " |",
            "| --- |" + " --- |" * len(TRAIN_COLUMNS),
        ]
        for model, metrics in summary["train"].items():
            if "skipped" in metrics:
                lines.append(f"| {model} | skipped: {metrics['skipped']} |")
                continue
            cells = [_cell(metrics.get(key)) for key in TRAIN_COLUMNS]
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _holder() -> str:
    from prefect.runtime import flow_run

    return f"flow run {flow_run.name or '?'} ({flow_run.id or 'no id'})"


# --- stage chains shared by the flows ---------------------------------------------------------


def _ingest_and_validate(
    params: Params, summary: dict[str, Any], incoming: str | None = None
) -> None:
    """ingest -> validate; with `incoming`, the new files are appended only if validation
    passes. The validation artifact is published whether it passed or not."""
    logger = get_run_logger()
    staged = None
    parts = [str(p) for p in appended_parts(params.ingest.appended)]
    if incoming is not None:
        staged = _stage_incoming(incoming, params)
        summary["incoming"] = staged
        parts += staged["parts"]
    metadata = [m.path for m in (params.ingest.items, params.ingest.users) if m.path]
    source, raw = params.ingest.source, params.ingest.path
    summary["ingest"] = run_stage(
        ingest_task, source, raw, params.ingest.out, params.ingest, metadata, parts
    )
    logger.info("ingest wrote %s", params.ingest.out)
    try:
        summary["validate"] = run_stage(
            validate_task,
            params.ingest.out,
            params.validate.out,
            params.validate,
            [params.features.min_user_interactions, params.features.min_item_interactions],
        )
    except ValidationFailed as exc:
        _publish_validation(params)
        if staged and staged["files"]:
            outcome = reject_incoming_task(staged, incoming, str(exc))
            artifacts.publish(
                artifacts.INCOMING,
                artifacts.incoming_markdown(staged, outcome),
                "New interaction files: rejected by validation",
            )
        raise
    _publish_validation(params)
    logger.info("validation report in %s", params.validate.out)
    if staged and staged["files"]:
        outcome = commit_incoming_task(staged, incoming)
        if outcome.get("dvc_error"):
            logger.warning("appended, but DVC did not record it: %s", outcome["dvc_error"])
        artifacts.publish(
            artifacts.INCOMING,
            artifacts.incoming_markdown(staged, outcome),
            "New interaction files: appended to the raw data",
        )


def _stage_incoming(incoming: str, params: Params) -> dict[str, Any]:
    """Stage the new files; a file that cannot be appended is rejected with the reason."""
    try:
        return stage_incoming_task(incoming, params.ingest)
    except BadIncomingFile as exc:
        staged = {"files": [str(f) for f in pending_files(incoming)], "parts": [], "rows_added": 0}
        outcome = reject_incoming_task(staged, incoming, str(exc))
        artifacts.publish(
            artifacts.INCOMING,
            artifacts.incoming_markdown(staged, outcome),
            "New interaction files: rejected (they do not fit the raw data)",
        )
        raise


def _publish_validation(params: Params) -> None:
    """From summary.json, which the stage writes whether the checks passed or failed."""
    artifacts.publish(
        artifacts.VALIDATION,
        artifacts.validation_markdown(Path(params.validate.out) / SUMMARY_FILE),
        "Great Expectations result (drift included) and the path to its Data Docs",
    )


def _evaluate(params: Params, only: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The evaluation of `only` (a run's own models) and the champion; every trained model
    when None (the evaluate-only flow)."""
    champion = Path(params.evaluate.artifacts) / CHAMPION
    evaluation = run_stage(
        evaluate_task, params.features.out, params.train.out, params.evaluate.out, params,
        str(champion), None if only is None else list(only),
    )  # fmt: skip
    left_out = evaluation["decision"].get("not_compared")
    if left_out:
        get_run_logger().info(
            "trained earlier but not in this run's train.models, so not compared: %s",
            ", ".join(left_out),
        )
    artifacts.publish(
        artifacts.EVALUATION_REPORT,
        evaluation["report"],
        "Every model under both protocols, champion vs challenger, the decision",
    )
    artifacts.publish_table(
        artifacts.METRICS,
        artifacts.metrics_rows(evaluation["models"], params.evaluate.primary_metric),
        "Leave-one-out full-ranking metrics (test split) of every evaluated model, best first",
    )
    return evaluation


def _release(params: Params, decision: dict[str, Any], release: bool) -> dict[str, Any]:
    """Export and promote as tasks.release decides; publish the decision and model version."""
    logger = get_run_logger()
    artifacts_dir = params.evaluate.artifacts
    plan = release_plan(decision, artifacts_dir) if release else None
    artifacts.publish(
        artifacts.DECISION,
        artifacts.decision_markdown(decision, plan),
        "Champion vs challenger: the verdict, its evidence, and what this run did with it",
    )
    artifacts.publish_table(
        artifacts.DECISION_TABLE,
        artifacts.decision_rows(decision),
        "Each challenger against the champion (paired per-user differences), best first",
    )
    exported, promoted = None, False
    if plan and plan["model"]:
        name = plan["model"]
        exported = run_stage(
            export_task,
            name,
            str(model_dir(params.train.out, name)),
            params.features.out,
            artifacts_dir,
            as_dict(params.export.ann),
        )
        logger.info("exported %s/%s", name, exported["version"])
        if plan["promote"]:
            features = manifest_sha256(params.features.out)
            promote_task(artifacts_dir, name, exported["version"], plan["reason"], features)
            promoted = True
            logger.info("promoted %s/%s: %s", name, exported["version"], plan["reason"])
    champion = read_champion(artifacts_dir)
    artifacts.publish(
        artifacts.MODEL_VERSION,
        artifacts.model_version_markdown(champion, exported, promoted),
        "The version exported and promoted by this run, and the champion being served",
    )
    return {
        "plan": plan,
        "exported": exported and exported["version"],
        "promoted": promoted,
        "champion": champion,
    }


# --- flows -------------------------------------------------------------------------------------


def train_runner(train: TrainParams) -> Any:
    """The task runner that trains several models at once (params.yaml train.parallel), or
    None for one after the other. Dask runs each training in a worker process of a local
    cluster (a scheduler address in train.dask_address uses an existing cluster instead);
    threads share one process, so they help little beside torch's own threads."""
    if train.parallel == "none":
        return None
    if train.parallel == "threads":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=train.workers)
    if train.parallel == "dask":
        from prefect_dask import DaskTaskRunner

        if train.dask_address:
            return DaskTaskRunner(address=train.dask_address)
        cluster = {"n_workers": train.workers, "threads_per_worker": 1, "processes": True}
        return DaskTaskRunner(cluster_kwargs=cluster)
    raise RecsysError(
        f"params.yaml: train.parallel {train.parallel!r}: choose none, threads or dask"
    )


def skipped_models(models: tuple[str, ...], features: str) -> dict[str, str]:
    """Models the features cannot train, each with the one-line reason training would give
    (content_based without item metadata): the flow skips them instead of failing the run."""
    available = available_data(features)
    reasons = {}
    for model in models:
        missing = sorted(model_spec(model).required() - available)
        if missing:
            what = " and ".join(NEED_TEXT[need] for need in missing)
            reasons[model] = f"model {model} needs {what}; the features have none"
    return reasons


@flow(name="train-models", log_prints=True, persist_result=False)
def train_models(params: Any) -> dict[str, dict[str, Any]]:
    """Every model of train.models on every evaluation protocol: {protocol: {model: metrics}}.

    With a parallel task runner (train_runner) the trainings are submitted at once and run
    side by side; without one they run in turn. Each writes only its own models/ folder.
    """
    logger = get_run_logger()
    skipped = skipped_models(params.train.models, params.features.out)
    for model, reason in skipped.items():
        logger.warning("%s skipped: %s", model, reason)
    models = [m for m in params.train.models if m not in skipped]
    jobs = [(m, p) for p in params.evaluate.protocols for m in models]
    parallel = params.train.parallel != "none"
    results: dict[str, dict[str, Any]] = {
        protocol: {m: {"skipped": reason} for m, reason in skipped.items()}
        for protocol in params.evaluate.protocols
    }
    pending = []
    for model, protocol in jobs:
        out = str(model_dir(params.train.out, model, protocol))
        call = (model, params.features.out, out, params, protocol)
        first = train_task.submit(*call) if parallel else run_stage(train_task, *call)
        pending.append((model, protocol, out, first))
    for model, protocol, out, first in pending:
        results[protocol][model] = first.result() if parallel else first
        logger.info(trained_line(model, protocol, out, results[protocol][model]))
    return results


def trained_line(model: str, protocol: str, out: str, metrics: dict[str, Any]) -> str:
    """One log line per trained model: its validation figures, epochs, time and folder."""
    figures = ", ".join(
        f"{key.upper() if key == 'mrr' else key.replace('ndcg', 'NDCG').replace('hr', 'HR')} "
        f"{metrics[key]:.4f}"
        for key in ("ndcg@10", "hr@10", "mrr")
        if isinstance(metrics.get(key), float)
    )
    epochs = metrics.get("epochs")
    trained = f"{epochs} epochs (best {metrics.get('best_epoch')})" if epochs else "closed form"
    seconds = metrics.get("train_seconds")
    took = f", {seconds:.1f} s" if isinstance(seconds, (int, float)) else ""
    return f"{model} ({protocol}): validation {figures}; {trained}{took}; wrote {out}"


@flow(name="recsys-pipeline", log_prints=True, persist_result=False)
def recsys_pipeline(
    training: Training = Training(),  # noqa: B008 - a frozen form default, never mutated
    data: DataSource = DataSource(),  # noqa: B008
    release: bool = True,
    fetch: bool = True,
    incoming: str | None = None,
    overrides: dict[str, Any] | None = None,
    params_path: str = "params.yaml",
    lock_timeout_s: float = 6 * 3600,
) -> dict[str, Any]:
    """The whole pipeline: ingest, validate, features, train, evaluate, export, promote.

    Args:
        training: the models to train (the registry's names), the protocols, epochs and
            patience; empty fields keep params.yaml's values.
        data: the source (a choice), its raw path and, for csv/parquet, its column map;
            empty fields keep params.yaml `ingest`.
        release: export and promote as the decision says (promote only on a positive
            decision, or the evaluation's champion when nothing was promoted yet).
        fetch: download the MovieLens raw files first when they are missing.
        incoming: retrain mode: a folder of newly arrived interaction files (the source's own
            format, or Parquet/CSV through the column map) to append to the raw data as
            parts once they pass validation (drift included). With no file waiting, nothing
            is retrained. Empty: a full run.
        overrides: any other parameter, as dotted keys (as `dvc exp run -S`), e.g.
            {"features.max_seq_len": 100}; the form's fields win over these.
        params_path: the parameters file (params.yaml), the one source of every default.
        lock_timeout_s: how long to wait for another run of this project to finish.
    """
    logger = get_run_logger()
    chosen = (overrides or {}) | data.overrides() | training.overrides()
    params = load_params(params_path, chosen)
    source, raw = params.ingest.source, params.ingest.path
    incoming = incoming or None  # an emptied form field is a full run, never the project root
    summary: dict[str, Any] = {}
    with pipeline_lock(None, lock_timeout_s, _holder(), logger.info):
        if fetch and source.startswith("movielens") and not Path(raw).exists():
            fetch_task(source, raw)
        _ingest_and_validate(params, summary, incoming)
        if incoming is not None and not summary["incoming"]["files"]:
            artifacts.publish(
                artifacts.INCOMING,
                artifacts.incoming_markdown(summary["incoming"], None),
                "New interaction files: none arrived",
            )
            logger.info("no new files in %s: nothing to retrain", incoming)
            summary["skipped"] = True
            return summary
        summary["features"] = run_stage(
            features_task, params.ingest.out, params.features.out, params.features, params.seed,
            params.validate.out,
        )  # fmt: skip
        logger.info("features in %s", params.features.out)
        runner = train_runner(params.train)
        trainer = train_models.with_options(task_runner=runner) if runner else train_models
        summary["train"] = trainer(params)["loo"]
        artifacts.publish(
            artifacts.DATA_SUMMARY,
            summary_markdown(summary),
            "Rows, users, items, validation result and model metrics of this run",
        )
        evaluation = _evaluate(params, params.train.models)
        summary["evaluate"] = evaluation["decision"]
        summary["metrics"] = evaluation["models"]
        summary["report"] = evaluation["report"]
        logger.info("evaluation report in %s", params.evaluate.out)
        summary["release"] = _release(params, evaluation["decision"], release)
    return summary


@flow(name="validate-only", log_prints=True, persist_result=False)
def validate_only(
    data: DataSource = DataSource(),  # noqa: B008 - a frozen form default, never mutated
    fetch: bool = True,
    overrides: dict[str, Any] | None = None,
    params_path: str = "params.yaml",
    lock_timeout_s: float = 6 * 3600,
) -> dict[str, Any]:
    """Ingest the raw data and validate it (Great Expectations, drift included); nothing else.

    Args:
        data: the source (a choice), its raw path and, for csv/parquet, its column map;
            empty fields keep params.yaml `ingest`.
        fetch: download the MovieLens raw files first when they are missing.
        overrides: dotted-key parameter overrides, e.g. {"validate.drift.max_row_change": 0.8}.
        params_path: the parameters file (params.yaml).
        lock_timeout_s: how long to wait for another run of this project to finish.
    """
    params = load_params(params_path, (overrides or {}) | data.overrides())
    source, raw = params.ingest.source, params.ingest.path
    summary: dict[str, Any] = {}
    with pipeline_lock(None, lock_timeout_s, _holder(), get_run_logger().info):
        if fetch and source.startswith("movielens") and not Path(raw).exists():
            fetch_task(source, raw)
        _ingest_and_validate(params, summary)
    artifacts.publish(
        artifacts.DATA_SUMMARY,
        summary_markdown(summary),
        "Rows, users, items and the validation result of this run",
    )
    return summary


@flow(name="evaluate-only", log_prints=True, persist_result=False)
def evaluate_only(
    params_path: str = "params.yaml",
    overrides: dict[str, Any] | None = None,
    lock_timeout_s: float = 6 * 3600,
) -> dict[str, Any]:
    """Evaluate the models already trained (data/features, models/) against the champion.

    Writes the report and decision; exports and promotes nothing (run `recsys-pipeline` or
    `recsys promote` for that).

    Args:
        params_path: the parameters file (params.yaml).
        overrides: dotted-key parameter overrides, e.g. {"evaluate.alpha": 0.01}.
        lock_timeout_s: how long to wait for another run of this project to finish.
    """
    params = load_params(params_path, overrides)
    with pipeline_lock(None, lock_timeout_s, _holder(), get_run_logger().info):
        evaluation = _evaluate(params)
        release = _release(params, evaluation["decision"], release=False)
    return {"evaluate": evaluation["decision"], "report": evaluation["report"], "release": release}
