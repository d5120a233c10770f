"""The promotion gate: Holm across challengers, Benjamini-Hochberg across segments, the
decision interval's level, segments kept out of the verdict, and the report that shows them."""

from __future__ import annotations

import base64
from dataclasses import replace

import numpy as np
import polars as pl
import pytest

from bench.bench_gate import run_setting, shift_for_gain, simulate
from tasks import report
from tasks.comparison import (
    SEGMENT_LABEL,
    benjamini_hochberg,
    compare,
    decision_level,
    holm,
)
from tasks.params import EvaluateParams
from tasks.protocol import protocol_card

BEYOND = {"coverage@10": 0.5, "diversity@10": 0.6, "popularity_percentile@10": 0.8}
FAST = replace(EvaluateParams(), bootstrap_samples=300)


def _frames(scores: dict[str, np.ndarray]) -> dict[str, pl.DataFrame]:
    return {
        name: pl.DataFrame({"user_idx": np.arange(len(values)), "full_ndcg@10": values})
        for name, values in scores.items()
    }


def _compare(scores: dict[str, np.ndarray], masks: dict[str, np.ndarray], params=FAST):
    beyond = {name: dict(BEYOND) for name in scores}
    return compare(_frames(scores), beyond, "champ", masks, params, 0)


# --- the adjustments, by hand ------------------------------------------------------------------


def test_holm_matches_hand_computed_values():
    # Sorted: 0.005 x4 = 0.02, 0.01 x3 = 0.03, 0.03 x2 = 0.06, 0.04 x1 = 0.04 -> max(0.06, 0.04).
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # 0.2 x3 = 0.6, 0.3 x2 = 0.6, 0.9 x1 = 0.9.
    assert holm([0.3, 0.2, 0.9]) == pytest.approx([0.6, 0.6, 0.9])
    # 0.5 x2 = 1.0 caps; 0.6 x1 = 0.6 is raised to the running maximum 1.0.
    assert holm([0.5, 0.6]) == [1.0, 1.0]
    assert holm([0.02]) == [0.02]  # one challenger: nothing to correct
    assert holm([]) == []


def test_benjamini_hochberg_matches_hand_computed_values():
    # Sorted: 0.005 x4/1 = 0.02, 0.01 x4/2 = 0.02, 0.03 x4/3 = 0.04, 0.04 x4/4 = 0.04.
    assert benjamini_hochberg([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.02, 0.04, 0.04, 0.02])
    # 0.02 x3/1 = 0.06 is lowered to the running minimum from above: 0.03 x3/2 = 0.045.
    assert benjamini_hochberg([0.02, 0.03, 0.9]) == pytest.approx([0.045, 0.045, 0.9])
    assert benjamini_hochberg([0.05, 0.05]) == pytest.approx([0.05, 0.05])
    assert benjamini_hochberg([1.0, 0.999]) == pytest.approx([1.0, 1.0])
    assert benjamini_hochberg([]) == []


def test_the_decision_interval_is_at_the_bonferroni_level_and_p_is_holm_adjusted():
    rng = np.random.default_rng(0)
    base = rng.random(400)
    scores = {"champ": base} | {f"c{i}": base + rng.normal(0, 0.1, 400) for i in range(4)}
    result = _compare(scores, {})
    assert result["decision_level"] == pytest.approx(1 - 0.05 / 4) == decision_level(0.05, 4)
    assert "Holm" in result["correction"] and "98.75%" in result["correction"]
    assert "Holm" in result["verdict"]["reason"]
    adjusted = holm([r["p_wilcoxon"] for r in result["challengers"]])
    for r, p_holm in zip(result["challengers"], adjusted, strict=True):
        assert r["p_holm"] == pytest.approx(p_holm) and r["p_holm"] >= r["p_wilcoxon"]
        assert r["decision_level"] == result["decision_level"]
        low, high = r["decision_interval"]
        assert low <= r["ci95"][0] and r["ci95"][1] <= high  # same resamples, wider level


# --- the gate on simulated decisions -----------------------------------------------------------


def test_null_simulation_false_promotion_rate_is_at_most_alpha():
    """60 decisions with 4 challengers all exactly as good as the champion."""
    params = replace(EvaluateParams(), bootstrap_samples=200)
    row = run_setting(challengers=4, gain=0.0, runs=60, params=params, seed=7)
    corrected = row["corrected"]["false_promotion"]
    assert corrected["rate"] <= params.alpha
    # The old rule (each challenger at alpha) on the same 60 decisions: 4 promotions, 6.7%.
    assert row["uncorrected"]["false_promotion"]["rate"] > params.alpha
    assert corrected["count"] <= row["uncorrected"]["false_promotion"]["count"]


def test_a_clearly_better_challenger_is_still_promoted_among_many():
    rng = np.random.default_rng(1)
    shifts = [0.0, shift_for_gain(0.6)] + [0.0] * 10  # champion, one +60%, ten equals
    matrix = simulate(rng, shifts)
    scores = {"champ": matrix[0]} | {f"c{i}": row for i, row in enumerate(matrix[1:], 1)}
    result = _compare(scores, {})
    assert result["verdict"]["promote"] and result["verdict"]["model"] == "c1"
    best = next(r for r in result["challengers"] if r["challenger"] == "c1")
    assert best["p_holm"] < 0.05 and best["decision_interval"][0] > 0
    assert best["decision_level"] == pytest.approx(1 - 0.05 / 11)
    assert "Holm" in result["verdict"]["reason"] and "99.55% CI" in result["verdict"]["reason"]


def test_segments_never_change_the_verdict():
    rng = np.random.default_rng(2)
    n = 600
    base = rng.random(n) * 0.3
    # "local" is much better on its first 150 users and slightly worse elsewhere: no overall
    # gain, a striking segment. "better" gains overall but loses badly on the same segment.
    local = base + rng.normal(0, 0.05, n) + np.where(np.arange(n) < 150, 0.4, -0.14)
    better = base + 0.1 + rng.normal(0, 0.05, n) + np.where(np.arange(n) < 150, -0.3, 0.0)
    scores = {"champ": base, "local": local, "better": better}
    masks = {
        "all users": np.ones(n, dtype=bool),
        "first": np.arange(n) < 150,
        "rest": np.arange(n) >= 150,
        "nobody": np.zeros(n, dtype=bool),
    }
    without = _compare(scores, {})
    with_segments = _compare(scores, masks)
    assert without["verdict"] == with_segments["verdict"]
    assert with_segments["verdict"]["model"] == "better"
    for plain, segmented in zip(without["challengers"], with_segments["challengers"], strict=True):
        assert {k: v for k, v in segmented.items() if k != "segments"} == {
            k: v for k, v in plain.items() if k != "segments"
        }
    local_row = next(r for r in with_segments["challengers"] if r["challenger"] == "local")
    assert local_row["segments"]["first"]["p_bh"] < 1e-6  # striking, and still not promoted
    assert not local_row["eligible"]
    # BH runs over every non-empty segment of every challenger; an empty one is no test.
    tested = [s for r in with_segments["challengers"] for s in r["segments"].values() if s["users"]]
    expected = benjamini_hochberg([s["p_wilcoxon"] for s in tested])
    assert [s["p_bh"] for s in tested] == pytest.approx(expected)
    assert local_row["segments"]["nobody"]["p_bh"] is None
    assert "significant_improvement" not in local_row["segments"]["first"]


# --- the report ----------------------------------------------------------------------------------


def test_the_report_shows_both_p_values_the_decision_interval_and_labelled_segments():
    rng = np.random.default_rng(3)
    base = rng.random(300) * 0.4
    scores = {"champ": base, "new": base + 0.08 + rng.normal(0, 0.05, 300), "same": base.copy()}
    masks = {"all users": np.ones(300, dtype=bool), "short": np.arange(300) < 100}
    result = _compare(scores, masks)
    version = {"features_manifest_sha256": "0" * 64, "raw_md5": None}
    result |= {"card": protocol_card("loo", "full", version, 100, 42), "champion_source": "test"}
    (title, _, head, rows), (seg_title, _, _, seg_rows) = report.comparison_tables(result)
    assert "Holm" in title
    assert {"p (Wilcoxon)", "p (Holm)", "decision CI (97.50%)"} <= set(head)
    new = next(row for row in rows if row[0] == "new")
    cells = dict(zip(head, new, strict=True))
    r = next(r for r in result["challengers"] if r["challenger"] == "new")
    assert cells["p (Wilcoxon)"] == f"{r['p_wilcoxon']:.1e}" and "e-" in cells["p (Holm)"]
    assert cells["coverage@10 (limit)"] == "0.500 (>= 0.400)"
    assert cells["popularity_percentile@10 (limit)"] == "0.800 (<= 0.850)"
    same = dict(zip(head, next(row for row in rows if row[0] == "same"), strict=True))
    assert same["p (Holm)"] == "1.0e+00"
    assert SEGMENT_LABEL in seg_title and all("p_BH=" in cell for cell in seg_rows[0][1:])
    text = report.markdown(report.comparison_tables(result), result)
    assert text.count(SEGMENT_LABEL) == 2  # the header line and the segment table's title
    caption, png = report.forest_plot(result)
    assert "97.50% decision interval" in caption
    assert base64.b64decode(png).startswith(b"\x89PNG")
