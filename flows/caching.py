"""Prefect caching for the stages: a stage whose inputs did not change is not recomputed.

The cache key of a stage is a sha256 over
- the content of every input file (the task parameters named as inputs: a file or a folder,
  hashed recursively, names and bytes, with tasks.io.file_sha256),
- every other task parameter by value (the params dataclasses as JSON, output paths, names),
- the project's code (tasks/ and recsys_models/), so editing a stage re-runs it,
which is what DVC hashes for `dvc repro` too. Paths themselves are not in the key: the same
bytes under another name (a retrain's candidate raw file, then the raw file) are the same input.

A cached *result* is not enough: the output folder may since have been deleted or overwritten
by a run with other parameters. So every cached stage returns the fingerprint of the output it
wrote, and `run_stage` compares it with the folder as it is now; on a mismatch the stage runs
again with refresh_cache, which also replaces the stale cache record.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from prefect import Task

from tasks.io import file_sha256

ROOT = Path(__file__).resolve().parents[1]
CODE_PACKAGES = ("tasks", "recsys_models")
FINGERPRINT = "output_fingerprint"


def tree_hash(path: str | Path, exclude: Iterable[str] = ()) -> str:
    """sha256 over the relative names and bytes of every file under `path` (or of one file).

    Hidden entries (a leading dot: temporary files of an atomic write) and the top-level
    names in `exclude` (models/<name>/temporal/ inside the leave-one-out model) are skipped.
    A missing path hashes to a fixed value of its own, never to the hash of an empty folder.
    """
    root = Path(path)
    digest = hashlib.sha256()
    if root.is_file():
        digest.update(b"file\0" + file_sha256(root).encode())
        return digest.hexdigest()
    if not root.is_dir():
        return hashlib.sha256(b"missing").hexdigest()
    skip = set(exclude)
    for file in sorted(root.rglob("*")):
        rel = file.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or rel.parts[0] in skip:
            continue
        if file.is_file():
            digest.update(rel.as_posix().encode() + b"\0" + file_sha256(file).encode() + b"\0")
    return digest.hexdigest()


@functools.cache
def code_version() -> str:
    """One hash of the stage code; computed once per process."""
    files = sorted(p for pkg in CODE_PACKAGES for p in (ROOT / pkg).rglob("*.py"))
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.relative_to(ROOT).as_posix().encode() + file_sha256(file).encode())
    return digest.hexdigest()


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, Path):
        return str(value)
    return value


Narrow = Callable[[Any, dict[str, Any]], Any]


def inputs_key(
    *input_params: str, narrow: dict[str, Narrow] | None = None
) -> Callable[[Any, dict[str, Any]], str]:
    """A Prefect cache_key_fn: input files by content, the other parameters by value.

    `narrow` maps a parameter to the part of it the stage really reads (e.g. a model's own
    section of params.train), so that editing another model's settings keeps this one cached.
    """
    narrow = narrow or {}

    def key(context: Any, parameters: dict[str, Any]) -> str:
        digest = hashlib.sha256()
        digest.update(context.task.name.encode() + b"\0" + code_version().encode())
        for name in sorted(parameters):
            value = parameters[name]
            if name in input_params:
                paths = value if isinstance(value, (list, tuple)) else [value]
                part = [tree_hash(p) if p is not None else None for p in paths]
            elif name in narrow:
                part = _plain(narrow[name](value, parameters))
            else:
                part = _plain(value)
            text = json.dumps(part, sort_keys=True, default=str)
            digest.update(name.encode() + b"=" + text.encode() + b"\0")
        return digest.hexdigest()

    return key


def with_fingerprint(result: dict[str, Any], out: str | Path, exclude: Iterable[str] = ()):
    """The stage's result plus the fingerprint of the output it just wrote."""
    return {**result, FINGERPRINT: tree_hash(out, exclude)}


def run_stage(
    task: Task,
    out: str | Path | Callable[[dict[str, Any]], Path],
    *args: Any,
    exclude: Iterable[str] = (),
    **kwargs: Any,
) -> dict[str, Any]:
    """Call a cached stage task; run it again if its output is not what the cache recorded.

    `out` is the output folder, or a function of the result for outputs named by the result
    (an export's version folder).
    """
    return checked_stage(task(*args, **kwargs), task, out, *args, exclude=exclude, **kwargs)


def checked_stage(
    result: dict[str, Any],
    task: Task,
    out: str | Path | Callable[[dict[str, Any]], Path],
    *args: Any,
    exclude: Iterable[str] = (),
    **kwargs: Any,
) -> dict[str, Any]:
    """run_stage's check for a result already at hand (a submitted task's): rerun the task if
    its output is not what the cache recorded."""
    folder = out(result) if callable(out) else out
    if result.get(FINGERPRINT) != tree_hash(folder, exclude):
        print(f"{task.name}: {folder} is not what the cached run wrote; running it again")
        result = task.with_options(refresh_cache=True)(*args, **kwargs)
    return {k: v for k, v in result.items() if k != FINGERPRINT}
