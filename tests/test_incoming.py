"""Incoming files: read in the source's own format or through the column map, staged as
append-only parts, committed (and versioned by DVC) or rejected with REASON.txt; the source's
files are never rewritten."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from tasks.incoming import (
    BadIncomingFile,
    commit_incoming,
    pending_files,
    reject_incoming,
    stage_incoming,
)
from tasks.ingest import appended_parts, ingest
from tasks.params import ColumnsParams, IngestParams


def ml100k_project(root: Path) -> IngestParams:
    """A MovieLens-100K raw folder (u.data only) and its ingest section."""
    raw = root / "data/raw/ml-100k"
    raw.mkdir(parents=True)
    (raw / "u.data").write_text("1\t10\t4\t881250949\n2\t10\t3\t881250950\n2\t11\t5\t881250951\n")
    return IngestParams(
        path=str(raw), out=str(root / "data/interim"), appended=str(root / "data/raw/appended")
    )


def test_a_movielens_source_takes_new_ratings_in_its_own_layout_as_parts(tmp_path: Path):
    params = ml100k_project(tmp_path)
    u_data = (Path(params.path) / "u.data").read_bytes()
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    (incoming / "week-1.data").write_text("3\t12\t2\t881250960\n1\t11\t5\t881250961\n")
    staged = stage_incoming(incoming, params)
    assert staged["rows_added"] == 2 and len(staged["parts"]) == 1
    assert appended_parts(params.appended) == []  # nothing committed before validation

    outcome = commit_incoming(staged, incoming)
    assert outcome["committed"] and outcome["versioned"] is None  # no DVC project here
    assert (Path(params.path) / "u.data").read_bytes() == u_data  # the source is never rewritten
    parts = appended_parts(params.appended)
    assert len(parts) == 1 and pending_files(incoming) == []
    assert (Path(outcome["moved_to"]) / "week-1.data").is_file()

    summary = ingest("movielens-100k", Path(params.path), Path(params.out), parts=parts)
    assert (summary["rows"], summary["appended_parts"]) == (5, 1)
    interactions = pl.read_parquet(Path(params.out) / "interactions.parquet")
    assert interactions["item_id"].to_list()[-2:] == ["12", "11"]  # parts after the source


def test_a_csv_in_the_column_map_with_millisecond_times_is_appended(tmp_path: Path):
    params = dataclasses.replace(
        ml100k_project(tmp_path),
        source="csv",
        path=str(tmp_path / "log.csv"),
        sep=";",
        columns=ColumnsParams(user="uid", item="sku", time="ts", time_unit="ms"),
    )
    Path(params.path).write_text("uid;sku;ts\nanna;x 1;1700000000000\n")
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    (incoming / "new.csv").write_text("uid;sku;ts\nbörje;x 2;1700000005000\n")
    staged = stage_incoming(incoming, params)
    (part,) = staged["parts"]
    assert pl.read_parquet(part).select("user_id", "item_id", "timestamp").rows() == [
        ("börje", "x 2", 1700000005)
    ]


def test_seq_lines_are_appended_after_every_earlier_position(tmp_path: Path):
    log = tmp_path / "seq.txt"
    log.write_text("u1 a b c\nu2 b c\n")
    params = IngestParams(source="seq", path=str(log), appended=str(tmp_path / "appended"))
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    (incoming / "more.txt").write_text("u1 d\nu3 a b\n")
    staged = stage_incoming(incoming, params)
    (part,) = staged["parts"]
    assert pl.read_parquet(part)["timestamp"].to_list() == [5, 6, 7]  # the source used 0..4


@pytest.mark.parametrize(
    ("name", "text", "reason"),
    [
        ("new.csv", "user,item\n1,2\n", "missing column(s) user_id, item_id, timestamp"),
        ("new.csv", "user_id,item_id,timestamp\nu2,i2,yesterday\n", "'yesterday'"),
        ("notes.xlsx", "whatever", "a movielens-100k source takes"),
        ("week.data", "1\t2\t3\n", "expected 4 fields"),
    ],
)
def test_a_file_that_does_not_fit_is_rejected_with_the_reason_and_nothing_appended(
    tmp_path: Path, name: str, text: str, reason: str
):
    params = ml100k_project(tmp_path)
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    (incoming / name).write_text(text)
    with pytest.raises(BadIncomingFile) as err:
        stage_incoming(incoming, params)
    message = str(err.value)
    assert name in message and "\n" not in message
    staged = {"files": [str(f) for f in pending_files(incoming)], "parts": []}
    outcome = reject_incoming(staged, incoming, message)
    moved = Path(outcome["moved_to"])
    assert (moved / name).is_file() and pending_files(incoming) == []
    assert reason in (moved / "REASON.txt").read_text()
    assert appended_parts(params.appended) == []


def test_committed_parts_are_recorded_by_dvc_where_a_dvc_file_tracks_the_raw_folder(
    tmp_path: Path,
):
    params = ml100k_project(tmp_path)
    dvc = [sys.executable, "-m", "dvc"]
    for cmd in (["init", "--no-scm", "-q"], ["add", "-q", "data/raw"]):
        subprocess.run([*dvc, *cmd], cwd=tmp_path, check=True, capture_output=True)
    before = (tmp_path / "data/raw.dvc").read_text()
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    (incoming / "week-1.data").write_text("3\t12\t2\t881250960\n")
    outcome = commit_incoming(stage_incoming(incoming, params), incoming)
    assert outcome["versioned"] == str(tmp_path / "data/raw.dvc")
    assert (tmp_path / "data/raw.dvc").read_text() != before
    status = subprocess.run([*dvc, "status", "-q"], cwd=tmp_path, capture_output=True)
    assert status.returncode == 0, status.stdout  # data/raw's new version is the recorded one
