"""Large catalogues (issue 19) on small data: item-kNN scores from its sparse top-k lists as the
dense item x item matrix did, user-kNN holds no users x items table, EASE refuses a catalogue
its dense matrices would not fit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from recsys_models import ease, itemknn, userknn
from recsys_models.data import FeatureData
from tasks import train as train_stage
from tasks.errors import RecsysError
from tasks.params import FeaturesParams, load_params
from tests.conftest import synthetic_features
from tests.test_classic import random_binary, tiny_data


def dense_itemknn_scores(model: itemknn.ItemKNN, history: torch.Tensor) -> np.ndarray:
    """The former export: the top-k lists expanded into a dense [I+1, I+1] matrix, times the
    recency-weighted history row."""
    n = model.neighbours.shape[0]
    dense = np.zeros((n, n))
    np.add.at(dense, (np.arange(n)[:, None], model.neighbours.numpy()), model.sims.numpy())
    weights = model.decay ** np.arange(history.shape[1] - 1, -1, -1) * (history.numpy() > 0)
    rows = np.zeros((len(history), n))
    np.add.at(rows, (np.arange(len(history))[:, None], history.numpy()), weights)
    return rows @ dense


def test_sparse_itemknn_gives_the_dense_top_k():
    dense = random_binary(5, n_users=60, n_items=40)
    model = itemknn.fit(tiny_data(dense), itemknn.Config(k=6, decay=0.7), seed=0)
    rng = np.random.default_rng(0)
    history = torch.from_numpy(rng.integers(0, 41, (50, 8)))
    history[:5, :4] = 0  # left padding
    history[5, :] = history[5, -1]  # one item repeated: its neighbours count every time
    sparse = model.score(torch.zeros(50, dtype=torch.long), history).double().numpy()
    expected = dense_itemknn_scores(model, history)
    np.testing.assert_allclose(sparse, expected, rtol=1e-6, atol=1e-7)
    top_sparse = np.argsort(-sparse[:, 1:], axis=1, kind="stable")[:, :10]
    top_dense = np.argsort(-expected.astype(np.float32)[:, 1:], axis=1, kind="stable")[:, :10]
    same = (top_sparse == top_dense).all(axis=1)
    assert same.mean() >= 0.96  # float32 sums in another order may swap an exact tie


def test_userknn_keeps_neighbour_lists_not_a_users_by_items_table():
    dense = random_binary(6, n_users=50, n_items=30)
    model = userknn.fit(tiny_data(dense), userknn.Config(k=4), seed=0)
    biggest = max(t.numel() for t in model.state_dict().values())
    assert biggest < 51 * 31  # neighbours [U+1, k] and the training CSR, no [U+1, I+1] table
    # the scores are the neighbourhood sums, ragged rows and the padding user included
    users = torch.arange(51)
    scores = model.score(users, torch.zeros(51, 4, dtype=torch.long)).numpy()
    expected = np.zeros_like(dense)
    for u in range(51):
        for v, s in zip(model.neighbours[u].tolist(), model.sims[u].tolist(), strict=True):
            expected[u] += s * dense[v]
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
    assert (scores[0] == 0).all()


def test_ease_refuses_a_catalogue_over_its_memory_budget_before_allocating():
    n_items = 200_000
    data = FeatureData(
        n_users=2,
        n_items=n_items,
        max_seq_len=2,
        train_users=np.array([1, 2]),
        train_items=np.array([1, n_items]),
        val_input=np.zeros((3, 2), dtype=np.int64),
        val_target=np.zeros(3, dtype=np.int64),
        test_input=np.zeros((3, 2), dtype=np.int64),
        test_target=np.zeros(3, dtype=np.int64),
        item_genres=np.zeros((1, 1), dtype=np.uint8),
        item_year_bucket=np.zeros(1, dtype=np.int64),
        item_popularity=np.zeros(1, dtype=np.float32),
    )
    with pytest.raises(ValueError) as info:
        ease.fit(data, ease.Config(max_memory_gib=8.0), seed=0)  # 447 GiB: would never fit
    message = str(info.value)
    assert "\n" not in message
    assert "200,000 items" in message and "447.0 GiB" in message and "8 GiB" in message
    assert "train.ease.max_memory_gib" in message
    assert ease.memory_needed(1682) < 2**30 / 10  # ML-100K: well inside any budget


def test_the_train_stage_reports_eases_refusal_as_one_line(tmp_path: Path):
    params = FeaturesParams(min_user_interactions=1, min_item_interactions=1, max_seq_len=8)
    data = synthetic_features(tmp_path, 40, 30, 600, seed=2, params=params)
    budget = ease.memory_needed(data.n_items) / 2**30 / 2  # half of what it needs
    train_params = load_params(tmp_path / "absent.yaml", {"train.ease.max_memory_gib": budget})
    with pytest.raises(RecsysError, match=rf"^model ease: {data.n_items} items need .* GiB"):
        train_stage.train("ease", tmp_path / "features", tmp_path / "models" / "ease", train_params)
    assert not (tmp_path / "models" / "ease" / "weights.pt").exists()


def sharded_runs(tmp_path: Path, client_factory=None):
    """One shot, and shards of 7 users (in this process, or through the client given)."""
    from tasks.evaluate import CatalogueStats, score_model

    params = FeaturesParams(min_user_interactions=1, min_item_interactions=1, max_seq_len=8)
    data = synthetic_features(tmp_path, 60, 40, 1_200, seed=4, params=params)
    net = itemknn.fit(data, itemknn.Config(k=10), seed=0)
    stats = CatalogueStats(data)

    def run(shard_users: int, client=None):
        p = load_params(tmp_path / "absent.yaml", {"evaluate.shard_users": shard_users})
        return score_model(net, data, "itemknn", "loo", p, stats, client)

    one = run(10_000)
    assert one.per_user.height == data.n_users > 7  # several shards of 7
    if client_factory is None:
        return one, run(7)
    with client_factory() as client:
        return one, run(7, client)


def assert_same(one, other) -> None:
    assert other.per_user.equals(one.per_user)
    assert (other.full, other.sampled, other.beyond) == (one.full, one.sampled, one.beyond)
    assert (other.recommended == one.recommended).all()


def test_sharded_evaluation_in_one_process_equals_one_shot(tmp_path: Path):
    assert_same(*sharded_runs(tmp_path))


@pytest.mark.slow
def test_sharded_evaluation_on_a_local_dask_cluster_equals_one_shot(tmp_path: Path):
    """A real local Dask cluster of two worker processes scores the shards."""
    import contextlib

    from distributed import Client, LocalCluster

    @contextlib.contextmanager
    def client_factory():
        with (
            LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster,
            Client(cluster) as client,
        ):
            assert len(client.scheduler_info()["workers"]) == 2
            yield client

    assert_same(*sharded_runs(tmp_path, client_factory))


def test_parity_top_ten_is_a_stable_sorts_first_ten_without_sorting_rows():
    from tasks.export import top_ten

    rng = np.random.default_rng(0)
    for width in (1, 5, 10, 37):
        scores = rng.integers(0, 4, (20, width)).astype(np.float32)  # many ties
        expected = np.argsort(-scores, axis=1, kind="stable")[:, :10]
        assert (top_ten(scores) == expected).all()
