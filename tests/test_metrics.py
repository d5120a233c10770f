"""The evaluation protocol against values computed by hand: ranks, masks, metrics, batches."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recsys_models import metrics
from recsys_models.data import EvalDataset, FeatureData, eval_loader
from recsys_models.metrics import (
    KS,
    evaluate,
    evaluate_batch,
    sample_negatives,
    sampled_metrics,
    sampled_ranks,
    set_metrics,
    target_positions,
)

NAN, INF = float("nan"), float("inf")


def positions_and_beaten(scores, targets, seen=()):
    """target_positions of one target per row (as validation ranks them)."""
    rows = torch.tensor([r for r, _ in seen], dtype=torch.int64)
    cols = torch.tensor([c for _, c in seen], dtype=torch.int64)
    targets = torch.tensor(targets)[:, None]
    return target_positions(torch.tensor(scores), targets, rows, cols)


def ranks(scores, targets, seen=()):
    return [int(p) for p in positions_and_beaten(scores, targets, seen)[0][:, 0].tolist()]


def single_target_metrics(ranks_: list[int], ks=KS) -> dict[str, torch.Tensor]:
    """set_metrics of users with one target each at the given ranks."""
    positions = torch.tensor(ranks_, dtype=torch.float32)[:, None]
    return set_metrics(positions, torch.full_like(positions, NAN), ks)


def test_rank_counts_higher_scored_unseen_items():
    # Items 1..5 (column 0 is padding); target 3 scores 0.5; items 1 and 4 score higher.
    assert ranks([[0.0, 0.9, 0.1, 0.5, 0.7, 0.2]], [3]) == [3]


def test_padding_never_competes_even_with_the_highest_score():
    assert ranks([[9.0, 0.1, 0.5, 0.2]], [2]) == [1]


def test_seen_items_are_removed_before_ranking():
    # Item 1 scores higher but the user has seen it; row 1 has no seen items.
    scores = [[0.0, 0.9, 0.5, 0.1], [0.0, 0.9, 0.5, 0.1]]
    assert ranks(scores, [2, 2], seen=[(0, 1)]) == [1, 2]


def test_a_target_the_user_saw_before_is_still_ranked():
    # Re-consumption: the target is among the seen items; it is masked as a competitor only.
    assert ranks([[0.0, 0.2, 0.9, 0.5]], [1], seen=[(0, 1), (0, 2)]) == [2]


def test_ties_count_against_the_model():
    # Two other items score the same as the target: rank 1 + 0 higher + 2 ties.
    assert ranks([[0.0, 0.5, 0.5, 0.5, 0.1]], [2]) == [3]
    # A constant scorer ranks every target last among the candidates.
    assert ranks([[1.0] * 6], [4]) == [5]


def test_nan_and_minus_inf_targets_rank_last_among_candidates_only():
    # Candidates: items 1 and 3 (2 is the target, 4 is seen). A NaN must never rank first.
    assert ranks([[5.0, 0.1, NAN, 0.2, 0.3]], [2], seen=[(0, 4)]) == [3]
    assert ranks([[5.0, 0.1, -INF, 0.2, 0.3]], [2], seen=[(0, 4)]) == [3]
    # A NaN competitor never beats a real target.
    assert ranks([[0.0, NAN, 0.2, NAN]], [2]) == [1]


def test_single_target_metrics_match_the_formulas():
    m = single_target_metrics([1, 2, 5, 6, 11, 25])
    assert m["hr@5"].tolist() == [1, 1, 1, 0, 0, 0]
    assert m["hr@10"].tolist() == [1, 1, 1, 1, 0, 0]
    assert m["hr@20"].tolist() == [1, 1, 1, 1, 1, 0]
    expected = [1.0, 1 / math.log2(3), 1 / math.log2(6), 1 / math.log2(7), 0.0, 0.0]
    assert m["ndcg@10"].tolist() == pytest.approx(expected)
    assert m["ndcg@5"].tolist() == pytest.approx(expected[:3] + [0, 0, 0])
    assert m["ndcg@20"].tolist() == pytest.approx(expected[:4] + [1 / math.log2(12), 0])
    assert m["mrr"].tolist() == pytest.approx([1, 1 / 2, 1 / 5, 1 / 6, 1 / 11, 1 / 25])


def tiny_data() -> FeatureData:
    """3 users, 5 items. User 1: train [1, 2, 3], val 4, test 5; user 2: train [2, 1, 1],
    val 3, test 4; user 3 has train items only (no targets)."""
    seq = np.array([[0, 0, 0], [1, 2, 3], [2, 1, 1], [0, 4, 5]])
    return FeatureData(
        n_users=3,
        n_items=5,
        max_seq_len=3,
        train_users=np.array([1, 1, 1, 2, 2, 2, 3, 3]),
        train_items=np.array([1, 2, 3, 2, 1, 1, 4, 5]),
        val_input=seq,
        val_target=np.array([0, 4, 3, 0]),
        test_input=np.array([[0, 0, 0], [2, 3, 4], [1, 1, 3], [0, 4, 5]]),
        test_target=np.array([0, 5, 4, 0]),
        item_genres=np.zeros((6, 1), dtype=np.uint8),
        item_year_bucket=np.zeros(6, dtype=np.int64),
        item_popularity=np.array([0, 3, 2, 1, 1, 1], dtype=np.float32),
    )


def csr_rows(indptr, items, user):
    return sorted(items[indptr[user] : indptr[user + 1]].tolist())


def test_seen_for_val_is_the_training_history_and_test_adds_the_val_item():
    data = tiny_data()
    indptr, items = data.seen("val")
    assert [csr_rows(indptr, items, u) for u in range(4)] == [[], [1, 2, 3], [1, 1, 2], [4, 5]]
    indptr, items = data.seen("test")
    assert [csr_rows(indptr, items, u) for u in range(4)] == [
        [],
        [1, 2, 3, 4],
        [1, 1, 2, 3],
        [4, 5],
    ]
    with pytest.raises(ValueError):
        data.seen("train")


def test_eval_batches_hold_only_users_with_a_target_and_their_seen_pairs():
    ds = EvalDataset(tiny_data(), "test")
    assert ds.users.tolist() == [1, 2]
    batch = ds.collate([1, 2])
    assert batch["target"].tolist() == [5, 4]
    assert batch["history"].tolist() == [[2, 3, 4], [1, 1, 3]]
    pairs = sorted(zip(batch["seen_rows"].tolist(), batch["seen_cols"].tolist(), strict=True))
    assert pairs == [(0, 1), (0, 2), (0, 3), (0, 4), (1, 1), (1, 1), (1, 2), (1, 3)]


def test_evaluate_averages_over_users_across_batches():
    data = tiny_data()

    # Scores equal to the item index: the catalogue order is 5 > 4 > 3 > 2 > 1.
    def score(users, history):
        return torch.arange(6, dtype=torch.float32).expand(len(users), -1)

    # val: user 1 (seen 1, 2, 3) target 4: only 5 is higher -> rank 2;
    #      user 2 (seen 1, 2) target 3: 4 and 5 higher -> rank 3.
    m = evaluate(score, eval_loader(data, "val", batch_size=1))
    assert m["users"] == 2
    assert m["mrr"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert m["ndcg@10"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(4)) / 2)
    # test: user 1 target 5 -> rank 1; user 2 (seen 1, 2, 3) target 4: 5 higher -> rank 2.
    m = evaluate(score, eval_loader(data, "test", batch_size=2))
    assert m["mrr"] == pytest.approx((1 + 1 / 2) / 2)
    assert m["hr@5"] == 1.0


def test_evaluation_scores_in_full_precision_even_under_autocast():
    # bf16 keeps 8 bits of mantissa: these item scores would collapse into ties, which count
    # against the model. Lightning's bf16-mixed runs validation under autocast like this.
    user = torch.ones(1, 4)
    items = torch.tensor([[0.0] * 4, [1.0, 1.0, 1.0, 1.001], [1.0] * 4, [1.0, 1.0, 1.0, 0.999]])
    batch = {
        "user": torch.tensor([0]),
        "history": torch.zeros(1, 2, dtype=torch.int64),
        "target": torch.tensor([1]),
        "seen_rows": torch.zeros(0, dtype=torch.int64),
        "seen_cols": torch.zeros(0, dtype=torch.int64),
    }

    def score(users, history):
        return user[users] @ items.T

    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        assert score(batch["user"], batch["history"]).dtype == torch.bfloat16
        metrics = evaluate_batch(score, batch)
    assert metrics["mrr"].tolist() == [1.0]


def test_auc_precision_and_recall_match_hand_computed_values():
    # Items 1..5; user 0 has seen item 1, so items 2, 4, 5 compete with target 3 (score 0.5):
    # item 4 scores higher, item 5 ties (a loss), item 2 lower -> rank 3, AUC 1/3.
    scores = [[0.0, 0.9, 0.1, 0.5, 0.7, 0.5]]
    positions, beaten = positions_and_beaten(scores, [3], seen=[(0, 1)])
    assert positions.tolist() == [[3.0]]
    assert beaten.tolist() == [[pytest.approx(1 / 3)]]  # 1 of the 3 candidates beaten
    metrics = set_metrics(positions, beaten, ks=(1, 5))
    assert metrics["auc"].tolist() == [pytest.approx(1 / 3)]
    assert metrics["precision@5"].tolist() == [pytest.approx(0.2)]
    assert metrics["recall@5"].tolist() == [1.0]
    assert metrics["precision@1"].tolist() == [0.0] and metrics["recall@1"].tolist() == [0.0]


def test_auc_is_one_for_a_target_above_every_candidate_and_zero_below():
    # Four candidates (items 1, 2, 4, 5) around target 3: above all of them, then below all.
    scores = [[0.0, 0.1, 0.2, 0.9, 0.3, 0.4], [0.0, 0.6, 0.7, 0.1, 0.8, 0.9]]
    positions, beaten = positions_and_beaten(scores, [3, 3])
    assert positions.tolist() == [[1.0], [5.0]]
    assert set_metrics(positions, beaten)["auc"].tolist() == [1.0, 0.0]


def test_validation_metrics_have_every_key_of_each_k():
    scores = torch.tensor([[0.0, 0.3, 0.2, 0.1]])
    batch = {
        "user": torch.tensor([0]),
        "history": torch.zeros(1, 2, dtype=torch.int64),
        "target": torch.tensor([2]),
        "seen_rows": torch.zeros(0, dtype=torch.int64),
        "seen_cols": torch.zeros(0, dtype=torch.int64),
    }
    metrics = evaluate_batch(lambda users, history: scores, batch)
    names = ("hr", "recall", "precision", "ndcg")
    assert set(metrics) == {f"{n}@{k}" for n in names for k in KS} | {"mrr", "auc"}
    assert metrics["mrr"].tolist() == [0.5] and metrics["auc"].tolist() == [0.5]


def test_sampled_metrics_average_each_targets_own_metrics():
    # User 0: valid targets at ranks 1 and 3 (the 50 is no target). User 1: one valid target at
    # rank 12 (the 7 and 2 are no targets: they must not count). User 2: no target at all.
    ranks_ = torch.tensor([[1, 3, 50], [12, 7, 2], [1, 1, 1]])
    valid = torch.tensor([[True, True, False], [True, False, False], [False, False, False]])
    m = sampled_metrics(ranks_, valid)
    assert set(m) == {f"{n}@{k}" for n in ("hr", "ndcg") for k in KS} | {"mrr"}
    assert m["hr@5"].tolist() == [1.0, 0.0, 0.0]
    assert m["hr@10"].tolist() == [1.0, 0.0, 0.0]
    assert m["hr@20"].tolist() == [1.0, 1.0, 0.0]
    # NDCG of one target at rank r is 1 / log2(r + 1): 1 and 0.5 for ranks 1 and 3.
    assert m["ndcg@5"].tolist() == pytest.approx([0.75, 0.0, 0.0])
    assert m["ndcg@10"].tolist() == pytest.approx([0.75, 0.0, 0.0])
    assert m["ndcg@20"].tolist() == pytest.approx([0.75, 1 / math.log2(13), 0.0])
    assert m["mrr"].tolist() == pytest.approx([(1 + 1 / 3) / 2, 1 / 12, 0.0])
    # Unlike set_metrics over a user's targets together, a target does not push another down:
    # two targets both at rank 1 each score 1.
    both_first = sampled_metrics(torch.tensor([[1, 1]]), torch.tensor([[True, True]]))
    assert both_first["hr@5"].tolist() == [1.0] and both_first["mrr"].tolist() == [1.0]


def test_sampled_negatives_avoid_target_and_history_and_repeat_by_seed():
    n_items = 50
    indptr = np.array([0, 0, 3, 5])  # user 1 saw 1, 2, 3; user 2 saw 10, 11
    seen = np.array([1, 2, 3, 10, 11])
    users, targets = np.array([1, 2]), np.array([4, 12])
    negatives = sample_negatives(n_items, indptr, seen, users, targets, n=30, seed=7)
    assert negatives.shape == (2, 30)
    for row, forbidden in ((0, {0, 1, 2, 3, 4}), (1, {0, 10, 11, 12})):
        assert not forbidden & set(negatives[row].tolist())
        assert len(set(negatives[row].tolist())) == 30  # without replacement
    again = sample_negatives(n_items, indptr, seen, users, targets, n=30, seed=7)
    assert (again == negatives).all()
    alone = sample_negatives(n_items, indptr, seen, users[1:], targets[1:], n=30, seed=7)
    assert (alone[0] == negatives[1]).all()  # a user's draw does not depend on the batch
    other = sample_negatives(n_items, indptr, seen, users, targets, n=30, seed=8)
    assert (other != negatives).any()


def test_sampled_negatives_take_every_free_item_when_too_few_are_left():
    indptr, seen = np.array([0, 0, 3]), np.array([1, 2, 3])
    negatives = sample_negatives(5, indptr, seen, np.array([1]), np.array([4]), n=10, seed=0)
    assert negatives[0].tolist() == [5] + [0] * 9


def test_sampled_rank_counts_ties_against_and_ignores_padding():
    scores = torch.tensor([[9.0, 0.1, 0.5, 0.5, 0.9]])
    negatives = torch.tensor([[1, 3, 4, 0]])
    assert sampled_ranks(scores, torch.tensor([2]), negatives).tolist() == [3]


@pytest.mark.parametrize("n_targets", [1, 3, 12])
def test_rows_ranked_in_blocks_equal_rows_ranked_at_once(monkeypatch, n_targets):
    # Blocks of 3 rows (BLOCK_SCORES scores each) over 10 users: seen items, ties, NaN and
    # rows without targets land in different blocks, and nothing may change.
    generator = torch.Generator().manual_seed(n_targets)
    scores = torch.randint(0, 6, (10, 40), generator=generator).float()
    scores[2, 5] = NAN
    targets = torch.randint(0, 40, (10, n_targets), generator=generator)
    targets[4] = 0
    seen_rows = torch.randint(0, 10, (60,), generator=generator)
    seen_cols = torch.randint(1, 40, (60,), generator=generator)
    whole = target_positions(scores, targets, seen_rows, seen_cols)
    monkeypatch.setattr(metrics, "BLOCK_SCORES", 3 * 40)
    blocked = target_positions(scores, targets, seen_rows, seen_cols)
    for a, b in zip(whole, blocked, strict=True):
        torch.testing.assert_close(a, b, equal_nan=True)
