"""Evaluation benchmark: wall time and peak memory of `recsys evaluate` (make bench-eval).

Two workloads:
- MovieLens-100K: every model trained in models/ (run `make train` first; at least one), both
  protocols; per-model scoring seconds as the stage prints them, and the whole process.
- The synthetic generator at the sizes given (default 25M interactions, MovieLens-25M's shape:
  162k users, 59k items): synth -> ingest -> features, popularity and item-kNN trained on both
  protocols, then `recsys evaluate` as its own process, whose peak RSS is the figure that must
  stay within the machine's memory whatever the catalogue's size.

The MovieLens-100K run also records the evaluation's own figures (every model's metrics, each
challenger against the champion), from which the README's evaluation table is generated
(bench/tables.py). `--record-evaluation DIR` records them from an existing `recsys evaluate`
output (reports/evaluation after `dvc repro evaluate`) without timing anything.

Writes bench/results/eval.json and eval.md.

    python bench/bench_eval.py [--sizes 25000000] [--skip-movielens]
    python bench/bench_eval.py --record-evaluation reports/evaluation
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
    parser.add_argument(
        "--record-evaluation",
        type=Path,
        metavar="DIR",
        help="only store the figures of this `recsys evaluate` output in eval.json",
    )
    args = parser.parse_args()
    stored = RESULTS / "eval.json"
    previous = json.loads(stored.read_text()) if stored.is_file() else {}
    if args.record_evaluation:
        result = {**previous, "evaluation": evaluation_figures(args.record_evaluation)}
        write_results(RESULTS, "eval", result, markdown(result))
        print(markdown(result))
        return
    rows = []
    evaluation = previous.get("evaluation")
    if not args.skip_movielens:
        row, evaluation = bench_movielens()
        rows.append(row)
        print(json.dumps(rows[-1]), flush=True)
    for n in args.sizes:
        rows.append(bench_synthetic(n))
        print(json.dumps(rows[-1]), flush=True)
    result = {"machine": f"{machine()}, {torch_info()}", "rows": merge(rows)}
    if evaluation:
        result["evaluation"] = evaluation
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


def bench_movielens() -> tuple[dict, dict]:
    """The timed MovieLens-100K row, and the figures that evaluation produced."""
    models = ROOT / "models"
    found = sorted(p.parent.name for p in models.glob("*/weights.pt"))
    if not found:
        raise SystemExit(f"{models}: no trained model; run `make train` first")
    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
        params = _params(Path(tmp), ROOT / "params.yaml", artifacts=Path(tmp) / "artifacts")
        out = Path(tmp) / "evaluation"
        row = evaluate_timed(ROOT, params, ROOT / "data" / "features", models, out)
        evaluation = evaluation_figures(out, "this benchmark's MovieLens-100K run")
    row = {
        "workload": "MovieLens-100K",
        "started_load_avg": round(os.getloadavg()[1], 2),
        "models": found,
        **row,
    }
    return row, evaluation


def evaluation_figures(folder: Path, recorded_from: str | None = None) -> dict:
    """What one `recsys evaluate` output says of every model (metrics.json, as written) and of
    each challenger against the champion (decision.json's evidence): the README's evaluation
    table is rendered from these, so its figures are the evaluation's, never retyped."""
    for name in ("metrics.csv", "decision.json"):
        if not (folder / name).is_file():
            raise SystemExit(f"{folder / name}: no such file; point at a `recsys evaluate` output")
    decision = json.loads((folder / "decision.json").read_text())
    keep = ("users", "mean_diff", "ci95", "p_wilcoxon", "p_holm")
    return {
        "recorded_from": recorded_from or str(folder),
        "data_version": decision["data_version"],
        "primary_metric": decision["primary"]["metric"],
        "champion": decision["champion"],
        "champion_source": decision["champion_source"],
        "metrics": _nested_metrics(folder / "metrics.csv"),
        "vs_champion": {e["challenger"]: {k: e[k] for k in keep} for e in decision["evidence"]},
    }


def _nested_metrics(csv: Path) -> dict:
    """metrics.csv (one row per model and protocol card) as {protocol: {model: {full, sampled,
    beyond, users}}}, every figure as the evaluation wrote it."""
    import polars as pl

    nested: dict = {}
    for row in pl.read_csv(csv).iter_rows(named=True):
        protocol, kind = row["protocol"].split("/")
        metrics = {k: v for k, v in row.items() if "@" in k or k in ("mrr", "auc")}
        model = nested.setdefault(row["split"], {}).setdefault(row["model"], {})
        model[kind] = {k: v for k, v in metrics.items() if v is not None}
        model["users"] = row["users"]
    return nested


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
    blocks = {
        "machine": f"Machine: {result['machine']}. One run per workload; `recsys evaluate` as "
        "its own\nprocess (both protocols, full and sampled ranking, beyond accuracy, "
        "comparison, report).",
        "workloads": "\n".join(lines),
    }
    if "evaluation" in result:
        blocks["ml100k"] = evaluation_table(result["evaluation"])
    return blocks


def _figure(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def evaluation_table(ev: dict) -> str:
    """Every model's leave-one-out and temporal figures, and its difference from the champion
    on the primary metric with the 95% interval and the raw Wilcoxon p, best model first."""
    loo, temporal = ev["metrics"]["loo"], ev["metrics"].get("temporal", {})
    primary = ev["primary_metric"].upper()
    lines = [
        "| model | NDCG@10 | HR@10 | MRR | AUC | sampled NDCG@10 | coverage@10 | novelty@10 "
        "| diversity@10 | popularity pct@10 | temporal NDCG@10 | temporal Recall@10 "
        f"| {primary} vs champion [95% CI], Wilcoxon p |",
        "| --- " + "| ---: " * 11 + "| --- |",
    ]
    for name in sorted(loo, key=lambda n: -loo[n]["full"]["ndcg@10"]):
        full, beyond = loo[name]["full"], loo[name].get("beyond", {})
        sampled = loo[name].get("sampled", {})
        later = temporal.get(name, {}).get("full", {})
        vs = ev["vs_champion"].get(name)
        if name == ev["champion"]:
            versus = "(champion)"
        elif vs is None:
            versus = "-"
        else:
            low, high = vs["ci95"]
            versus = f"{vs['mean_diff']:+.4f} [{low:+.4f}, {high:+.4f}], p={vs['p_wilcoxon']:.2g}"
        cells = [
            _figure(full["ndcg@10"], 4),
            _figure(full["hr@10"], 4),
            _figure(full["mrr"], 4),
            _figure(full.get("auc"), 3),
            _figure(sampled.get("ndcg@10"), 4),
            _figure(beyond.get("coverage@10"), 3),
            _figure(beyond.get("novelty@10"), 2),
            _figure(beyond.get("diversity@10"), 3),
            _figure(beyond.get("popularity_percentile@10"), 3),
            _figure(later.get("ndcg@10"), 4),
            _figure(later.get("recall@10"), 4),
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {versus} |")
    return "\n".join(lines)


def markdown(result: dict) -> str:
    t = tables(result)
    text = f"{t['machine']}\n\n{t['workloads']}\n"
    if "ml100k" in t:
        ev = result["evaluation"]
        text += (
            f"\nMovieLens-100K evaluation ({ev['recorded_from']}; features "
            f"{ev['data_version']['features_manifest_sha256'][:12]}, champion {ev['champion']}, "
            f"{ev['champion_source']}):\n\n{t['ml100k']}\n"
        )
    return text


if __name__ == "__main__":
    main()
