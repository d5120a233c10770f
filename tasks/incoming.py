"""Newly arrived interactions: files dropped into an `incoming` folder, appended to the raw data.

The retrain flow (flows/pipeline.py) calls these in order:
1. `stage_incoming` reads every pending *.parquet / *.csv file of the incoming folder, checks
   that it has the raw file's columns and types, and writes raw + new rows as a *candidate*
   raw file. The raw data itself is not touched yet.
2. The candidate goes through ingest and validation (drift included) like any raw data.
3. `commit_incoming` (validation passed) renames the candidate onto the raw file, then moves
   the consumed files to incoming/processed/<stamp>/; `reject_incoming` (validation failed)
   moves them to incoming/rejected/<stamp>/ with the reason, so the weekly schedule is not
   blocked by the same bad file forever and the raw data stays as it was.

The raw file is replaced before the files are moved: a crash in between appends them again on
the next run, which validation then reports as duplicate rows, instead of losing them.
Only the generic `csv` and `parquet` sources (one raw file) can be appended to; MovieLens raw
folders are published snapshots and are replaced whole, not appended to.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path
from typing import Any

import polars as pl

from tasks.errors import RecsysError
from tasks.ingest import SUFFIXES
from tasks.io import atomic_path
from tasks.readers import first_line

APPENDABLE = ("csv", "parquet")
INCOMING_SUFFIXES = (".parquet", ".pq", ".csv")
PROCESSED = "processed"
REJECTED = "rejected"
STAGING = ".incoming-staged"


class BadIncomingFile(RecsysError):
    """An incoming file that cannot be read or does not fit the raw data: the flow rejects it
    (moves it to rejected/) rather than failing on it at every scheduled run."""


def pending_files(incoming_dir: str | Path) -> list[Path]:
    """The files waiting in `incoming_dir` (not its processed/ and rejected/ subfolders)."""
    folder = Path(incoming_dir)
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in INCOMING_SUFFIXES
    )


def raw_file(raw_path: str | Path, source: str) -> Path:
    """The one raw file new rows are appended to."""
    if source not in APPENDABLE:  # the files are rejected with this reason, not left waiting
        raise BadIncomingFile(
            f"incoming data can be appended to a csv or parquet source, not {source!r} "
            "(set ingest.source/ingest.path to a csv or parquet file)"
        )
    path = Path(raw_path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise RecsysError(f"{path}: no such raw file")
    found = [p for p in sorted(path.iterdir()) if p.is_file() and p.suffix in SUFFIXES[source]]
    if len(found) != 1:
        raise RecsysError(f"{path}: expected one {source} file to append to, found {len(found)}")
    return found[0]


def _read(file: Path) -> pl.DataFrame:
    try:
        if file.suffix.lower() == ".csv":
            return pl.read_csv(file, infer_schema=False)  # strings; cast to the raw types below
        return pl.read_parquet(file)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise BadIncomingFile(f"{file}: cannot read: {first_line(exc)}") from exc


def _conform(frame: pl.DataFrame, file: Path, schema: pl.Schema) -> pl.DataFrame:
    """The incoming rows with exactly the raw file's columns and types, or a one-line error."""
    missing = [name for name in schema if name not in frame.columns]
    if missing:
        raise BadIncomingFile(
            f"{file}: missing column(s) {', '.join(missing)} of the raw data "
            f"(has {', '.join(frame.columns)})"
        )
    try:
        return frame.select(pl.col(name).cast(dtype, strict=True) for name, dtype in schema.items())
    except pl.exceptions.PolarsError as exc:
        raise BadIncomingFile(
            f"{file}: values do not fit the raw data's types: {first_line(exc)}"
        ) from exc


def stage_incoming(incoming_dir: str | Path, raw_path: str | Path, source: str) -> dict[str, Any]:
    """Write raw + every pending incoming file as a candidate raw file; return what was staged.

    "candidate" is None when nothing is pending. The candidate lies in a hidden folder beside
    the raw file (same file system, so committing it is one rename).
    """
    files = pending_files(incoming_dir)
    if not files:
        return {"files": [], "rows_added": 0, "candidate": None, "raw": str(raw_path)}
    raw = raw_file(raw_path, source)
    try:
        base = _read(raw)
    except BadIncomingFile as exc:  # the raw file itself: not the incoming files' fault
        raise RecsysError(str(exc)) from exc
    schema = base.schema
    new = [_conform(_read(file), file, schema) for file in files]
    combined = pl.concat([base, *new], how="vertical")
    candidate = raw.parent / STAGING / raw.name
    candidate.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(candidate) as tmp:
        if raw.suffix.lower() in SUFFIXES["csv"]:
            combined.write_csv(tmp, separator="\t" if raw.suffix.lower() == ".tsv" else ",")
        else:
            combined.write_parquet(tmp, compression="zstd", statistics=True)
    return {
        "files": [str(f) for f in files],
        "rows_before": base.height,
        "rows_added": combined.height - base.height,
        "candidate": str(candidate),
        "raw": str(raw),
    }


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
    """Validation passed: the candidate becomes the raw file; the files move to processed/."""
    if not staged.get("candidate"):
        return {"committed": False, "raw": staged.get("raw")}
    os.replace(staged["candidate"], staged["raw"])
    shutil.rmtree(Path(staged["candidate"]).parent, ignore_errors=True)
    moved = _move_all(staged, incoming_dir, PROCESSED)
    return {"committed": True, "raw": staged["raw"], "moved_to": str(moved)}


def reject_incoming(staged: dict[str, Any], incoming_dir: str | Path, reason: str) -> dict:
    """Validation failed: the raw file stays as it was; the files move to rejected/ with why."""
    if staged.get("candidate"):
        shutil.rmtree(Path(staged["candidate"]).parent, ignore_errors=True)
    moved = _move_all(staged, incoming_dir, REJECTED)
    (moved / "REASON.txt").write_text(reason.rstrip() + "\n")
    return {"committed": False, "raw": staged.get("raw"), "moved_to": str(moved)}
