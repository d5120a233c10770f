"""Promotion-gate benchmark: how often the champion-vs-challenger decision promotes a model that
is no better (false promotion rate) and how often it promotes one that is (power).

Per-user NDCG@10-like scores are simulated for 943 users (MovieLens-100K's test users): each
model ranks a user's target at a position drawn from a latent score that mixes a per-user
latent shared by every model (some users are easy for all models) with the model's own noise.
About 80% of users score 0 (target outside the top 10), the rest 1/log2(rank+1), as real
per-user NDCG@10 does. Under the null every challenger has the champion's distribution; under
the power scenarios one challenger's latent is shifted so its expected NDCG@10 is 5%, 10% or
20% higher. Every simulated decision runs through the project's own tasks.comparison.compare()
with EvaluateParams' defaults (alpha 0.05) except the number of bootstrap resamples; no
guardrail can bite (every model gets the same beyond-accuracy figures) and no segments are
passed (they never enter the verdict). The old, uncorrected rule (each challenger at alpha:
raw Wilcoxon p < alpha, 95% interval above zero, the largest gain wins) is read from the same
compare() output, so both rules judge the same simulated data. Writes bench/results/gate.json
and bench/results/gate.md.

    python bench/bench_gate.py                        # 400 runs per setting, 2000 resamples
    python bench/bench_gate.py --runs 100 --bootstrap-samples 500 --gains 0.1
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
from scipy import optimize, stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
from bench.common import machine, write_results  # noqa: E402
from tasks.comparison import compare  # noqa: E402
from tasks.params import EvaluateParams  # noqa: E402

USERS = 943  # MovieLens-100K's leave-one-out test users
HIT_RATE = 0.2  # share of users whose target lands in the top 10 (real models: 0.1 to 0.23)
SHARED = 0.6  # correlation of two models' latent scores for one user
CHALLENGERS = (1, 4, 11)
GAINS = (0.05, 0.10, 0.20)  # power: true relative gains in mean NDCG@10 of one challenger
BEYOND = {"coverage@10": 0.5, "diversity@10": 0.6, "popularity_percentile@10": 0.8}


def _rank_edges() -> np.ndarray:
    """Latent thresholds: a latent above edges[r - 1] (and below edges[r - 2]) is rank r."""
    step = HIT_RATE / 10
    return stats.norm.ppf(1.0 - step * np.arange(1, 11))


def expected_ndcg(shift: float) -> float:
    """Mean NDCG@10 of a model whose latent is shifted by `shift` (exact, from the normal)."""
    upper = np.concatenate([[np.inf], _rank_edges()[:-1]])
    probs = stats.norm.cdf(upper - shift) - stats.norm.cdf(_rank_edges() - shift)
    return float((probs / np.log2(np.arange(1, 11) + 1.0)).sum())


def shift_for_gain(gain: float) -> float:
    """The latent shift that raises the expected NDCG@10 by `gain` (relative)."""
    if gain == 0:
        return 0.0
    target = expected_ndcg(0.0) * (1.0 + gain)
    return float(optimize.brentq(lambda s: expected_ndcg(s) - target, 0.0, 3.0))


def simulate(rng: np.random.Generator, shifts: list[float], users: int = USERS) -> np.ndarray:
    """[models, users] per-user NDCG@10: the shared per-user latent plus each model's noise."""
    shared = rng.standard_normal(users)
    own = rng.standard_normal((len(shifts), users))
    latent = math.sqrt(SHARED) * shared + math.sqrt(1.0 - SHARED) * own
    latent += np.asarray(shifts)[:, None]
    rank = 1 + (latent[..., None] < _rank_edges()).sum(axis=-1)  # 11: outside the top 10
    return np.where(rank <= 10, 1.0 / np.log2(rank + 1.0), 0.0)


def decide(scores: np.ndarray, params: EvaluateParams, seed: int) -> tuple[str | None, str | None]:
    """The winner under the corrected gate (compare()'s verdict) and under the old rule, from
    one compare() call; row 0 of `scores` is the champion, the rest challengers c1, c2, ..."""
    names = ["champion"] + [f"c{i}" for i in range(1, len(scores))]
    user_idx = np.arange(scores.shape[1])
    frames = {
        name: pl.DataFrame({"user_idx": user_idx, f"full_{params.primary_metric}": row})
        for name, row in zip(names, scores, strict=True)
    }
    beyond = {name: dict(BEYOND) for name in names}
    result = compare(frames, beyond, "champion", {}, params, seed)
    old = [
        r
        for r in result["challengers"]
        if r["p_wilcoxon"] < params.alpha and r["mean_diff"] > 0 and r["ci95"][0] > 0
    ]
    old_winner = max(old, key=lambda r: r["mean_diff"])["challenger"] if old else None
    return result["verdict"]["model"], old_winner


def rate(count: int, runs: int) -> dict[str, float]:
    """A proportion with its exact (Clopper-Pearson) binomial 95% interval."""
    ci = stats.binomtest(count, runs).proportion_ci(confidence_level=0.95, method="exact")
    return {"count": count, "rate": count / runs, "ci95": [float(ci.low), float(ci.high)]}


def run_setting(
    challengers: int, gain: float, runs: int, params: EvaluateParams, seed: int
) -> dict:
    """`runs` simulated decisions; counts of the better challenger (c1) and of any other
    challenger being promoted, under both rules."""
    rng = np.random.default_rng([seed, challengers, round(gain * 1000)])
    shifts = [0.0, shift_for_gain(gain)] + [0.0] * (challengers - 1)
    counts = {rule: {"better": 0, "other": 0} for rule in ("corrected", "uncorrected")}
    for run in range(runs):
        outcome = decide(simulate(rng, shifts), params, seed + run)
        for rule, winner in zip(("corrected", "uncorrected"), outcome, strict=True):
            if winner == "c1" and gain > 0:
                counts[rule]["better"] += 1
            elif winner is not None:
                counts[rule]["other"] += 1
    row = {"challengers": challengers, "gain": gain, "runs": runs}
    for rule, c in counts.items():
        row[rule] = {"false_promotion": rate(c["other"], runs)}
        if gain > 0:
            row[rule]["power"] = rate(c["better"], runs)
    return row


def _cell(r: dict[str, float]) -> str:
    return f"{r['rate']:.1%} [{r['ci95'][0]:.1%}, {r['ci95'][1]:.1%}]"


def tables(result: dict) -> dict[str, str]:
    """The markdown blocks of bench/results/gate.json, keyed by id: the .md and the README's
    generated blocks (bench/tables.py) come from this one function, so they cannot drift."""
    s = result["settings"]
    default = EvaluateParams().bootstrap_samples
    resamples = f"{s['bootstrap_samples']} bootstrap resamples" + (
        " (the default)" if s["bootstrap_samples"] == default else f" (default {default})"
    )
    null = [
        "| challengers | corrected gate (Holm) | old rule (each at alpha) |",
        "| ---: | --- | --- |",
    ]
    for r in result["rows"]:
        if r["gain"] == 0:
            null.append(
                f"| {r['challengers']} | {_cell(r['corrected']['false_promotion'])} | "
                f"{_cell(r['uncorrected']['false_promotion'])} |"
            )
    power = [
        "| true gain | challengers | corrected gate: power (other promoted) "
        "| old rule: power (other promoted) |",
        "| ---: | ---: | --- | --- |",
    ]
    for r in result["rows"]:
        if r["gain"] > 0:
            cells = [
                f"{_cell(r[rule]['power'])} ({r[rule]['false_promotion']['rate']:.1%})"
                for rule in ("corrected", "uncorrected")
            ]
            power.append(f"| +{r['gain']:.0%} | {r['challengers']} | {cells[0]} | {cells[1]} |")
    return {
        "setup": f"Machine: {result['machine']}. {s['users']} users, {s['runs']} simulated "
        f"decisions per row (seed {s['seed']}); `tasks.comparison.compare()` with "
        f"EvaluateParams' defaults: alpha {s['alpha']}, {resamples}. Per-user "
        f"NDCG@10: {s['zero_share']:.0%} zeros, mean {s['mean_ndcg']:.4f}, correlation between "
        f"two models' per-user scores {s['score_correlation']:.2f}. {result['seconds']:.0f} s.",
        "false_promotion": "\n".join(null),
        "power": "\n".join(power),
    }


def markdown(result: dict) -> str:
    t = tables(result)
    return (
        f"{t['setup']}\n\n"
        "False promotion under the null (every model exactly as good as the champion), with the "
        f"exact binomial 95% interval:\n\n{t['false_promotion']}\n\n"
        "Power: one challenger truly better (relative gain in mean NDCG@10), the others as good "
        "as the champion; share of decisions promoting the better one (a null one promoted "
        f"instead in brackets):\n\n{t['power']}\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=400)
    parser.add_argument("--bootstrap-samples", type=int, default=EvaluateParams().bootstrap_samples)
    parser.add_argument("--gains", type=float, nargs="+", default=list(GAINS))
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    params = replace(EvaluateParams(), bootstrap_samples=args.bootstrap_samples)
    sample = simulate(np.random.default_rng(args.seed), [0.0, 0.0], users=200_000)
    settings = {
        "users": USERS,
        "runs": args.runs,
        "seed": args.seed,
        "alpha": params.alpha,
        "bootstrap_samples": args.bootstrap_samples,
        "hit_rate": HIT_RATE,
        "latent_correlation": SHARED,
        "zero_share": float((sample[0] == 0).mean()),
        "mean_ndcg": expected_ndcg(0.0),
        "score_correlation": float(np.corrcoef(sample)[0, 1]),
        "shifts": {f"{g:+.0%}": shift_for_gain(g) for g in args.gains},
    }
    start = time.perf_counter()
    rows = []
    for gain in [0.0, *args.gains]:
        for challengers in CHALLENGERS:
            rows.append(run_setting(challengers, gain, args.runs, params, args.seed))
            print(json.dumps(rows[-1]), flush=True)
    result = {
        "benchmark": "promotion gate",
        "machine": machine(),
        "settings": settings,
        "seconds": round(time.perf_counter() - start, 1),
        "rows": rows,
    }
    write_results(args.out, "gate", result, markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
