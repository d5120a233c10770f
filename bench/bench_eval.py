"""Evaluation benchmark: wall time and peak memory of `recsys evaluate` (make bench-eval).

Two workloads:
- MovieLens-100K: every model trained in models/ (run `make train` first; at least one), both
  protocols; per-model scoring seconds as the stage prints them, and the whole process.
- The synthetic generator at the sizes given (default 25M interactions, MovieLens-25M's shape:
  162k users, 59k items): synth -> ingest -> features, popularity and item-kNN trained on both
  protocols, then `recsys evaluate` as its own process, whose peak RSS is the figure that must
  stay within the machine's memory whatever the catalogue's size.

Writes bench/results/eval.json and eval.md.

    python bench/bench_eval.py [--sizes 25000000] [--skip-movielens]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.bench_data import sizes_for  # noqa: E402
from bench.common import machine, run_timed, torch_info, write_results  # noqa: E402

RESULTS = ROOT / "bench" / "results"
RECSYS = [sys.executable, "-m", "cli.main"]
SYNTH_MODELS = ("popularity", "itemknn")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[25_000_000])
    parser.add_argument("--skip-movielens", action="store_true")
    args = parser.parse_args()
    rows = []
    if not args.skip_movielens:
        rows.append(bench_movielens())
        print(json.dumps(rows[-1]), flush=True)
    for n in args.sizes:
        rows.append(bench_synthetic(n))
        print(json.dumps(rows[-1]), flush=True)
    result = {"machine": f"{machine()}, {torch_info()}", "rows": merge(rows)}
    write_results(RESULTS, "eval", result, markdown(result))
    print(markdown(result))


def merge(rows: list[dict]) -> list[dict]:
    """This run's rows replace earlier rows of the same workload in eval.json; others stay."""
    previous = RESULTS / "eval.json"
    kept = json.loads(previous.read_text())["rows"] if previous.is_file() else []
    fresh = {row["workload"] for row in rows}
    return [row for row in kept if row["workload"] not in fresh] + rows


def evaluate_timed(workdir: Path, params: Path, features: Path, models: Path, out: Path) -> dict:
    """`recsys evaluate` as one child process: wall seconds, peak RSS, per-model seconds."""
    log = out.parent / f"{out.name}.log"
    cmd = [*RECSYS, "evaluate", "--params", str(params), "--features", str(features)]
    cmd += ["--models", str(models), "--out", str(out)]
    wall, rss = run_timed(cmd, log, cwd=workdir)
    per_model = {
        f"{protocol} {name}": float(seconds)
        for protocol, name, seconds in re.findall(
            r"evaluate: (\w+) (\w+) in ([0-9.]+) s", log.read_text()
        )
    }
    users = {
        protocol: next(iter(models.values()))["users"]
        for protocol, models in json.loads((out / "metrics.json").read_text()).items()
    }
    return {
        "process_wall_s": round(wall, 1),
        "peak_rss_gib": round(rss, 2),
        "scoring_s": per_model,
        "test_users": users,
    }


def bench_movielens() -> dict:
    models = ROOT / "models"
    found = sorted(p.parent.name for p in models.glob("*/weights.pt"))
    if not found:
        raise SystemExit(f"{models}: no trained model; run `make train` first")
    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
        params = _params(Path(tmp), ROOT / "params.yaml", artifacts=Path(tmp) / "artifacts")
        row = evaluate_timed(
            ROOT, params, ROOT / "data" / "features", models, Path(tmp) / "evaluation"
        )
    return {
        "workload": "MovieLens-100K",
        "started_load_avg": round(os.getloadavg()[1], 2),
        "models": found,
        **row,
    }


def bench_synthetic(n: int) -> dict:
    users, items = sizes_for(n)
    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
        work = Path(tmp)
        params = _params(work, ROOT / "params.yaml", artifacts=work / "artifacts")
        steps = [
            ["synth", "--users", str(users), "--items", str(items), "--interactions", str(n)],
            ["ingest", "--source", "parquet", "--path", "synth/interactions.parquet"],
            ["features", "--skip-validation-check"],
        ]
        steps[0] += ["--out", "synth"]
        for step in steps:
            run_timed([*RECSYS, *step, *(["--params", str(params)] if step[0] != "synth" else [])],
                      work / f"{step[0]}.log", cwd=work)  # fmt: skip
        for name in SYNTH_MODELS:
            for protocol in ("loo", "temporal"):
                cmd = [*RECSYS, "train", "--model", name, "--protocol", protocol]
                run_timed([*cmd, "--params", str(params)], work / f"{name}.log", cwd=work)
        row = evaluate_timed(
            work, params, work / "data" / "features", work / "models", work / "evaluation"
        )
    return {
        "workload": f"synthetic {n:,} interactions ({users:,} users, {items:,} items)",
        "started_load_avg": round(os.getloadavg()[1], 2),
        "models": list(SYNTH_MODELS),
        **row,
    }


def _params(folder: Path, base: Path, artifacts: Path) -> Path:
    """The project's params.yaml with paths inside `folder` and an empty registry."""
    params = yaml.safe_load(base.read_text())
    params["ingest"]["out"] = str(folder / "data" / "interim")
    params["features"]["out"] = str(folder / "data" / "features")
    params["validate"]["out"] = str(folder / "reports" / "validation")
    params["train"]["out"] = str(folder / "models")
    params["evaluate"]["artifacts"] = str(artifacts)
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def tables(result: dict) -> dict[str, str]:
    """The markdown blocks of bench/results/eval.json, keyed by id: the .md and the README's
    generated blocks (bench/tables.py) come from this one function, so they cannot drift."""
    lines = [
        "| workload | models | test users (loo / temporal) | scoring s per model (loo) "
        "| process wall s | peak RSS GiB | load avg |",
        "| --- | --- | --- | --- | ---: | ---: | ---: |",
    ]
    for r in result["rows"]:
        loo = {k.split(" ", 1)[1]: v for k, v in r["scoring_s"].items() if k.startswith("loo ")}
        per_model = ", ".join(f"{name} {s:.2f}" for name, s in loo.items())
        users = f"{r['test_users'].get('loo', 0):,} / {r['test_users'].get('temporal', 0):,}"
        lines.append(
            f"| {r['workload']} | {len(r['models'])} | {users} | {per_model} "
            f"| {r['process_wall_s']} | {r['peak_rss_gib']} | {r.get('started_load_avg', '')} |"
        )
    return {
        "machine": f"Machine: {result['machine']}. One run per workload; `recsys evaluate` as "
        "its own\nprocess (both protocols, full and sampled ranking, beyond accuracy, "
        "comparison, report).",
        "workloads": "\n".join(lines),
    }


def markdown(result: dict) -> str:
    t = tables(result)
    return f"{t['machine']}\n\n{t['workloads']}\n"


if __name__ == "__main__":
    main()
