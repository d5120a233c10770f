"""The classic families (content-based, user-kNN, EASE, ALS, rating MF, NeuMF, GRU4Rec): each
against popularity on synthetic sequential data, each closed form against a brute-force numpy
computation on a tiny matrix, the neural ones against padding, and all through the train stage.
(Item-kNN's brute-force check is in tests/test_baselines.py.)"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from recsys_models import (
    als,
    content_based,
    ease,
    gru4rec,
    neumf,
    popularity,
    rating_mf,
    two_tower,
    userknn,
)
from recsys_models.data import FeatureData, eval_loader
from recsys_models.metrics import evaluate
from recsys_models.registry import model_names
from tasks import feature_store, model_store
from tasks import train as train_stage
from tasks.errors import RecsysError
from tasks.features import build_features
from tasks.params import DEMO_MODELS, FeaturesParams, load_params
from tasks.synth import synthesize
from tests.conftest import quiet_trainer, synthetic_features

# The families beside the flow's default models (params.yaml train.models).
CLASSIC_MODELS = tuple(name for name in model_names() if name not in DEMO_MODELS)
PADDED = torch.tensor([[0, 0, 0, 0], [0, 0, 0, 7], [0, 3, 9, 1], [5, 2, 8, 11]])


@pytest.fixture(scope="module")
def features(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("classic")
    synthetic_features(root, 300, 200, 15_000, seed=0)
    return root / "features"


@pytest.fixture(scope="module")
def data(features: Path) -> FeatureData:
    return feature_store.load_features(features)


@pytest.fixture(scope="module")
def pop_ndcg(data: FeatureData) -> float:
    return val_ndcg10(data, popularity.fit(data, popularity.Config(), 0))


def val_ndcg10(data: FeatureData, model) -> float:
    return evaluate(model.score, eval_loader(data, "val", 512))["ndcg@10"]


def train_loop(module, datamodule, epochs: int) -> list[float]:
    """A plain loop over the LightningModule's loss (the Trainer is the train stage's business);
    the mean loss of every epoch."""
    torch.manual_seed(0)
    optimiser = module.configure_optimizers()
    module.train()
    curve = []
    for _ in range(epochs):
        losses = []
        for batch in datamodule.train_dataloader():
            optimiser.zero_grad()
            loss = module.loss(batch)
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
        curve.append(float(np.mean(losses)))
    module.eval()
    return curve


def tiny_data(dense: np.ndarray, **fields) -> FeatureData:
    """FeatureData whose training interactions are the nonzeros of `dense` [U+1, I+1]."""
    users, items = np.nonzero(dense)
    n_users, n_items = dense.shape[0] - 1, dense.shape[1] - 1
    base = dict(
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
    return FeatureData(**(base | fields))


def random_binary(seed: int, n_users: int = 30, n_items: int = 12) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dense = (rng.random((n_users + 1, n_items + 1)) < 0.3).astype(np.float64)
    dense[0], dense[:, 0] = 0.0, 0.0  # padding user and item
    dense[np.arange(1, n_users + 1), rng.integers(1, n_items + 1, n_users)] = 1.0
    return dense


# --- better than popularity on sequential synthetic data --------------------------------------


@pytest.mark.parametrize(
    ("module", "config", "factor"),
    [
        (userknn, userknn.Config(), 1.3),
        (ease, ease.Config(l2=50.0, decay=0.8), 1.5),
        (als, als.Config(factors=16, iterations=5), 1.3),
    ],
    ids=["userknn", "ease", "als"],
)
def test_closed_form_models_beat_popularity(data, pop_ndcg, module, config, factor):
    ndcg = val_ndcg10(data, module.fit(data, config, seed=0))
    assert ndcg > factor * pop_ndcg, (ndcg, pop_ndcg)


def test_gru4rec_learns_and_beats_popularity(data, pop_ndcg):
    config = gru4rec.Config(hidden=32, batch_size=64)
    module, datamodule = gru4rec.build(data, config, seed=0)
    curve = train_loop(module, datamodule, epochs=4)
    assert curve[-1] < curve[0], curve
    ndcg = val_ndcg10(data, module.model)
    assert ndcg > 1.2 * pop_ndcg, (ndcg, pop_ndcg)


def test_neumf_learns_and_beats_popularity(data, pop_ndcg):
    config = neumf.Config(batch_size=256)
    module, datamodule = neumf.build(data, config, seed=0)
    curve = train_loop(module, datamodule, epochs=4)
    assert curve[-1] < curve[0], curve
    ndcg = val_ndcg10(data, module.model)
    assert ndcg > 1.3 * pop_ndcg, (ndcg, pop_ndcg)


def test_rating_mf_loss_falls_and_beats_the_global_mean(data, pop_ndcg):
    rng = np.random.default_rng(0)
    order = rng.permutation(len(data.train_users))
    held, kept = order[: len(order) // 5], order[len(order) // 5 :]
    train = dataclasses.replace(
        data,
        train_users=data.train_users[kept],
        train_items=data.train_items[kept],
        train_ratings=data.train_ratings[kept],
    )
    config = rating_mf.Config(dim=8, batch_size=1024, lr=2e-2, l2=0.1)
    module, datamodule = rating_mf.build(train, config, seed=0)
    curve = train_loop(module, datamodule, epochs=8)
    assert curve[-1] < 0.7 * curve[0], curve
    rows = rating_mf.rating_rows(
        data.train_users[held], data.train_items[held], data.train_ratings[held]
    )
    mean = float(train.train_ratings.mean())
    baseline = float(np.sqrt(np.mean((data.train_ratings[held] - mean) ** 2)))
    assert rating_mf.rmse(module.model, rows) < 0.95 * baseline
    # score() is predict() for every item.
    users = torch.tensor([1, 5])
    scores = module.model.score(users, PADDED[:2])
    items = torch.arange(data.n_items + 1)
    expected = torch.stack([module.model.predict(u.expand_as(items), items) for u in users])
    torch.testing.assert_close(scores, expected)


def test_rating_mf_refuses_data_without_ratings(data):
    with pytest.raises(ValueError, match="explicit ratings"):
        rating_mf.build(dataclasses.replace(data, train_ratings=None), rating_mf.Config(), 0)


# --- content-based where genres drive the choices ---------------------------------------------


def genre_loyal_data(new_item_genre: int | None = None):
    """Four genres, each user loyal to one; the most popular items are of every genre, so only
    the genre of the history points at the target. With `new_item_genre`, one more item of that
    genre that nobody has interacted with (the cold-start item). Returns (data, user genres)."""
    rng = np.random.default_rng(0)
    n_genres, per_genre, n_users, length = 4, 10, 80, 6
    n_items = n_genres * per_genre + (new_item_genre is not None)
    genre_of = np.concatenate([[0], np.repeat(np.arange(n_genres), per_genre)])
    if new_item_genre is not None:
        genre_of = np.append(genre_of, new_item_genre)
    genres = np.zeros((n_items + 1, n_genres), dtype=np.uint8)
    genres[np.arange(1, n_items + 1), genre_of[1:]] = 1
    weights = rng.random(n_items + 1) ** 3  # a skewed popularity within each genre
    sequences = []
    for user in range(1, n_users + 1):
        pool = np.flatnonzero(genre_of[: n_genres * per_genre + 1] == user % n_genres)
        pool = pool[pool > 0]
        p = weights[pool] / weights[pool].sum()
        sequences.append(rng.choice(pool, size=length + 2, replace=False, p=p))
    sequences = np.array(sequences)
    users = np.repeat(np.arange(1, n_users + 1), length)
    items = sequences[:, :length].ravel()
    pad = np.zeros((1, 4), dtype=np.int64)
    data = tiny_data(
        np.zeros((n_users + 1, n_items + 1)),
        train_users=users,
        train_items=items,
        val_input=np.vstack([pad, sequences[:, length - 4 : length]]),
        val_target=np.concatenate([[0], sequences[:, length]]),
        test_input=np.vstack([pad, sequences[:, length - 3 : length + 1]]),
        test_target=np.concatenate([[0], sequences[:, length + 1]]),
        item_genres=genres,
        item_year_bucket=np.zeros(n_items + 1, dtype=np.int64),
        item_popularity=np.bincount(items, minlength=n_items + 1).astype(np.float32),
    )
    return data, np.arange(1, n_users + 1) % n_genres


def test_content_based_follows_genres_where_popularity_cannot():
    data, _ = genre_loyal_data()
    content = val_ndcg10(data, content_based.fit(data, content_based.Config(), 0))
    pop = val_ndcg10(data, popularity.fit(data, popularity.Config(), 0))
    assert content > 1.5 * pop, (content, pop)
    scores = content_based.fit(data, content_based.Config(), 0).score(
        torch.arange(4), torch.zeros(4, 3, dtype=torch.int64)
    )
    assert torch.isfinite(scores).all()  # an empty history scores by the tie-break alone


def _rank_of(scores: torch.Tensor, item: int) -> torch.Tensor:
    """1-based rank of `item` among the real items in each row (ties count against it)."""
    return (scores[:, 1:] >= scores[:, item : item + 1]).sum(dim=1)


@pytest.mark.parametrize("family", ["two_tower", "content_based"])
def test_a_new_item_reaches_the_users_of_its_genre(family: str):
    """The hybrid: an item nobody has interacted with is recommended from its genre alone, to
    the users whose histories share it, far above where it lands for everyone else."""
    data, user_genre = genre_loyal_data(new_item_genre=2)
    new_item = data.n_items
    assert data.item_popularity[new_item] == 0
    if family == "two_tower":
        config = two_tower.Config(dim=16, hidden=32, history_len=4, batch_size=64, dropout=0.0)
        module, datamodule = two_tower.build(data, config, seed=0)
        quiet_trainer(30).fit(module, datamodule=datamodule)
        net = module.model.eval()
    else:
        net = content_based.fit(data, content_based.Config(), 0)
    users = torch.arange(1, data.n_users + 1)
    with torch.no_grad():
        scores = net.score(users, torch.from_numpy(data.test_input[1:]).long())
    ranks = _rank_of(scores.float(), new_item).float()
    fans, others = ranks[user_genre == 2], ranks[user_genre != 2]
    assert fans.median() <= 15 < others.median(), (fans.median(), others.median())
    assert fans.mean() < others.mean() / 2


# --- closed forms against brute force ---------------------------------------------------------


def test_userknn_matches_brute_force_neighbourhoods():
    dense = random_binary(2, n_items=60)  # wide rows: few ties among the similarities
    k = 5
    model = userknn.fit(tiny_data(dense), userknn.Config(k=k), seed=0)
    norms = np.linalg.norm(dense, axis=1)
    denominator = np.outer(norms, norms)
    cos = np.divide(
        dense @ dense.T, denominator, out=np.zeros_like(denominator), where=denominator > 0
    )
    np.fill_diagonal(cos, 0.0)
    expected = np.zeros_like(dense)
    for u in range(len(dense)):
        top = np.argsort(-cos[u], kind="stable")[:k]
        # Ties at the k-th similarity may be broken either way: only compare distinct cut-offs.
        expected[u] = cos[u, top] @ dense[top]
    scores = model.score(torch.arange(len(dense)), torch.zeros(len(dense), 4, dtype=torch.long))
    kth = -np.sort(-cos, axis=1)[:, k - 1 : k + 1]
    clean = kth[:, 0] > kth[:, 1] + 1e-9
    assert clean.sum() > 20
    np.testing.assert_allclose(scores.numpy()[clean], expected[clean], rtol=1e-5, atol=1e-6)
    assert (scores[0] == 0).all()  # the padding user has no neighbours


def test_ease_weights_solve_each_columns_ridge_regression():
    dense = random_binary(3)
    l2 = 4.0
    model = ease.fit(tiny_data(dense), ease.Config(l2=l2, decay=0.5), seed=0)
    weights = model.weights.double().numpy()
    n = dense.shape[1]
    for j in range(n):
        # min ||X_j - X_{-j} b||^2 + l2 ||b||^2: the column of B without its (zero) diagonal.
        rest = np.delete(np.arange(n), j)
        x = dense[:, rest]
        b = np.linalg.solve(x.T @ x + l2 * np.eye(n - 1), x.T @ dense[:, j])
        np.testing.assert_allclose(weights[rest, j], b, rtol=1e-4, atol=1e-6)
        assert weights[j, j] == 0.0
    scores = model.score(torch.arange(4), PADDED[:, :4] % n)
    history = (PADDED % n).numpy()
    expected = np.zeros((4, n))
    for row, items in enumerate(history):
        for age, item in enumerate(items[::-1]):
            if item:
                expected[row] += 0.5**age * weights[item]
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-4, atol=1e-5)


def test_als_solves_each_users_weighted_least_squares_exactly(monkeypatch):
    monkeypatch.setattr(als, "BLOCK_VALUES", 24)  # several blocks of different lengths
    dense = random_binary(4)
    rng = np.random.default_rng(0)
    factors, reg, alpha = 3, 0.1, 2.0
    items = rng.normal(size=(dense.shape[1], factors))
    matrix = als.interaction_matrix(*np.nonzero(dense), dense.shape)
    solved = als.solve_side(matrix, torch.from_numpy(items).float(), reg, alpha).double().numpy()
    for u, row in enumerate(dense):
        confidence = np.diag(1.0 + alpha * row)
        a = items.T @ confidence @ items + reg * np.eye(factors)
        expected = np.linalg.solve(a, items.T @ confidence @ row)
        np.testing.assert_allclose(solved[u], expected, rtol=1e-3, atol=1e-4)


# --- neural models and padding ----------------------------------------------------------------


@pytest.mark.parametrize("train", [False, True])
def test_gru4rec_padding_is_exactly_neutral(train):
    torch.manual_seed(0)
    model = gru4rec.GRU4Rec(n_items=12, hidden=8, dropout=0.3).train(train)
    states = model(PADDED)
    assert torch.isfinite(states).all() and (states[PADDED == 0] == 0).all()
    assert torch.isfinite(model.score(torch.arange(4), PADDED)).all()
    if not train:  # the same items after less padding give the same scores
        torch.testing.assert_close(
            model.score(torch.arange(1), PADDED[2:3, 1:]), model.score(torch.arange(1), PADDED[2:3])
        )


def test_neumf_scores_every_item_as_its_pair_scores():
    torch.manual_seed(0)
    model = neumf.NeuMF(n_users=5, n_items=12, dim=4, hidden=6, dropout=0.2).eval()
    users = torch.tensor([0, 1, 4])
    scores = model.score(users, PADDED[:3])
    assert scores.shape == (3, 13) and torch.isfinite(scores).all()
    items = torch.arange(13)
    expected = torch.stack([model.pair_scores(u.expand_as(items), items) for u in users])
    torch.testing.assert_close(scores, expected)


# --- through the train stage ------------------------------------------------------------------


@pytest.mark.parametrize("name", CLASSIC_MODELS)
def test_every_classic_model_trains_saves_and_reloads(name, features, data, tmp_path):
    small = {
        "train.accelerator": "cpu",
        "train.max_epochs": 1,
        "train.als": {"factors": 8, "iterations": 2},
        "train.neumf": {"dim": 8, "hidden": 8},
        "train.gru4rec": {"hidden": 16},
    }
    params = load_params(tmp_path / "absent.yaml", small)
    out = tmp_path / name
    metrics = train_stage.train(name, features, out, params)
    assert 0 < metrics["ndcg@10"] <= 1 and metrics["users"] == data.n_users
    reloaded = model_store.load_model(out, data)
    again = train_stage.evaluate_model(reloaded, data, "val", accelerator="cpu")
    assert again["ndcg@10"] == pytest.approx(metrics["ndcg@10"])


def test_rating_mf_on_a_source_without_ratings_is_a_one_line_error(tmp_path):
    synthesize(tmp_path / "interim", 60, 40, 900, seed=1)
    interactions = tmp_path / "interim" / "interactions.parquet"
    frame = pl.read_parquet(interactions)
    frame.with_columns(pl.lit(None, dtype=frame.schema["rating"]).alias("rating")).write_parquet(
        interactions
    )
    build_features(tmp_path / "interim", tmp_path / "features", FeaturesParams(), 0, None)
    assert feature_store.load_features(tmp_path / "features").train_ratings is None
    params = load_params(tmp_path / "absent.yaml", {"train.accelerator": "cpu"})
    with pytest.raises(RecsysError, match="rating_mf needs ratings on every training row"):
        train_stage.train("rating_mf", tmp_path / "features", tmp_path / "out", params)
