"""Training benchmark on MovieLens-100K: every model trained by the real `recsys train` command,
then scored on the leave-one-out test split under the full-ranking protocol (README.md).

Each model trains in its own process (timed by wall clock, peak RSS from os.wait4); test metrics
are computed afterwards from the saved weights. SASRec's training throughput is reported as
training sequences (windows of max_seq_len items with their targets) and training targets per
second of training-epoch time. SASRec is trained again with other seeds (--sasrec-seeds), and the
spread of its test metrics is reported beside the main row: on ML-100K's 943 test users the seed
alone moves NDCG@10 by about 0.005, as much as many of the differences in the table.

The peer `recbole_sasrec` is RecBole 1.2.1's SASRec with RecBole's defaults, trained in its own
venv (`make .venv-recbole`) on exactly our split (bench/recbole_sasrec.py) and scored with the
project's metric code, so both SASRecs are compared on the same users, targets and protocol.

Rows are merged by model into bench/results/train.json (a rerun of some models keeps the
others' rows); each row records when it ran and the load average around it.
Writes bench/results/train.json and bench/results/train.md.

    python bench/bench_train.py                         # our models and the RecBole peer
    python bench/bench_train.py --models sasrec recbole_sasrec
    python bench/bench_train.py --models sasrec --sasrec-seeds 1 --out /tmp/try \
        --set train.sasrec.dropout=0.5        # a tuning trial: seeds 42 and 1, results apart
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.common import machine, run_timed, torch_info, write_results  # noqa: E402
from tasks.io import file_sha256  # noqa: E402

RESULTS = ROOT / "bench" / "results"
MODELS = ["popularity", "itemknn", "bpr_mf", "two_tower", "sasrec"]
PEERS = ["recbole_sasrec"]  # trained by another library in its own venv, scored by our metrics
RECBOLE_PYTHON = ROOT / ".venv-recbole" / "bin" / "python"
# Kept until RecBole's run completes, so an interrupted run resumes there (git ignores it).
RECBOLE_WORK = ROOT / "bench" / "work" / "recbole_sasrec"
TEST_KEYS = ("ndcg@10", "hr@10", "mrr", "ndcg@20")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS + PEERS, choices=MODELS + PEERS)
    parser.add_argument("--features", type=Path, default=ROOT / "data" / "features")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--recbole-epochs", type=int, default=300, help="RecBole's max epochs (its default: 300)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="parameter override for our models (as `recsys train --set`), e.g. "
        "train.sasrec.dropout=0.5; repeatable",
    )
    parser.add_argument(
        "--sasrec-seeds",
        type=int,
        nargs="*",
        default=[1, 2],
        help="seeds SASRec is trained with again, besides params.yaml's, for its seed spread",
    )
    args = parser.parse_args()

    from cli.main import _overrides
    from tasks.feature_store import load_features
    from tasks.params import load_params

    params = load_params(args.params, _overrides(args))
    data = load_features(args.features)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        for name in args.models:
            load_before = os.getloadavg()[1]
            started = dt.datetime.now().isoformat(timespec="seconds")
            if name == "recbole_sasrec":
                row = bench_recbole(data, RECBOLE_WORK, args.recbole_epochs, params.seed)
            else:
                row = bench_ours(name, data, params, args, Path(tmp) / name)
            row |= {
                "started": started,
                "load_avg_5min_before_after": [round(load_before, 2), round(os.getloadavg()[1], 2)],
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    result = merge(args.out / "train.json", rows)
    write_results(args.out, "train", result, markdown(result))
    print(markdown(result))


def bench_ours(name: str, data, params, args, out: Path) -> dict:
    from tasks.model_store import load_model, read_metrics
    from tasks.train import evaluate_model

    wall, rss = run_timed(train_command(name, args, out), out.parent / f"{name}.log")
    val = read_metrics(out)
    test = evaluate_model(load_model(out, data), data, "test")
    row = {
        "model": name,
        "test": {k: round(test[k], 4) for k in TEST_KEYS},
        "val_ndcg@10": round(val["ndcg@10"], 4),
        "epochs": val["epochs"],
        "best_epoch": val["best_epoch"],
        "train_seconds": val["train_seconds"],
        "process_wall_s": round(wall, 1),
        "peak_rss_gib": round(rss, 2),
        "test_users": test["users"],
        "machine": f"{machine()}, {torch_info()}",
    }
    if name == "sasrec":
        row |= sasrec_throughput(data, params, val)
        row["seeds"] = [seed_summary(params.seed, val, test)]
        for seed in args.sasrec_seeds:
            seeded = out.parent / f"{name}-seed{seed}"
            run_timed(train_command(name, args, seeded, seed), out.parent / f"{seeded.name}.log")
            seed_val = read_metrics(seeded)
            seed_test = evaluate_model(load_model(seeded, data), data, "test")
            row["seeds"].append(seed_summary(seed, seed_val, seed_test))
    return row


def train_command(name: str, args, out: Path, seed: int | None = None) -> list[str]:
    """`recsys train` of one of our models with the benchmark's parameter overrides."""
    cmd = [sys.executable, "-m", "cli.main", "train", "--model", name]
    cmd += ["--features", str(args.features), "--out", str(out), "--params", str(args.params)]
    overrides = args.set + ([f"seed={seed}"] if seed is not None else [])
    return cmd + [arg for item in overrides for arg in ("--set", item)]


def seed_summary(seed: int, val: dict, test: dict) -> dict:
    """One seed's figures, for the spread SASRec's metrics have from the seed alone."""
    return {
        "seed": seed,
        "test": {k: round(test[k], 4) for k in TEST_KEYS},
        "val_ndcg@10": round(val["ndcg@10"], 4),
        "epochs": val["epochs"],
        "train_seconds": val["train_seconds"],
    }


def bench_recbole(data, folder: Path, epochs: int, seed: int) -> dict:
    """RecBole's SASRec on our split; its scores ranked by our metric code."""
    if not RECBOLE_PYTHON.is_file():
        raise SystemExit(f"{RECBOLE_PYTHON}: missing; run `make .venv-recbole` first")
    inputs, out = folder / "input", folder / "out"
    shutil.rmtree(inputs, ignore_errors=True)
    write_recbole_input(data, inputs)
    stamp = folder / "input.sha256"
    digest = file_sha256(inputs / "ours" / "ours.inter")
    if not stamp.is_file() or stamp.read_text() != digest:  # other data: no resuming
        shutil.rmtree(out, ignore_errors=True)
        stamp.write_text(digest)
    cmd = [str(RECBOLE_PYTHON), str(ROOT / "bench" / "recbole_sasrec.py")]
    cmd += ["--data", str(inputs), "--out", str(out), "--epochs", str(epochs), "--seed", str(seed)]
    # In its own folder: RecBole writes log/ and log_tensorboard/ into the working directory.
    wall, rss = run_timed(cmd, folder.parent / "recbole_sasrec.log", cwd=folder)
    rb = json.loads((out / "result.json").read_text())
    val = score_split(data, "val", np.load(out / "val_scores.npy"))
    test = score_split(data, "test", np.load(out / "test_scores.npy"))
    shutil.rmtree(folder)  # complete: the next benchmark run starts afresh
    return {
        "model": "recbole_sasrec",
        "test": {k: round(test[k], 4) for k in TEST_KEYS},
        "val_ndcg@10": round(val["ndcg@10"], 4),
        "epochs": rb["epochs"],
        "best_epoch": rb["best_epoch"],
        "train_seconds": rb["train_seconds"],
        "process_wall_s": round(wall, 1),
        "peak_rss_gib": round(rss, 2),
        "test_users": test["users"],
        "machine": f"{machine()}, RecBole 1.2.1, torch 2.13.0 ({rb['torch_threads']} threads)",
        "recbole": {k: rb[k] for k in rb if k != "curve"},
        "recbole_curve": rb["curve"],
    }


def write_recbole_input(data, folder: Path) -> None:
    """Our leave-one-out sequences as RecBole's atomic file, plus our val/test inputs.

    The timestamp is the item's position in the user's sequence (train, then val, then test
    target), so RecBole's time-ordered leave-one-out split reproduces ours exactly.
    """
    users = [data.train_users]
    items = [data.train_items]
    for targets in (data.val_target, data.test_target):
        has = np.flatnonzero(targets > 0)
        users.append(has)
        items.append(targets[has])
    users, items = np.concatenate(users), np.concatenate(items)
    order = np.argsort(users, kind="stable")  # train rows, then val, then test, per user
    users, items = users[order], items[order]
    starts = np.searchsorted(users, users, side="left")
    position = np.arange(len(users)) - starts
    (folder / "ours").mkdir(parents=True)
    with open(folder / "ours" / "ours.inter", "w") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for u, i, t in zip(users.tolist(), items.tolist(), position.tolist(), strict=True):
            f.write(f"{u}\t{i}\t{t}\n")
    np.save(folder / "val_input.npy", data.val_input)
    np.save(folder / "test_input.npy", data.test_input)


def score_split(data, split: str, scores: np.ndarray) -> dict:
    """Our full-ranking metrics (seen items removed) of a precomputed score matrix."""
    import torch

    from recsys_models.data import eval_loader
    from recsys_models.metrics import evaluate

    table = torch.from_numpy(scores)
    return evaluate(lambda users, history: table[users], eval_loader(data, split, 512))


def sasrec_throughput(data, params, val: dict) -> dict:
    """Training windows, and the targets (transitions) in them, per second of training-epoch
    time (validation passes included). Targets per second compares with RecBole, whose every
    training instance is one target."""
    from recsys_models.sasrec import Config
    from recsys_models.sequence_training import training_windows
    from tasks.model_store import model_config

    config: Config = model_config("sasrec", params.train.section("sasrec"), "train.sasrec")
    windows = training_windows(
        data.train_users, data.train_items, data.n_users, data.max_seq_len, config.min_context
    )
    per_epoch = int(windows.shape[0])
    targets = int((windows[:, 1] > 0).sum())
    seconds = max(val["train_seconds"], 1e-9)
    return {
        "sasrec_windows_per_epoch": per_epoch,
        "sasrec_targets_per_epoch": targets,
        "sasrec_min_context": config.min_context,
        "sasrec_batch_size": config.batch_size,
        "sasrec_precision": "32-true (CPU)",
        "sasrec_sequences_per_s": round(per_epoch * val["epochs"] / seconds, 1),
        "sasrec_targets_per_s": round(targets * val["epochs"] / seconds, 1),
    }


def merge(previous: Path, rows: list[dict]) -> dict:
    """This run's rows replace the same models' rows of the previous result; order as MODELS."""
    kept: dict[str, dict] = {}
    if previous.is_file():
        old = json.loads(previous.read_text())
        kept = {r["model"]: r for r in old.get("rows", []) if "started" in r}
    kept |= {r["model"]: r for r in rows}
    order = MODELS + PEERS
    return {
        "benchmark": "training on MovieLens-100K, leave-one-out, full ranking (test split)",
        "rows": sorted(kept.values(), key=lambda r: order.index(r["model"])),
    }


def tables(result: dict) -> dict[str, str]:
    """The markdown blocks of bench/results/train.json, keyed by id: the .md and the README's
    generated blocks (bench/tables.py) come from this one function, so they cannot drift.
    `notes` holds the sentences with throughput, seed spread and RecBole's own figures."""
    machines = sorted({r["machine"] for r in result["rows"]})
    lines = [
        "| model | test NDCG@10 | test HR@10 | test MRR | val NDCG@10 | epochs (best) "
        "| train s | process s | load avg |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["rows"]:
        load = max(r["load_avg_5min_before_after"])
        lines.append(
            f"| {r['model']} | {r['test']['ndcg@10']:.4f} | {r['test']['hr@10']:.4f} "
            f"| {r['test']['mrr']:.4f} | {r['val_ndcg@10']:.4f} "
            f"| {r['epochs']} ({r['best_epoch']}) "
            f"| {r['train_seconds']:.1f} | {r['process_wall_s']:.1f} | {load:.1f} |"
        )
    notes = []
    for r in result["rows"]:
        if "sasrec_sequences_per_s" in r:
            notes.append(
                f"SASRec training throughput: {r['sasrec_sequences_per_s']:.0f} sequences/s, "
                f"{r.get('sasrec_targets_per_s', 0):.0f} targets/s "
                f"(batch {r['sasrec_batch_size']}, {r['sasrec_precision']}, "
                f"{r['sasrec_windows_per_epoch']} sequences of "
                f"{r.get('sasrec_targets_per_epoch', '?')} targets per epoch, "
                f"min_context {r.get('sasrec_min_context', 0)})."
            )
        if len(r.get("seeds", [])) > 1:
            seeds = r["seeds"]
            spread = []
            for key, label in (("ndcg@10", "NDCG@10"), ("hr@10", "HR@10"), ("mrr", "MRR")):
                values = np.array([s["test"][key] for s in seeds])
                spread.append(
                    f"{label} {values.mean():.4f} ± {values.std(ddof=1):.4f} "
                    f"({values.min():.4f} to {values.max():.4f})"
                )
            notes.append(
                f"{r['model']} over {len(seeds)} seeds "
                f"({', '.join(str(s['seed']) for s in seeds)}; mean ± sd, min to max), test: "
                + "; ".join(spread)
                + f"; train s {np.median([s['train_seconds'] for s in seeds]):.1f} (median)."
            )
        if "recbole" in r:
            rb = r["recbole"]
            own = rb["test_recbole_evaluator"]
            notes.append(
                f"RecBole SASRec: {rb['training_instances']} training instances per epoch (one "
                f"per prefix, each one target; "
                f"{rb['training_instances'] * rb['epochs'] / max(rb['train_seconds'], 1e-9):.0f} "
                f"targets/s, validation included), batch {rb['config']['train_batch_size']}, "
                f"max {rb['max_epochs']} "
                f"epochs, stopping step {rb['config']['stopping_step']}, "
                + ("stopped early" if rb["stopped_early"] else "did NOT stop early (capped)")
                + f". RecBole's own evaluator (seen items not removed): test NDCG@10 "
                f"{own.get('ndcg@10', float('nan')):.4f}, "
                f"HR@10 {own.get('hit@10', float('nan')):.4f}."
            )
    blocks = {
        "machine": "Machine: " + "; ".join(machines) + ". MovieLens-100K after the 5-core "
        "filter, leave-one-out by time, full ranking over the catalogue with seen items removed "
        "(the project's metric code for every row); test split.",
        "models": "\n".join(lines),
    }
    if notes:
        blocks["notes"] = "\n\n".join(notes)
    return blocks


def markdown(result: dict) -> str:
    t = tables(result)
    return "\n\n".join(t[k] for k in ("machine", "models", "notes") if k in t) + "\n"


if __name__ == "__main__":
    main()
