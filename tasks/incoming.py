"""Newly arrived interactions: files dropped into an `incoming` folder, appended to the raw data.

The raw store is the source as configured (never rewritten) plus the append-only Parquet parts
of params.yaml's `ingest.appended` folder, which ingest reads after it (tasks/ingest.py). Any
source can be appended to, the MovieLens releases included. The retrain flow
(flows/pipeline.py) calls these in order:
1. `stage_incoming` reads every pending file of the incoming folder, in the source's own format
   or through the configured column map (`accepted_forms`), and writes each as a canonical
   part into incoming/.staged/. The raw store is not touched yet.
2. Ingest and validation (drift included) run on the source, the committed parts and the
   staged ones, like any raw data.
3. `commit_incoming` (validation passed) moves the staged parts into the appended folder, has
   DVC record the raw folder's new version where a .dvc file tracks it, and moves the consumed
   files to incoming/processed/<stamp>/; `reject_incoming` (validation failed) drops the staged
   parts and moves the files to incoming/rejected/<stamp>/ with REASON.txt, so the weekly
   schedule is not blocked by the same bad file forever and the raw store stays as it was.

Parts are committed before the files are moved: a crash in between appends them again on the
next run, which validation then reports as duplicate rows, instead of losing them.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from tasks.errors import RecsysError
from tasks.ingest import (
    MOVIELENS_SOURCES,
    appended_parts,
    column_map,
    read_csv_source,
    read_parquet_source,
    read_part,
    read_seq,
    read_source,
)
from tasks.io import atomic_path, write_parquet
from tasks.movielens import RATINGS_SUFFIXES, read_ratings
from tasks.params import IngestParams
from tasks.readers import first_line

PROCESSED = "processed"
REJECTED = "rejected"
STAGING = ".staged"


class BadIncomingFile(RecsysError):
    """An incoming file that cannot be read or does not fit the raw data: the flow rejects it
    (moves it to rejected/) rather than failing on it at every scheduled run."""


def pending_files(incoming_dir: str | Path) -> list[Path]:
    """The files waiting in `incoming_dir` (not its subfolders, not hidden files). Every one is
    either appended or rejected: a file of an unknown form is rejected with the reason."""
    folder = Path(incoming_dir)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def accepted_forms(source: str) -> dict[str, str]:
    """Suffix -> how a file with it is read, for `source`."""
    forms = {
        ".parquet": "Parquet, through ingest.columns",
        ".csv": "CSV, through ingest.columns and ingest.sep",
        ".tsv": "tab-separated, through ingest.columns",
    }
    if source in MOVIELENS_SOURCES:
        suffix = RATINGS_SUFFIXES[source]
        forms[suffix] = f"{source}'s own ratings file layout"
    if source == "seq":
        forms[".txt"] = "`user item [item ...]` lines, after every earlier interaction"
    return forms


def read_incoming(file: Path, params: IngestParams, after: int | None = None) -> pl.DataFrame:
    """One incoming file as canonical interactions, or BadIncomingFile naming the file.

    `after`: seq sources have positions for timestamps, so a seq file's positions start after
    it (the latest timestamp so far).
    """
    suffix = file.suffix.lower()
    forms = accepted_forms(params.source)
    if suffix not in forms:
        shown = "; ".join(f"{s} ({how})" for s, how in forms.items())
        raise BadIncomingFile(f"{file}: a {params.source} source takes {shown}")
    columns = column_map(params.columns)
    try:
        if params.source in MOVIELENS_SOURCES and suffix == RATINGS_SUFFIXES[params.source]:
            return read_ratings(params.source, file)
        if suffix == ".txt":
            frame = read_seq(file).interactions
            return frame.with_columns(pl.col("timestamp") + (after + 1 if after is not None else 0))
        if suffix == ".parquet":
            return read_parquet_source(file, columns).interactions
        sep = "\t" if suffix == ".tsv" else params.sep
        return read_csv_source(file, columns, sep).interactions
    except BadIncomingFile:
        raise
    except RecsysError as exc:
        raise BadIncomingFile(str(exc)) from exc


def stage_incoming(incoming_dir: str | Path, params: IngestParams) -> dict[str, Any]:
    """Read every pending file into a canonical part under incoming/.staged/; return what was
    staged: the files, their parts (to ingest after the committed ones), the rows added."""
    files = pending_files(incoming_dir)
    appended = appended_parts(params.appended)
    staged = {"files": [str(f) for f in files], "parts": [], "rows_added": 0}
    staged |= {"appended": params.appended, "appended_before": len(appended)}
    if not files:
        return staged
    after = _latest_timestamp(params, appended) if params.source == "seq" else None
    frames = []
    for file in files:
        frame = read_incoming(file, params, after)
        if frame.height == 0:
            raise BadIncomingFile(f"{file}: no interactions in it")
        if after is not None:
            after = int(frame["timestamp"].max())
        frames.append(frame)
    folder = Path(incoming_dir) / STAGING
    shutil.rmtree(folder, ignore_errors=True)  # what a crashed run left
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    for number, frame in enumerate(frames):
        part = folder / f"part-{stamp}-{number:03d}.parquet"
        write_parquet(frame, part)
        staged["parts"].append(str(part))
        staged["rows_added"] += frame.height
    return staged


def _latest_timestamp(params: IngestParams, appended: list[Path]) -> int:
    path, columns = Path(params.path), column_map(params.columns)
    source = read_source(params.source, path, columns, params.sep)
    frames = [source.interactions]
    frames += [read_part(p) for p in appended]
    return max(int(f["timestamp"].max()) for f in frames if f.height)


def _move_all(staged: dict[str, Any], incoming_dir: str | Path, kind: str) -> Path:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    target = Path(incoming_dir) / kind / stamp
    target.mkdir(parents=True, exist_ok=True)
    for name in staged["files"]:
        file = Path(name)
        if file.exists():
            os.replace(file, target / file.name)
    return target


def commit_incoming(staged: dict[str, Any], incoming_dir: str | Path) -> dict[str, Any]:
    """Validation passed: the staged parts join the appended folder (each one written whole or
    not at all), DVC records the raw folder's new version, the files move to processed/."""
    if not staged["parts"]:
        return {"committed": False}
    folder = Path(staged["appended"])
    folder.mkdir(parents=True, exist_ok=True)
    for name in staged["parts"]:
        part = Path(name)
        with atomic_path(folder / part.name) as tmp:
            shutil.copyfile(part, tmp)
    shutil.rmtree(Path(incoming_dir) / STAGING, ignore_errors=True)
    moved = _move_all(staged, incoming_dir, PROCESSED)
    outcome = {"committed": True, "moved_to": str(moved), "parts": len(staged["parts"])}
    try:
        outcome["versioned"] = record_with_dvc(folder)
    except RecsysError as exc:  # the data is appended; say loudly that DVC did not record it
        outcome["versioned"], outcome["dvc_error"] = None, str(exc)
    return outcome


def reject_incoming(staged: dict[str, Any], incoming_dir: str | Path, reason: str) -> dict:
    """Validation failed: the raw store stays as it was; the files move to rejected/ with why."""
    shutil.rmtree(Path(incoming_dir) / STAGING, ignore_errors=True)
    moved = _move_all(staged, incoming_dir, REJECTED)
    (moved / "REASON.txt").write_text(reason.rstrip() + "\n")
    return {"committed": False, "moved_to": str(moved)}


def record_with_dvc(folder: Path) -> str | None:
    """`dvc commit` the .dvc file whose output holds `folder` (data.dvc for data/raw), so the
    raw store's new version is in DVC's cache and the .dvc file names it (commit that file to
    git). None where no .dvc file of a DVC project tracks the folder."""
    target = folder.resolve()
    for directory in target.parents:
        for dvc_file in sorted(f for f in directory.glob("?*.dvc") if f.is_file()):
            outs = _dvc_outs(dvc_file)
            if any(target.is_relative_to((directory / out).resolve()) for out in outs):
                return _dvc_commit(dvc_file)
        if (directory / ".dvc").is_dir():  # the project's root: look no further up
            return None
    return None


def _dvc_outs(dvc_file: Path) -> list[str]:
    try:
        spec = yaml.safe_load(dvc_file.read_text()) or {}
        return [str(out["path"]) for out in spec.get("outs", [])]
    except (OSError, yaml.YAMLError, TypeError, KeyError) as exc:
        raise RecsysError(f"{dvc_file}: not a readable .dvc file: {first_line(exc)}") from exc


def _dvc_commit(dvc_file: Path) -> str:
    cmd = [sys.executable, "-m", "dvc", "commit", "--force", "--quiet", dvc_file.name]
    done = subprocess.run(cmd, cwd=dvc_file.parent, capture_output=True, text=True)
    if done.returncode != 0:
        error = first_line(RuntimeError(done.stderr or done.stdout))
        raise RecsysError(f"{dvc_file}: dvc commit failed: {error}")
    return str(dvc_file)
