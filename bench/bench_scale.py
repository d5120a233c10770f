"""Scale benchmark (issue 19): export and serving at a large catalogue, or every stage (--pipeline).

Stages, each in its own process so that its wall time and peak RSS are its own (bench/common.py
run_timed): synth -> features -> train BPR-MF (a dot-product model; --epochs; validated on a
seeded sample of 5,000 users, train.validation_users: ranking a million items for every user
would take longer than the rest together) -> export with the HNSW index forced on
(export.ann.min_items = 1). Then, in this process, the served artifact
(tasks/artifact_store.py ServedModel): ANN recall@10 against exact scoring over --queries
known users, and per-request latency of the ANN path (at the manifest's candidate pool and at
each of POOL_SWEEP) and of exact scoring; then the HTTP service on loopback with each --workers
count of server processes, at each --concurrency (GET /recommend/{user_id}?k=10,
bench/bench_serve.py's closed loop): p50/p99 latency and requests per second. Client and server
share the machine's cores.

The issue's target is --items 1000000 (about 20M interactions). On the 2-core shared machine
only a small size finishes in minutes; the defaults are that size, and the results say which
size ran. Writes bench/results/scale.json and scale.md.

    python bench/bench_scale.py                                  # small: minutes
    python bench/bench_scale.py --items 1000000 --users 160000 --interactions 20000000 \
        --work /tmp/scale-1m                       # the folder kept, for:
    python bench/bench_scale.py --items 1000000 --users 160000 --interactions 20000000 \
        --work /tmp/scale-1m --serve-only          # serving measured again on its model

--pipeline measures every pipeline stage instead, at the MovieLens-25M shape the issue names
(users and items in its proportions, bench/bench_data.py sizes_for): synth (the raw file) ->
ingest -> validate -> features (the `recsys` processes bench_data.py times) -> train SASRec
(sampled softmax, params.yaml's negatives) and two-tower for --epochs epochs, item-kNN, and EASE,
whose refusal of a catalogue too large for its dense matrices is the expected outcome -> evaluate
(SASRec and item-kNN) -> export (SASRec and item-kNN). Each stage is its own process (wall time,
peak RSS, exit status); a failed stage is recorded with its last log line and the stages that do
not need it still run. Training runs on the CPU, item text off (bench_text.py measures the
encoder). Writes bench/results/scale_pipeline.json and scale_pipeline.md, with the issue's
targets beside the figures: every stage under 8 GiB peak RSS, features under 60 s, one SASRec
epoch under 10 minutes on 2 cores.

    python bench/bench_scale.py --pipeline --interactions 200000      # a check: minutes
    python bench/bench_scale.py --pipeline --interactions 25000000 --work /tmp/scale-25m
    python bench/bench_scale.py --pipeline --interactions 25000000 --work /tmp/scale-25m \
        --stages evaluate export_sasrec        # rerun stages on that run's folder
    python bench/bench_scale.py --pipeline --interactions 25000000 --work /tmp/scale-25m \
        --stages train_sasrec --set train.precision=bf16-mixed   # a training setting's own row

--set KEY=VALUE (params.yaml's dotted keys, repeatable) changes the training stages' params; their
rows carry the settings and sit beside, not over, the rows trained on params.yaml's values.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.bench_data import sizes_for, stage_command, stage_params, synth_command  # noqa: E402
from bench.bench_serve import bench_http  # noqa: E402
from bench.common import machine, run_status, run_timed, torch_info, write_results  # noqa: E402
from flows.locking import LOCK_ENV, LOCK_FILE  # noqa: E402
from tasks.model_store import read_metrics  # noqa: E402
from tasks.registry import promote  # noqa: E402

STAGES = {
    "synth": "from tasks.synth import synthesize; synthesize(Path('{root}/interim'), {users}, "
    "{items}, {interactions}, seed=0)",
    "features": "from tasks.features import build_features; from tasks.params import "
    "FeaturesParams; build_features(Path('{root}/interim'), Path('{root}/features'), "
    "FeaturesParams(min_user_interactions=2, min_item_interactions=1), 0, None)",
    "train bpr_mf": "from tasks.train import train; from tasks.params import load_params; "
    "train('bpr_mf', Path('{root}/features'), Path('{root}/models/bpr_mf'), "
    "load_params(Path('absent.yaml'), {{'train.accelerator': 'cpu', 'train.max_epochs': "
    "{epochs}, 'train.patience': 1, 'train.validation_users': 5000, "
    "'train.bpr_mf': {{'dim': {dim}, 'batch_size': 8192}}}}))",
    "export (HNSW index)": "from tasks.export import export; from tasks.params import "
    "AnnParams; export('bpr_mf', Path('{root}/models'), Path('{root}/features'), "
    "Path('{root}/artifacts'), 256, 20, data_dvc=None, ann_params=AnnParams(min_items=1, "
    "recall_queries={queries}))",
}


PIPELINE = "scale pipeline"  # the --pipeline result's "benchmark", which tables() renders
# The --pipeline stages in order, and the stages each needs: a stage whose need failed is
# recorded as skipped, never run on missing inputs.
NEEDS = {
    "synth": (),
    "ingest": ("synth",),
    "validate": ("ingest",),
    "features": ("validate",),
    "train_sasrec": ("features",),
    "train_two_tower": ("features",),
    "train_itemknn": ("features",),
    "train_ease": ("features",),
    "evaluate": ("train_sasrec", "train_itemknn"),
    "export_sasrec": ("train_sasrec",),
    "export_itemknn": ("train_itemknn",),
}
EVALUATED = ["sasrec", "itemknn"]
# SASRec's sampled softmax, which params.yaml's loss "auto" picks above 10,000 items, set outright
# so that a small check trains the loss the full size trains; its negatives are params.yaml's.
TRAIN_SETTINGS = {"sasrec": {"train.sasrec.loss": "sampled"}}
# A Python stage's process: the work folder's params file with the stage's overrides. A
# RecsysError ends it as the recsys command ends (one line "error: ...", exit status 2), so a
# refusal is recorded as the line a user would read.
CHILD = """import sys
from pathlib import Path
from tasks.errors import RecsysError
from tasks.params import load_params
try:
    p = load_params(Path({params!r}), {overrides!r})
    {code}
except RecsysError as exc:
    print(f"error: {{exc}}", file=sys.stderr)
    sys.exit(2)
"""
TARGET_RSS_GIB, TARGET_FEATURES_S, TARGET_EPOCH_S = 8, 60, 600  # issue 19
# Candidate pools the served path is measured at. (Not the search depth ef: usearch searches at
# least as deep as the count it is asked for, pool + k + excluded, so an ef below the pool
# changes nothing; the 1M-item run of 2026-12-07 measured ef 32 to 256 and got the same answers.)
POOL_SWEEP = (25, 50, 100, 200)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--pipeline",
        action="store_true",
        help="every pipeline stage at MovieLens-25M's shape -> scale_pipeline.json",
    )
    parser.add_argument(
        "--items", type=int, help="default 20,000; --pipeline: MovieLens-25M's share"
    )
    parser.add_argument(
        "--users", type=int, help="default 5,000; --pipeline: MovieLens-25M's share"
    )
    parser.add_argument("--interactions", type=int, default=200_000)
    parser.add_argument("--epochs", type=int, default=1, help="per gradient model")
    parser.add_argument(
        "--stages",
        nargs="+",
        choices=list(NEEDS),
        help="--pipeline: only these (the others' outputs from an earlier run in --work)",
    )
    parser.add_argument(
        "--work",
        type=Path,
        help="the stages' folder, kept (default: a temporary one, removed)",
    )
    parser.add_argument(
        "--serve-only",
        action="store_true",
        help="measure serving again on the exported model in --work (no --pipeline)",
    )
    parser.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="--pipeline: a params.yaml value for the training stages (repeatable)",
    )
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--queries", type=int, default=300, help="users for recall and latency")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per HTTP level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[1, 2], help="server processes, each measured"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    if not args.pipeline and (args.stages or args.settings):
        parser.error("--stages and --set go with --pipeline")
    if args.serve_only and (args.pipeline or args.work is None):
        parser.error("--serve-only needs the --work of an earlier run, without --pipeline")
    if args.serve_only and not (args.work / "artifacts" / "bpr_mf").is_dir():
        parser.error(f"--serve-only: no exported model in {args.work / 'artifacts' / 'bpr_mf'}")
    try:
        args.settings = dict(parse_setting(text) for text in args.settings)
    except ValueError as exc:
        parser.error(str(exc))
    if args.pipeline:
        bench_pipeline(args, parser)
        return
    args.items = 20_000 if args.items is None else args.items
    args.users = 5_000 if args.users is None else args.users
    load_before = os.getloadavg()[0]
    earlier = args.out / "scale.json"
    folder = (
        contextlib.nullcontext(str(args.work))
        if args.work
        else tempfile.TemporaryDirectory(prefix="bench-scale-")
    )
    with folder as tmp:
        root = Path(tmp)
        if args.serve_only:
            stages = earlier_stages(earlier, args)
        else:
            root.mkdir(parents=True, exist_ok=True)
            stages = run_stages(args, root)
        folder = next((root / "artifacts" / "bpr_mf").iterdir())
        served = bench_served(folder, args.queries)
        promote(root / "artifacts", "bpr_mf", folder.name, "bench-scale")
        http = [
            row
            for workers in args.workers
            for row in bench_http(args, root / "artifacts", folder, workers)
        ]
        manifest = json.loads((folder / "manifest.json").read_text())
    result = {
        "benchmark": "scale",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "size": {"items": args.items, "users": args.users, "interactions": args.interactions},
        "stages": stages,
        "ann": manifest.get("ann"),
        "served": served,
        "http": http,
    }
    write_results(args.out, "scale", result, markdown(result))
    print(markdown(result))


def earlier_stages(path: Path, args: argparse.Namespace) -> list[dict]:
    """--serve-only: the stage rows of the run that made the model, when `path` is that run (the
    same size); none otherwise."""
    earlier = json.loads(path.read_text()) if path.is_file() else {}
    size = {"items": args.items, "users": args.users, "interactions": args.interactions}
    return earlier.get("stages", []) if earlier.get("size") == size else []


def run_stages(args: argparse.Namespace, root: Path) -> list[dict]:
    rows = []
    values = vars(args) | {"root": root}
    for name, code in STAGES.items():
        script = "from pathlib import Path; " + code.format(**values)
        wall, rss = run_timed([sys.executable, "-c", script], root / "stage.log", cwd=ROOT)
        rows.append({"stage": name, "wall_s": round(wall, 2), "peak_rss_gib": round(rss, 3)})
        print(rows[-1], flush=True)
    return rows


def bench_served(folder: Path, queries: int) -> dict:
    """recall@10 of the served ANN path against exact scoring, and in-process latency of both,
    at the manifest's candidate pool and at each of POOL_SWEEP (how far the pool can shrink
    before the recall drops)."""
    from tasks.artifact_store import ServedModel

    model = ServedModel(folder)
    users = sorted(model.user_index.values())[:queries]
    requests, truths, exact_ms = [], [], []
    for user in users:
        history, seen = model.user_history(user)
        start = time.perf_counter()
        want = model.top_k(model.scores(history, user), 10, seen, [], [])
        exact_ms.append((time.perf_counter() - start) * 1000)
        requests.append((history, user, seen))
        truths.append({r["item_id"] for r in want})
    chosen = int(model.ann["pool"])
    sweep = []
    for pool in sorted({chosen, *POOL_SWEEP}):
        model.ann["pool"] = pool
        ann_ms, recall = [], []
        for (history, user, seen), truth in zip(requests, truths, strict=True):
            start = time.perf_counter()
            got = model.recommend(history, user, 10, seen, [], [])
            ann_ms.append((time.perf_counter() - start) * 1000)
            recall.append(len(truth & {r["item_id"] for r in got}) / max(1, len(truth)))
        sweep.append(
            {
                "pool": pool,
                "recall@10_seen_removed": round(float(np.mean(recall)), 4),
                "ann_p50_ms": pct(ann_ms, 50),
                "ann_p99_ms": pct(ann_ms, 99),
            }
        )
    model.ann["pool"] = chosen
    at_chosen = next(row for row in sweep if row["pool"] == chosen)
    return {
        "users": len(users),
        "recall@10_seen_removed": at_chosen["recall@10_seen_removed"],
        "ann_p50_ms": at_chosen["ann_p50_ms"],
        "ann_p99_ms": at_chosen["ann_p99_ms"],
        "exact_p50_ms": pct(exact_ms, 50),
        "exact_p99_ms": pct(exact_ms, 99),
        "sweep": sweep,
    }


def pct(times: list[float], q: float) -> float:
    return round(float(np.percentile(times, q)), 3)


def tables(r: dict) -> dict[str, str]:
    """The markdown blocks of bench/results/scale.json, keyed by id (the .md and the README's
    generated blocks come from this one function: bench/tables.py), or of scale_pipeline.json,
    which --pipeline writes (bench/tables.py SCRIPTS sends that file here too)."""
    if r.get("benchmark") == PIPELINE:
        return pipeline_tables(r)
    size = r["size"]
    ann, served = r["ann"] or {}, r["served"]
    setup = (
        f"Machine: {r['machine']}; 1-minute load average {r['load_avg_1m'][0]} before, "
        f"{r['load_avg_1m'][1]} after. Synthetic catalogue: {size['items']:,} items, "
        f"{size['users']:,} users, {size['interactions']:,} interactions; model BPR-MF."
    )
    stages = [
        "| stage | wall s | peak RSS GiB |",
        "| --- | ---: | ---: |",
        *(f"| {s['stage']} | {s['wall_s']} | {s['peak_rss_gib']} |" for s in r["stages"]),
    ]
    index = (
        f"HNSW ({ann.get('library')}, M={ann.get('connectivity')}, ef={ann.get('expansion_search')}"
        f", pool {ann.get('pool')}): built in {ann.get('build_seconds')} s; recall@10 against "
        f"exact scoring {ann.get('recall@10')} (index alone {ann.get('index_recall@10')}) on "
        f"{ann.get('queries')} held-out users; with seen items removed "
        f"{served['recall@10_seen_removed']} on {served['users']} users."
    )
    latency = [
        "| in process, one request | p50 ms | p99 ms |",
        "| --- | ---: | ---: |",
        f"| ANN (pool re-scored, filtered) | {served['ann_p50_ms']} | {served['ann_p99_ms']} |",
        f"| exact (every item scored) | {served['exact_p50_ms']} | {served['exact_p99_ms']} |",
    ]
    http = [
        "| processes | HTTP concurrency | requests | errors | requests/s | p50 ms | p99 ms "
        "| client |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        *(
            f"| {h.get('workers', 1)} | {h['concurrency']} | {h['requests']:,} | {h['errors']} | "
            f"{h['requests_per_s']:,} | {h['p50_ms']} | {h['p99_ms']} | "
            # runs before bench/loadgen.c drove the load with Python threads
            f"{h.get('client', 'Python threads (http.client)')} |"
            for h in r["http"]
        ),
    ]
    blocks = {
        "setup": setup,
        "stages": "\n".join(stages),
        "index": index,
        "latency": "\n".join(latency),
        "http": "\n".join(http),
    }
    if served.get("sweep"):  # runs before the sweep have none
        # the 2026-12-07 run swept the search depth (ef); later runs sweep the pool
        knob = "pool" if "pool" in served["sweep"][0] else "expansion_search"
        title = {"pool": "candidate pool", "expansion_search": "HNSW ef (search depth)"}[knob]
        blocks["sweep"] = "\n".join(
            [
                f"| {title} | recall@10, seen removed | ANN p50 ms | ANN p99 ms |",
                "| ---: | ---: | ---: | ---: |",
                *(
                    f"| {row[knob]} | {row['recall@10_seen_removed']} | "
                    f"{row['ann_p50_ms']} | {row['ann_p99_ms']} |"
                    for row in served["sweep"]
                ),
            ]
        )
    return blocks


def markdown(r: dict) -> str:
    return "\n\n".join(tables(r).values()) + "\n"


# --- --pipeline: every stage at MovieLens-25M's shape ------------------------------------------


def bench_pipeline(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Run the pipeline's stages at the size asked; write scale_pipeline.json and .md."""
    users, items = sizes_for(args.interactions)
    args.users = users if args.users is None else args.users
    args.items = items if args.items is None else args.items
    chosen = [name for name in NEEDS if name in (args.stages or NEEDS)]
    outside = sorted({need for name in chosen for need in NEEDS[name]} - set(chosen))
    if outside and args.work is None:
        parser.error(f"--stages without {', '.join(outside)}: give the --work of an earlier run")
    load_before = os.getloadavg()[0]
    if args.work:
        args.work.mkdir(parents=True, exist_ok=True)
    folder = (
        contextlib.nullcontext(str(args.work))
        if args.work
        else tempfile.TemporaryDirectory(prefix="bench-scale-pipeline-")
    )
    with folder as tmp:
        work = Path(tmp).resolve()
        stages = run_pipeline(args, work, chosen)
        manifest = work / "features" / "manifest.json"
        counts = json.loads(manifest.read_text())["counts"] if manifest.is_file() else {}
    result = {
        "benchmark": PIPELINE,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "torch": torch_info(),
        "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "size": {"interactions": args.interactions, "users": args.users, "items": args.items},
        "features": {key: counts[key] for key in ("rows", "users", "items") if key in counts},
        "epochs": args.epochs,
        "stages": stages,
    }
    if args.stages:
        result = merged(args.out / "scale_pipeline.json", result)
    write_results(args.out, "scale_pipeline", result, markdown(result))
    print(markdown(result))


def run_pipeline(args: argparse.Namespace, work: Path, chosen: list[str]) -> list[dict]:
    """Each chosen stage in its own process, in order; one row per stage. A stage that is not
    chosen counts as done (its outputs are an earlier run's in `work`)."""
    params = stage_params(work / "raw", work, {"features.text.enabled": False})
    (work / "logs").mkdir(exist_ok=True)
    # The stages write only under `work`: a lock of their own, so no stage waits (and has the
    # wait timed) while another run holds the project's pipeline lock.
    os.environ[LOCK_ENV] = str(work / LOCK_FILE)
    rows, status = [], {}
    for name in chosen:
        missing = [need for need in NEEDS[name] if status.get(need, "ok") != "ok"]
        if missing:
            status[name] = "skipped"
            rows.append({"stage": name, "status": "skipped", "message": f"{missing[0]} failed"})
            print(json.dumps(rows[-1]), flush=True)
            continue
        kind, _, model = name.partition("_")
        if kind == "train":  # a model folder left by a run would be resumed, not trained
            shutil.rmtree(work / "models" / model, ignore_errors=True)
        log = work / "logs" / f"{name}.log"
        wall, rss, code = run_status(pipeline_command(name, args, work, params), log, cwd=ROOT)
        row = {"stage": name, "status": "ok", "exit_code": code}
        row |= {"wall_s": round(wall, 2), "peak_rss_gib": round(rss, 3)}
        if code != 0:
            row["message"] = last_line(log, code)
            refused = name == "train_ease" and "max_memory_gib" in row["message"]
            row["status"] = "refused" if refused else "failed"
        elif kind == "train":
            row |= training_figures(work / "models" / model)
        if kind == "train" and args.settings:
            row["settings"] = args.settings
        status[name] = row["status"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def parse_setting(text: str) -> tuple[str, object]:
    """ "train.precision=bf16-mixed" -> ("train.precision", "bf16-mixed"), the value read as
    YAML reads it (numbers, booleans)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"--set {text!r}: expected KEY=VALUE")
    return key.strip(), yaml.safe_load(value)


def pipeline_command(name: str, args: argparse.Namespace, work: Path, params: Path) -> list[str]:
    """The process of one stage: the data stages as the recsys commands bench_data.py times,
    training, evaluation and export through their tasks/ functions."""
    if name == "synth":
        return synth_command(args.interactions, args.users, args.items, work / "raw")
    if name in ("ingest", "validate", "features"):
        return stage_command(name, params)
    kind, _, model = name.partition("_")
    overrides = {}
    if kind == "train":
        overrides = {"train.max_epochs": args.epochs, "train.accelerator": "cpu"}
        overrides |= TRAIN_SETTINGS.get(model, {}) | args.settings
        code = (
            f"from tasks.train import train; train({model!r}, Path(p.features.out), "
            f"Path(p.train.out) / {model!r}, p)"
        )
    elif kind == "evaluate":
        code = (
            "from tasks.evaluate import evaluate; evaluate(Path(p.features.out), "
            f"Path(p.train.out), Path(p.evaluate.out), p, dvc_file=Path({str(work / 'data.dvc')!r})"
            f", only={EVALUATED!r})"
        )
    else:
        code = (
            f"from tasks.export import export; export({model!r}, Path(p.train.out), "
            "Path(p.features.out), Path(p.evaluate.artifacts), data_dvc=None, "
            "ann_params=p.export.ann)"
        )
    script = CHILD.format(params=str(params), overrides=overrides, code=code)
    return [sys.executable, "-c", script]


def last_line(log: Path, code: int) -> str:
    """What a failed stage said last (a killed process may say nothing: its signal then)."""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines()]
    said = next((line for line in reversed(lines) if line), "")[:300]
    return f"killed by signal {-code}" + (f"; {said}" if said else "") if code < 0 else said


def training_figures(folder: Path) -> dict:
    """Epochs, training seconds (Lightning's epochs with their validation; a closed-form fit's
    time) and validation NDCG@10, as the model store recorded them."""
    metrics = read_metrics(folder)
    epochs, seconds = metrics.get("epochs", 0), metrics.get("train_seconds")
    per_epoch = round(seconds / epochs, 2) if epochs and seconds is not None else None
    validation = metrics.get("validation_seconds")
    return {
        "epochs": epochs,
        "train_s": seconds,
        "s_per_epoch": per_epoch,
        "validation_s": validation,
        "val_ndcg@10": round(metrics["ndcg@10"], 4),
    }


def merged(path: Path, rerun: dict) -> dict:
    """A rerun of some stages folded into the earlier run of the same size at `path`: its rows
    replace theirs, the rerun is listed; with no such run, the rerun alone."""
    earlier = json.loads(path.read_text()) if path.is_file() else {}
    if earlier.get("benchmark") != PIPELINE or earlier.get("size") != rerun["size"]:
        return rerun
    rows = {row_key(row): row for row in earlier["stages"] + rerun["stages"]}
    done = {"date": rerun["date"], "stages": [row["stage"] for row in rerun["stages"]]}
    return earlier | {
        "features": rerun["features"] or earlier.get("features", {}),
        "stages": sorted(
            rows.values(), key=lambda row: (list(NEEDS).index(row["stage"]), "settings" in row)
        ),
        "reruns": [*earlier.get("reruns", []), done | {"load_avg_1m": rerun["load_avg_1m"]}],
    }


def row_key(row: dict) -> tuple[str, str]:
    """A stage and the settings it ran with: a rerun replaces the row of the same key only."""
    return row["stage"], json.dumps(row.get("settings", {}), sort_keys=True)


def pipeline_tables(r: dict) -> dict[str, str]:
    """The markdown blocks of bench/results/scale_pipeline.json, keyed by id."""
    size, kept = r["size"], r["features"]
    setup = (
        f"Machine: {r['machine']}, {r['torch']}; 1-minute load average {r['load_avg_1m'][0]} "
        f"before, {r['load_avg_1m'][1]} after. Synthetic log in MovieLens-25M's shape: "
        f"{size['interactions']:,} interactions, {size['users']:,} users, {size['items']:,} items"
    )
    if kept:
        setup += (
            f" ({kept['rows']:,} rows, {kept['users']:,} users, {kept['items']:,} items after "
            "the features stage's filters)"
        )
    setup += (
        f". Training on the CPU, {r['epochs']} epoch(s) per gradient model, SASRec with the "
        "sampled softmax; item text off."
    )
    for rerun in r.get("reruns", []):
        setup += f" Rerun {rerun['date']}: {', '.join(rerun['stages'])}."
    stages = [
        "| stage | status | wall s | peak RSS GiB | s per epoch | note |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for s in r["stages"]:
        note = s.get("message", "")
        if "val_ndcg@10" in s:
            fit = f"{s['epochs']} epoch(s)" if s["epochs"] else f"fit {s['train_s']} s"
            note = f"{fit}, val NDCG@10 {s['val_ndcg@10']}"
        if s.get("settings"):
            note = f"{settings_text(s)}; {note}"
        figures = [s.get("wall_s"), s.get("peak_rss_gib"), s.get("s_per_epoch")]
        cells = [s["stage"], s["status"], *("-" if v is None else str(v) for v in figures)]
        stages.append("| " + " | ".join([*cells, note.replace("|", "\\|")]) + " |")
    return {"setup": setup, "stages": "\n".join(stages), "targets": targets_table(r["stages"])}


def targets_table(stages: list[dict]) -> str:
    """The issue's targets beside what this run measured ("not measured" where a stage did not
    finish)."""
    by_name = {s["stage"]: s for s in stages if not s.get("settings")}
    ran = [s for s in stages if s.get("peak_rss_gib") is not None]
    rows = []
    if ran:
        top = max(ran, key=lambda s: s["peak_rss_gib"])
        rows.append(
            (
                f"every stage under {TARGET_RSS_GIB} GiB peak RSS",
                f"largest {top['peak_rss_gib']} GiB ({top['stage']}; {len(ran)} stages ran)",
                top["peak_rss_gib"] < TARGET_RSS_GIB,
            )
        )
    features = by_name.get("features", {})
    if features.get("status") == "ok":
        wall = features["wall_s"]
        rows.append(
            (f"features under {TARGET_FEATURES_S} s", f"{wall} s", wall < TARGET_FEATURES_S)
        )
    for sasrec in stages:
        if sasrec["stage"] != "train_sasrec" or sasrec.get("s_per_epoch") is None:
            continue
        epoch, validation = sasrec["s_per_epoch"], sasrec.get("validation_s")
        split = "training and its validation"
        if validation is not None:  # runs before validation_seconds was recorded have none
            per_epoch = validation / sasrec["epochs"]
            split = f"{epoch - per_epoch:.1f} s training pass + {per_epoch:.1f} s validation"
        setting = f", {settings_text(sasrec)}" if sasrec.get("settings") else ", params.yaml"
        rows.append(
            (
                f"one SASRec epoch (sampled softmax) under {TARGET_EPOCH_S // 60} min on 2 cores",
                f"{epoch} s per epoch ({split}{setting})",
                epoch < TARGET_EPOCH_S,
            )
        )
    lines = ["| target (issue 19) | measured | met |", "| --- | --- | --- |"]
    lines += [f"| {what} | {got} | {'yes' if ok else 'no'} |" for what, got, ok in rows]
    return "\n".join(lines)


def settings_text(row: dict) -> str:
    return ", ".join(f"{key}={value}" for key, value in row["settings"].items())


if __name__ == "__main__":
    main()
