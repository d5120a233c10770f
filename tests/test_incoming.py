"""Incoming files that cannot be appended are rejected (moved to rejected/ with REASON.txt),
never left waiting in incoming/ to fail every scheduled retrain again."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from tasks.incoming import BadIncomingFile, pending_files, reject_incoming, stage_incoming


def incoming_file(folder: Path, rows: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "new.csv"
    pl.DataFrame(rows).write_csv(path)
    return path


def test_a_source_that_cannot_be_appended_to_rejects_the_files_with_the_reason(tmp_path: Path):
    incoming = tmp_path / "incoming"
    incoming_file(incoming, {"user_id": ["u1"], "item_id": ["i1"], "timestamp": [1]})
    with pytest.raises(BadIncomingFile, match="not 'movielens-100k'") as err:
        stage_incoming(incoming, tmp_path / "raw", "movielens-100k")
    staged = {"files": [str(f) for f in pending_files(incoming)], "candidate": None}
    outcome = reject_incoming(staged, incoming, str(err.value))
    assert pending_files(incoming) == []
    moved = Path(outcome["moved_to"])
    assert (moved / "new.csv").is_file() and "movielens-100k" in (moved / "REASON.txt").read_text()


def test_values_that_do_not_fit_the_raw_types_reject_the_file(tmp_path: Path):
    raw = tmp_path / "raw.parquet"
    pl.DataFrame({"user_id": ["u1"], "item_id": ["i1"], "timestamp": [1]}).write_parquet(raw)
    incoming = tmp_path / "incoming"
    incoming_file(incoming, {"user_id": ["u2"], "item_id": ["i2"], "timestamp": ["yesterday"]})
    with pytest.raises(BadIncomingFile, match="do not fit the raw data's types"):
        stage_incoming(incoming, raw, "parquet")
    assert pl.read_parquet(raw).height == 1  # the raw data is untouched
