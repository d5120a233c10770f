"""Micro-benchmark: one training epoch of SASRec with the full softmax against the sampled
softmax, on a synthetic catalogue large enough that the catalogue-wide logits dominate.

The full softmax costs positions x items per step, the sampled one positions x negatives, so the
ratio of the two epoch times says what `loss: auto` saves on a large catalogue. Sequences are
Zipf-distributed item draws (only time is measured, not accuracy); both runs train the same
windows in the same order with the same initial weights, in this process, one after the other,
each after two warm-up steps. Both wall and process CPU seconds are recorded: on a machine
shared with other work the wall time of the same epoch varied 4x between runs (6 to 26 s), the
CPU time much less; one torch thread by default (--threads), since two threads on two busy cores
mostly wait for each other. Writes bench/results/losses.json and losses.md.

    python bench/bench_losses.py                      # 59,000 items, 2,000 users of 20 items
    python bench/bench_losses.py --users 500 --out /tmp/try
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.common import machine, torch_info, write_results  # noqa: E402
from recsys_models import sasrec  # noqa: E402
from recsys_models.data import FeatureData  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def zipf_sequences(n_users: int, n_items: int, length: int, seed: int) -> FeatureData:
    """Every user draws `length` items from a Zipf(1) popularity over the whole catalogue; the
    last two are validation and test, the rest training."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, n_items + 1)
    seq = rng.choice(n_items, size=(n_users, length), p=weights / weights.sum()) + 1
    max_len = min(50, length - 2)
    zero = np.zeros((1, max_len), dtype=np.int64)
    train = seq[:, :-2]
    return FeatureData(
        n_users=n_users,
        n_items=n_items,
        max_seq_len=max_len,
        train_users=np.repeat(np.arange(1, n_users + 1), length - 2),
        train_items=train.ravel(),
        val_input=np.concatenate([zero, train[:, -max_len:]]),
        val_target=np.concatenate([[0], seq[:, -2]]),
        test_input=np.concatenate([zero, seq[:, -max_len - 1 : -1]]),
        test_target=np.concatenate([[0], seq[:, -1]]),
        item_genres=np.zeros((n_items + 1, 1), dtype=np.uint8),
        item_year_bucket=np.zeros(n_items + 1, dtype=np.int64),
        item_popularity=np.bincount(train.ravel(), minlength=n_items + 1).astype(np.float32),
    )


def epoch_seconds(data: FeatureData, config: sasrec.Config, seed: int) -> dict:
    """Wall and CPU seconds of one training epoch (forward, loss, backward, AdamW step per
    batch)."""
    module, datamodule = sasrec.build(data, config, seed)
    optimiser = module.configure_optimizers()
    batches = list(datamodule.train_dataloader())

    def step(batch: torch.Tensor) -> float:
        optimiser.zero_grad()
        loss = module.loss(batch)
        loss.backward()
        optimiser.step()
        return loss.item()

    for batch in batches[:2]:  # warm-up: allocator, thread pool
        step(batch)
    start, cpu = time.perf_counter(), time.process_time()
    losses = [step(batch) for batch in batches]
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    targets = int(sum(int((b[:, 1] > 0).sum()) for b in batches))
    return {
        "loss": module.loss_name,
        "epoch_s": round(seconds, 2),
        "epoch_cpu_s": round(cpu, 2),
        "batches": len(batches),
        "targets": targets,
        "targets_per_s": round(targets / seconds),
        "mean_loss": round(float(np.mean(losses)), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=59_000)
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--length", type=int, default=20, help="items per user")
    parser.add_argument("--negatives", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data = zipf_sequences(args.users, args.items, args.length, args.seed)
    base = sasrec.Config(negatives=args.negatives)
    rows = [
        epoch_seconds(data, sasrec.Config(**{**vars(base), "loss": loss}), args.seed)
        for loss in ("ce", "sampled")
    ]
    full, sampled = rows
    ratio = full["epoch_s"] / sampled["epoch_s"]
    cpu_ratio = full["epoch_cpu_s"] / sampled["epoch_cpu_s"]
    result = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "torch": torch_info(),
        "load_average": os.getloadavg(),
        "items": args.items,
        "users": args.users,
        "items_per_user": args.length,
        "negatives": args.negatives,
        "config": {k: v for k, v in vars(base).items() if k != "loss"},
        "rows": rows,
        "full_over_sampled": round(ratio, 1),
        "full_over_sampled_cpu": round(cpu_ratio, 1),
    }
    text = markdown(result)
    write_results(args.out, "losses", result, text)
    print(text)


def tables(result: dict) -> dict[str, str]:
    """The markdown blocks of bench/results/losses.json, keyed by id (the .md and the README's
    generated blocks come from this one function: bench/tables.py)."""
    load = ", ".join(f"{x:.1f}" for x in result["load_average"])
    setup = (
        f"{result['users']:,} users x {result['items_per_user']} Zipf items, "
        f"{result['negatives']} negatives, {result['machine']}, {result['torch']}, load average "
        f"{load}."
    )
    epochs = [
        "| loss | epoch s (wall) | epoch s (CPU) | batches | targets | targets/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        *(
            f"| {r['loss']} | {r['epoch_s']} | {r['epoch_cpu_s']} | {r['batches']} | "
            f"{r['targets']:,} | {r['targets_per_s']:,} |"
            for r in result["rows"]
        ),
    ]
    ratio = (
        f"Full softmax / sampled softmax epoch time: **{result['full_over_sampled']:.1f}x** "
        f"wall, **{result['full_over_sampled_cpu']:.1f}x** CPU."
    )
    return {"setup": setup, "epochs": "\n".join(epochs), "ratio": ratio}


def markdown(result: dict) -> str:
    t = tables(result)
    return (
        f"# One SASRec training epoch: full vs sampled softmax ({result['items']:,} items)\n\n"
        f"{t['setup']}\n\n{t['epochs']}\n\n{t['ratio']}\n\n"
        "Command: `python bench/bench_losses.py` (defaults above).\n"
    )


if __name__ == "__main__":
    main()
