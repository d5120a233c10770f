"""Atomic writes, crash recovery and content hashes shared by every stage.

A stage never writes into its output folder in place: it builds the whole folder under a
temporary sibling and swaps it in with two renames, so an interrupted or failed run leaves the
previous outputs exactly as they were and a later stage never reads a half-written file. The
next stage run on that folder finishes what a killed one left: a previous copy stranded
between the two renames is put back, and temporary folders of dead processes are removed.

Output folders are checked before anything is replaced (check_output): a stage never writes
over its own inputs or the project, and never replaces a folder it did not write.

crash_point(name) marks each write step: tests set RECSYS_CRASH_AT=name to kill the process
there (SIGKILL, like a power cut) and check that every earlier output stays loadable.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import polars as pl

from tasks.errors import RecsysError

_UMASK = os.umask(0)
os.umask(_UMASK)
CRASH_ENV = "RECSYS_CRASH_AT"


def crash_point(name: str) -> None:
    """Die here, at once and without cleanup, when the tests ask for it (RECSYS_CRASH_AT)."""
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def check_output(
    out_dir: str | Path, inputs: Iterable[str | Path] = (), owned: str | tuple[str, ...] = ""
) -> None:
    """Refuse an output folder that a stage's swap would destroy something in.

    It must not be the project folder (the working directory) or hold it, must not hold or lie
    inside any of `inputs`, and when it already exists with content, that content must be a
    previous output of this stage: `owned` names a file the stage always writes there (or
    several, any one of which marks the folder as the stage's own).
    """
    out = Path(out_dir).resolve()
    cwd = Path.cwd().resolve()
    if out == cwd or out in cwd.parents:
        raise RecsysError(f"{out_dir}: is the project folder or holds it; choose a subfolder")
    for source in inputs:
        inp = Path(source).resolve()
        if out == inp or out in inp.parents or inp in out.parents:
            raise RecsysError(
                f"{out_dir}: overlaps the input {source}; the output must be a folder of its own"
            )
    marks = (owned,) if isinstance(owned, str) else owned
    marks = tuple(m for m in marks if m)
    if out.is_dir() and marks and any(out.iterdir()) and not any((out / m).exists() for m in marks):
        raise RecsysError(
            f"{out_dir}: exists and holds files this stage did not write (no "
            f"{' or '.join(marks)}); "
            "choose a new or empty folder, or remove it first"
        )


@contextlib.contextmanager
def staged_dir(
    out_dir: str | Path, inputs: Iterable[str | Path] = (), owned: str | tuple[str, ...] = ""
) -> Iterator[Path]:
    """Yield an empty temporary folder that replaces `out_dir` only if the block succeeds.

    check_output guards `out_dir` first (see its `inputs` and `owned`); recover() finishes
    whatever a killed run left beside it.
    """
    out = Path(out_dir)
    check_output(out, inputs, owned)
    out.parent.mkdir(parents=True, exist_ok=True)
    recover(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    tmp.chmod(0o777 & ~_UMASK)  # mkdtemp makes 0700; outputs should look like any other folder
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    crash_point("swap:before")
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        os.replace(out, old)
    crash_point("swap:between-renames")
    os.replace(tmp, out)
    crash_point("swap:after")
    shutil.rmtree(old, ignore_errors=True)


def recover(out: Path) -> None:
    """Finish what a killed swap of `out` left: a previous copy stranded between the two
    renames goes back (or away, if the new folder made it in); temporary folders and files
    of processes that no longer run are removed."""
    for old in sorted(out.parent.glob(f".{out.name}.old-*")):
        if _running(old.name.rsplit("-", 1)[-1]):
            continue
        if out.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, out)
    for tmp in out.parent.glob(f".{out.name}.tmp-*"):
        if not _running(tmp.name.removeprefix(f".{out.name}.tmp-").split("-", 1)[0]):
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)


def _running(pid: str) -> bool:
    """Whether the process that owns a temporary name still runs (ours counts as running)."""
    if not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary file name beside `path`; it is renamed onto `path` on success."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover(target)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.chmod(0o666 & ~_UMASK)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    crash_point(f"write:{target.name}")
    os.replace(tmp, target)


def write_parquet(df: pl.DataFrame, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        df.write_parquet(tmp, compression="zstd", statistics=True)
    return Path(path)


def write_json(obj: Any, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
    return Path(path)


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def dir_hashes(folder: str | Path, pattern: str = "*.parquet") -> dict[str, str]:
    """sha256 of each matching file, keyed by name: how a stage records what it read."""
    return {p.name: file_sha256(p) for p in sorted(Path(folder).glob(pattern)) if p.is_file()}
