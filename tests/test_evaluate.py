"""The evaluate stage: multi-target metrics, paired statistics, the decision, the report."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from recsys_models.metrics import set_metrics, target_positions
from tasks.comparison import bootstrap_interval, compare, paired_stats
from tasks.errors import RecsysError
from tasks.evaluate import evaluate
from tasks.export import export
from tasks.feature_store import load_features
from tasks.io import file_sha256
from tasks.model_store import model_dir
from tasks.params import EvaluateParams, GuardrailParams, Params, TrainParams
from tasks.protocol import same_protocol
from tasks.registry import promote
from tasks.train import train
from tests.conftest import synthetic_features

# --- metrics with several targets --------------------------------------------------------------


def test_several_targets_match_hand_computed_positions_and_metrics():
    # items 1..6; seen item 6 (scored highest) is removed; targets 2 and 4.
    scores = torch.tensor([[9.0, 0.5, 0.9, 0.1, 0.7, 0.3, 5.0]])
    positions, beaten = target_positions(
        scores, torch.tensor([[4, 2]]), torch.tensor([0]), torch.tensor([6])
    )
    # Ranking of the unseen items: 2 (0.9), 4 (0.7), 1 (0.5), 5 (0.3), 3 (0.1).
    assert positions.tolist() == [[1.0, 2.0]]
    # Candidates (non-target, unseen): 1, 3, 5; target 2 beats all 3, target 4 beats all 3.
    assert beaten.tolist() == [[1.0, 1.0]]
    m = set_metrics(positions, beaten, ks=(1, 5))
    assert m["hr@1"].item() == 1.0
    assert m["precision@1"].item() == 1.0 and m["recall@1"].item() == 0.5
    assert m["precision@5"].item() == pytest.approx(2 / 5)
    assert m["recall@5"].item() == 1.0
    assert m["ndcg@5"].item() == pytest.approx(1.0)  # both targets on top: ideal
    assert m["ndcg@1"].item() == pytest.approx(1.0)
    assert m["mrr"].item() == 1.0 and m["auc"].item() == 1.0


def test_several_targets_below_other_items_and_partial_hits():
    scores = torch.tensor([[0.0, 0.9, 0.8, 0.1, 0.7, 0.2]])  # targets 3 (0.1) and 4 (0.7)
    positions, beaten = target_positions(scores, torch.tensor([[3, 4, 0]]))
    # Full list: 1, 2, 4, 5, 3 -> target 4 at 3, target 3 at 5; the 0 slot has no target.
    assert positions[0, :2].tolist() == [3.0, 5.0] and math.isinf(positions[0, 2].item())
    m = set_metrics(positions, beaten, ks=(3,))
    ideal = 1 + 1 / math.log2(3)
    assert m["ndcg@3"].item() == pytest.approx((1 / math.log2(4)) / ideal)
    assert m["recall@3"].item() == pytest.approx(0.5)
    assert m["mrr"].item() == pytest.approx(1 / 3)
    # Candidates 1, 2, 5: target 4 beats 5 (1 of 3), target 3 beats none.
    assert m["auc"].item() == pytest.approx((1 / 3 + 0) / 2)


def test_a_seen_item_never_pushes_a_target_down():
    scores = torch.tensor([[0.0, 10.0, 1.0, 0.5]])
    seen = target_positions(scores, torch.tensor([[2]]), torch.tensor([0]), torch.tensor([1]))
    unseen = target_positions(scores, torch.tensor([[2]]))
    assert seen[0].item() == 1.0 and unseen[0].item() == 2.0


def test_direct_counting_and_the_sorted_path_agree(monkeypatch):
    """Few targets are counted pass by pass, many in sorted rows: the same positions."""
    import recsys_models.metrics as metrics

    torch.manual_seed(0)
    scores = torch.randn(32, 41)
    scores[:, 5] = scores[:, 6]  # ties
    scores[3, 7], scores[4] = float("nan"), float("-inf")
    seen_rows, seen_cols = torch.randint(0, 32, (100,)), torch.randint(1, 41, (100,))
    targets = torch.stack([torch.randperm(40)[:6] + 1 for _ in range(32)])
    targets[:8, 3:] = 0
    results = []
    for limit in (100, 0):
        monkeypatch.setattr(metrics, "DIRECT_COUNT_MAX_TARGETS", limit)
        results.append(target_positions(scores, targets, seen_rows, seen_cols))
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1].nan_to_num(-1), results[1][1].nan_to_num(-1))


# --- statistics and the decision ---------------------------------------------------------------


def test_bootstrap_interval_covers_a_known_difference():
    rng = np.random.default_rng(0)
    diffs = 0.05 + rng.normal(0.0, 0.2, size=2000)  # true mean difference 0.05
    low, high = bootstrap_interval(diffs, 2000, seed=1)
    assert low < 0.05 < high
    assert high - low < 0.04  # about 4 standard errors (0.2 / sqrt(2000) = 0.0045) wide
    assert low > 0  # and the difference is detected


def _frame(values: np.ndarray) -> pl.DataFrame:
    n = len(values)
    return pl.DataFrame(
        {
            "user_idx": np.arange(1, n + 1),
            "full_ndcg@10": values,
            "history_len": np.arange(n) % 300,
            "target_popularity": np.arange(n) % 7,
        }
    )


BEYOND = {"coverage@10": 0.5, "diversity@10": 0.6, "popularity_percentile@10": 0.8}


def _masks(frame: pl.DataFrame) -> dict[str, np.ndarray]:
    return {"all users": np.ones(frame.height, dtype=bool)}


def test_a_model_compared_with_itself_is_never_promoted():
    values = np.random.default_rng(2).random(500)
    frames = {"champ": _frame(values), "copy": _frame(values.copy())}
    beyond = {"champ": BEYOND, "copy": dict(BEYOND)}
    result = compare(frames, beyond, "champ", _masks(frames["champ"]), EvaluateParams(), 0)
    copy = result["challengers"][0]
    assert copy["mean_diff"] == 0.0 and copy["p_wilcoxon"] == 1.0
    assert not copy["significant_improvement"] and not result["verdict"]["promote"]


def test_a_clear_improvement_is_promoted_and_a_guardrail_breach_blocks_it():
    rng = np.random.default_rng(3)
    base = rng.random(800) * 0.5
    better = base + 0.1 + rng.normal(0, 0.05, size=800)
    frames = {"champ": _frame(base), "new": _frame(better)}
    ok = {"champ": BEYOND, "new": dict(BEYOND)}
    result = compare(frames, ok, "champ", _masks(frames["champ"]), EvaluateParams(), 0)
    assert result["verdict"]["promote"] and result["verdict"]["model"] == "new"
    assert result["challengers"][0]["ci95"][0] > 0

    narrow = dict(BEYOND, **{"coverage@10": 0.3})  # 40% less coverage: past the 20% limit
    result = compare(
        frames, {"champ": BEYOND, "new": narrow}, "champ", _masks(frames["champ"]),
        EvaluateParams(), 0,
    )  # fmt: skip
    new = result["challengers"][0]
    assert new["significant_improvement"] and new["guardrails_breached"] == ["coverage@10"]
    assert not result["verdict"]["promote"]
    assert "guardrail" in result["verdict"]["reason"]

    popular = dict(BEYOND, **{"popularity_percentile@10": 0.9})  # +0.1 > 0.05 allowed
    loose = EvaluateParams(guardrails=GuardrailParams(max_popularity_bias_increase=0.2))
    strict_result = compare(
        frames, {"champ": BEYOND, "new": popular}, "champ", _masks(frames["champ"]),
        EvaluateParams(), 0,
    )  # fmt: skip
    loose_result = compare(
        frames, {"champ": BEYOND, "new": popular}, "champ", _masks(frames["champ"]), loose, 0
    )
    assert not strict_result["verdict"]["promote"] and loose_result["verdict"]["promote"]


def test_noise_alone_is_not_significant():
    rng = np.random.default_rng(4)
    diffs = rng.normal(0, 0.2, size=300)
    stats = paired_stats(diffs, EvaluateParams(), 0)
    assert stats["ci95"][0] < 0 < stats["ci95"][1]
    assert stats["p_wilcoxon"] > EvaluateParams().alpha
    # Significance is judged by compare(), across the decision's family of challengers.
    base = rng.random(300)
    frames = {"champ": _frame(base), "noisy": _frame(base + diffs)}
    beyond = {"champ": BEYOND, "noisy": dict(BEYOND)}
    result = compare(frames, beyond, "champ", _masks(frames["champ"]), EvaluateParams(), 0)
    assert not result["challengers"][0]["significant_improvement"]
    assert not result["verdict"]["promote"]


def test_tables_that_mix_protocols_are_refused():
    rows = [{"card": {"id": "loo/full", "x": 1}}, {"card": {"id": "loo/sampled", "x": 1}}]
    with pytest.raises(RecsysError, match="cannot mix protocols"):
        same_protocol(rows)
    assert same_protocol(rows[:1]) == {"id": "loo/full", "x": 1}


# --- the stage on synthetic data ---------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path, Params]:
    """Synthetic features and popularity / item-kNN / EASE under both protocols (seconds)."""
    root = tmp_path_factory.mktemp("evaluate")
    synthetic_features(root, n_users=300, n_items=120, n_interactions=9000, seed=5)
    params = Params(train=TrainParams(out=str(root / "models")))
    params = replace(params, evaluate=replace(params.evaluate, artifacts=str(root / "artifacts")))
    for name in ("popularity", "itemknn", "ease"):
        for protocol in ("loo", "temporal"):
            out = model_dir(root / "models", name, protocol)
            train(name, root / "features", out, params, protocol=protocol)
    return root / "features", root / "models", params


def test_temporal_features_use_only_the_past_and_every_later_item(trained):
    features, _, _ = trained
    data = load_features(features, "temporal")
    test = pl.read_parquet(features / "temporal" / "test.parquet")
    indptr, items = data.target_sets("test")
    assert (
        len(items)
        == test.unique(["user_idx", "item_idx"])
        .filter(pl.col("user_idx").is_in(np.flatnonzero(np.diff(data.test_seen[0]) > 0).tolist()))
        .height
    )
    train_rows = pl.read_parquet(features / "temporal" / "train.parquet")
    assert len(data.train_users) == train_rows.height
    # The test history is everything before the test cut: train and validation rows.
    val_rows = pl.read_parquet(features / "temporal" / "val.parquet")
    assert data.test_seen[0][-1] == train_rows.height + val_rows.height


def test_evaluate_writes_reports_decision_and_plots(trained, tmp_path: Path):
    features, models, params = trained
    out = tmp_path / "evaluation"
    summary = evaluate(features, models, out, params, dvc_file=tmp_path / "none.dvc")
    for name in ("metrics.json", "metrics.csv", "cards.json", "decision.json", "report.md"):
        assert (out / name).is_file(), name
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4  # the forest plot of the challengers
    decision = json.loads((out / "decision.json").read_text())
    assert decision["champion_source"] == "best baseline"
    assert decision["champion"] in ("popularity", "itemknn")
    assert decision["primary"]["card"]["id"] == "loo/full"
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"loo", "temporal"}
    assert set(metrics["loo"]) == {"popularity", "itemknn", "ease"}
    # Every row of the CSV carries its protocol card.
    rows = pl.read_csv(out / "metrics.csv")
    assert set(rows["protocol"]) == {f"{p}/{k}" for p in ("loo", "temporal") for k in
                                     ("full", "sampled", "beyond")}  # fmt: skip
    assert rows.filter(pl.col("ranking") == "sampled")["sampler_n"].to_list() == [100] * 6
    # item-kNN learns the synthetic sequences; popularity cannot.
    assert summary["models"]["itemknn"]["ndcg@10"] > summary["models"]["popularity"]["ndcg@10"]
    per_user = pl.read_parquet(out / "per_user" / "loo" / "itemknn.parquet")
    assert per_user.height == metrics["loo"]["itemknn"]["users"]
    assert (out / "plots" / "by_history" / "loo" / "ease.csv").is_file()
    assert "Leave-one-out, sampled ranking (labelled: not primary)" in summary["report"]
    segments = json.loads((out / "comparison.json").read_text())["challengers"][0]["segments"]
    assert {"cold target (no training interactions)", "all users"} <= set(segments)


def test_sampled_negatives_are_the_same_for_every_model(trained, tmp_path: Path):
    """Same seed, same users: a sampled metric differs between models only by their scores."""
    features, models, params = trained
    out = tmp_path / "evaluation"
    evaluate(features, models, out, params, dvc_file=tmp_path / "none.dvc")
    first = pl.read_parquet(out / "per_user" / "loo" / "popularity.parquet")
    evaluate(features, models, out, params, dvc_file=tmp_path / "none.dvc")
    again = pl.read_parquet(out / "per_user" / "loo" / "popularity.parquet")
    assert first.equals(again)


def test_the_champion_is_its_served_artifact_not_a_retrained_folder(trained, tmp_path: Path):
    """Promote version A of EASE, retrain models/ease into B, evaluate: the champion's figures
    are A's, scored through onnxruntime from its artifact, and B is a challenger."""
    features, models, params = trained
    work, artifacts = tmp_path / "models", tmp_path / "artifacts"
    shutil.copytree(models, work)
    params = replace(params, evaluate=replace(params.evaluate, artifacts=str(artifacts)))
    none = tmp_path / "none.dvc"
    eager = evaluate(features, work, tmp_path / "eager", params, dvc_file=none)["models"]["ease"]
    manifest = export("ease", work, features, artifacts, 64, 5, data_dvc=None)
    promote(artifacts, "ease", manifest["version"], "test")
    key = f"ease@{manifest['version']}"

    summary = evaluate(features, work, tmp_path / "a", params, dvc_file=none)
    decision = summary["decision"]
    assert decision["champion"] == key and "served artifact" in decision["champion_source"]
    # models/ease holds the champion's own weights: it is not compared with itself.
    assert "ease" not in summary["models"]
    assert [e["challenger"] for e in decision["evidence"]].count(key) == 0
    served_a = pl.read_parquet(tmp_path / "a" / "per_user" / "loo" / f"{key}.parquet")
    for metric, value in eager.items():
        assert summary["models"][key][metric] == pytest.approx(value, abs=1e-6), metric
    # the new-item segment is measured against the items the served artifact knows: the same
    # data here, so it is empty; with no champion served (the evaluation above) it is absent
    segments = json.loads((tmp_path / "a" / "comparison.json").read_text())["challengers"]
    new = segments[0]["segments"]["target new since the served champion's data"]
    assert new["users"] == 0
    eager_segments = json.loads((tmp_path / "eager" / "comparison.json").read_text())
    assert all(
        "target new since the served champion's data" not in c["segments"]
        for c in eager_segments["challengers"]
    )

    retrained = replace(params, train=replace(params.train, sections={"ease": {"l2": 5.0}}))
    train("ease", features, model_dir(work, "ease"), retrained)
    summary = evaluate(features, work, tmp_path / "b", params, dvc_file=none)
    assert summary["decision"]["champion"] == key
    again = pl.read_parquet(tmp_path / "b" / "per_user" / "loo" / f"{key}.parquet")
    assert again.equals(served_a)  # A's figures, whatever models/ease now holds
    assert "ease" in [e["challenger"] for e in summary["decision"]["evidence"]]
    assert summary["models"]["ease"]["ndcg@10"] != summary["models"][key]["ndcg@10"]


def test_an_unloadable_champion_artifact_is_said_and_the_best_baseline_stands_in(
    trained, tmp_path: Path
):
    features, models, params = trained
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    (artifacts / "champion.json").write_text(
        json.dumps({"model": "ease", "version": "v1", "promoted_at": "x", "reason": "test"})
    )
    params = replace(params, evaluate=replace(params.evaluate, artifacts=str(artifacts)))
    out = tmp_path / "evaluation"
    decision = evaluate(features, models, out, params, dvc_file=tmp_path / "none.dvc")["decision"]
    assert decision["champion"] in params.evaluate.baselines
    assert "ease@v1 could not be scored as served" in decision["champion_source"]


def test_a_runs_evaluation_compares_its_own_models_and_lists_the_others(trained, tmp_path):
    features, models, params = trained
    out = tmp_path / "evaluation"
    summary = evaluate(
        features, models, out, params, tmp_path / "none.dvc", only=["itemknn", "ease"]
    )
    assert set(summary["models"]) == {"itemknn", "ease"}
    assert summary["decision"]["not_compared"] == ["popularity"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["temporal"]) == {"itemknn", "ease"}


def test_stale_models_are_refused(trained, tmp_path: Path):
    features, models, params = trained
    out = tmp_path / "evaluation"
    evaluate(features, models, out, params, dvc_file=tmp_path / "none.dvc")

    stale = tmp_path / "stale"
    (stale / "popularity").mkdir(parents=True)
    for name in ("weights.pt", "config.json"):
        (stale / "popularity" / name).write_bytes((models / "popularity" / name).read_bytes())
    config = json.loads((stale / "popularity" / "config.json").read_text())
    config["data"]["manifest_sha256"] = "0" * 64
    (stale / "popularity" / "config.json").write_text(json.dumps(config))
    before = (out / "decision.json").read_text()
    with pytest.raises(RecsysError, match="popularity trained on features 000000000000, not"):
        evaluate(features, stale, out, params, dvc_file=tmp_path / "none.dvc")
    assert (out / "decision.json").read_text() == before  # the earlier report is intact

    # Beside models trained on these features, a stale one is skipped and recorded.
    for name in ("itemknn", "ease"):
        shutil.copytree(models / name, stale / name, ignore=shutil.ignore_patterns("temporal"))
    summary = evaluate(features, stale, out, params, dvc_file=tmp_path / "none.dvc")
    assert set(summary["models"]) == {"itemknn", "ease"}
    current = file_sha256(features / "manifest.json")[:12]
    assert summary["decision"]["skipped_models"] == [
        {
            "model": "popularity",
            "protocol": "loo",
            "reason": f"trained on features 000000000000, not these ({current})",
        }
    ]


def test_a_fresh_clones_report_folder_is_evaluated_into(trained, tmp_path: Path):
    """git tracks reports/evaluation/metrics.json alone, so a fresh clone's folder holds just
    that file: the stage's own output, replaced, never refused as someone else's folder."""
    features, models, params = trained
    out = tmp_path / "reports" / "evaluation"
    out.mkdir(parents=True)
    (out / "metrics.json").write_text('{"loo": {}}\n')
    evaluate(features, models, out, params, dvc_file=tmp_path / "none.dvc")
    assert "popularity" in json.loads((out / "metrics.json").read_text())["loo"]

    other = tmp_path / "other"
    (other / "notes.txt").parent.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(RecsysError, match="holds files this stage did not write"):
        evaluate(features, models, other, params, dvc_file=tmp_path / "none.dvc")
    assert (other / "notes.txt").read_text() == "mine"


def test_no_trained_model_is_a_clear_error(trained, tmp_path: Path):
    features, _, params = trained
    with pytest.raises(RecsysError, match="no trained model"):
        evaluate(features, tmp_path / "empty", tmp_path / "out", params)


def test_sampled_negatives_avoid_every_target_and_the_history_under_the_temporal_split(trained):
    from recsys_models.metrics import sample_negatives
    from tasks.evaluate import _touched

    features, _, _ = trained
    data = load_features(features, "temporal")
    indptr, items = _touched(data)
    users = np.flatnonzero(data.test_target > 0)
    negatives = sample_negatives(
        data.n_items, indptr, items, users, data.test_target[users], n=20, seed=7
    )
    seen_ptr, seen = data.seen("test")
    target_ptr, targets = data.target_sets("test")
    for row, user in enumerate(users):
        forbidden = set(seen[seen_ptr[user] : seen_ptr[user + 1]].tolist())
        forbidden |= set(targets[target_ptr[user] : target_ptr[user + 1]].tolist())
        drawn = set(negatives[row].tolist()) - {0}
        assert drawn and not drawn & forbidden
    again = sample_negatives(data.n_items, indptr, items, users, data.test_target[users], 20, 7)
    assert np.array_equal(negatives, again)


def test_an_unknown_primary_metric_is_a_clear_error(trained, tmp_path: Path):
    features, models, params = trained
    bad = replace(params, evaluate=replace(params.evaluate, primary_metric="ndcg@7"))
    with pytest.raises(RecsysError, match="primary_metric 'ndcg@7' is not one of"):
        evaluate(features, models, tmp_path / "out", bad)
