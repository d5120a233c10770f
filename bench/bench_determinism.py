"""How far trained weights move when only the arithmetic's order changes: every gradient model
trained on the same features with 1 and with 2 torch threads.

On one machine with one thread count a model trains bit for bit the same twice
(tests/test_reproducibility.py). Another machine (another CPU, BLAS build or thread count)
sums in another order, so float results differ in the last bits and training then drifts. A
second machine is not at hand; another thread count changes the reduction order the same way,
so it is the measured stand-in: the README states the tolerance from these figures.

    python bench/bench_determinism.py [--epochs 3] [--models sasrec bpr_mf ...]

Each training is `recsys train` in its own process (OMP_NUM_THREADS and torch's thread count
set), on data/features (MovieLens-100K, `make data && dvc repro features`), for a fixed number
of epochs (patience equal to it, so no early stop cuts one run and not the other).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine, write_results  # noqa: E402

RESULTS = ROOT / "bench" / "results"
GRADIENT = ("bpr_mf", "rating_mf", "neumf", "sasrec", "gru4rec", "two_tower")


def train(name: str, threads: int, epochs: int, out: Path, features: Path) -> dict:
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    sets = [f"train.max_epochs={epochs}", f"train.patience={epochs}", "train.accelerator=cpu"]
    cmd = [sys.executable, "-m", "cli.main", "train", "--model", name, "--out", str(out)]
    cmd += ["--features", str(features), *[arg for s in sets for arg in ("--set", s)]]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return json.loads((out / "metrics.json").read_text())


def compare(name: str, epochs: int, features: Path, work: Path) -> dict:
    import torch

    runs = {t: train(name, t, epochs, work / f"{name}-{t}", features) for t in (1, 2)}
    one, two = (torch.load(work / f"{name}-{t}" / "weights.pt", weights_only=True) for t in (1, 2))
    diffs = [float((one[k].float() - two[k].float()).abs().max()) for k in one if one[k].numel()]
    scale = max(float(v.float().abs().max()) for v in one.values() if v.numel())
    return {
        "model": name,
        "epochs": epochs,
        "bit_identical": all(torch.equal(one[k], two[k]) for k in one),
        "max_abs_weight_diff": max(diffs),
        "max_abs_weight": scale,
        "val_ndcg@10": [runs[1]["ndcg@10"], runs[2]["ndcg@10"]],
        "val_ndcg@10_diff": abs(runs[1]["ndcg@10"] - runs[2]["ndcg@10"]),
    }


def tables(result: dict) -> dict[str, str]:
    """The markdown blocks of bench/results/determinism.json, keyed by id (bench/tables.py)."""
    rows = [
        "| model | epochs | bit-identical | max abs weight diff | max abs weight "
        "| val NDCG@10, 1 thread | 2 threads | difference |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["rows"]:
        one, two = r["val_ndcg@10"]
        rows.append(
            f"| {r['model']} | {r['epochs']} | {'yes' if r['bit_identical'] else 'no'} "
            f"| {r['max_abs_weight_diff']:.2g} | {r['max_abs_weight']:.3g} | {one:.4f} "
            f"| {two:.4f} | {r['val_ndcg@10_diff']:.4f} |"
        )
    worst = max(r["val_ndcg@10_diff"] for r in result["rows"])
    summary = (
        f"Largest validation NDCG@10 difference between the thread counts: {worst:.4f} "
        f"({result['machine']}; {result['when']})."
    )
    return {"models": "\n".join(rows), "summary": summary}


def markdown(result: dict) -> str:
    t = tables(result)
    return (
        "# Same features, 1 vs 2 torch threads\n\n"
        f"{t['models']}\n\n{t['summary']}\n\n"
        "Command: `python bench/bench_determinism.py`.\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=list(GRADIENT))
    parser.add_argument("--features", type=Path, default=ROOT / "data" / "features")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-determinism-") as tmp:
        rows = [compare(name, args.epochs, args.features, Path(tmp)) for name in args.models]
    result = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "load_average": os.getloadavg(),
        "rows": rows,
    }
    text = markdown(result)
    write_results(args.out, "determinism", result, text)
    print(text)


if __name__ == "__main__":
    main()
