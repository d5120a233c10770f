"""Data-stage benchmark: ingest + validate + features on synthetic data at growing sizes.

Each stage runs as its own `recsys` process (what `dvc repro` and a user run), timed by wall
clock, with its peak resident memory read from the kernel's rusage of that process (os.wait4).
The synthetic raw file is generated once per size and not timed. Writes bench/results/data.json
and bench/results/data.md.

    python bench/bench_data.py                      # 1M, 5M, 25M interactions, 3 runs each
    python bench/bench_data.py --sizes 1000000 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
from bench.common import machine, run_timed, write_results  # noqa: E402
from tasks.params import as_dict, load_params  # noqa: E402

STAGES = ("ingest", "validate", "features")
RECSYS = [sys.executable, "-m", "cli.main"]


def sizes_for(n: int) -> tuple[int, int]:
    """Users and items in the proportions of MovieLens-25M (162k users, 59k items)."""
    return max(100, round(n * 162_541 / 25_000_095)), max(50, round(n * 59_047 / 25_000_095))


def synth_command(n: int, users: int, items: int, raw: Path) -> list[str]:
    """`recsys synth` writing the raw file (interactions.parquet, items.parquet) to `raw`."""
    sizes = ["--users", str(users), "--items", str(items), "--interactions", str(n)]
    return [*RECSYS, "synth", *sizes, "--out", str(raw)]


def stage_params(raw: Path, work: Path, settings: dict[str, Any] | None = None) -> Path:
    """work/params.yaml: params.yaml reading the synthetic raw file, with every folder a stage
    reads or writes under `work` (never the project's data/, models/, reports/ or artifacts/),
    and `settings` (dotted keys, as `recsys --set`) on top."""
    folders = {
        "ingest.source": "parquet",
        "ingest.path": str(raw / "interactions.parquet"),
        "ingest.out": str(work / "interim"),
        "ingest.appended": str(work / "appended"),
        "validate.out": str(work / "validation"),
        "features.out": str(work / "features"),
        "features.text.cache": str(work / "text_cache"),
        "train.out": str(work / "models"),
        "evaluate.out": str(work / "evaluation"),
        "evaluate.artifacts": str(work / "artifacts"),
    }
    params = load_params(ROOT / "params.yaml", folders | (settings or {}))
    work.mkdir(parents=True, exist_ok=True)
    params_file = work / "params.yaml"
    params_file.write_text(yaml.safe_dump(as_dict(params)))
    return params_file


def stage_command(stage: str, params_file: Path) -> list[str]:
    """One data stage (ingest, validate, features) as the `recsys` process a user runs."""
    return [*RECSYS, stage, "--params", str(params_file)]


def bench_size(n: int, repeats: int, work: Path) -> dict:
    users, items = sizes_for(n)
    work = work / f"n{n}"  # own folders per size: the drift check compares runs of one size
    raw = work / "raw"
    subprocess.run(synth_command(n, users, items, raw), check=True, stdout=subprocess.DEVNULL)
    params_file = stage_params(raw, work)
    runs = {stage: [] for stage in STAGES}
    for _ in range(repeats):
        for stage in STAGES:
            runs[stage].append(run_timed(stage_command(stage, params_file)))
    row = {"interactions": n, "users": users, "items": items, "repeats": repeats}
    for stage in STAGES:
        walls = [w for w, _ in runs[stage]]
        row[stage] = {
            "wall_s_median": round(statistics.median(walls), 2),
            "wall_s_min": round(min(walls), 2),
            "wall_s_max": round(max(walls), 2),
            "peak_rss_gib": round(max(r for _, r in runs[stage]), 2),
        }
    totals = [sum(runs[s][i][0] for s in STAGES) for i in range(repeats)]
    row["total_wall_s_median"] = round(statistics.median(totals), 2)
    shutil.rmtree(work)
    return row


def tables(result: dict) -> dict[str, str]:
    """The markdown blocks of bench/results/data.json, keyed by id: the .md and the README's
    generated blocks (bench/tables.py) come from this one function, so they cannot drift."""
    lines = [
        "| interactions | users | items | ingest s | validate s | features s | total s "
        "| peak RSS ingest / validate / features (GiB) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in result["rows"]:
        rss = " / ".join(f"{r[s]['peak_rss_gib']:.2f}" for s in STAGES)
        lines.append(
            f"| {r['interactions']:,} | {r['users']:,} | {r['items']:,} "
            + "".join(f"| {r[s]['wall_s_median']:.1f} " for s in STAGES)
            + f"| {r['total_wall_s_median']:.1f} | {rss} |"
        )
    return {
        "machine": f"Machine: {result['machine']}. Median of {result['rows'][0]['repeats']} "
        "run(s) per size; peak RSS is the largest of that stage's processes.",
        "stages": "\n".join(lines),
    }


def markdown(result: dict) -> str:
    t = tables(result)
    return f"{t['machine']}\n\n{t['stages']}\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 5_000_000, 25_000_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        for n in args.sizes:
            rows.append(bench_size(n, args.repeats, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    result = {"benchmark": "data stages", "machine": machine(), "rows": rows}
    write_results(args.out, "data", result, markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
