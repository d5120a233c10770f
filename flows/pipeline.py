"""The Prefect flow: ingest -> validate -> features -> train -> evaluate, composed from the
stage functions.

The tasks are thin wrappers: all logic lives in tasks/, so `dvc repro` and this flow run the
very same code. Bad input (RecsysError) is never retried; I/O that can fail transiently is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from tasks.errors import RecsysError
from tasks.evaluate import model_dir
from tasks.params import load_params


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


@task(
    name="fetch",
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=_transient,
    cache_policy=NO_CACHE,
)
def fetch_task(dataset: str, out: str) -> str:
    from tasks.movielens import fetch_movielens

    return str(fetch_movielens(dataset, Path(out)))


@task(
    name="ingest",
    retries=1,
    retry_delay_seconds=2,
    retry_condition_fn=_transient,
    cache_policy=NO_CACHE,
)
def ingest_task(source: str, path: str, out: str) -> dict[str, Any]:
    from tasks.ingest import ingest

    return ingest(source=source, path=Path(path), out_dir=Path(out))


@task(name="validate", cache_policy=NO_CACHE)
def validate_task(interim: str, out: str, params: Any) -> dict[str, Any]:
    from tasks.validate import validate

    return validate(interim_dir=Path(interim), out_dir=Path(out), params=params)


@task(name="features", cache_policy=NO_CACHE)
def features_task(interim: str, out: str, params: Any, seed: int, validation: str) -> dict:
    from tasks.features import build_features

    return build_features(
        interim_dir=Path(interim),
        out_dir=Path(out),
        params=params,
        seed=seed,
        validation_dir=Path(validation),
    )


@task(name="train", cache_policy=NO_CACHE)
def train_task(
    model: str, features: str, out: str, params: Any, protocol: str = "loo"
) -> dict[str, Any]:
    from tasks.train import train

    return train(
        model=model, features_dir=Path(features), out_dir=Path(out), params=params,
        protocol=protocol,
    )  # fmt: skip


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(features: str, models: str, out: str, params: Any) -> dict[str, Any]:
    from tasks.evaluate import evaluate

    return evaluate(
        features_dir=Path(features), models_dir=Path(models), out_dir=Path(out), params=params
    )


TRAIN_COLUMNS = ("ndcg@10", "hr@10", "mrr", "ndcg@20", "hr@20", "epochs", "train_seconds")


def summary_markdown(summary: dict[str, Any]) -> str:
    lines = ["# recsys pipeline: data summary", ""]
    for stage, figures in summary.items():
        if stage in ("train", "evaluate", "report"):
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
            cells = [_cell(metrics.get(key)) for key in TRAIN_COLUMNS]
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


@flow(name="recsys-pipeline", log_prints=True)
def recsys_pipeline(
    params_path: str = "params.yaml",
    source: str | None = None,
    raw_path: str | None = None,
    overrides: dict[str, Any] | None = None,
    fetch: bool = True,
) -> dict[str, Any]:
    """Ingest raw interactions, validate them with Great Expectations, build features, train.

    Args:
        params_path: the parameters file (params.yaml), the one source of every tunable value.
        source: ingest source name; default params.yaml `ingest.source`.
        raw_path: raw file or folder; default params.yaml `ingest.path`.
        overrides: dotted-key parameter overrides, as with `dvc exp run -S`,
            e.g. {"features.max_seq_len": 100}.
        fetch: download the MovieLens raw files first when they are missing.
    """
    logger = get_run_logger()
    params = load_params(params_path, overrides)
    source = source or params.ingest.source
    raw = raw_path or params.ingest.path
    if fetch and source.startswith("movielens") and not Path(raw).exists():
        fetch_task(source, raw)
    summary: dict[str, Any] = {}
    summary["ingest"] = ingest_task(source, raw, params.ingest.out)
    logger.info("ingest wrote %s", params.ingest.out)
    summary["validate"] = validate_task(params.ingest.out, params.validate.out, params.validate)
    logger.info("validation report in %s", params.validate.out)
    summary["features"] = features_task(
        params.ingest.out, params.features.out, params.features, params.seed, params.validate.out
    )
    logger.info("features in %s", params.features.out)
    summary["train"] = {}
    for protocol in params.evaluate.protocols:
        for model in params.train.models:
            out = str(model_dir(params.train.out, model, protocol))
            metrics = train_task(model, params.features.out, out, params, protocol)
            if protocol == "loo":
                summary["train"][model] = metrics
            logger.info("%s (%s) trained into %s", model, protocol, out)
    create_markdown_artifact(
        markdown=summary_markdown(summary),
        key="data-summary",
        description="Rows, users, items, validation result and model metrics of this run",
    )
    evaluation = evaluate_task(params.features.out, params.train.out, params.evaluate.out, params)
    summary["evaluate"] = evaluation["decision"]
    create_markdown_artifact(
        markdown=evaluation["report"],
        key="evaluation-report",
        description="Every model under both protocols, champion vs challenger, the decision",
    )
    logger.info("evaluation report in %s", params.evaluate.out)
    summary["report"] = evaluation["report"]
    return summary
