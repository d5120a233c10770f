"""Training benchmark on MovieLens-100K: every model trained by the real `recsys train` command,
then scored on the leave-one-out test split under the full-ranking protocol (DESIGN.md).

Each model trains in its own process (timed by wall clock, peak RSS from os.wait4); test metrics
are computed afterwards from the saved weights. SASRec's training throughput is reported as
training sequences (windows of max_seq_len + 1 items) per second of training-epoch time.
Writes bench/results/train.json and bench/results/train.md.

    python bench/bench_train.py                         # all models, features from data/features
    python bench/bench_train.py --models sasrec itemknn
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.common import machine, run_timed  # noqa: E402

RESULTS = ROOT / "bench" / "results"
MODELS = ["popularity", "itemknn", "bpr_mf", "two_tower", "sasrec"]


def torch_info() -> str:
    import torch

    return f"torch {torch.__version__} ({torch.get_num_threads()} threads)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    parser.add_argument("--features", type=Path, default=ROOT / "data" / "features")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    from tasks.params import load_params
    from tasks.train import evaluate_model, load_features, load_model

    params = load_params(args.params)
    data = load_features(args.features)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        for name in args.models:
            out = Path(tmp) / name
            cmd = [
                sys.executable,
                "-m",
                "tasks.cli",
                "train",
                "--model",
                name,
                "--features",
                str(args.features),
                "--out",
                str(out),
                "--params",
                str(args.params),
            ]
            wall, rss = run_timed(cmd, Path(tmp) / f"{name}.log")
            val = json.loads((out / "metrics.json").read_text())
            test = evaluate_model(load_model(out, data), data, "test")
            row = {
                "model": name,
                "test": {k: round(test[k], 4) for k in ("ndcg@10", "hr@10", "mrr", "ndcg@20")},
                "val_ndcg@10": round(val["ndcg@10"], 4),
                "epochs": val["epochs"],
                "best_epoch": val["best_epoch"],
                "train_seconds": val["train_seconds"],
                "process_wall_s": round(wall, 1),
                "peak_rss_gib": round(rss, 2),
                "test_users": test["users"],
            }
            if name == "sasrec":
                row |= sasrec_throughput(data, params, val)
            rows.append(row)
            print(json.dumps(row), flush=True)
    result = {
        "benchmark": "training on MovieLens-100K, leave-one-out, full ranking (test split)",
        "machine": f"{machine()}, {torch_info()}",
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "train.md").write_text(markdown(result))
    print(markdown(result))


def sasrec_throughput(data, params, val: dict) -> dict:
    """Training windows per second of training-epoch time (validation passes included)."""
    import recsys_models.sasrec as sasrec
    from recsys_models.sasrec import Config, training_windows
    from tasks.train import model_config

    config: Config = model_config(sasrec, "sasrec", params.train)
    windows = training_windows(data.train_users, data.train_items, data.n_users, data.max_seq_len)
    per_epoch = int(windows.shape[0])
    seconds = max(val["train_seconds"], 1e-9)
    return {
        "sasrec_windows_per_epoch": per_epoch,
        "sasrec_batch_size": config.batch_size,
        "sasrec_precision": "32-true (CPU)",
        "sasrec_sequences_per_s": round(per_epoch * val["epochs"] / seconds, 1),
    }


def markdown(result: dict) -> str:
    lines = [
        f"Machine: {result['machine']}. MovieLens-100K after the 5-core filter, leave-one-out by "
        "time, full ranking over the catalogue with seen items removed; test split.",
        "",
        "| model | test NDCG@10 | test HR@10 | test MRR | val NDCG@10 | epochs (best) "
        "| train s | process s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['model']} | {r['test']['ndcg@10']:.4f} | {r['test']['hr@10']:.4f} "
            f"| {r['test']['mrr']:.4f} | {r['val_ndcg@10']:.4f} "
            f"| {r['epochs']} ({r['best_epoch']}) "
            f"| {r['train_seconds']:.1f} | {r['process_wall_s']:.1f} |"
        )
    for r in result["rows"]:
        if "sasrec_sequences_per_s" in r:
            lines += [
                "",
                f"SASRec training throughput: {r['sasrec_sequences_per_s']:.0f} sequences/s "
                f"(batch {r['sasrec_batch_size']}, {r['sasrec_precision']}, "
                f"{r['sasrec_windows_per_epoch']} sequences per epoch).",
            ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
