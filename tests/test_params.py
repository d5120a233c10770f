"""params.yaml: every range and consistency rule is checked when the file is loaded, a bad value
is one line naming the file and the key, and a refused file changes no output."""

from __future__ import annotations

import json
import math
from pathlib import Path

import polars as pl
import pytest
import yaml

from cli import main as cli
from tasks.errors import RecsysError
from tasks.features import build_features, check_sequence_memory
from tasks.params import MAX_SEQ_LEN, SECTIONS, FeaturesParams, Params, load_params
from tasks.synth import synthesize
from tasks.validate import validate
from tests.test_validate import interactions, write_interim

ROOT = Path(__file__).resolve().parents[1]


def repo_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def write_params(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def one_line_error(path: Path, overrides: dict | None = None) -> str:
    with pytest.raises(RecsysError) as info:
        load_params(path, overrides)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def test_the_repository_params_yaml_loads_and_passes_its_checks() -> None:
    params = load_params(ROOT / "params.yaml")
    assert params.validate.max_id_length == 256
    assert params.features.max_seq_len <= MAX_SEQ_LEN


def test_an_absent_file_gives_the_defaults(tmp_path: Path) -> None:
    """Documented in load_params: tests and one-off runs name a file that does not exist."""
    assert load_params(tmp_path / "absent.yaml") == Params()
    assert load_params(tmp_path / "absent.yaml", {"train.max_epochs": 3}).train.max_epochs == 3


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n"])
def test_an_empty_file_is_an_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    assert one_line_error(path) == (
        f"{path}: is empty; a params file needs the sections "
        "seed, ingest, validate, features, train, evaluate, export, tune"
    )


@pytest.mark.parametrize("section", SECTIONS)
def test_a_missing_section_is_an_error_naming_it(tmp_path: Path, section: str) -> None:
    data = repo_params()
    del data[section]
    path = write_params(tmp_path / "params.yaml", data)
    assert one_line_error(path).startswith(f"{path}: missing section {section} (")


def test_a_top_level_list_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("- seed\n- train\n")
    assert one_line_error(path) == f"{path}: top level must be a mapping of sections, got a list"


def test_missing_keys_inside_a_section_keep_their_defaults(tmp_path: Path) -> None:
    data = repo_params()
    del data["train"]["max_epochs"]
    data["features"] = {"max_seq_len": 20}
    params = load_params(write_params(tmp_path / "params.yaml", data))
    assert params.train.max_epochs == Params().train.max_epochs
    assert params.features == FeaturesParams(max_seq_len=20)


# (key, bad value, the rule the message states)
BAD_VALUES = [
    ("seed", -1, "in [0, 4294967295]"),
    ("ingest.out", "", "a non-empty path"),
    ("validate.out", " ", "a non-empty path"),
    ("validate.rating_min", 6.0, "< rating_max (5.0)"),
    ("validate.rating_min", 5.0, "< rating_max (5.0)"),
    ("validate.rating_max", math.nan, "a finite number"),
    ("validate.rating_min", -math.inf, "a finite number"),
    ("validate.timestamp_max_future_days", -1, ">= 0"),
    ("validate.min_interactions_per_user", 0, ">= 1"),
    ("validate.max_duplicate_fraction", 1.5, "in [0, 1]"),
    ("validate.max_id_length", 0, ">= 1"),
    ("validate.drift.max_row_change", -0.1, ">= 0"),
    ("validate.drift.max_popularity_shift", 2.0, "in [0, 1]"),
    ("features.min_user_interactions", 0, ">= 1"),
    ("features.min_item_interactions", -3, ">= 1"),
    ("features.year_bucket_size", 0, ">= 1"),
    ("features.max_seq_len", 0, f"between 1 and {MAX_SEQ_LEN}"),
    ("features.max_seq_len", 10**9, f"between 1 and {MAX_SEQ_LEN}"),
    ("features.temporal_test_fraction", 0.0, "in (0, 1)"),
    ("features.temporal_test_fraction", 1.0, "in (0, 1)"),
    ("features.temporal_val_fraction", -0.1, "in [0, 1)"),
    ("features.temporal_val_fraction", 0.9, "< 1 - temporal_test_fraction (0.1)"),
    ("train.max_epochs", -1, ">= 1"),
    ("train.max_epochs", 0, ">= 1"),
    ("train.patience", -1, ">= 0"),
    ("train.eval_batch_size", 0, ">= 1"),
    ("train.devices", 0, ">= 1"),
    ("train.workers", 0, ">= 1"),
    ("train.models", [], "a non-empty list"),
    ("train.accelerator", "gpus", "one of auto, cpu, gpu, cuda, mps, tpu"),
    ("train.parallel", "processes", "one of none, threads, dask"),
    ("train.precision", "fp16", "one of auto, 32-true, 16-mixed, bf16-mixed"),
    ("evaluate.out", "", "a non-empty path"),
    ("evaluate.protocols", ["temporal"], "a list of loo, temporal that includes loo"),
    ("evaluate.protocols", ["loo", "future"], "a list of loo, temporal that includes loo"),
    ("evaluate.baselines", ["popularity", "nope"], "registered models"),
    ("evaluate.sampled_negatives", 0, ">= 1"),
    ("evaluate.bootstrap_samples", 0, ">= 1"),
    ("evaluate.memory_budget_mb", 0, ">= 1"),
    ("evaluate.alpha", 0.0, "in (0, 1)"),
    ("evaluate.alpha", 1.0, "in (0, 1)"),
    ("evaluate.guardrails.max_coverage_drop", -0.1, "in [0, 1]"),
    ("evaluate.guardrails.max_popularity_bias_increase", 1.5, "in [0, 1]"),
    ("evaluate.segments.cold_history_max", -1, ">= 0"),
    ("evaluate.segments.heavy_history_min", 30, "> cold_history_max (30)"),
    ("evaluate.segments.head_item_fraction", 1.0, "in (0, 1)"),
]


@pytest.mark.parametrize(("key", "value", "rule"), BAD_VALUES, ids=lambda v: str(v)[:24])
def test_a_bad_value_is_one_line_naming_the_key(
    tmp_path: Path, key: str, value: object, rule: str
) -> None:
    path = tmp_path / "absent.yaml"
    message = one_line_error(path, {key: value})
    assert message.startswith(f"{path}: {key} must be {rule}"), message
    assert message.endswith(f"got {value!r}") or key.endswith("baselines"), message


def test_a_bad_value_in_the_file_names_the_file(tmp_path: Path) -> None:
    data = repo_params()
    data["validate"]["rating_min"], data["validate"]["rating_max"] = 5.0, 1.0
    path = write_params(tmp_path / "params.yaml", data)
    assert (
        one_line_error(path) == f"{path}: validate.rating_min must be < rating_max (1.0), got 5.0"
    )


@pytest.mark.parametrize(
    "overrides",
    [
        {"train.patience": 0, "train.max_epochs": 1},
        {"features.max_seq_len": MAX_SEQ_LEN, "features.temporal_val_fraction": 0.0},
        {"features.temporal_val_fraction": 0.45, "features.temporal_test_fraction": 0.5},
        {"train.accelerator": "cuda", "train.precision": "bf16-mixed", "train.parallel": "dask"},
        {"evaluate.protocols": ["loo"], "evaluate.alpha": 0.5, "seed": 0},
    ],
)
def test_values_at_the_edges_of_their_ranges_load(tmp_path: Path, overrides: dict) -> None:
    load_params(tmp_path / "absent.yaml", overrides)


def test_a_malformed_set_value_is_one_line_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the command's pipeline lock lives in the working folder
    argv = ["train", "--model", "popularity", "--set", "train.max_epochs=[1,"]
    assert cli.main([*argv, "--params", "absent.yaml"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "error: --set train.max_epochs: '[1,' is not a valid YAML value "
        "(expected the node content, but found '<stream end>')\n"
    )


def test_bad_params_leave_the_validation_report_intact(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """rating_min > rating_max used to be accepted: every rating then failed validation, the
    data was blamed and the good report was replaced by a failed one."""
    monkeypatch.chdir(tmp_path)
    write_interim(Path("interim"), interactions())
    data = repo_params()
    write_params(Path("params.yaml"), data)
    args = ["validate", "--interim", "interim", "--out", "report", "--params", "params.yaml"]
    assert cli.main(args) == 0
    capsys.readouterr()
    before = {p: p.read_bytes() for p in sorted(Path("report").rglob("*")) if p.is_file()}
    assert json.loads(Path("report/summary.json").read_text())["success"] is True

    data["validate"]["rating_min"] = 6.0
    write_params(Path("params.yaml"), data)
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err == "error: params.yaml: validate.rating_min must be < rating_max (5.0), got 6.0\n"
    after = {p: p.read_bytes() for p in sorted(Path("report").rglob("*")) if p.is_file()}
    assert after == before


def test_features_refuses_sequences_larger_than_the_memory(tmp_path: Path) -> None:
    """The bound at load time does not cover a FeaturesParams built in code, nor a machine with
    less memory than the arrays of a large catalogue need: the features stage estimates them
    before allocating, and refuses in one line instead of numpy's MemoryError."""
    synthesize(tmp_path / "interim", 50, 30, 600, seed=0)
    params = FeaturesParams(min_user_interactions=1, min_item_interactions=1, max_seq_len=10**12)
    with pytest.raises(RecsysError) as info:
        build_features(tmp_path / "interim", tmp_path / "features", params, 0, None)
    message = str(info.value)
    assert message.startswith("params.yaml features.max_seq_len=1000000000000: the padded ")
    assert " GiB of memory, " in message and message.endswith(" is available")
    assert not (tmp_path / "features").exists()


def test_the_sequence_memory_estimate() -> None:
    check_sequence_memory(999, 256, available=2 * 1000 * 256 * 4)  # exactly fits
    with pytest.raises(RecsysError) as info:
        check_sequence_memory(999, 256, available=2 * 1000 * 256 * 4 - 1)
    assert str(info.value) == (
        "params.yaml features.max_seq_len=256: the padded sequences of 999 users need "
        "2.0 MiB of memory, 2.0 MiB is available"
    )
    check_sequence_memory(10**6, 10**6, available=None)  # unknown memory: not checked


def test_rows_with_nan_ratings_never_reach_features_unvalidated(tmp_path: Path) -> None:
    """The features stage builds only from a passed validation report, and NaN ratings fail
    validation now (tests/test_validate.py), so a rating model never trains on NaN."""
    df = interactions().with_columns(pl.lit(float("nan")).alias("rating"))
    interim = write_interim(tmp_path / "interim", df)
    report = tmp_path / "report"
    with pytest.raises(RecsysError, match="rating_not_finite"):
        validate(interim, report, load_params(tmp_path / "absent.yaml").validate)
    with pytest.raises(RecsysError, match="validated.json: not found: validation did not pass"):
        build_features(interim, tmp_path / "features", FeaturesParams(), 0, report)
