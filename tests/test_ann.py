"""ANN retrieval in the service (issue 19) on small data: an HNSW index built at export for the
dot-product models, hash-checked with the artifact; where it is exhaustive it returns exactly
what scoring the whole catalogue returns, and it never returns seen or filtered items. item-kNN
above the size limit is scored from its neighbour lists, and every family answers similar items
or says why not."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest

from tasks import export as export_stage
from tasks import train as train_stage
from tasks.ann import INDEX_FILE
from tasks.artifact_store import ServedModel, VerificationError
from tasks.params import AnnParams, FeaturesParams, load_params
from tests.conftest import synthetic_features

SMALL = {
    "train.accelerator": "cpu",
    "train.max_epochs": 1,
    "train.sasrec": {"hidden": 16, "batch_size": 256},
    "train.two_tower": {"dim": 16, "hidden": 32, "batch_size": 256, "history_len": 8},
    "train.bpr_mf": {"dim": 8},
    "train.als": {"factors": 8, "iterations": 3},
}
# a history graph with a user-vector graph; a user tower; matrix factorisation (by user id)
DOT = ("sasrec", "two_tower", "bpr_mf", "als")
MODELS = (*DOT, "itemknn", "ease", "userknn", "popularity")
EXHAUSTIVE = AnnParams(min_items=1, expansion_search=512, pool=200, recall_queries=64)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("ann")
    params = FeaturesParams(min_user_interactions=1, min_item_interactions=1, max_seq_len=12)
    synthetic_features(root, 150, 120, 4_000, seed=3, params=params)
    train_params = load_params(root / "absent.yaml", SMALL)
    for name in MODELS:
        train_stage.train(name, root / "features", root / "models" / name, train_params)

    def export(name: str, ann: AnnParams, out: str) -> Path:
        manifest = export_stage.export(
            name, root / "models", root / "features", root / out, 32, 5, ann_params=ann
        )
        return root / out / name / manifest["version"]

    served = {name: export(name, EXHAUSTIVE, "artifacts") for name in MODELS}
    exact = {name: export(name, AnnParams(), "exact") for name in DOT}  # below min_items
    tight = AnnParams(min_items=1, connectivity=4, expansion_search=10, pool=10)
    return {"served": served, "exact": exact, "tight": export("sasrec", tight, "tight")}


def requests(model: ServedModel, count: int = 60):
    """(history, user_idx, seen) of known users, and a genre to filter on."""
    users = sorted(model.user_index.values())[:count]
    for user in users:
        history, seen = model.user_history(user)
        yield history, user, seen


def test_the_manifest_records_the_index_and_its_recall(setup: dict):
    for name in DOT:
        model = ServedModel(setup["served"][name])
        entry = model.manifest["ann"]
        assert entry["kind"] == "hnsw" and entry["file"] == INDEX_FILE
        assert INDEX_FILE in model.manifest["files"]  # hash-checked like every file
        assert entry["recall@10"] == 1.0 and entry["queries"] >= 32
        assert model.summary()["retrieval"] == "hnsw"
        assert "ann" not in ServedModel(setup["exact"][name]).manifest  # below min_items


def test_an_exhaustive_index_returns_the_exact_top_k(setup: dict):
    for name in DOT:
        model, exact = ServedModel(setup["served"][name]), ServedModel(setup["exact"][name])
        for history, user, seen in requests(model):
            got = model.recommend(history, user, 10, seen, [], [])
            want = exact.top_k(exact.scores(history, user), 10, seen, [], [])
            assert [r["item_id"] for r in got] == [r["item_id"] for r in want], (name, user)
            np.testing.assert_allclose(
                [r["score"] for r in got], [r["score"] for r in want], atol=1e-4
            )


@pytest.mark.parametrize("which", ["served", "tight"])
def test_ann_never_returns_seen_or_filtered_items(setup: dict, which: str):
    folder = setup[which] if which == "tight" else setup["served"]["sasrec"]
    model = ServedModel(folder)
    common = int(np.argmax(model.genre_matrix.sum(axis=0)))
    for history, user, seen in requests(model):
        for include, exclude in (([], []), ([common], []), ([], [common])):
            got = model.recommend(history, user, 20, seen, include, exclude)
            idx = [model.item_index[r["item_id"]] for r in got]
            assert len(idx) == min(20, len(set(idx)))  # no repeats
            assert not set(idx) & set(seen.tolist()) and 0 not in idx
            if include:
                assert model.genre_matrix[idx][:, include].all()
            if exclude:
                assert not model.genre_matrix[idx][:, exclude].any()
            scores = [r["score"] for r in got]
            assert scores == sorted(scores, reverse=True)
            assert len(got) == 20 or include  # an include filter may leave fewer items


def test_itemknn_above_the_limit_scores_from_its_neighbour_lists(setup: dict):
    model = ServedModel(setup["served"]["itemknn"])
    assert model.manifest["ann"]["kind"] == "neighbours" and model.index is None
    for history, user, seen in requests(model):
        got = model.recommend(history, user, 10, seen, [], [])
        want = model.top_k(model.scores(history, user), 10, seen, [], [])
        # float32 sums (the graph) against float64 ones: equal scores may swap places, so
        # compare the scores, and the items that beat the 10th score clearly
        got_scores, want_scores = [r["score"] for r in got], [r["score"] for r in want]
        np.testing.assert_allclose(got_scores, want_scores, atol=1e-5)
        cut = want_scores[-1] + 1e-5
        clear = {r["item_id"] for r in want if r["score"] > cut}
        assert clear == {r["item_id"] for r in got if r["score"] > cut}


def test_a_tampered_index_is_refused(setup: dict, tmp_path: Path):
    copy = tmp_path / "sasrec"
    shutil.copytree(setup["served"]["sasrec"], copy)
    with open(copy / INDEX_FILE, "r+b") as fh:
        fh.seek(200)
        byte = fh.read(1)
        fh.seek(200)
        fh.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(VerificationError, match=INDEX_FILE):
        ServedModel(copy)


def test_similar_items_for_every_family(setup: dict):
    expected = {
        "itemknn": "neighbours",
        "sasrec": "cosine",
        "two_tower": "cosine",
        "bpr_mf": "cosine",
        "als": "cosine",
        "ease": "one_item_history",
        "userknn": None,  # scores users by id: no item similarity
        "popularity": None,
    }
    for name, method in expected.items():
        model = ServedModel(setup["served"][name])
        assert model.similar_by == method, name
        if method is None:
            with pytest.raises(LookupError):
                model.similar(1, 5)
            continue
        got = model.similar(3, 5)
        assert 0 < len(got) <= 5 and model.item_ids[3] not in {r["item_id"] for r in got}
    knn = ServedModel(setup["served"]["itemknn"])
    got = knn.similar(3, 5)
    order = [i for i in np.argsort(-knn.neighbour_sims[3], kind="stable") if knn.neighbours[3, i]]
    assert {r["item_id"] for r in got} <= {knn.item_ids[knn.neighbours[3, i]] for i in order}
    assert [r["score"] for r in got] == sorted((r["score"] for r in got), reverse=True)


def test_ann_params_are_checked():
    with pytest.raises(Exception, match="export.ann.pool"):
        load_params(Path("absent.yaml"), {"export.ann.pool": 5})
    assert dataclasses.asdict(load_params(Path("absent.yaml")).export.ann)["min_items"] == 100_000
