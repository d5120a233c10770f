"""The two-tower model on tiny synthetic features: shapes, the towers' contract, the loss."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import lightning
import numpy as np
import polars as pl
import pytest
import torch

from recsys_models import two_tower
from recsys_models.data import FeatureData, eval_loader
from recsys_models.metrics import evaluate
from tasks.params import FeaturesParams
from tests.conftest import quiet_trainer, synthetic_features

SMALL = two_tower.Config(dim=16, hidden=32, history_len=10, batch_size=128, lr=3e-3)


def make_data(root: Path, with_users: bool) -> FeatureData:
    users = None
    if with_users:  # MovieLens-like demographics
        rng = np.random.default_rng(0)
        users = pl.DataFrame(
            {
                "user_id": [str(u) for u in range(1, 301)],
                "age": rng.integers(10, 70, 300),
                "gender": rng.choice(["M", "F"], 300),
                "occupation": rng.choice(["a", "b", "c", "d"], 300),
            }
        )
    params = FeaturesParams(min_user_interactions=1, min_item_interactions=1, max_seq_len=20)
    return synthetic_features(root, 300, 150, 12_000, seed=3, params=params, users=users)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> FeatureData:
    return make_data(tmp_path_factory.mktemp("tt"), with_users=False)


@pytest.fixture(scope="module")
def data_users(tmp_path_factory) -> FeatureData:
    return make_data(tmp_path_factory.mktemp("tt_users"), with_users=True)


def first_batch(data: FeatureData, config=SMALL) -> dict:
    _, dm = two_tower.build(data, config, seed=0)
    return next(iter(dm.train_dataloader()))


def test_training_pairs_are_history_prefixes(data):
    _, dm = two_tower.build(data, SMALL, seed=0)
    offsets = data.train_offsets()
    n_pairs = int(((offsets[1:] - offsets[:-1]) - 1).clip(min=0).sum())
    assert len(dm.positions) == n_pairs
    batch = next(iter(dm.train_dataloader()))
    for user, history, target in zip(
        batch["user"].tolist(), batch["history"].tolist(), batch["target"].tolist(), strict=True
    ):
        seq = data.train_items[offsets[user] : offsets[user + 1]].tolist()
        shown = [i for i in history if i]
        assert history[: SMALL.history_len - len(shown)] == [0] * (SMALL.history_len - len(shown))
        k = len(shown)
        # the target follows exactly the shown window in the user's sequence
        assert any(seq[t] == target and seq[t - k : t] == shown for t in range(1, len(seq)))
    # shuffled, and the same seed gives the same order
    again = next(iter(two_tower.build(data, SMALL, seed=0)[1].train_dataloader()))
    assert torch.equal(batch["target"], again["target"])
    assert not torch.equal(batch["user"], batch["user"].sort().values)


def test_shapes_and_all_padding_history(data):
    model = two_tower.TwoTower(data, SMALL).eval()
    users = torch.tensor([1, 2, 3])
    history = torch.from_numpy(data.val_input[[1, 2, 3]].astype(np.int64))
    history[1] = 0  # a cold user
    scores = model.score(users, history)
    assert scores.shape == (3, data.n_items + 1)
    assert torch.isfinite(scores).all()
    assert model.item_embeddings().shape == (data.n_items + 1, SMALL.dim)


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_score_is_user_tower_times_item_tower(data, similarity):
    config = dataclasses.replace(SMALL, similarity=similarity)
    model = two_tower.TwoTower(data, config).eval()
    items = model.item_embeddings()
    ids = torch.tensor([1, 5, data.n_items])
    assert torch.allclose(items[ids], model.item_tower(ids), atol=1e-6)
    assert torch.equal(items[0], torch.zeros(SMALL.dim))
    users = torch.tensor([4, 7])
    history = torch.from_numpy(data.val_input[[4, 7]].astype(np.int64))
    expected = model.user_embeddings(users, history) @ items.T
    assert torch.allclose(model.score(users, history), expected, atol=1e-6)


def test_item_cache_follows_the_weights(data):
    model = two_tower.TwoTower(data, SMALL).eval()
    users, history = torch.tensor([1]), torch.from_numpy(data.val_input[[1]].astype(np.int64))
    before = model.score(users, history)
    other = two_tower.TwoTower(data, dataclasses.replace(SMALL)).state_dict()
    other["item_id.weight"] = other["item_id.weight"] + 1.0
    model.load_state_dict(other)
    assert not torch.allclose(model.score(users, history), before)


def test_logq_correction_subtracts_log_probability():
    scores = torch.zeros(3, 4)
    log_q = torch.log(torch.tensor([0.5, 0.1, 0.1, 0.3]))
    logits = two_tower.corrected_logits(scores, log_q, None)
    assert torch.allclose(logits, -log_q.expand(3, 4))
    # the popular candidate 0 is discounted most, so it weighs least as a negative
    assert (logits[:, 0] < logits[:, 1]).all()
    # with equal raw scores the loss of row 0 (positive is the popular item) is higher than
    # that of row 1 (a rare positive): the model must earn a popular item's score
    rows = torch.nn.functional.cross_entropy(logits[:3], torch.arange(3), reduction="none")
    assert rows[0] > rows[1]
    loss = two_tower.sampled_softmax_loss(scores, log_q, None)
    assert torch.isclose(loss, rows.mean())


def test_false_negatives_are_masked_but_never_the_positive():
    scores = torch.randn(3, 3)
    mask = torch.ones(3, 3, dtype=torch.bool)  # everything is a false negative
    logits = two_tower.corrected_logits(scores, None, mask)
    assert torch.equal(logits.diagonal(), scores.diagonal())
    assert (logits.masked_select(~torch.eye(3, dtype=torch.bool)) <= two_tower.MASKED).all()
    loss = two_tower.sampled_softmax_loss(scores, None, mask)
    assert torch.isclose(loss, torch.tensor(0.0), atol=1e-6)


def test_items_in_history_per_row():
    history = torch.tensor([[0, 3, 4], [0, 0, 5]])
    candidates = torch.tensor([7, 4, 5, 3])
    mask = two_tower.items_in_history(history, candidates)
    assert mask.tolist() == [[False, True, False, True], [False, False, True, False]]


def test_items_in_history_equals_the_broadcast_compare_with_repeats_and_padding():
    generator = torch.Generator().manual_seed(0)
    history = torch.randint(0, 30, (64, 20), generator=generator)  # 0: padding, items repeat
    candidates = torch.randint(1, 30, (80,), generator=generator)  # a candidate can repeat too
    want = (history.unsqueeze(2) == candidates.view(1, 1, -1)).any(dim=1)
    assert torch.equal(two_tower.items_in_history(history, candidates), want)


def train(data: FeatureData, config: two_tower.Config, epochs: int):
    lightning.seed_everything(0, verbose=False)
    module, dm = two_tower.build(data, config, seed=0)
    trainer = quiet_trainer(epochs)
    trainer.fit(module, dm)
    return module, trainer


def test_loss_falls_and_beats_popularity(data):
    module, trainer = train(data, SMALL, epochs=2)
    assert {"train_loss", "val_ndcg@10", "val_hr@10", "val_mrr"} <= set(trainer.logged_metrics)
    model = module.model.eval()
    batch = first_batch(data)
    untrained = two_tower.build(data, SMALL, seed=0)[0].eval()
    with torch.no_grad():
        assert module.loss(batch) < untrained.loss(batch) - 0.5
    got = evaluate(model.score, eval_loader(data, "val"))
    pop = torch.as_tensor(data.item_popularity, dtype=torch.float32)
    base = evaluate(lambda u, h: pop.expand(len(u), -1), eval_loader(data, "val"))
    assert got["ndcg@10"] > 1.5 * base["ndcg@10"], (got, base)


def test_user_features_used_when_present(data_users, data):
    assert data_users.user_features is not None and data.user_features is None
    model = two_tower.TwoTower(data_users, SMALL).eval()
    assert len(model.user_feature_embs) == data_users.user_features.shape[1]
    history = torch.zeros(2, 5, dtype=torch.long)  # no history: only features differ
    users = torch.tensor([1, 2])
    codes = data_users.user_features
    assert not np.array_equal(codes[1], codes[2])
    emb = model.user_embeddings(users, history)
    assert not torch.allclose(emb[0], emb[1])
    # switched off by config, and absent from data: no user-feature parameters at all
    off = two_tower.TwoTower(data_users, dataclasses.replace(SMALL, user_features=False))
    assert len(off.user_feature_embs) == 0
    plain = two_tower.TwoTower(data, SMALL).eval()
    assert len(plain.user_feature_embs) == 0 and not hasattr(plain, "user_codes")
    emb = plain.user_embeddings(users, history)
    assert torch.allclose(emb[0], emb[1])


def test_uniform_negatives_train(data_users):
    config = dataclasses.replace(SMALL, n_uniform_negatives=32)
    batch = first_batch(data_users, config)
    assert batch["negatives"].shape == (32,)
    assert int(batch["negatives"].min()) >= 1
    assert int(batch["negatives"].max()) <= data_users.n_items
    module, _ = two_tower.build(data_users, config, seed=0)
    loss = module.loss(batch)
    loss.backward()
    assert torch.isfinite(loss)


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="similarity"):
        two_tower.Config(similarity="euclid")
    with pytest.raises(ValueError, match="recency_decay"):
        two_tower.Config(recency_decay=0.0)


def test_items_without_training_interactions_tie_rather_than_rank_at_random(data):
    """An item no one trained on has a zero id row, so with no content of its own it gets the
    item tower's one content-free vector: every such item scores alike (its place follows from
    the model, not from noise that could put it in every user's top 10)."""
    from recsys_models.data import hide_items

    hidden = np.zeros(data.n_items + 1, dtype=bool)
    hidden[1::10] = True
    blank = dataclasses.replace(
        hide_items(data, hidden),
        item_genres=np.zeros_like(data.item_genres),
        item_year_bucket=np.zeros_like(data.item_year_bucket),
        item_text=None,
    )
    module, _ = two_tower.build(blank, SMALL, seed=0)
    model = module.model.eval()
    assert torch.count_nonzero(model.item_id.weight[torch.as_tensor(hidden)]) == 0
    with torch.no_grad():
        items = model.item_embeddings()[torch.as_tensor(hidden)]
    torch.testing.assert_close(items, items[:1].expand_as(items))
