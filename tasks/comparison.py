"""Champion vs challenger for the evaluate stage, on per-user paired differences.

Two averages say nothing about whether a gap is more than noise, so every challenger is judged
on the differences of the primary metric user by user (both models score the same test users):
a percentile bootstrap 95% interval of their mean and a two-sided Wilcoxon signed-rank test
(per-user NDCG is far from normal: mostly zeros, so a t-test's assumptions do not hold; its p is
reported beside it for reference). A challenger is promoted only when the improvement is
significant (interval above zero and p below alpha) and no guardrail on the beyond-accuracy
metrics (params.yaml evaluate.guardrails) regresses past its threshold; of several such
challengers the one with the largest mean improvement wins.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import polars as pl
from scipy import stats

from tasks.params import EvaluateParams

BOOTSTRAP_CHUNK = 50_000_000  # resampled values held at once: memory stays bounded for any n


def bootstrap_interval(
    diffs: np.ndarray, samples: int, seed: int, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `diffs` (users resampled with replacement)."""
    n = len(diffs)
    if n == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = np.empty(samples)
    step = max(1, BOOTSTRAP_CHUNK // n)
    for lo in range(0, samples, step):
        hi = min(samples, lo + step)
        means[lo:hi] = diffs[rng.integers(0, n, size=(hi - lo, n))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def paired_tests(diffs: np.ndarray) -> dict[str, float]:
    """Two-sided p-values: Wilcoxon signed-rank (the decision's) and the paired t-test."""
    nonzero = diffs[diffs != 0]
    if len(nonzero) == 0:  # identical on every user: nothing to test, nothing to promote
        return {"p_wilcoxon": 1.0, "p_ttest": 1.0}
    wilcoxon = float(stats.wilcoxon(nonzero, alternative="two-sided").pvalue)
    ttest = float(stats.ttest_1samp(diffs, 0.0).pvalue) if len(diffs) > 1 else 1.0
    return {"p_wilcoxon": wilcoxon, "p_ttest": 1.0 if math.isnan(ttest) else ttest}


def paired_stats(diffs: np.ndarray, params: EvaluateParams, seed: int) -> dict[str, Any]:
    low, high = bootstrap_interval(diffs, params.bootstrap_samples, seed)
    tests = paired_tests(diffs)
    mean = float(diffs.mean()) if len(diffs) else math.nan
    significant = bool(
        len(diffs) > 1 and mean > 0 and low > 0 and tests["p_wilcoxon"] < params.alpha
    )
    return {
        "users": len(diffs),
        "mean_diff": mean,
        "ci95": [low, high],
        **tests,
        "significant_improvement": significant,
    }


def segment_masks(
    per_user: pl.DataFrame,
    params: EvaluateParams,
    head_threshold: float,
    new_items: np.ndarray | None,
) -> dict[str, np.ndarray]:
    """The user segments the decision is broken down by (rows of the primary per-user table).

    new_items: per row, whether the target is new since the previous data version; None when
    there is no previous version to compare with (the segment is then left out).
    """
    history = per_user["history_len"].to_numpy()
    popularity = per_user["target_popularity"].to_numpy()
    s = params.segments
    masks = {
        "all users": np.ones(len(per_user), dtype=bool),
        f"cold-start (history <= {s.cold_history_max})": history <= s.cold_history_max,
        f"heavy (history >= {s.heavy_history_min})": history >= s.heavy_history_min,
        f"head target (top {s.head_item_fraction:.0%} items)": popularity >= head_threshold,
        "tail target (the rest)": popularity < head_threshold,
        "cold target (no training interactions)": popularity == 0,
    }
    if new_items is not None:
        masks["target new since the previous data version"] = new_items
    return masks


GUARDRAILS = {
    # metric: (kind, params field)
    "coverage@10": ("relative_drop", "max_coverage_drop"),
    "diversity@10": ("relative_drop", "max_diversity_drop"),
    "popularity_percentile@10": ("absolute_increase", "max_popularity_bias_increase"),
}


def guardrail_checks(
    champion: dict[str, float], challenger: dict[str, float], params: EvaluateParams
) -> dict[str, dict[str, Any]]:
    """Each guardrail metric of both models, the limit the challenger must respect, the verdict."""
    out = {}
    for metric, (kind, field) in GUARDRAILS.items():
        threshold = getattr(params.guardrails, field)
        base, new = champion[metric], challenger[metric]
        if kind == "relative_drop":
            limit, breached = base * (1.0 - threshold), new < base * (1.0 - threshold)
        else:
            limit, breached = base + threshold, new > base + threshold
        out[metric] = {
            "champion": base,
            "challenger": new,
            "limit": limit,
            "rule": f"{kind.replace('_', ' ')} <= {threshold}",
            "breached": bool(breached),
        }
    return out


def choose_champion(
    primary: dict[str, float], registry: dict[str, Any] | None, params: EvaluateParams
) -> tuple[str, str]:
    """The registry's champion when it was evaluated, otherwise the best baseline."""
    if registry and registry.get("model") in primary:
        return registry["model"], f"registry (version {registry.get('version')})"
    baselines = [name for name in params.baselines if name in primary]
    if not baselines:
        raise ValueError(
            f"no champion: the registry names none and no baseline of {list(params.baselines)} "
            "was evaluated"
        )
    best = max(baselines, key=lambda name: primary[name])
    note = "best baseline" if not registry else f"best baseline ({registry.get('model')} absent)"
    return best, note


def compare(
    per_user: dict[str, pl.DataFrame],
    beyond: dict[str, dict[str, float]],
    champion: str,
    masks: dict[str, np.ndarray],
    params: EvaluateParams,
    seed: int,
) -> dict[str, Any]:
    """Every challenger against the champion: paired statistics overall and by segment,
    guardrails, and the verdict."""
    metric = f"full_{params.primary_metric}"
    base = per_user[champion]
    results = []
    for name, frame in per_user.items():
        if name == champion:
            continue
        if not np.array_equal(frame["user_idx"].to_numpy(), base["user_idx"].to_numpy()):
            raise ValueError(f"{name} and {champion} were scored on different users")
        diffs = frame[metric].to_numpy() - base[metric].to_numpy()
        overall = paired_stats(diffs, params, seed)
        segments = {label: paired_stats(diffs[mask], params, seed) for label, mask in masks.items()}
        checks = guardrail_checks(beyond[champion], beyond[name], params)
        breached = [m for m, check in checks.items() if check["breached"]]
        results.append(
            {
                "challenger": name,
                **overall,
                "segments": segments,
                "guardrails": checks,
                "guardrails_breached": breached,
                "eligible": overall["significant_improvement"] and not breached,
            }
        )
    eligible = [r for r in results if r["eligible"]]
    if eligible:
        winner = max(eligible, key=lambda r: r["mean_diff"])
        low, high = winner["ci95"]
        verdict = {
            "promote": True,
            "model": winner["challenger"],
            "reason": (
                f"{winner['challenger']} improves {params.primary_metric} by "
                f"{winner['mean_diff']:+.4f} (95% CI {low:+.4f} to {high:+.4f}, Wilcoxon "
                f"p={winner['p_wilcoxon']:.2g}) with no guardrail breached"
            ),
        }
    else:
        verdict = {"promote": False, "model": None, "reason": _no_promotion(results, champion)}
    return {
        "champion": champion,
        "primary_metric": params.primary_metric,
        "test": "two-sided Wilcoxon signed-rank on per-user differences (zeros dropped)",
        "interval": f"percentile bootstrap, {params.bootstrap_samples} resamples, 95%",
        "alpha": params.alpha,
        "challengers": results,
        "verdict": verdict,
    }


def _no_promotion(results: list[dict[str, Any]], champion: str) -> str:
    if not results:
        return f"no challenger to compare with {champion}"
    blocked = [r["challenger"] for r in results if r["significant_improvement"]]
    if blocked:
        return (
            f"{', '.join(blocked)} improved significantly but breached a guardrail; "
            f"{champion} stays champion"
        )
    return f"no challenger improves significantly on {champion}, which stays champion"
