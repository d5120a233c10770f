"""The pieces of one SASRec training step at MovieLens-25M's shape, each against what it replaced.

A batch of 128 full windows of 50 items, about 5,500 targets scored against 2,048 shared
negatives over 58,986 items, hidden 64 (params.yaml's SASRec). Timed on random data, in this
process, medians of --repeats calls after a warm-up:
- the sampled softmax and its gradient: the whole [targets x negatives] matrix with the logQ
  shift, mask and log-softmax (the loss before recsys_models/negative_logsumexp.py) against the
  blocked one;
- one dropout of [128, 50, 64]: torch's against recsys_models/dropout.py;
- AdamW's step over the model (item table included): plain against fused;
- the rank counting of one validation batch (256 users x 58,986 items, metrics.target_positions)
  in one block against BLOCK_SCORES blocks;
- the sampled softmax alone in float32 against bf16 autocast (its products in bf16);
- the two-tower's step at that shape with the history mask of before (a sort-based isin)
  against two_tower.items_in_history's sorted lookup;
- the whole training step as the code stands (forward, backward, fused AdamW), and that step in
  float32 against bf16 autocast (train.precision: bf16-mixed, Lightning's CPU autocast); bf16 is
  fast only on a CPU with native bf16 (AVX512-BF16 or AMX), which the results say.
Writes bench/results/step.json and step.md.

    python bench/bench_step.py
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.common import machine, torch_info, write_results  # noqa: E402
from recsys_models import metrics, sasrec, sequence_training, two_tower  # noqa: E402
from recsys_models.dropout import Dropout  # noqa: E402

ITEMS, BATCH, LENGTH, NEGATIVES, HIDDEN, USERS = 58_986, 128, 50, 2048, 64, 256


def median_ms(call, repeats: int) -> float:
    for _ in range(3):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 2)


def paired_ms(first, second, repeats: int) -> tuple[float, float]:
    """Medians of two calls timed in turn, so that a shared machine's slow minutes fall on both."""
    times: tuple[list[float], list[float]] = ([], [])
    for n in range(repeats + 3):
        for call, kept in zip((first, second), times, strict=True):
            start = time.perf_counter()
            call()
            if n >= 3:  # the first three of each warm up
                kept.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times[0]), 2), round(statistics.median(times[1]), 2)


def isin_mask(history: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """The two-tower's history mask as it was before two_tower.items_in_history's sorted lookup:
    one sort-based isin over every (row, candidate) key."""
    rows = torch.arange(history.shape[0]).unsqueeze(1)
    seen = (rows * (ITEMS + 1) + history)[history > 0]
    return torch.isin(rows * (ITEMS + 1) + candidates.unsqueeze(0), seen)


def two_tower_steps(repeats: int) -> tuple[float, float]:
    """One two-tower step at MovieLens-25M's shape (params.yaml's tower, batch 512, 20-item
    histories, no item attributes), with the old mask and with the current one, in turn."""
    data = SimpleNamespace(
        n_items=ITEMS,
        item_genres=np.zeros((ITEMS + 1, 1), np.float32),
        item_year_bucket=np.zeros(ITEMS + 1, np.int64),
        item_text=None,
        item_text_mask=None,
        item_popularity=np.ones(ITEMS + 1),
        user_features=None,
    )
    config = two_tower.Config(item_features=False)
    module = two_tower.TwoTowerModule(two_tower.TwoTower(data, config), data, config).train()
    optimizer = module.configure_optimizers()
    size = config.batch_size
    batch = {
        "user": torch.randint(0, 162_540, (size,)),
        "history": torch.randint(1, ITEMS + 1, (size, config.history_len)),
        "target": torch.randint(1, ITEMS + 1, (size,)),
    }

    def step() -> None:
        optimizer.zero_grad()
        module.loss(batch).backward()
        optimizer.step()

    def step_with_isin() -> None:
        with mock.patch.object(two_tower, "items_in_history", isin_mask):
            step()

    return paired_ms(step_with_isin, step, repeats)


def whole_matrix_loss(hidden, target_vectors, candidate_vectors, targets, candidates, log_q):
    """The sampled softmax as it was before the blocks: every pass over the full matrix."""
    pos = (hidden * target_vectors).sum(-1) - log_q[targets]
    neg = hidden @ candidate_vectors.T - log_q[candidates]
    neg = neg.masked_fill(~sequence_training.negative_mask(targets, candidates), float("-inf"))
    logits = torch.cat([pos.unsqueeze(1), neg], dim=1)
    return F.cross_entropy(logits, torch.zeros_like(targets))


def native_bf16() -> str:
    """The CPU's bf16 instructions, as Linux lists them ("none" without)."""
    flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").is_file() else []
    found = sorted({flag for flag in flags if flag in ("avx512_bf16", "amx_bf16")})
    return ", ".join(found) or "none"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    rows = []

    def row(piece: str, before: float | None, now: float) -> None:
        rows.append({"piece": piece, "before_ms": before, "now_ms": now})
        print(rows[-1], flush=True)

    targets = torch.randint(1, ITEMS + 1, (5_500,))
    candidates, log_q = sequence_training.sample_candidates(
        targets, ITEMS, NEGATIVES, "mixed", generator
    )
    table = torch.randn(ITEMS + 1, HIDDEN) * HIDDEN**-0.5

    def loss_step(loss) -> None:
        hidden = torch.randn(len(targets), HIDDEN, requires_grad=True)
        vectors = table[torch.cat([targets, candidates])].requires_grad_()
        rows_ = (vectors[: len(targets)], vectors[len(targets) :], targets, candidates)
        loss(hidden, *rows_, log_q).backward()

    row(
        "sampled softmax, forward and backward",
        median_ms(lambda: loss_step(whole_matrix_loss), args.repeats),
        median_ms(lambda: loss_step(sequence_training.sampled_softmax), args.repeats),
    )

    def loss_step_bf16() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss_step(sequence_training.sampled_softmax)

    row(
        "sampled softmax, float32 -> bf16 autocast",
        *paired_ms(
            lambda: loss_step(sequence_training.sampled_softmax), loss_step_bf16, args.repeats
        ),
    )
    x = torch.randn(BATCH, LENGTH, HIDDEN)
    row(
        "one dropout (p 0.3)",
        median_ms(lambda: F.dropout(x, 0.3, True), 5 * args.repeats),
        median_ms(lambda: Dropout(0.3)(x), 5 * args.repeats),
    )

    config = sasrec.Config(loss="sampled")
    model = sasrec.SASRec(ITEMS, LENGTH, HIDDEN, config.blocks, dropout=config.dropout)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    optimizers = [
        torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.98), fused=fused)
        for fused in (False, True)
    ]
    row(
        "AdamW step (item table included)",
        median_ms(optimizers[0].step, args.repeats),
        median_ms(optimizers[1].step, args.repeats),
    )

    scores = torch.randn(USERS, ITEMS + 1)
    wanted = torch.randint(1, ITEMS + 1, (USERS, 1))
    seen_rows = torch.repeat_interleave(torch.arange(USERS), 150)
    seen_cols = torch.randint(1, ITEMS + 1, (len(seen_rows),))

    def rank() -> None:
        metrics.target_positions(scores, wanted, seen_rows, seen_cols)

    with mock.patch.object(metrics, "BLOCK_SCORES", scores.numel()):
        whole = median_ms(rank, args.repeats)
    row("rank counting, one validation batch", whole, median_ms(rank, args.repeats))

    module = sequence_training.NextItemModule(model, ITEMS, config, seed=0)
    optimizer = module.configure_optimizers()
    inputs = torch.randint(1, ITEMS + 1, (BATCH, LENGTH))
    window = torch.stack([inputs, torch.randint(1, ITEMS + 1, (BATCH, LENGTH))], dim=1)
    window[:, 1, : LENGTH - 43] = 0  # about 43 targets a window, as at 25M (5,500 a batch)

    def step() -> None:
        optimizer.zero_grad()
        module.loss(window).backward()
        optimizer.step()

    module.train()
    row("SASRec training step, as the code stands", None, median_ms(step, args.repeats))

    def step_bf16() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            step()

    row(
        "SASRec training step, float32 -> train.precision bf16-mixed",
        *paired_ms(step, step_bf16, args.repeats),
    )
    row("two-tower training step, isin mask -> sorted lookup", *two_tower_steps(args.repeats))
    result = {
        "benchmark": "step",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": f"{machine()}, {torch_info()}, native bf16: {native_bf16()}",
        "shape": {"items": ITEMS, "batch": BATCH, "length": LENGTH, "negatives": NEGATIVES},
        "rows": rows,
    }
    write_results(args.out, "step", result, markdown(result))


def tables(r: dict) -> dict[str, str]:
    lines = [
        f"Machine: {r['machine']}; medians, milliseconds.",
        "",
        "| piece | before | now |",
        "| --- | ---: | ---: |",
    ]
    for row in r["rows"]:
        before = "-" if row["before_ms"] is None else row["before_ms"]
        lines.append(f"| {row['piece']} | {before} | {row['now_ms']} |")
    return {"pieces": "\n".join(lines)}


def markdown(r: dict) -> str:
    return "\n\n".join(tables(r).values()) + "\n"


if __name__ == "__main__":
    main()
