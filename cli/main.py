"""The `recsys` command: one subcommand per stage, each a thin call into tasks/.

Errors the user can fix (RecsysError) print one line and exit 2; anything else prints one line
too and exits 1. `--debug` shows the traceback. The stages that load torch, Great Expectations
or Prefect are imported by the command that runs them, so the others start in a fraction of a
second.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from flows.locking import LockTimeout, pipeline_lock
from recsys_models.registry import model_names
from recsys_models.spec import CLOSED_FORM
from tasks import model_store
from tasks.errors import RecsysError
from tasks.features import build_features
from tasks.ingest import SOURCES, appended_parts, column_map, ingest
from tasks.io import file_sha256
from tasks.model_store import model_dir
from tasks.movielens import fetch_movielens
from tasks.params import PROTOCOLS, TIME_UNITS, load_params
from tasks.registry import CHAMPION, list_versions, promote, read_champion
from tasks.synth import synthesize


def _version() -> str:
    """The installed package's version (pyproject.toml)."""
    try:
        return metadata.version("recsys-platform")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def figure(value: Any) -> str:
    """A value as printed: floats to 4 decimals (metrics are means over users: more digits
    are noise), everything else as is."""
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def print_summary(title: str, summary: dict[str, Any]) -> None:
    print(f"{title}:")
    for key, value in summary.items():
        if isinstance(value, dict):
            print(f"  {key}:")
            for k, v in value.items():
                print(f"    {k}: {figure(v)}")
        else:
            print(f"  {key}: {figure(value)}")


def print_wrote(path: str | Path, shown: int = 6) -> None:
    """The last line of every writing command: what it wrote and where, so the user need not
    guess which folder to open ("wrote data/features/ (manifest.json, loo/, ...)")."""
    path = Path(path)
    if not path.is_dir():
        print(f"wrote {path}")
        return
    names = sorted(
        f"{p.name}/" if p.is_dir() else p.name for p in path.iterdir() if not p.name.startswith(".")
    )
    more = f", {len(names) - shown} more" if len(names) > shown else ""
    print(f"wrote {path}/ ({', '.join(names[:shown])}{more})")


def print_table(header: list[str], rows: list[list[Any]]) -> None:
    """Columns padded to their widest cell; floats to 4 decimals."""
    cells = [[figure(cell) for cell in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def print_decision(verdict: dict[str, Any]) -> None:
    action = f"promote {verdict['model']}" if verdict["promote"] else "keep the champion"
    print(f"decision: {action} ({verdict['reason']})")


def cmd_fetch(args: argparse.Namespace) -> None:
    path = fetch_movielens(args.dataset, Path(args.out), cache_dir=args.cache)
    print(f"fetched {args.dataset}")
    print_wrote(path)


def cmd_ingest(args: argparse.Namespace) -> None:
    p = load_params(args.params, _overrides(args)).ingest
    columns = column_map(
        p.columns,
        user=args.user_col,
        item=args.item_col,
        time=args.time_col,
        rating=args.rating_col,
        time_unit=args.time_unit,
    )
    summary = ingest(
        source=args.source or p.source,
        path=Path(args.path or p.path),
        out_dir=Path(args.out or p.out),
        columns=columns,
        sep=args.sep if args.sep is not None else p.sep,
        items=dataclasses.replace(p.items, path=args.items) if args.items else p.items,
        users=dataclasses.replace(p.users, path=args.users) if args.users else p.users,
        parts=appended_parts(p.appended),
    )
    print_summary("ingest", summary)
    print_wrote(args.out or p.out)


def cmd_synth(args: argparse.Namespace) -> None:
    summary = synthesize(
        out_dir=Path(args.out),
        n_users=args.users,
        n_items=args.items,
        n_interactions=args.interactions,
        seed=args.seed,
    )
    print_summary("synth", summary)
    print_wrote(args.out)


def cmd_validate(args: argparse.Namespace) -> None:
    from tasks.validate import validate

    params = load_params(args.params, _overrides(args))
    summary = validate(
        interim_dir=Path(args.interim or params.ingest.out),
        out_dir=Path(args.out or params.validate.out),
        params=params.validate,
        kcore=(params.features.min_user_interactions, params.features.min_item_interactions),
    )
    print_summary("validate", summary)
    print_wrote(args.out or params.validate.out)


def cmd_features(args: argparse.Namespace) -> None:
    params = load_params(args.params, _overrides(args))
    summary = build_features(
        interim_dir=Path(args.interim or params.ingest.out),
        out_dir=Path(args.out or params.features.out),
        params=params.features,
        seed=params.seed,
        validation_dir=None if args.skip_validation_check else Path(params.validate.out),
    )
    print_summary("features", summary)
    print_wrote(args.out or params.features.out)


def cmd_train(args: argparse.Namespace) -> None:
    from tasks.train import train

    params = load_params(args.params, _overrides(args))
    out = Path(args.out or model_dir(params.train.out, args.model, args.protocol))
    metrics = train(
        model=args.model,
        features_dir=Path(args.features or params.features.out),
        out_dir=out,
        params=params,
        protocol=args.protocol,
        skip_unusable=args.skip_unusable,
    )
    print_summary(f"train {args.model} ({args.protocol} validation, full ranking)", metrics)
    print_wrote(out)


def cmd_tune(args: argparse.Namespace) -> None:
    from tasks.tune import apply_best, tune

    params = load_params(args.params, _overrides(args))
    out = Path(args.out or Path(params.tune.out) / args.model)
    best = tune(
        model=args.model,
        features_dir=Path(args.features or params.features.out),
        out_dir=out,
        params=params,
        trials=args.trials,
        storage=args.storage,
        protocol=args.protocol,
    )
    print_summary(f"tune {args.model} ({args.protocol} validation split; test withheld)", best)
    print(f"table: {out / 'trials.md'}")
    if args.apply:
        changed = apply_best(Path(args.params), args.model, best["best_params"])
        print(f"{args.params}: train.{args.model}: set {', '.join(changed)}")


def cmd_embed_items(args: argparse.Namespace) -> None:
    from tasks.new_items import embed_items

    params = load_params(args.params, _overrides(args))
    items = dataclasses.replace(params.ingest.items, path=args.items)
    artifacts = args.artifacts or params.evaluate.artifacts
    summary = embed_items(items, artifacts, params.features.text)
    print_summary("embed-items", summary)
    print_wrote(summary["folder"])


def cmd_export(args: argparse.Namespace) -> None:
    from tasks.export import export

    params = load_params(args.params, _overrides(args))
    manifest = export(
        name=args.model,
        models_dir=Path(args.models_dir or params.train.out),
        features_dir=Path(args.features or params.features.out),
        artifacts_dir=Path(args.out),
        ann_params=params.export.ann,
    )
    parity, latency = manifest["parity"], manifest["latency"]
    print_summary(
        f"export {args.model}",
        {
            "version": manifest["version"],
            "folder": str(Path(args.out) / args.model / manifest["version"]),
            "parity": f"max abs diff {parity['max_abs_diff']:.2g}, "
            f"top-10 agreement {parity['top10_agreement']:.4f} ({parity['rows']} rows)",
            "latency": f"p50 {latency['p50_ms']} ms, p99 {latency['p99_ms']} ms (batch 1)",
        },
    )
    print_wrote(Path(args.out) / args.model / manifest["version"])
    print(f"promote it with: recsys promote {args.model} {manifest['version']}")


def cmd_promote(args: argparse.Namespace) -> None:
    features = Path(args.features or load_params(args.params, _overrides(args)).features.out)
    current = None
    if not args.allow_other_features and (features / "manifest.json").is_file():
        current = file_sha256(features / "manifest.json")
    pointer = promote(Path(args.artifacts), args.model, args.version, args.reason, current)
    print_summary("champion", pointer)
    print_wrote(Path(args.artifacts) / CHAMPION)


def cmd_models(args: argparse.Namespace) -> None:
    """Every registered model: its kind, whether it is trained on the current features (per
    protocol), its exported versions, and which one is the champion."""
    params = load_params(args.params, _overrides(args))
    features = Path(params.features.out)
    current = (
        file_sha256(features / "manifest.json") if (features / "manifest.json").is_file() else ""
    )
    champion = read_champion(Path(args.artifacts)) or {}
    rows = []
    for name in model_names():
        spec = model_store.spec(name)
        trained = [
            _trained_state(model_dir(params.train.out, name, protocol), current, protocol)
            for protocol in PROTOCOLS
        ]
        versions = [v["version"] for v in list_versions(Path(args.artifacts), name)]
        latest = versions[-1] if versions else "-"
        if champion.get("model") == name:
            latest = f"{champion['version']} (champion)"
        kind = "closed-form" if spec.kind == CLOSED_FORM else "gradient"
        rows.append([name, kind, *trained, str(len(versions)), latest])
    header = ["model", "kind", *(f"{p} model" for p in PROTOCOLS), "versions", "latest / champion"]
    print_table(header, rows)
    if not champion:
        print(f"no champion yet in {args.artifacts} (recsys promote MODEL VERSION)")
        return
    print_champion(Path(args.artifacts), champion, Path(params.evaluate.out) / "metrics.json")


def print_champion(artifacts: Path, champion: dict[str, Any], metrics_file: Path) -> None:
    """The champion with its figures: when and why it was promoted, its test figures from the
    last evaluation (when that scored it), its export's parity and latency."""
    name, version = champion["model"], champion["version"]
    print(f"champion: {name}/{version}, promoted {champion.get('promoted_at', '?')}")
    if champion.get("reason"):
        print(f"  reason: {champion['reason']}")
    try:  # evaluate scores the served champion under name@version
        full = json.loads(metrics_file.read_text())["loo"][f"{name}@{version}"]
        shown = ", ".join(
            f"{key} {figure(float(full[key]))}" for key in ("ndcg@10", "hr@10", "mrr")
        )
        print(f"  test (loo, full ranking, as served): {shown} ({metrics_file})")
    except (OSError, ValueError, KeyError, TypeError):
        print(f"  test figures: not in {metrics_file} (recsys evaluate scores it)")
    try:
        manifest = json.loads((artifacts / name / version / "manifest.json").read_text())
        latency, parity = manifest["latency"], manifest["parity"]
        print(
            f"  export: latency p50 {latency['p50_ms']} ms, p99 {latency['p99_ms']} ms (batch 1); "
            f"parity max abs diff {parity['max_abs_diff']:.2g}"
        )
    except (OSError, ValueError, KeyError, TypeError):
        print(f"  export: no readable manifest in {artifacts / name / version}")


def _trained_state(folder: Path, features_sha: str, protocol: str) -> str:
    """ "current", "stale" (trained on other features), or "-" (not trained)."""
    if not (folder / "config.json").is_file():
        return "-"
    try:
        return "stale" if model_store.staleness(folder, features_sha, protocol) else "current"
    except RecsysError:
        return "unreadable"


def cmd_evaluate(args: argparse.Namespace) -> None:
    from tasks.evaluate import evaluate

    params = load_params(args.params, _overrides(args))
    out = Path(args.out or params.evaluate.out)
    summary = evaluate(
        features_dir=Path(args.features or params.features.out),
        models_dir=Path(args.models or params.train.out),
        out_dir=out,
        params=params,
    )
    print_ranking(summary["models"], params.evaluate.primary_metric, summary["decision"])
    print_decision(summary["decision"]["verdict"])
    print(f"report: {out / 'report.html'} (markdown beside it: report.md)")
    print_wrote(out)


def print_ranking(models: dict[str, dict[str, float]], metric: str, decision: dict) -> None:
    """The models best first on the primary metric (leave-one-out test split, full ranking),
    the champion marked: the few lines a user reads before opening the report."""
    columns = list(dict.fromkeys([metric, "ndcg@10", "hr@10", "mrr"]))
    ranked = sorted(models.items(), key=lambda item: -item[1].get(metric, 0.0))
    champion = decision.get("champion")
    rows = [
        [rank, name + (" (champion)" if name == champion else "")]
        + [values.get(column, float("nan")) for column in columns]
        for rank, (name, values) in enumerate(ranked, 1)
    ]
    print(f"ranking by {metric} (leave-one-out test split, full ranking):")
    print_table(["#", "model", *columns], rows)


def cmd_serve(args: argparse.Namespace) -> None:
    """The service of deploy/ (FastAPI, onnxruntime), until interrupted."""
    argv = ["--artifacts", args.artifacts, "--host", args.host, "--port", str(args.port)]
    argv += ["--poll", str(args.poll), "--log-level", args.log_level]
    argv += ["--workers", str(args.workers)]
    print(
        f"serving the champion of {args.artifacts} on http://{args.host}:{args.port} "
        f"(API docs: /docs; Ctrl-C stops)",
        flush=True,
    )
    # The service replaces this process (its signals, its exit status): importing FastAPI and
    # uvicorn here would slow every other command's start.
    root = str(Path(__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = f"{root}{os.pathsep}{path}" if path else root
    os.execv(sys.executable, [sys.executable, "-m", "deploy.service", *argv])


def cmd_flow_run(args: argparse.Namespace) -> None:
    # Before Prefect is imported: its temporary server can take over 20 s (its default limit)
    # to start on a busy 2-core machine, and telemetry cannot leave a closed network anyway.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from flows.pipeline import recsys_pipeline, summary_markdown

    overrides = _overrides(args)
    summary = recsys_pipeline(
        params_path=args.params,
        overrides=overrides,
        fetch=not args.no_fetch,
        incoming=args.incoming,
        release=not args.no_release,
    )
    if summary.get("skipped"):
        print(f"no new files in {args.incoming}: nothing retrained, the champion is unchanged")
        return
    print(summary_markdown(summary))
    print("(published as the Prefect artifact `data-summary`)\n")
    decision = summary["evaluate"]
    print_ranking(summary["metrics"], decision["primary"]["metric"], decision)
    print_decision(decision["verdict"])
    out = Path(load_params(args.params, overrides).evaluate.out)
    print(f"report: {out / 'report.html'} (Prefect artifact `evaluation-report`)")
    champion = summary["release"]["champion"]
    if champion:
        done = "promoted now" if summary["release"]["promoted"] else "unchanged"
        print(f"champion: {champion['model']}/{champion['version']} ({done})")


def _parse_override(item: str) -> tuple[str, object]:
    """KEY=VALUE with VALUE read as YAML, the way `dvc exp run -S` reads it."""
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise RecsysError(f"--set {item!r}: expected KEY=VALUE, e.g. features.max_seq_len=100")
    try:
        return key, yaml.safe_load(value)
    except yaml.YAMLError as exc:  # its message spans several lines: keep the problem only
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RecsysError(f"--set {key}: {value!r} is not a valid YAML value ({problem})") from exc


def _add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a parameter (dotted key, as dvc exp run -S); repeatable",
    )


def _overrides(args: argparse.Namespace) -> dict[str, object]:
    return dict(_parse_override(item) for item in args.set)


def _add_debug(p: argparse.ArgumentParser) -> None:
    # SUPPRESS: a subcommand's --debug must not reset `recsys --debug COMMAND` to False.
    p.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors"
    )


def _add_params(p: argparse.ArgumentParser) -> None:
    """--params and --set: where the parameters come from, and overrides of single ones."""
    p.add_argument("--params", default="params.yaml", help="parameters file (default: params.yaml)")
    _add_set(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recsys",
        description="Recommender pipeline stages: ingest -> validate -> features -> train.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument(
        "--lock-timeout",
        type=float,
        default=3600.0,
        metavar="S",
        help="seconds to wait while another run holds the project's pipeline lock "
        "(default 3600; 0: refuse at once)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], None], help_: str):
        p = sub.add_parser(name, help=help_, description=help_)
        _add_debug(p)
        p.set_defaults(func=func)
        return p

    p = add("fetch", cmd_fetch, "Download a public data set's raw files (MovieLens).")
    p.add_argument("dataset", choices=[s for s in SOURCES if s.startswith("movielens")])
    p.add_argument("--out", required=True, help="folder for the raw files")
    p.add_argument("--cache", default=None, help="download cache (default: ~/.cache/recsys)")

    p = add("ingest", cmd_ingest, "Read a raw source into the canonical Parquet tables.")
    p.add_argument("--source", choices=SOURCES, help="source format (default: params.yaml)")
    p.add_argument("--path", help="raw file or folder (default: params.yaml ingest.path)")
    p.add_argument("--out", help="output folder (default: params.yaml ingest.out)")
    given = "(default: params.yaml ingest.columns.{}, else {})"
    p.add_argument(
        "--user-col", help="csv/parquet: user id column " + given.format("user", "user_id")
    )
    p.add_argument(
        "--item-col", help="csv/parquet: item id column " + given.format("item", "item_id")
    )
    p.add_argument(
        "--time-col", help="csv/parquet: timestamp column " + given.format("time", "timestamp")
    )
    p.add_argument("--rating-col", help="csv/parquet: rating column (optional; params.yaml too)")
    p.add_argument(
        "--time-unit",
        choices=TIME_UNITS,
        help="csv/parquet: unit of integer epochs " + given.format("time_unit", "s"),
    )
    p.add_argument("--sep", help="csv: field delimiter (default: params.yaml ingest.sep, else ,)")
    p.add_argument("--items", help="item metadata file (default: params.yaml ingest.items.path)")
    p.add_argument("--users", help="user metadata file (default: params.yaml ingest.users.path)")
    _add_params(p)

    p = add("synth", cmd_synth, "Generate synthetic interactions with sequential structure.")
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--items", type=int, default=500)
    p.add_argument("--interactions", type=int, default=50_000)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", default="data/interim", help="output folder (canonical tables)")

    p = add("validate", cmd_validate, "Validate the canonical tables with Great Expectations.")
    p.add_argument("--interim", help="input folder (default: params.yaml ingest.out)")
    p.add_argument("--out", help="report folder (default: params.yaml validate.out)")
    _add_params(p)

    p = add("features", cmd_features, "Build id maps, splits, sequences and item features.")
    p.add_argument("--interim", help="input folder (default: params.yaml ingest.out)")
    p.add_argument("--out", help="output folder (default: params.yaml features.out)")
    p.add_argument(
        "--skip-validation-check",
        action="store_true",
        help="build even if the validation report does not cover these exact input files",
    )
    _add_params(p)

    p = add("train", cmd_train, "Train one model on the features; print validation metrics.")
    p.add_argument(
        "--model",
        required=True,
        metavar="MODEL",
        help=f"one of {', '.join(model_names())} (recsys_models/registry.py; hyper-parameters: "
        "params.yaml train.<model>)",
    )
    p.add_argument("--features", help="features folder (default: params.yaml features.out)")
    p.add_argument("--out", help="output folder (default: params.yaml train.out/<model>)")
    p.add_argument(
        "--skip-unusable",
        action="store_true",
        help="where the features lack data the model requires (content_based without item "
        "metadata), leave a placeholder saying why instead of failing (dvc.yaml uses it)",
    )
    p.add_argument(
        "--protocol",
        choices=["loo", "temporal"],
        default="loo",
        help="split to train on: leave-one-out (default) or the global temporal split "
        "(written to <model>/temporal/)",
    )
    _add_params(p)

    p = add(
        "tune",
        cmd_tune,
        "Search one model's hyper-parameters with Optuna on the validation split (never the "
        "test split); resumable, its study shareable between machines.",
    )
    p.add_argument(
        "--model",
        required=True,
        metavar="MODEL",
        help=f"one of {', '.join(model_names())} (search space: SEARCH_SPACE in its file)",
    )
    p.add_argument(
        "--trials",
        type=int,
        help="trials of the study in all; a rerun tops it up (default: params.yaml tune.trials)",
    )
    p.add_argument(
        "--storage",
        help="Optuna storage: an SQLite file or an RDB URL that several machines share "
        "(default: params.yaml tune.storage)",
    )
    p.add_argument("--features", help="features folder (default: params.yaml features.out)")
    p.add_argument("--out", help="results folder (default: params.yaml tune.out/<model>)")
    p.add_argument("--protocol", choices=["loo", "temporal"], default="loo")
    p.add_argument(
        "--apply",
        action="store_true",
        help="write the best values into --params' train.<model> section (comments kept)",
    )
    _add_params(p)

    p = add("export", cmd_export, "Export a trained model to ONNX: artifacts/<model>/<version>/.")
    p.add_argument(
        "--model",
        required=True,
        metavar="MODEL",
        help=f"a trained model of --models-dir: one of {', '.join(model_names())}",
    )
    p.add_argument("--models-dir", help="trained models (default: params.yaml train.out)")
    p.add_argument("--features", help="features folder (default: params.yaml features.out)")
    p.add_argument("--out", default="artifacts", help="artifacts folder (default: artifacts)")
    _add_params(p)

    p = add(
        "embed-items",
        cmd_embed_items,
        "Encode items added after export (their text) into artifacts/new_items/, where the "
        "service finds items similar to them in text.",
    )
    p.add_argument(
        "items", help="item metadata file, read with params.yaml ingest.items' column map"
    )
    p.add_argument("--artifacts", help="artifacts folder (default: params.yaml evaluate.artifacts)")
    _add_params(p)

    p = add("promote", cmd_promote, "Make an exported version the champion the server serves.")
    p.add_argument("model", help="model name, a folder of --artifacts")
    p.add_argument("version", help="a version folder of artifacts/<model>/")
    p.add_argument("--reason", default="manual promotion", help="why (kept in champion.json)")
    p.add_argument("--artifacts", default="artifacts", help="artifacts folder (default: artifacts)")
    p.add_argument(
        "--features",
        help="the version must be exported from these features (default: params.yaml "
        "features.out, when it exists)",
    )
    p.add_argument(
        "--allow-other-features",
        action="store_true",
        help="promote a version exported from other features (a rollback to older data)",
    )
    _add_params(p)

    p = add(
        "models",
        cmd_models,
        "List the registered models: kind, trained on the current features, exported versions "
        "and the champion.",
    )
    p.add_argument("--artifacts", default="artifacts", help="artifacts folder (default: artifacts)")
    _add_params(p)

    p = add(
        "evaluate",
        cmd_evaluate,
        "Score every trained model (full and sampled ranking, beyond accuracy, both protocols), "
        "compare challengers with the champion, write the report and decision.",
    )
    p.add_argument("--features", help="features folder (default: params.yaml features.out)")
    p.add_argument("--models", help="trained models folder (default: params.yaml train.out)")
    p.add_argument("--out", help="report folder (default: params.yaml evaluate.out)")
    _add_params(p)

    p = add(
        "serve",
        cmd_serve,
        "Serve the champion of the artifacts folder over HTTP (deploy/service.py): "
        "recommendations, similar items, health, metrics; it reloads a newly promoted champion.",
    )
    p.add_argument("--artifacts", default="artifacts", help="artifacts folder (default: artifacts)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument("--poll", type=float, default=1.0, help="seconds between champion checks")
    p.add_argument(
        "--workers", type=int, default=1, help="server processes on the one port (default: 1)"
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    flow = sub.add_parser("flow", help="Run the Prefect flow.", description="Prefect flows.")
    flow_sub = flow.add_subparsers(dest="flow_command", required=True, metavar="FLOW_COMMAND")
    p = flow_sub.add_parser(
        "run",
        help="Run the recsys-pipeline flow: ingest -> validate -> features -> train -> "
        "evaluate -> export and promote as the decision says.",
    )
    _add_debug(p)
    p.add_argument("--no-fetch", action="store_true", help="do not fetch MovieLens raw files")
    p.add_argument(
        "--incoming",
        metavar="DIR",
        help="retrain: append DIR's new files (the source's layout, or Parquet/CSV through "
        "ingest.columns) to the raw data as parts, once validated",
    )
    p.add_argument(
        "--no-release", action="store_true", help="stop after evaluate: no export, no promotion"
    )
    p.set_defaults(func=cmd_flow_run)
    _add_params(p)
    return parser


# Commands that write into the project's folders: they hold the pipeline lock the Prefect flow
# holds (flows/locking.py), so a command and a flow, or two commands, never interleave writes.
WRITING_COMMANDS = {"fetch", "ingest", "synth", "validate", "features", "train", "evaluate"}
WRITING_COMMANDS |= {"export", "promote", "embed-items"}


def run_locked(args: argparse.Namespace) -> None:
    """Run the command, under the pipeline lock when it writes (not in a data-parallel worker
    Lightning started: its rank-0 parent holds the lock already)."""
    ranks = (os.environ.get("LOCAL_RANK", "0"), os.environ.get("NODE_RANK", "0"))
    worker = any(int(rank) > 0 for rank in ranks)
    if args.command not in WRITING_COMMANDS or worker:
        args.func(args)
        return

    def waiting(message: str) -> None:  # the lock's other messages would be noise here
        if message.startswith("waiting"):
            print(message, file=sys.stderr)

    try:
        with pipeline_lock(None, args.lock_timeout, f"recsys {args.command}", waiting):
            args.func(args)
    except LockTimeout as exc:
        raise RecsysError(f"{exc}; another run writes into this project") from exc


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run_locked(args)
    except RecsysError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; earlier outputs are untouched", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - one line for the user, traceback on --debug
        if args.debug:
            traceback.print_exc()
        print(
            f"error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
