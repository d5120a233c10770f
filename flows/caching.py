"""Stage caching for the flows: a stage whose inputs did not change is not recomputed.

The cache key of a stage is a sha256 over
- the content of every input file (the task parameters named as inputs: a file or a folder,
  hashed recursively, names and bytes, with tasks.io.file_sha256),
- every other task parameter by value (the params dataclasses as JSON, output paths, names),
- the project's code (tasks/ and recsys_models/), so editing a stage re-runs it,
which is what DVC hashes for `dvc repro` too. Paths themselves are not in the key: the same
bytes under another name (a retrain's candidate raw file, then the raw file) are the same input.

Why not Prefect's own result cache: it stores results with cloudpickle, and a stored record
names its own serializer, so whoever can write into $PREFECT_HOME/storage could make the next
run execute code. Here a cache record is plain JSON data (the stage's summary, where its output
went and that output's fingerprint), read with json.loads and nothing else; a record that is
not such data is ignored and rewritten. Prefect persists no task result at all (NO_PERSIST).

A cached summary is not enough either: the output folder may since have been deleted or
overwritten by a run with other parameters. So a record is used only while the fingerprint of
the output folder is the one the stage wrote; otherwise the stage runs again. A hit ends the
task run in Prefect's "Cached" state, as Prefect's own cache would.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from prefect import Task
from prefect.cache_policies import NO_CACHE
from prefect.settings import get_current_settings
from prefect.states import Completed

from tasks.io import file_sha256, write_json

ROOT = Path(__file__).resolve().parents[1]
CODE_PACKAGES = ("tasks", "recsys_models")
# Task options of every stage: Prefect persists (pickles) no result; cached_stage caches.
NO_PERSIST = {"cache_policy": NO_CACHE, "persist_result": False}


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


def stage_key(
    name: str,
    parameters: dict[str, Any],
    input_params: Iterable[str],
    narrow: dict[str, Narrow] | None = None,
) -> str:
    """Input files by content, the other parameters by value, and the code.

    `narrow` maps a parameter to the part of it the stage really reads (e.g. a model's own
    section of params.train), so that editing another model's settings keeps this one cached.
    """
    narrow = narrow or {}
    digest = hashlib.sha256()
    digest.update(name.encode() + b"\0" + code_version().encode())
    for key in sorted(parameters):
        value = parameters[key]
        if key in input_params:
            paths = value if isinstance(value, (list, tuple)) else [value]
            part = [tree_hash(p) if p is not None else None for p in paths]
        elif key in narrow:
            part = _plain(narrow[key](value, parameters))
        else:
            part = _plain(value)
        text = json.dumps(part, sort_keys=True, default=str)
        digest.update(key.encode() + b"=" + text.encode() + b"\0")
    return digest.hexdigest()


def cache_dir() -> Path:
    """Where the stage records live: beside Prefect's own files, one folder per PREFECT_HOME."""
    return Path(get_current_settings().home) / "recsys-stage-cache"


def read_record(path: Path) -> dict[str, Any] | None:
    """A cache record, or None when there is none or the file is not one (then it is ignored:
    it is never interpreted as anything but JSON data)."""
    try:
        record = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        print(f"stage cache: {path} is not a cache record ({type(exc).__name__}); ignored")
        return None
    if not isinstance(record, dict) or not {"out", "fingerprint", "result"} <= record.keys():
        print(f"stage cache: {path} is not a cache record; ignored")
        return None
    return record


def as_json_data(value: Any) -> Any:
    """The value as plain JSON data: what a cached run returns, so a fresh run returns it too."""
    return json.loads(json.dumps(value, default=_json_default))


def _json_default(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    return str(value)


OutFolder = Callable[[dict[str, Any], dict[str, Any]], str | Path]


def cached_stage(
    *input_params: str,
    out: str | OutFolder,
    exclude: Callable[[dict[str, Any]], Iterable[str]] = lambda parameters: (),
    narrow: dict[str, Narrow] | None = None,
) -> Callable[[Callable[..., dict[str, Any]]], Callable[..., Any]]:
    """Wrap a stage task's function with the cache: run it, or return its recorded summary in
    the "Cached" state while its output is unchanged.

    `out` is the parameter naming the output folder, or a function of (parameters, result)
    for outputs named by the result (an export's version folder); `exclude(parameters)` names
    top-level entries of that folder that are not this stage's (the temporal model inside the
    leave-one-out one).
    """

    def decorate(fn: Callable[..., dict[str, Any]]) -> Callable[..., Any]:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            parameters = dict(bound.arguments)
            key = stage_key(fn.__name__, parameters, input_params, narrow)
            path = cache_dir() / f"{key}.json"
            skip = tuple(exclude(parameters))
            record = read_record(path)
            if record is not None and record["fingerprint"] == tree_hash(record["out"], skip):
                return Completed(data=record["result"], name="Cached")
            if record is not None:
                print(f"{fn.__name__}: {record['out']} is not what the cached run wrote; rerun")
            result = as_json_data(fn(*args, **kwargs))
            folder = out(parameters, result) if callable(out) else parameters[out]
            entry = {"out": str(folder), "fingerprint": tree_hash(folder, skip), "result": result}
            write_json(entry, path)
            return result

        return run

    return decorate


def run_stage(task: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Call a stage task and return its summary, whether it ran or its cache answered."""
    return task(*args, return_state=True, **kwargs).result()
