"""The baselines every model is compared against: correct against brute force, and better than
chance (popularity) or than popularity (item-kNN, BPR-MF) on synthetic sequential data."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from recsys_models import bpr_mf, itemknn, popularity, recent_popularity
from recsys_models.data import FeatureData, eval_loader
from recsys_models.metrics import evaluate
from tests.conftest import synthetic_features


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> FeatureData:
    return synthetic_features(tmp_path_factory.mktemp("baselines"), 300, 200, 15_000, seed=0)


@pytest.fixture(scope="module")
def trained_bpr(data: FeatureData) -> tuple[bpr_mf.BPRMF, list[float]]:
    """BPR-MF after 3 epochs of a plain loop (the Trainer is the train stage's business)."""
    torch.manual_seed(0)
    module, datamodule = bpr_mf.build(data, bpr_mf.Config(batch_size=512), seed=0)
    optimiser = module.configure_optimizers()
    epoch_losses = []
    for _ in range(3):
        losses = []
        for batch in datamodule.train_dataloader():
            optimiser.zero_grad()
            loss = module.loss(batch)
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
        epoch_losses.append(float(np.mean(losses)))
    return module.model, epoch_losses


def val_ndcg10(data: FeatureData, score) -> float:
    return evaluate(score, eval_loader(data, "val", 512))["ndcg@10"]


def test_popularity_scores_every_user_by_training_counts(data: FeatureData):
    model = popularity.fit(data, popularity.Config(), seed=0)
    counts = np.bincount(data.train_items, minlength=data.n_items + 1)
    scores = model.score(torch.tensor([1, 2, 3]), torch.zeros(3, 5, dtype=torch.int64))
    assert scores.shape == (3, data.n_items + 1)
    assert (scores == torch.tensor(counts, dtype=torch.float32)).all()


def test_recent_popularity_counts_only_the_window_and_breaks_ties_by_all_time_counts(
    data: FeatureData,
):
    day = recent_popularity.DAY_SECONDS
    # Item 1 is the all-time hit, item 2 the recent one, item 3 was consumed once, long ago.
    items = np.array([1, 1, 1, 1, 3, 2, 2, 1])
    times = np.array([0, 1, 2, 3, 4, 100 * day, 100 * day + 5, 100 * day + 9])
    toy = dataclasses.replace(
        data,
        n_items=4,
        train_users=np.arange(1, len(items) + 1),
        train_items=items,
        train_times=times,
        item_popularity=np.bincount(items, minlength=5).astype(np.float32),
    )
    week = recent_popularity.fit(toy, recent_popularity.Config(days=7), seed=0).scores
    assert week.argsort(descending=True)[:3].tolist() == [2, 1, 3] and week[4] == 0  # never seen
    assert week[2] == pytest.approx(2, abs=1e-2) and week[1] == pytest.approx(1, abs=1e-2)
    assert week[0] == 0  # padding
    # The last 3 rows by time, whatever the unit: the same window here.
    last3 = recent_popularity.Config(days=0, interactions=3)
    assert torch.equal(recent_popularity.fit(toy, last3, seed=0).scores, week)
    # A window that covers everything is all-time popularity.
    ever = recent_popularity.fit(toy, recent_popularity.Config(days=1000), seed=0).scores
    assert ever.argsort(descending=True)[:3].tolist() == [1, 2, 3]


def test_recent_popularity_refuses_features_without_timestamps(data: FeatureData):
    with pytest.raises(ValueError, match="timestamps"):
        recent_popularity.fit(
            dataclasses.replace(data, train_times=None), recent_popularity.Config(), 0
        )


def brute_cosine(matrix: np.ndarray, shrink: float) -> np.ndarray:
    """Cosine between the columns of a dense binary matrix, diagonal zeroed."""
    dots = matrix.T @ matrix
    norms = np.sqrt(np.diag(dots))
    denominator = np.outer(norms, norms) + shrink
    sims = np.divide(dots, denominator, out=np.zeros_like(dots), where=denominator > 0)
    np.fill_diagonal(sims, 0.0)
    return sims


@pytest.mark.parametrize(("shrink", "block_values"), [(0.0, 1 << 24), (2.0, 1 << 24), (0.0, 40)])
def test_cosine_topk_keeps_the_largest_brute_force_similarities(
    shrink: float, block_values: int, monkeypatch
):
    monkeypatch.setattr(itemknn, "BLOCK_VALUES", block_values)  # 40: blocks of 2 rows
    rng = np.random.default_rng(0)
    dense = (rng.random((40, 15)) < 0.3).astype(np.float64)
    dense[:, 0] = 0.0  # a column nobody touched (like padding) has no neighbours
    users, items = np.nonzero(dense)
    matrix = itemknn.interaction_matrix(users, items, dense.shape)
    assert (matrix.toarray() == dense).all()
    brute = brute_cosine(dense, shrink)
    k = 4
    neighbours, sims = itemknn.cosine_topk(matrix.T.tocsr(), k, shrink)
    assert neighbours.shape == sims.shape == (15, k)
    expected = -np.sort(-brute, axis=1)[:, :k]
    np.testing.assert_allclose(sims, expected, rtol=1e-5, atol=1e-7)
    picked = np.take_along_axis(brute, neighbours, axis=1)
    np.testing.assert_allclose(np.where(sims > 0, picked, 0.0), sims, rtol=1e-5, atol=1e-7)
    assert (neighbours[0] == 0).all() and (sims[0] == 0).all()


def test_itemknn_score_is_the_recency_weighted_sum_of_similarities():
    rng = np.random.default_rng(1)
    n_users, n_items = 30, 12
    dense = (rng.random((n_users + 1, n_items + 1)) < 0.3).astype(np.float64)
    dense[0], dense[:, 0] = 0.0, 0.0
    dense[np.arange(1, n_users + 1), rng.integers(1, n_items + 1, n_users)] = 1.0
    users, items = np.nonzero(dense)
    data = FeatureData(
        n_users=n_users,
        n_items=n_items,
        max_seq_len=4,
        train_users=users,
        train_items=items,
        val_input=np.zeros((n_users + 1, 4), dtype=np.int64),
        val_target=np.zeros(n_users + 1, dtype=np.int64),
        test_input=np.zeros((n_users + 1, 4), dtype=np.int64),
        test_target=np.zeros(n_users + 1, dtype=np.int64),
        item_genres=np.zeros((n_items + 1, 1), dtype=np.uint8),
        item_year_bucket=np.zeros(n_items + 1, dtype=np.int64),
        item_popularity=dense.sum(0).astype(np.float32),
    )
    decay = 0.5
    # k beyond the catalogue: nothing is pruned, so the score is the brute-force one.
    model = itemknn.fit(data, itemknn.Config(k=100, decay=decay), seed=0)
    brute = brute_cosine(dense, 0.0)
    history = torch.tensor([[0, 0, 3, 5], [2, 2, 7, 1], [0, 0, 0, 0]])
    expected = np.zeros((3, n_items + 1))
    for row, items_ in enumerate(history.tolist()):
        for position, item in enumerate(items_):
            if item:
                expected[row] += decay ** (len(items_) - 1 - position) * brute[item]
    scores = model.score(torch.tensor([1, 2, 3]), history)
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError):
        itemknn.Config(k=0)
    with pytest.raises(ValueError):
        itemknn.Config(decay=0.0)


def test_bpr_loss_falls(trained_bpr):
    _, losses = trained_bpr
    assert losses[-1] < 0.7 * losses[0], losses


def test_bpr_negatives_avoid_the_users_items(data: FeatureData):
    users = torch.as_tensor(data.train_users)
    known = set(zip(data.train_users.tolist(), data.train_items.tolist(), strict=True))

    def collision_rate(tries: int) -> float:
        torch.manual_seed(0)
        module, _ = bpr_mf.build(data, bpr_mf.Config(resample_tries=tries), seed=0)
        negatives = module.sample_negatives(users)
        assert negatives.min() >= 1 and negatives.max() <= data.n_items
        pairs = zip(users.tolist(), negatives.tolist(), strict=True)
        return sum(pair in known for pair in pairs) / len(users)

    assert collision_rate(0) > 0.1  # uniform draws often hit a heavy user's items
    assert collision_rate(5) < 0.01


def test_baselines_beat_chance_and_popularity(data: FeatureData, trained_bpr):
    generator = torch.Generator().manual_seed(0)

    def random_scores(users, history):
        return torch.rand(len(users), data.n_items + 1, generator=generator)

    chance = val_ndcg10(data, random_scores)
    pop = val_ndcg10(data, popularity.fit(data, popularity.Config(), 0).score)
    knn = val_ndcg10(data, itemknn.fit(data, itemknn.Config(), 0).score)
    bpr = val_ndcg10(data, trained_bpr[0].score)
    assert pop > 2 * chance, (pop, chance)
    assert knn > 1.5 * pop, (knn, pop)
    assert bpr > 1.5 * pop, (bpr, pop)
