"""Full-ranking metrics in batched torch (DESIGN.md evaluation protocol).

Every item of the catalogue is scored; padding (item 0) and the items the user interacted with
before the target are removed, except the target itself (a user may re-consume an item); the
target's rank is then 1 + the number of remaining items scored strictly higher + the number of
other items scored equal (ties count against the model, so a constant scorer gains nothing).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

KS = (5, 10, 20)


def target_ranks(
    scores: torch.Tensor,
    targets: torch.Tensor,
    seen_rows: torch.Tensor | None = None,
    seen_cols: torch.Tensor | None = None,
) -> torch.Tensor:
    """1-based rank of each row's target among the unseen items. scores: [B, I+1].

    The competitors are kept in a mask instead of being overwritten with -inf, so a target the
    model itself scores -inf ranks last among the real candidates, not behind padding and seen
    items too; a NaN score reads as -inf, so a diverged model can never rank a target first.
    """
    scores = scores.float()
    scores = torch.where(torch.isnan(scores), float("-inf"), scores)
    targets = targets.to(scores.device)
    rows = torch.arange(len(targets), device=scores.device)
    target_scores = scores[rows, targets][:, None]
    competes = torch.ones_like(scores, dtype=torch.bool)
    competes[:, 0] = False
    if seen_rows is not None and seen_cols is not None and seen_rows.numel():
        competes[seen_rows.to(scores.device), seen_cols.to(scores.device)] = False
    competes[rows, targets] = False  # the target does not compete with itself
    higher = ((scores > target_scores) & competes).sum(dim=1)
    ties = ((scores == target_scores) & competes).sum(dim=1)
    return 1 + higher + ties


def per_user_metrics(ranks: torch.Tensor, ks: Iterable[int] = KS) -> dict[str, torch.Tensor]:
    """HR@K, NDCG@K (1/log2(rank+1) when rank <= K) and MRR, one value per user."""
    ranks = ranks.float()
    out: dict[str, torch.Tensor] = {}
    for k in ks:
        hit = ranks <= k
        out[f"hr@{k}"] = hit.float()
        out[f"ndcg@{k}"] = torch.where(hit, 1.0 / torch.log2(ranks + 1.0), torch.zeros_like(ranks))
    out["mrr"] = 1.0 / ranks
    return out


def evaluate_batch(
    score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], batch: dict
) -> dict[str, torch.Tensor]:
    """Per-user metrics of one evaluation batch (see recsys_models.data.EvalDataset).

    Scored with autocast off: under bf16 mixed precision (training on a GPU) the scores would
    have 8 bits of mantissa, and the ties that creates count against the model.
    """
    with torch.autocast(device_type=batch["history"].device.type, enabled=False):
        scores = score_fn(batch["user"], batch["history"])
    ranks = target_ranks(scores, batch["target"], batch["seen_rows"], batch["seen_cols"])
    return per_user_metrics(ranks)


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
