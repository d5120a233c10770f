"""Scale benchmark (issue 19): export and serving at a large synthetic catalogue.

Stages, each in its own process so that its wall time and peak RSS are its own (bench/common.py
run_timed): synth -> features -> train BPR-MF (a dot-product model; --epochs) -> export with
the HNSW index forced on (export.ann.min_items = 1). Then, in this process, the served artifact
(tasks/artifact_store.py ServedModel): ANN recall@10 against exact scoring over --queries
known users, and per-request latency of the ANN path and of exact scoring; then the HTTP service on
loopback at each --concurrency (GET /recommend/{user_id}?k=10, bench/bench_serve.py's closed
loop): p50/p99 latency and requests per second. Client and server share the machine's cores.

The issue's target is --items 1000000 (about 20M interactions). On the 2-core shared machine
only a small size finishes in minutes; the defaults are that size, and the results say which
size ran. Writes bench/results/scale.json and scale.md.

    python bench/bench_scale.py                                  # small: minutes
    python bench/bench_scale.py --items 1000000 --users 160000 --interactions 20000000
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.bench_serve import bench_http  # noqa: E402
from bench.common import machine, run_timed, write_results  # noqa: E402
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
    "{epochs}, 'train.patience': 1, 'train.bpr_mf': {{'dim': {dim}, 'batch_size': 8192}}}}))",
    "export (HNSW index)": "from tasks.export import export; from tasks.params import "
    "AnnParams; export('bpr_mf', Path('{root}/models'), Path('{root}/features'), "
    "Path('{root}/artifacts'), 256, 20, data_dvc=None, ann_params=AnnParams(min_items=1, "
    "recall_queries={queries}))",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--users", type=int, default=5_000)
    parser.add_argument("--interactions", type=int, default=200_000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--queries", type=int, default=300, help="users for recall and latency")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per HTTP level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        root = Path(tmp)
        stages = run_stages(args, root)
        folder = next((root / "artifacts" / "bpr_mf").iterdir())
        served = bench_served(folder, args.queries)
        promote(root / "artifacts", "bpr_mf", folder.name, "bench-scale")
        http = bench_http(args, root / "artifacts", folder)
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
    """recall@10 of the served ANN path against exact scoring, and in-process latency of both."""
    from tasks.artifact_store import ServedModel

    model = ServedModel(folder)
    users = sorted(model.user_index.values())[:queries]
    ann_ms, exact_ms, recall = [], [], []
    for user in users:
        history, seen = model.user_history(user)
        start = time.perf_counter()
        got = model.recommend(history, user, 10, seen, [], [])
        ann_ms.append((time.perf_counter() - start) * 1000)
        start = time.perf_counter()
        want = model.top_k(model.scores(history, user), 10, seen, [], [])
        exact_ms.append((time.perf_counter() - start) * 1000)
        truth = {r["item_id"] for r in want}
        recall.append(len(truth & {r["item_id"] for r in got}) / max(1, len(truth)))

    def pct(times: list[float], q: float) -> float:
        return round(float(np.percentile(times, q)), 3)

    return {
        "users": len(users),
        "recall@10_seen_removed": round(float(np.mean(recall)), 4),
        "ann_p50_ms": pct(ann_ms, 50),
        "ann_p99_ms": pct(ann_ms, 99),
        "exact_p50_ms": pct(exact_ms, 50),
        "exact_p99_ms": pct(exact_ms, 99),
    }


def tables(r: dict) -> dict[str, str]:
    """The markdown blocks of bench/results/scale.json, keyed by id (the .md and the README's
    generated blocks come from this one function: bench/tables.py)."""
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
        "| HTTP concurrency | requests | errors | requests/s | p50 ms | p99 ms |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
        *(
            f"| {h['concurrency']} | {h['requests']:,} | {h['errors']} | {h['requests_per_s']:,}"
            f" | {h['p50_ms']} | {h['p99_ms']} |"
            for h in r["http"]
        ),
    ]
    return {
        "setup": setup,
        "stages": "\n".join(stages),
        "index": index,
        "latency": "\n".join(latency),
        "http": "\n".join(http),
    }


def markdown(r: dict) -> str:
    t = tables(r)
    return "\n\n".join(t[k] for k in ("setup", "stages", "index", "latency", "http")) + "\n"


if __name__ == "__main__":
    main()
