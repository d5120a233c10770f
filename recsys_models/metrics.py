"""Ranking metrics in batched torch (the evaluation protocol): one implementation for
validation (early stopping), evaluation and the sampled protocol.

Every item of the catalogue is scored; padding (item 0) and the items the user interacted with
before the target are removed, except the targets themselves (a user may re-consume an item);
a target's position is then 1 + the number of remaining items scored higher or equal (ties count
against the model, so a constant scorer gains nothing) + the user's other targets above it
(target_positions). set_metrics turns positions into every per-user metric; sampled_metrics
reads single-target positions among sampled negatives through the same set_metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch

KS = (5, 10, 20)
DIRECT_COUNT_MAX_TARGETS = 8
# Scores per block of rows in target_positions: 2 MiB of float32, within a core's L2 cache. Each
# row is read by several elementwise passes; done a few rows at a time they hit the cache, not
# memory (bench/bench_step.py, 256 users x 59k items on 2 cores: 123 ms whole, 26 ms in blocks).
BLOCK_SCORES = 1 << 19


def evaluate_batch(
    score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], batch: dict
) -> dict[str, torch.Tensor]:
    """Per-user metrics of one evaluation batch (see recsys_models.data.EvalDataset): its one
    target per user (batch["target"]), keys as set_metrics.

    Scored with autocast off: under bf16 mixed precision (training on a GPU) the scores would
    have 8 bits of mantissa, and the ties that creates count against the model.
    """
    with torch.autocast(device_type=batch["history"].device.type, enabled=False):
        scores = score_fn(batch["user"], batch["history"])
    positions, beaten = target_positions(
        scores, batch["target"][:, None], batch["seen_rows"], batch["seen_cols"]
    )
    return set_metrics(positions, beaten)


@torch.no_grad()
def evaluate(
    score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], batches: Iterable[dict]
) -> dict[str, float]:
    """Mean of each metric over all users of the batches."""
    sums: dict[str, float] = {}
    n = 0
    for batch in batches:
        metrics = evaluate_batch(score_fn, batch)
        for name, values in metrics.items():
            sums[name] = sums.get(name, 0.0) + float(values.sum())
        n += len(batch["target"])
    return {name: total / max(n, 1) for name, total in sums.items()} | {"users": n}


def sample_negatives(
    n_items: int,
    indptr: np.ndarray,
    seen_items: np.ndarray,
    users: np.ndarray,
    targets: np.ndarray,
    n: int = 100,
    seed: int = 0,
) -> np.ndarray:
    """[B, n] items drawn uniformly without replacement from those each user never touched.

    Never the target, never an item of the user's history (CSR indptr/seen_items by user), never
    padding. Each user's draw comes from a generator seeded by (seed, user), so a user's
    negatives do not depend on which other users share the batch. A user with fewer than n
    untouched items gets all of them, padded with 0 (padding never competes).
    """
    out = np.zeros((len(users), n), dtype=np.int64)
    for row, (user, target) in enumerate(zip(users.tolist(), targets.tolist(), strict=True)):
        touched = set(seen_items[indptr[user] : indptr[user + 1]].tolist())
        touched.update((0, int(target)))
        rng = np.random.default_rng([seed, user])
        free = n_items + 1 - len(touched)
        if free <= n:
            pool = np.setdiff1d(np.arange(1, n_items + 1), np.fromiter(touched, np.int64))
            out[row, : len(pool)] = pool
            continue
        chosen: list[int] = []
        picked = set(touched)
        while len(chosen) < n:  # rejection sampling: touched items are a small share
            for item in rng.integers(1, n_items + 1, size=2 * n).tolist():
                if item not in picked:
                    picked.add(item)
                    chosen.append(item)
                    if len(chosen) == n:
                        break
        out[row] = chosen
    return out


def sampled_ranks(scores: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor):
    """1-based rank of the target among itself and the sampled negatives (ties count against;
    padding columns of `negatives` never compete). Labelled sampled: not the primary figure.

    targets: [B] or [B, T] (several targets of a user, each ranked against the same negatives;
    0 = no target, its rank is meaningless and must be masked by the caller).
    """
    scores = torch.where(torch.isnan(scores.float()), float("-inf"), scores.float())
    single = targets.dim() == 1
    targets = targets.to(scores.device).reshape(len(scores), -1)
    target_scores = scores.gather(1, targets)[:, :, None]  # [B, T, 1]
    negatives = negatives.to(scores.device)
    negative_scores = scores.gather(1, negatives)[:, None, :]  # [B, 1, n]
    competes = (negatives > 0)[:, None, :]
    ranks = 1 + ((negative_scores >= target_scores) & competes).sum(dim=2)
    return ranks[:, 0] if single else ranks


def target_positions(
    scores: torch.Tensor,
    targets: torch.Tensor,
    seen_rows: torch.Tensor | None = None,
    seen_cols: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each of a user's targets lands in their full ranking, for one or many targets.

    targets: [B, T] item indices, 0 = no target. The candidates are every item except padding,
    the seen items and the user's targets; a target's position is 1 + the candidates scored
    higher or equal (ties count against the model) + the user's targets scored above it. The
    candidates are kept in a mask instead of being overwritten with -inf, so a target the model
    itself scores -inf ranks last among the real candidates, not behind padding and seen items
    too; a NaN score reads as -inf, so a diverged model can never rank a target first. Returns
    positions [B, T] (float, sorted ascending, inf where there is no target) and, per target,
    the fraction of candidates it beats (for the AUC; 1.0 when there is no candidate), in the
    same order.

    Up to DIRECT_COUNT_MAX_TARGETS targets are counted with one comparison pass each (leave-one-
    out has one); more are counted in each row sorted once (searchsorted), which keeps time and
    memory at O(B * items * log items) however many targets a user has. Rows are taken in blocks
    of BLOCK_SCORES scores; each row's result is its own, so the blocks change nothing.
    """
    rows = max(1, BLOCK_SCORES // max(scores.shape[1], 1))
    if len(scores) <= rows or scores.device.type != "cpu":  # a GPU has no use for small blocks
        return _block_positions(scores, targets, seen_rows, seen_cols)
    starts = range(0, len(scores), rows)
    if seen_rows is not None and seen_cols is not None:
        # Sorted by row once, so each block's seen pairs are one slice (not a scan of all).
        order = torch.argsort(seen_rows, stable=True)
        seen_rows, seen_cols = seen_rows[order], seen_cols[order]
        edges = torch.searchsorted(seen_rows, torch.tensor([*starts, len(scores)])).tolist()
    blocks = []
    for k, start in enumerate(starts):
        end = start + rows
        seen = (None, None)
        if seen_cols is not None and seen_rows is not None:
            pairs = slice(edges[k], edges[k + 1])
            seen = (seen_rows[pairs] - start, seen_cols[pairs])
        blocks.append(_block_positions(scores[start:end], targets[start:end], *seen))
    positions, beaten = zip(*blocks, strict=True)
    return torch.cat(positions), torch.cat(beaten)


def _block_positions(
    scores: torch.Tensor,
    targets: torch.Tensor,
    seen_rows: torch.Tensor | None,
    seen_cols: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """target_positions of some rows, all at once."""
    scores = scores.float()
    scores = torch.where(torch.isnan(scores), float("-inf"), scores)
    targets = targets.to(scores.device)
    n_cols = scores.shape[1]
    competes = torch.ones_like(scores, dtype=torch.bool)
    competes[:, 0] = False
    if seen_rows is not None and seen_cols is not None and seen_rows.numel():
        competes[seen_rows.to(scores.device), seen_cols.to(scores.device)] = False
    competes.scatter_(1, targets, False)  # column 0 (no target) is off already
    candidates = competes.sum(dim=1, keepdim=True)
    valid = targets > 0
    target_scores = torch.where(valid, scores.gather(1, targets), float("inf"))
    if targets.shape[1] <= DIRECT_COUNT_MAX_TARGETS:  # one pass over the row per target
        at_or_above = torch.stack(
            [((scores >= target_scores[:, j : j + 1]) & competes).sum(dim=1)
             for j in range(targets.shape[1])],
            dim=1,
        )  # fmt: skip
    else:
        # Candidates scored >= each target: every column at or above it in the masked, sorted
        # row, less the masked columns (all -inf) when the target itself is -inf.
        masked = torch.where(competes, scores, float("-inf")).sort(dim=1).values
        at_or_above = n_cols - torch.searchsorted(masked, target_scores.contiguous())
        masked_out = torch.where(target_scores == float("-inf"), n_cols - candidates, 0)
        at_or_above = at_or_above - masked_out
    order = torch.argsort(torch.where(valid, -target_scores, float("inf")), dim=1, stable=True)
    at_or_above = at_or_above.gather(1, order)
    valid = valid.gather(1, order)
    above_targets = torch.arange(targets.shape[1], device=scores.device)[None, :]
    positions = torch.where(valid, 1.0 + at_or_above + above_targets, float("inf"))
    c = candidates.float()
    beaten = torch.where(c > 0, (c - at_or_above) / c.clamp(min=1.0), torch.ones_like(c))
    return positions, torch.where(valid, beaten, float("nan"))


def set_metrics(
    positions: torch.Tensor, beaten: torch.Tensor, ks: Iterable[int] = KS
) -> dict[str, torch.Tensor]:
    """Per-user HR, Precision, Recall, NDCG at each K, MRR and AUC from target_positions.

    Recall@K is the share of the user's targets in the top K, Precision@K the hits over K,
    NDCG@K the DCG over the ideal DCG of min(targets, K) hits; MRR reads the best target; AUC is
    the mean over the targets of the fraction of candidates each beats (ties count as losses).
    With one target, Recall@K equals HR@K, Precision@K is HR@K / K and NDCG@K 1/log2(pos + 1)
    within the top K; both are reported so tables line up with papers that list them.
    """
    n_targets = torch.isfinite(positions).sum(dim=1).clamp(min=1).float()
    out: dict[str, torch.Tensor] = {}
    gains = torch.where(torch.isfinite(positions), 1.0 / torch.log2(positions + 1.0), 0.0)
    for k in ks:
        hit = positions <= k
        hits = hit.sum(dim=1).float()
        ideal = torch.cumsum(1.0 / torch.log2(torch.arange(2, k + 2, dtype=torch.float32)), 0)
        ideal_k = ideal.to(positions.device)[(n_targets.clamp(max=k) - 1).long()]
        out[f"hr@{k}"] = (hits > 0).float()
        out[f"recall@{k}"] = hits / n_targets
        out[f"precision@{k}"] = hits / k
        out[f"ndcg@{k}"] = torch.where(hit, gains, 0.0).sum(dim=1) / ideal_k
    out["mrr"] = 1.0 / positions[:, 0]
    out["auc"] = beaten.nan_to_num(0.0).sum(dim=1) / n_targets
    return out


def sampled_metrics(
    ranks: torch.Tensor, valid: torch.Tensor, ks: Iterable[int] = KS
) -> dict[str, torch.Tensor]:
    """Per user, the mean over their valid targets of each target's own HR@K, NDCG@K and MRR.

    ranks [B, T]: each target's rank among itself and the sampled negatives (sampled_ranks);
    valid [B, T]: False where there is no target. Each target is ranked on its own (the others
    are not among its competitors), so each is one row of set_metrics; a user's figure is the
    mean of their targets' rows, and a user without a valid target gets 0.
    """
    positions = torch.where(valid, ranks.float(), float("inf")).reshape(-1, 1)  # [B * T, 1]
    per_target = set_metrics(positions, torch.full_like(positions, float("nan")), ks)
    n = valid.sum(dim=1).clamp(min=1).float()
    names = [f"{name}@{k}" for k in ks for name in ("hr", "ndcg")] + ["mrr"]
    return {name: per_target[name].reshape(valid.shape).sum(dim=1) / n for name in names}
