"""Every registered model: its SPEC agrees with its module, and restore() gives a module that
the trained weights load into and that then scores exactly like the trained one, without
fitting. Export, evaluation and serving rebuild models this way, so a shape that restore() gets
wrong (or a refit hidden inside it) breaks them all."""

from __future__ import annotations

import dataclasses
import importlib

import numpy as np
import pytest
import torch

from recsys_models import registry
from recsys_models.data import FeatureData
from recsys_models.spec import (
    CLOSED_FORM,
    EMBEDDINGS,
    EXPORT_FORMS,
    GRADIENT,
    HISTORY_GRAPH,
    NEIGHBOURS,
    RATINGS,
    SCORE_VECTOR,
)

MODELS = registry.model_names()
N_USERS, N_ITEMS, MAX_LEN = 9, 14, 4


def tiny_data() -> FeatureData:
    """Random sequences with every feature a model may read: genres, year buckets, user
    features and ratings, so that every model builds."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 9, N_USERS)
    users = np.repeat(np.arange(1, N_USERS + 1), lengths)
    items = rng.integers(1, N_ITEMS + 1, len(users))
    histories = rng.integers(0, N_ITEMS + 1, (N_USERS + 1, MAX_LEN))
    genres = (rng.random((N_ITEMS + 1, 3)) < 0.4).astype(np.uint8)
    genres[0] = 0
    years = rng.integers(1, 4, N_ITEMS + 1)
    years[0] = 0
    return FeatureData(
        n_users=N_USERS,
        n_items=N_ITEMS,
        max_seq_len=MAX_LEN,
        train_users=users,
        train_items=items,
        val_input=histories,
        val_target=np.concatenate([[0], rng.integers(1, N_ITEMS + 1, N_USERS)]),
        test_input=np.roll(histories, 1, axis=1),
        test_target=np.concatenate([[0], rng.integers(1, N_ITEMS + 1, N_USERS)]),
        item_genres=genres,
        item_year_bucket=years,
        item_popularity=np.bincount(items, minlength=N_ITEMS + 1).astype(np.float32),
        user_features=rng.integers(1, 4, (N_USERS + 1, 2)),
        train_ratings=rng.integers(1, 6, len(users)).astype(np.float32),
        train_times=rng.integers(0, 30 * 86_400, len(users)),
    )


@pytest.fixture(scope="module")
def data() -> FeatureData:
    return tiny_data()


def trained(name: str, data: FeatureData) -> torch.nn.Module:
    """The fitted model (closed form) or the freshly built one (gradient: its weights are
    already at their trained shapes, so no training is needed here)."""
    spec = registry.model_spec(name)
    config = spec.config()
    if spec.kind == CLOSED_FORM:
        return spec.fit(data, config, 0).eval()
    return spec.build(data, config, 0)[0].model.eval()


def scores(model: torch.nn.Module, data: FeatureData, split: str = "test") -> torch.Tensor:
    users = torch.arange(data.n_users + 1)
    history = torch.from_numpy(data.targets(split)[0].astype(np.int64))
    with torch.no_grad():
        return model.score(users, history)


def shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def test_every_model_module_is_registered():
    assert set(MODELS) == {
        "popularity",
        "recent_popularity",
        "itemknn",
        "content_based",
        "userknn",
        "ease",
        "als",
        "bpr_mf",
        "rating_mf",
        "neumf",
        "sasrec",
        "gru4rec",
        "two_tower",
    }


@pytest.mark.parametrize("name", MODELS)
def test_spec_matches_its_module(name: str):
    spec = registry.model_spec(name)
    module = importlib.import_module(f"recsys_models.{name}")
    assert spec.name == name
    assert spec.config is module.Config and dataclasses.is_dataclass(spec.config)
    spec.config()  # the defaults are a valid config
    assert spec.restore is module.restore
    assert spec.export in EXPORT_FORMS
    if spec.kind == CLOSED_FORM:
        assert spec.fit is module.fit and spec.build is None
    else:
        assert spec.kind == GRADIENT
        assert spec.build is module.build and spec.fit is None


@pytest.mark.parametrize("name", MODELS)
def test_spec_describes_what_the_model_does(name: str, data: FeatureData):
    spec = registry.model_spec(name)
    model = trained(name, data)
    state = model.state_dict()
    if spec.item_vectors is not None:
        assert state[spec.item_vectors].shape[0] == data.n_items + 1
    if not spec.uses_history:  # the user id alone decides the scores
        torch.testing.assert_close(scores(model, data, "val"), scores(model, data, "test"))
    if spec.export == SCORE_VECTOR:  # everyone gets the same scores
        table = scores(model, data)
        torch.testing.assert_close(table, table[:1].expand_as(table))
    if spec.export == NEIGHBOURS:
        assert {"neighbours", "sims"} <= set(state)
    if spec.export == HISTORY_GRAPH:
        history = torch.from_numpy(data.test_input.astype(np.int64))
        with torch.no_grad():
            hidden = model(history)
        assert hidden.shape[:2] == history.shape
        expected = hidden[:, -1] @ model.item_embeddings().T
        torch.testing.assert_close(scores(model, data), expected)
    if spec.export == EMBEDDINGS:
        history = torch.from_numpy(data.test_input.astype(np.int64))
        with torch.no_grad():
            users = model.user_embeddings(torch.arange(data.n_users + 1), history)
            expected = users @ model.item_embeddings().T
        torch.testing.assert_close(scores(model, data), expected)
    if RATINGS in spec.needs:
        with pytest.raises(ValueError, match="ratings"):
            trained(name, dataclasses.replace(data, train_ratings=None))


@pytest.mark.parametrize("name", MODELS)
def test_restore_has_the_trained_shapes_and_scores_identically(name: str, data: FeatureData):
    spec = registry.model_spec(name)
    model = trained(name, data)
    restored = spec.restore(data, spec.config())
    assert shapes(restored) == shapes(model)
    restored.load_state_dict(model.state_dict())
    assert torch.equal(scores(restored.eval(), data), scores(model, data))


@pytest.mark.parametrize("name", MODELS)
def test_restore_neither_fits_nor_builds_training_data(
    name: str, data: FeatureData, monkeypatch: pytest.MonkeyPatch
):
    spec = registry.model_spec(name)
    module = importlib.import_module(f"recsys_models.{name}")
    expected = shapes(trained(name, data))

    def refuse(*args, **kwargs):
        raise AssertionError(f"restore() of {name} fitted or built training data")

    # The closed forms' fit and the interaction matrix every one of them starts from; the
    # gradient models' build (which makes the DataModule).
    for attribute in ("fit", "build", "interaction_matrix"):
        if hasattr(module, attribute):
            monkeypatch.setattr(module, attribute, refuse)
    assert shapes(spec.restore(data, spec.config())) == expected
