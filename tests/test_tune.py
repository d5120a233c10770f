"""`recsys tune`: runs N trials, prunes, resumes on the same storage, never reads the test
split, and --apply writes the best values into params.yaml keeping its comments."""

from __future__ import annotations

import difflib
import json
import shutil
import time
from pathlib import Path

import optuna
import pytest
import yaml

from cli import main as cli
from recsys_models.registry import model_names, model_spec
from tasks import feature_store
from tasks import tune as tune_stage
from tasks.errors import RecsysError
from tasks.params import FeaturesParams, load_params
from tasks.tune import apply_best, storage_url, study_name, tune
from tests.conftest import synthetic_features

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def features(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tune")
    params = FeaturesParams(min_user_interactions=1, min_item_interactions=1, max_seq_len=12)
    synthetic_features(root, 150, 80, 4_000, seed=5, params=params)
    return root / "features"


def params_for(tmp_path: Path, **tune: object):
    overrides = {"train.accelerator": "cpu", "train.sasrec": {"batch_size": 256}}
    overrides |= {f"tune.{key}": value for key, value in tune.items()}
    return load_params(tmp_path / "absent.yaml", overrides)


def read_rows(out: Path) -> list[dict]:
    return json.loads((out / "trials.json").read_text())


def test_every_search_space_names_fields_of_its_config():
    # ModelSpec checks the names at import; here every declared space builds a valid Config
    # at its bounds, so no trial fails on a value its own model refuses.
    for name in model_names():
        spec = model_spec(name)
        for field, dist in spec.search_space.items():
            values = getattr(dist, "values", None) or (dist.low, dist.high)
            for value in values:
                value = int(value) if getattr(dist, "integer", False) else value
                spec.config(**{field: value})


def test_tune_runs_the_trials_and_writes_the_table(features: Path, tmp_path: Path):
    out = tmp_path / "out"
    best = tune("itemknn", features, out, params_for(tmp_path), 4, str(tmp_path / "s.db"))
    rows = read_rows(out)
    assert [r["trial"] for r in rows] == [0, 1, 2, 3]
    assert all(r["state"] == "complete" and r["seconds"] >= 0 for r in rows)
    assert rows[0]["params"] == {"k": 50, "shrink": 0.0, "decay": 0.5}  # the current values
    values = [r["val_ndcg@10"] for r in rows]
    assert best["best_val_ndcg@10"] == pytest.approx(max(values)) and max(values) > 0
    assert best["best_params"] == rows[values.index(max(values))]["params"]
    assert json.loads((out / "best.json").read_text()) == best
    table = (out / "trials.md").read_text()
    assert "| trial | params | val NDCG@10 | state | seconds |" in table
    assert table.count("| complete |") == 4


def test_a_second_call_on_the_same_storage_continues_the_study(features: Path, tmp_path: Path):
    storage, params = str(tmp_path / "study.db"), params_for(tmp_path)
    tune("ease", features, tmp_path / "a", params, 2, storage)
    first = read_rows(tmp_path / "a")
    tune("ease", features, tmp_path / "b", params, 5, storage)
    rows = read_rows(tmp_path / "b")
    assert [r["trial"] for r in rows] == [0, 1, 2, 3, 4]
    assert rows[:2] == first  # the first call's trials are kept, not rerun
    assert len({json.dumps(r["params"]) for r in rows}) == 5  # the rerun draws new values
    tune("ease", features, tmp_path / "c", params, 5, storage)  # already at the total
    assert read_rows(tmp_path / "c") == rows


def test_a_trial_whose_process_died_is_failed_on_resume(
    features: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(tune_stage, "GRACE_S", 1)
    url = storage_url(str(tmp_path / "study.db"))
    storage = tune_stage.open_storage(url)
    study = optuna.create_study(study_name=study_name("ease", "loo", features), storage=storage)
    dead = study.ask()  # a trial started, then its process was killed: its heartbeat stops
    storage.record_heartbeat(dead._trial_id)
    deadline = time.monotonic() + 60
    while not storage._get_stale_trial_ids(study._study_id):  # wait until it is overdue
        assert time.monotonic() < deadline, "the heartbeat never went stale"
        time.sleep(0.1)
    tune("ease", features, tmp_path / "out", params_for(tmp_path), 2, url)
    rows = read_rows(tmp_path / "out")
    assert [r["state"] for r in rows] == ["fail", "complete", "complete"]


def test_a_trailing_trial_is_pruned_by_the_callback(features: Path, tmp_path: Path):
    storage = str(tmp_path / "study.db")
    params = params_for(
        tmp_path,
        max_epochs=3,
        patience=3,
        prune_percentile=99.0,
        prune_startup_trials=1,
        prune_warmup_epochs=0,
    )
    study = optuna.create_study(
        study_name=study_name("sasrec", "loo", features),
        storage=storage_url(storage),
        direction="maximize",
    )
    good = {"hidden": 32, "blocks": 1, "dropout": 0.1, "lr": 0.01, "weight_decay": 0.0}
    study.enqueue_trial(good)
    study.enqueue_trial(good | {"lr": 3e-4, "dropout": 0.5})  # learns far slower
    tune("sasrec", features, tmp_path / "out", params, 2, storage)
    rows = read_rows(tmp_path / "out")
    assert [r["state"] for r in rows] == ["complete", "pruned"]
    assert rows[1]["val_ndcg@10"] < rows[0]["val_ndcg@10"]
    pruned = optuna.load_study(study_name=study.study_name, storage=storage_url(storage))
    assert len(pruned.trials[1].intermediate_values) < 3  # stopped before max_epochs


def test_tuning_never_reads_the_test_split(features: Path, tmp_path: Path):
    blind = tmp_path / "features"
    shutil.copytree(features, blind)
    for name in ("loo/test_input.npy", "loo/test_target.npy", "temporal/test.parquet"):
        (blind / name).unlink()  # any read of the test split would now fail
    with pytest.raises(RecsysError, match="test_input.npy: not found"):
        feature_store.load_features(blind)
    data = feature_store.load_features(blind, with_test=False)
    with pytest.raises(RecsysError, match="withheld"):
        data.targets("test")[0][0]
    params = params_for(tmp_path, max_epochs=1)
    for model in ("itemknn", "sasrec"):
        best = tune(model, blind, tmp_path / model, params, 1, str(tmp_path / "s.db"))
        assert best["best_val_ndcg@10"] > 0
    best = tune("itemknn", blind, tmp_path / "t", params, 1, str(tmp_path / "s.db"), "temporal")
    assert best["study"].startswith("itemknn-temporal-")


def test_apply_writes_the_best_values_into_params_yaml(features: Path, tmp_path: Path):
    params_file = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params_file)
    before = yaml.safe_load(params_file.read_text())
    argv = ["tune", "--model", "itemknn", "--trials", "2", "--features", str(features)]
    argv += ["--storage", str(tmp_path / "s.db"), "--out", str(tmp_path / "out"), "--apply"]
    assert cli.main([*argv, "--params", str(params_file)]) == 0
    best = json.loads((tmp_path / "out" / "best.json").read_text())["best_params"]
    after = yaml.safe_load(params_file.read_text())
    before["train"]["itemknn"] |= best
    assert after == before  # those values, nothing else
    assert load_params(params_file).train.section("itemknn") == before["train"]["itemknn"]
    line = next(ln for ln in params_file.read_text().splitlines() if ln.strip().startswith("k:"))
    assert line.split("#")[1].strip() == "neighbours per item"  # its comment kept


def test_apply_edits_lines_in_place_adds_missing_keys_and_keeps_comments(tmp_path: Path):
    params_file = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params_file)
    text = params_file.read_text()
    changed = apply_best(params_file, "gru4rec", {"lr": 1e-05, "layers": 2, "dropout": 0.25})
    assert changed == ["lr", "layers", "dropout"]
    new = params_file.read_text()
    assert yaml.safe_load(new)["train"]["gru4rec"] | {} == yaml.safe_load(text)["train"][
        "gru4rec"
    ] | {"lr": 1e-05, "layers": 2, "dropout": 0.25}
    old_lines, new_lines = text.splitlines(), new.splitlines()
    diff = [ln for ln in difflib.ndiff(old_lines, new_lines) if ln[:2] in ("- ", "+ ")]
    # lr and dropout replaced in place; layers was not in the section: added to its end
    assert sorted(ln[0] + " " + ln[2:].split(":")[0].strip() for ln in diff) == [
        "+ dropout",
        "+ layers",
        "+ lr",
        "- dropout",
        "- lr",
    ]
    assert [ln for ln in new_lines if "#" in ln] == [ln for ln in old_lines if "#" in ln]
    itemknn = apply_best(params_file, "itemknn", {"k": 75})  # a commented line keeps its comment
    assert itemknn == ["k"]
    assert "    k: 75                    # neighbours per item" in params_file.read_text()
    now = params_file.read_text()
    apply_best(params_file, "popularity", {})  # nothing to apply: the file is untouched
    assert params_file.read_text() == now


def test_apply_refuses_a_value_the_model_refuses_and_leaves_the_file(tmp_path: Path):
    params_file = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params_file)
    text = params_file.read_text()
    with pytest.raises(RecsysError, match="train.itemknn"):
        apply_best(params_file, "itemknn", {"k": 0})
    assert params_file.read_text() == text
    assert [p.name for p in tmp_path.iterdir()] == ["params.yaml"]  # no temporary file left


def test_a_foreign_output_folder_is_refused_before_any_trial(features: Path, tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    storage = tmp_path / "s.db"
    with pytest.raises(RecsysError, match="did not write"):
        tune("itemknn", features, out, params_for(tmp_path), 2, str(storage))
    assert not storage.exists() and (out / "notes.txt").read_text() == "mine"
