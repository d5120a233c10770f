"""Champion vs challenger for the evaluate stage, on per-user paired differences.

Two averages say nothing about whether a gap is more than noise, so every challenger is judged
on the differences of the primary metric user by user (both models score the same test users):
a two-sided Wilcoxon signed-rank test (per-user NDCG is far from normal: mostly zeros, so a
t-test's assumptions do not hold; its p is reported beside it for reference) and a percentile
bootstrap interval of the mean difference.

Testing several challengers at alpha each and promoting the largest gain promotes a model that
is no better far more often than alpha (simulated in bench/bench_gate.py), so one decision is
one family of tests: the challengers' p-values are adjusted by Holm's step-down procedure, which
keeps the chance of promoting any equal-or-worse challenger below alpha, and the interval that
decides is the Bonferroni one, at level 1 - alpha / (number of challengers), the same bound
Holm's first step uses. The plain 95% interval is kept for reading. A challenger is promoted
only when its Holm-adjusted p is below alpha, its mean difference and the lower bound of its
decision interval are above zero, and no guardrail on the beyond-accuracy metrics
(params.yaml evaluate.guardrails) regresses past its threshold; of several such challengers the
one with the largest mean improvement wins.

Segments (cold-start users, tail targets, ...) are tested too, many times over, so their
p-values get the Benjamini-Hochberg adjustment across every challenger and segment of the
decision; they are exploratory and never enter the verdict.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl
from scipy import stats

from tasks.params import EvaluateParams

BOOTSTRAP_CHUNK = 50_000_000  # resampled values held at once: memory stays bounded for any n
REPORT_LEVEL = 0.95  # the interval shown for reading; the decision's level depends on the family
SEGMENT_LABEL = "exploratory (Benjamini-Hochberg adjusted; never used for promotion)"


def bootstrap_intervals(
    diffs: np.ndarray, samples: int, seed: int, levels: Sequence[float]
) -> list[tuple[float, float]]:
    """Percentile bootstrap intervals of the mean of `diffs` (users resampled with replacement),
    one per level, all from the same resamples: a wider level always gives a wider interval."""
    n = len(diffs)
    if n == 0:
        return [(math.nan, math.nan) for _ in levels]
    rng = np.random.default_rng(seed)
    means = np.empty(samples)
    step = max(1, BOOTSTRAP_CHUNK // n)
    for lo in range(0, samples, step):
        hi = min(samples, lo + step)
        means[lo:hi] = diffs[rng.integers(0, n, size=(hi - lo, n))].mean(axis=1)
    out = []
    for level in levels:
        tail = (1.0 - level) / 2.0
        low, high = np.quantile(means, [tail, 1.0 - tail])
        out.append((float(low), float(high)))
    return out


def bootstrap_interval(
    diffs: np.ndarray, samples: int, seed: int, level: float = REPORT_LEVEL
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `diffs` (users resampled with replacement)."""
    return bootstrap_intervals(diffs, samples, seed, (level,))[0]


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given.

    The i-th smallest of m p-values is multiplied by m - i + 1, a running maximum keeps the
    adjusted values in the order of the raw ones, and 1 caps them: rejecting where the adjusted
    p is below alpha keeps the family-wise error rate at alpha under any dependence.
    """
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def benjamini_hochberg(pvalues: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p-values (false discovery rate), in the order given.

    The i-th smallest of m p-values is multiplied by m / i, and a running minimum from the
    largest down keeps the adjusted values monotone; 1 caps them.
    """
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i], reverse=True)
    adjusted = [1.0] * m
    running = 1.0
    for k, i in enumerate(order):
        rank = m - k  # 1-based rank of this p-value from the smallest
        running = min(running, m * pvalues[i] / rank)
        adjusted[i] = running
    return adjusted


def decision_level(alpha: float, challengers: int) -> float:
    """The decision interval's level: Bonferroni's 1 - alpha / m for m challengers."""
    return 1.0 - alpha / max(challengers, 1)


def paired_tests(diffs: np.ndarray) -> dict[str, float]:
    """Two-sided p-values: Wilcoxon signed-rank (the decision's) and the paired t-test."""
    nonzero = diffs[diffs != 0]
    if len(nonzero) == 0:  # identical on every user: nothing to test, nothing to promote
        return {"p_wilcoxon": 1.0, "p_ttest": 1.0}
    wilcoxon = float(stats.wilcoxon(nonzero, alternative="two-sided").pvalue)
    ttest = float(stats.ttest_1samp(diffs, 0.0).pvalue) if len(diffs) > 1 else 1.0
    return {"p_wilcoxon": wilcoxon, "p_ttest": 1.0 if math.isnan(ttest) else ttest}


def paired_stats(
    diffs: np.ndarray, params: EvaluateParams, seed: int, level: float | None = None
) -> dict[str, Any]:
    """Mean, 95% interval and raw p-values of paired differences; with `level`, the decision
    interval at that level too. Significance is not judged here: it depends on the family."""
    levels = [REPORT_LEVEL] if level is None else [REPORT_LEVEL, level]
    intervals = bootstrap_intervals(diffs, params.bootstrap_samples, seed, levels)
    out = {
        "users": len(diffs),
        "mean_diff": float(diffs.mean()) if len(diffs) else math.nan,
        "ci95": list(intervals[0]),
        **paired_tests(diffs),
    }
    if level is not None:
        out |= {"decision_level": level, "decision_interval": list(intervals[1])}
    return out


def significant_improvement(row: dict[str, Any], alpha: float) -> bool:
    """Holm-adjusted p below alpha, a positive mean, and the decision interval above zero."""
    return bool(
        row["users"] > 1
        and row["p_holm"] < alpha
        and row["mean_diff"] > 0
        and row["decision_interval"][0] > 0
    )


def segment_masks(
    per_user: pl.DataFrame,
    params: EvaluateParams,
    head_threshold: float,
    new_items: np.ndarray | None,
) -> dict[str, np.ndarray]:
    """The user segments the decision is broken down by (rows of the primary per-user table).

    new_items: per row, whether the target is an item the served champion never saw; None when
    no champion is served (the segment is then left out).
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
        masks["target new since the served champion's data"] = new_items
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
    """Each guardrail metric of both models, the limit the challenger must respect, the verdict.
    A metric the data cannot give (diversity without item categories) is not checked."""
    out = {}
    for metric, (kind, field) in GUARDRAILS.items():
        if metric not in champion or metric not in challenger:
            continue
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
    primary: dict[str, float],
    registry: dict[str, Any] | None,
    params: EvaluateParams,
    served: str | None = None,
) -> tuple[str, str]:
    """The registry's champion as it is served (`served`: the key its artifact was evaluated
    under), otherwise the best baseline. A models/<name> folder is never taken for the
    champion: it may hold a model trained after the served one."""
    if served and served in primary:
        return served, f"registry: the served artifact {registry.get('version')} (onnxruntime)"
    baselines = [name for name in params.baselines if name in primary]
    if not baselines:
        raise ValueError(
            f"no champion: the registry names none and no baseline of {list(params.baselines)} "
            "was evaluated"
        )
    best = max(baselines, key=lambda name: primary[name])
    if not registry:
        return best, "best baseline"
    return best, f"best baseline (the registry's {served} could not be scored as served)"


def compare(
    per_user: dict[str, pl.DataFrame],
    beyond: dict[str, dict[str, float]],
    champion: str,
    masks: dict[str, np.ndarray],
    params: EvaluateParams,
    seed: int,
) -> dict[str, Any]:
    """Every challenger against the champion: paired statistics overall (Holm-adjusted across
    the challengers) and by segment (Benjamini-Hochberg, exploratory), guardrails, the verdict.
    """
    metric = f"full_{params.primary_metric}"
    base = per_user[champion]
    names = [name for name in per_user if name != champion]
    level = decision_level(params.alpha, len(names))
    results = []
    for name in names:
        frame = per_user[name]
        if not np.array_equal(frame["user_idx"].to_numpy(), base["user_idx"].to_numpy()):
            raise ValueError(f"{name} and {champion} were scored on different users")
        diffs = frame[metric].to_numpy() - base[metric].to_numpy()
        overall = paired_stats(diffs, params, seed, level)
        segments = {label: paired_stats(diffs[mask], params, seed) for label, mask in masks.items()}
        checks = guardrail_checks(beyond[champion], beyond[name], params)
        results.append(
            {
                "challenger": name,
                **overall,
                "segments": segments,
                "guardrails": checks,
                "guardrails_breached": [m for m, check in checks.items() if check["breached"]],
            }
        )
    for r, adjusted in zip(results, holm([r["p_wilcoxon"] for r in results]), strict=True):
        r["p_holm"] = adjusted
        r["significant_improvement"] = significant_improvement(r, params.alpha)
        r["eligible"] = r["significant_improvement"] and not r["guardrails_breached"]
    _adjust_segments(results)
    correction = (
        f"Holm step-down across {len(names)} challenger(s) (family-wise error <= {params.alpha}); "
        f"decision interval at the Bonferroni level 1 - alpha/{max(len(names), 1)} = {level:.2%}"
    )
    eligible = [r for r in results if r["eligible"]]
    if eligible:
        winner = max(eligible, key=lambda r: r["mean_diff"])
        low, high = winner["decision_interval"]
        verdict = {
            "promote": True,
            "model": winner["challenger"],
            "reason": (
                f"{winner['challenger']} improves {params.primary_metric} by "
                f"{winner['mean_diff']:+.4f} ({level:.2%} CI {low:+.4f} to {high:+.4f}, Wilcoxon "
                f"p={winner['p_wilcoxon']:.2g}, Holm-adjusted p={winner['p_holm']:.2g} across "
                f"{len(names)} challenger(s)) with no guardrail breached"
            ),
        }
    else:
        verdict = {
            "promote": False,
            "model": None,
            "reason": _no_promotion(results, champion, len(names)),
        }
    return {
        "champion": champion,
        "primary_metric": params.primary_metric,
        "test": "two-sided Wilcoxon signed-rank on per-user differences (zeros dropped)",
        "interval": (
            f"percentile bootstrap, {params.bootstrap_samples} resamples: 95% (reported) and "
            f"{level:.2%} (decision)"
        ),
        "alpha": params.alpha,
        "correction": correction,
        "decision_level": level,
        "segment_correction": (
            "Benjamini-Hochberg across every challenger x segment test; " + SEGMENT_LABEL
        ),
        "challengers": results,
        "verdict": verdict,
    }


def _adjust_segments(results: list[dict[str, Any]]) -> None:
    """p_bh on every segment: Benjamini-Hochberg over all challengers' non-empty segments."""
    tested = [s for r in results for s in r["segments"].values() if s["users"] > 0]
    for s, adjusted in zip(
        tested, benjamini_hochberg([s["p_wilcoxon"] for s in tested]), strict=True
    ):
        s["p_bh"] = adjusted
    for r in results:
        for s in r["segments"].values():
            s.setdefault("p_bh", None)  # an empty segment is no test


def _no_promotion(results: list[dict[str, Any]], champion: str, family: int) -> str:
    if not results:
        return f"no challenger to compare with {champion}"
    blocked = [r["challenger"] for r in results if r["significant_improvement"]]
    if blocked:
        return (
            f"{', '.join(blocked)} improved significantly (Holm-adjusted across {family} "
            f"challenger(s)) but breached a guardrail; {champion} stays champion"
        )
    return (
        f"no challenger improves significantly on {champion} after Holm's correction across "
        f"{family} challenger(s), which stays champion"
    )
