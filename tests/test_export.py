"""The export stage and the registry on tiny synthetic data: ONNX parity with torch eager on
padded, length-1 and padding-but-one histories; manifests; corrupted files refused; promote."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import polars as pl
import pytest
import torch

from cli.main import main
from tasks import export as export_stage
from tasks import feature_store, model_store, registry
from tasks import train as train_stage
from tasks.errors import RecsysError
from tasks.io import file_sha256
from tasks.params import FeaturesParams, load_params
from tests.conftest import synthetic_features

SMALL = {
    "train.accelerator": "cpu",
    "train.max_epochs": 1,
    "train.sasrec": {"hidden": 16, "batch_size": 256, "item_features": True},  # attributes too
    "train.gru4rec": {"hidden": 16, "batch_size": 256},
    "train.two_tower": {"dim": 16, "hidden": 32, "batch_size": 256, "history_len": 8},
    "train.als": {"factors": 8, "iterations": 3},
    "train.bpr_mf": {"dim": 8},
    "train.neumf": {"dim": 8, "hidden": 8},
    "train.rating_mf": {"dim": 8},
}
MODELS = ("popularity", "sasrec", "two_tower", "gru4rec", "ease", "itemknn", "als")
MODELS += ("bpr_mf", "neumf", "rating_mf", "content_based", "userknn")  # every family


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Features with user features, one tiny model of each family, each exported once."""
    root = tmp_path_factory.mktemp("export")
    rng = np.random.default_rng(0)
    users = pl.DataFrame(
        {
            "user_id": [str(u) for u in range(1, 121)],
            "age": rng.integers(10, 70, 120),
            "gender": rng.choice(["M", "F"], 120),
            "occupation": rng.choice(["a", "b", "c"], 120),
        }
    )
    params = FeaturesParams(min_user_interactions=1, min_item_interactions=1, max_seq_len=12)
    synthetic_features(root, 120, 80, 3_000, seed=1, params=params, users=users)
    features = root / "features"
    train_params = load_params(root / "absent.yaml", SMALL)
    for name in MODELS:
        train_stage.train(name, features, root / "models" / name, train_params)
    artifacts = root / "artifacts"
    manifests = {
        name: export_stage.export(
            name, root / "models", features, artifacts, latency_calls=20, data_dvc=None
        )
        for name in MODELS
    }
    return {"root": root, "features": features, "artifacts": artifacts, "manifests": manifests}


def folder(setup: dict, name: str) -> Path:
    return setup["artifacts"] / name / setup["manifests"][name]["version"]


def eager_model(setup: dict, name: str):
    data = feature_store.load_features(setup["features"])
    return data, model_store.load_model(setup["root"] / "models" / name, data)


def histories(data) -> np.ndarray:
    """Held-out rows plus the hard shapes: all padding but one item, a single real item."""
    rows = data.test_input[1:21].astype(np.int64)
    last_only = np.zeros_like(rows[:4])
    last_only[:, -1] = rows[:4, -1]
    return np.concatenate([rows, last_only])


@pytest.mark.parametrize("name", MODELS)
def test_every_family_exports_and_passes_parity(setup: dict, name: str):
    manifest = setup["manifests"][name]
    parity = manifest["parity"]
    assert parity["passed"] and parity["max_abs_diff"] <= 1e-4
    assert parity["top10_agreement"] >= 0.999
    assert {"padded", "length_1", "padded_but_one", "crop_7", "batch_1"} <= set(parity["cases"])
    assert parity["cases"]["length_1"]["shape"][1] == 1
    assert manifest["latency"]["p50_ms"] > 0 and manifest["latency"]["batch"] == 1
    assert registry.verify_version(folder(setup, name)) == manifest


def test_manifest_records_provenance_and_every_file(setup: dict):
    manifest = setup["manifests"]["sasrec"]
    out = folder(setup, "sasrec")
    assert manifest["name"] == "sasrec" and manifest["opset"] == export_stage.OPSET
    assert manifest["scorer"] == "onnx_scores" and manifest["uses_history"]
    assert manifest["graphs"]["model.onnx"]["inputs"] == [
        {"name": "history", "dtype": "int64", "shape": ["batch", "seq"]}
    ]
    assert manifest["graphs"]["model.onnx"]["outputs"][0]["shape"] == [
        "batch",
        manifest["n_items"] + 1,
    ]
    features_sha = file_sha256(setup["features"] / "manifest.json")
    assert manifest["data"]["features_manifest_sha256"] == features_sha
    assert manifest["metrics"]["ndcg@10"] >= 0 and manifest["params"]["model"] == "sasrec"
    assert "git_commit" in manifest
    on_disk = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert on_disk - {"manifest.json"} == set(manifest["files"])
    expected = {"model.onnx", "user_embedding.onnx", "item_embeddings.npy", "item_map.parquet"}
    assert expected | {"user_map.parquet", "items.parquet", "histories.npy"} <= on_disk
    version = manifest["version"]
    assert version[:8].isdigit() and version.endswith(manifest["params"]["weights_sha256"][:8])


@pytest.mark.parametrize("name", ["sasrec", "gru4rec"])
def test_sequence_graph_matches_eager_on_padding_and_any_length(setup: dict, name: str):
    data, net = eager_model(setup, name)
    out = folder(setup, name)
    model = ort.InferenceSession(str(out / "model.onnx"))
    user_vec = ort.InferenceSession(str(out / "user_embedding.onnx"))
    items = np.load(out / "item_embeddings.npy")
    rows = histories(data)
    for history in (rows, rows[:, -1:], rows[:, -5:], rows[:1], np.zeros_like(rows[:2])):
        with torch.no_grad():
            want = net.score(torch.zeros(len(history)), torch.from_numpy(history)).numpy()
        got = model.run(None, {"history": history})[0]
        assert got.shape == (len(history), data.n_items + 1) and np.isfinite(got).all()
        np.testing.assert_allclose(got, want, atol=1e-4)
        dot = user_vec.run(None, {"history": history})[0] @ items.T
        np.testing.assert_allclose(dot, want, atol=1e-4)


def test_two_tower_user_tower_and_item_embeddings_reproduce_scores(setup: dict):
    data, net = eager_model(setup, "two_tower")
    out = folder(setup, "two_tower")
    manifest = setup["manifests"]["two_tower"]
    assert manifest["scorer"] == "dot" and "model.onnx" not in manifest["files"]
    tower = ort.InferenceSession(str(out / "user_embedding.onnx"))
    assert [i.name for i in tower.get_inputs()] == ["history", "user"]
    items = np.load(out / "item_embeddings.npy")
    rows = histories(data)
    users = np.arange(1, len(rows) + 1, dtype=np.int64)
    users[-1] = 0  # an unknown user: no features
    for history in (rows, rows[:, -1:], rows[:, -3:]):
        with torch.no_grad():
            want = net.score(torch.from_numpy(users), torch.from_numpy(history)).numpy()
        got = tower.run(None, {"history": history, "user": users})[0] @ items.T
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_popularity_is_a_static_score_vector(setup: dict):
    out = folder(setup, "popularity")
    assert setup["manifests"]["popularity"]["scorer"] == "static"
    scores = np.load(out / "scores.npy")
    counts = np.load(setup["features"] / "items/popularity.npy")
    assert scores[0] == 0 and np.array_equal(scores[1:], counts[1:].astype(np.float32))


def test_known_users_histories_end_with_their_test_item(setup: dict):
    data = feature_store.load_features(setup["features"])
    out = folder(setup, "sasrec")
    full = np.load(out / "histories.npy")
    assert full.shape == data.test_input.shape
    have = data.test_target > 0
    assert np.array_equal(full[have, -1], data.test_target[have])
    assert np.array_equal(full[have, :-1], data.test_input[have, 1:])
    indptr, seen = np.load(out / "seen_indptr.npy"), np.load(out / "seen_items.npy")
    user = int(np.flatnonzero(have)[0])
    assert data.test_target[user] in seen[indptr[user] : indptr[user + 1]]


def test_failed_parity_writes_nothing(setup: dict, tmp_path: Path, monkeypatch):
    monkeypatch.setattr(export_stage, "PARITY_ATOL", -1.0)  # no difference can pass
    artifacts = tmp_path / "artifacts"
    with pytest.raises(RecsysError, match="differs from torch eager.*nothing written"):
        export_stage.export(
            "popularity", setup["root"] / "models", setup["features"], artifacts, latency_calls=5
        )
    assert not artifacts.exists() or not any(artifacts.rglob("*"))


def test_missing_model_is_a_one_line_error(setup: dict, tmp_path: Path, capsys):
    argv = ["export", "--model", "nope", "--models-dir", str(setup["root"] / "models")]
    argv += ["--features", str(setup["features"]), "--out", str(tmp_path / "a")]
    assert main(argv) == 2
    assert "config.json: missing" in capsys.readouterr().err


def copy_version(setup: dict, name: str, artifacts: Path) -> Path:
    src = folder(setup, name)
    dst = artifacts / name / src.name
    shutil.copytree(src, dst)
    return dst


def test_corrupted_onnx_or_manifest_is_refused_with_a_clear_error(setup: dict, tmp_path: Path):
    artifacts = tmp_path / "artifacts"
    good = copy_version(setup, "sasrec", artifacts)
    registry.promote(artifacts, "sasrec", good.name, "first")
    before = (artifacts / "champion.json").read_bytes()

    onnx_bad = artifacts / "sasrec" / "v-onnx"
    shutil.copytree(good, onnx_bad)
    with open(onnx_bad / "model.onnx", "r+b") as fh:
        fh.seek(100)
        fh.write(b"\x00garbage\x00")
    with pytest.raises(RecsysError, match=r"model.onnx: sha256 differs"):
        registry.promote(artifacts, "sasrec", "v-onnx", "should fail")

    json_bad = artifacts / "sasrec" / "v-json"
    shutil.copytree(good, json_bad)
    (json_bad / "manifest.json").write_text('{"name": "sasrec", ')
    with pytest.raises(RecsysError, match="manifest.json: not valid JSON"):
        registry.promote(artifacts, "sasrec", "v-json", "should fail")

    missing = artifacts / "sasrec" / "v-missing"
    shutil.copytree(good, missing)
    (missing / "item_embeddings.npy").unlink()
    with pytest.raises(RecsysError, match="listed in manifest.json but missing"):
        registry.verify_version(missing)

    assert (artifacts / "champion.json").read_bytes() == before  # the champion never moved


def test_promote_validates_then_replaces_the_pointer_atomically(setup: dict, tmp_path: Path):
    artifacts = tmp_path / "artifacts"
    assert registry.read_champion(artifacts) is None
    sasrec = copy_version(setup, "sasrec", artifacts)
    popularity = copy_version(setup, "popularity", artifacts)
    with pytest.raises(RecsysError, match=f"does not exist.*{sasrec.name}"):
        registry.promote(artifacts, "sasrec", "20990101T000000Z-00000000", "no such version")
    with pytest.raises(RecsysError, match="bad name"):
        registry.promote(artifacts, "..", "x", "escape")
    assert not (artifacts / "champion.json").exists()

    first = registry.promote(artifacts, "sasrec", sasrec.name, "better NDCG@10")
    assert registry.read_champion(artifacts) == first
    assert first["reason"] == "better NDCG@10" and first["promoted_at"].endswith("+00:00")
    assert first["manifest_sha256"] == file_sha256(sasrec / "manifest.json")
    second = registry.promote(artifacts, "popularity", popularity.name, "rollback")
    assert registry.read_champion(artifacts)["model"] == "popularity" == second["model"]
    assert sorted(os.listdir(artifacts)) == ["champion.json", "popularity", "sasrec"]  # no temp
    listed = registry.list_versions(artifacts)
    assert [(v["model"], v["version"]) for v in listed] == [
        ("popularity", popularity.name),
        ("sasrec", sasrec.name),
    ]

    (artifacts / "champion.json").write_text("{not json")
    with pytest.raises(RecsysError, match="unreadable champion pointer"):
        registry.read_champion(artifacts)


def test_cli_export_and_promote(setup: dict, tmp_path: Path, capsys):
    artifacts = tmp_path / "artifacts"
    argv = ["export", "--model", "popularity", "--models-dir", str(setup["root"] / "models")]
    argv += ["--features", str(setup["features"]), "--out", str(artifacts)]
    argv += ["--params", str(tmp_path / "absent.yaml")]
    assert main(argv) == 0
    version = registry.list_versions(artifacts, "popularity")[0]["version"]
    assert f"recsys promote popularity {version}" in capsys.readouterr().out
    argv = ["promote", "popularity", version, "--artifacts", str(artifacts), "--reason", "cli"]
    assert main([*argv, "--features", str(setup["features"])]) == 0
    assert json.loads((artifacts / "champion.json").read_text())["reason"] == "cli"
    assert main(["promote", "popularity", "nope", "--artifacts", str(artifacts)]) == 2

    # Lineage: a version exported from other features is refused, naming both hashes,
    # unless the promotion is a deliberate rollback to older data.
    other = tmp_path / "other-features"
    shutil.copytree(setup["features"], other)
    manifest = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps(manifest | {"note": "another version"}))
    assert main([*argv, "--features", str(other)]) == 2
    err = capsys.readouterr().err
    exported_from = file_sha256(setup["features"] / "manifest.json")[:12]
    assert exported_from in err and file_sha256(other / "manifest.json")[:12] in err
    assert main([*argv, "--features", str(other), "--allow-other-features"]) == 0


def test_the_service_serves_every_family_as_champion(setup: dict, tmp_path: Path):
    """One real service; each family promoted in turn and hot-reloaded answers a known user."""
    from tests.test_serve import Maps, server, wait_for

    artifacts = tmp_path / "artifacts"
    shutil.copytree(setup["artifacts"], artifacts)
    first = MODELS[0]
    registry.promote(artifacts, first, setup["manifests"][first]["version"], "test")
    maps = Maps(folder(setup, first))
    user = next(u for u in maps.user_idx if len(maps.seen_ids(u)) > 0)
    with server(artifacts, tmp_path / "serve.log") as client:
        for name in MODELS:
            registry.promote(artifacts, name, setup["manifests"][name]["version"], "test")
            wait_for(lambda name=name: client.get("/readyz").json().get("model") == name)
            answer = client.get(f"/recommend/{user}", params={"k": 5})
            assert answer.status_code == 200, (name, answer.text)
            body = answer.json()
            assert body["model"] == name and not body["fallback"]
            items = [row["item_id"] for row in body["items"]]
            assert len(items) == 5 and not set(items) & maps.seen_ids(user), name


def test_top10_parity_counts_tied_items_in_either_order_as_the_same_ranking():
    # Items 3 and 4 tie exactly in eager and differ by 1e-7 in ONNX: either order agrees.
    # A swap of items whose scores really differ does not.
    want = np.array([[0.0, *np.linspace(1.0, 0.0, 12)]])
    want[0, 4] = want[0, 3]
    nudged = want.copy()
    nudged[0, 4] += 1e-7
    assert export_stage._compare(want, nudged) == (pytest.approx(1e-7), 1)
    swapped = want.copy()
    swapped[0, [1, 2]] = swapped[0, [2, 1]]
    assert export_stage._compare(want, swapped)[1] == 0
