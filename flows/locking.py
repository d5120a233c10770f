"""One pipeline at a time per project folder: an exclusive file lock around the stage chain.

Every flow writes into the same folders (data/interim, data/features, models/, reports/,
artifacts/). Two runs at once (a scheduled retrain while someone clicks "Quick run") would
interleave their writes: the features of one under the models of the other. A lock held for
the whole chain makes the second run wait and then start from the first one's outputs (mostly
cache hits). A file lock rather than only a Prefect concurrency limit because it also holds
across Prefect servers, workers and `recsys flow run` processes sharing the folder, and the
kernel releases it when a process dies, so a crashed run never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

LOCK_FILE = ".recsys-pipeline.lock"  # in the project folder, the working directory
LOCK_ENV = "RECSYS_LOCK_FILE"  # another place for it (the tests give each test its own)


def lock_path() -> Path:
    """The project's lock file: RECSYS_LOCK_FILE when set, else LOCK_FILE in the project."""
    return Path(os.environ.get(LOCK_ENV) or LOCK_FILE)


class LockTimeout(TimeoutError):
    """Another run held the lock longer than this run was willing to wait."""


@contextlib.contextmanager
def pipeline_lock(
    path: str | Path | None = None,
    timeout_s: float = 6 * 3600,
    holder: str = "",
    log: Callable[[str], None] = print,
    poll_s: float = 1.0,
) -> Iterator[None]:
    """Hold an exclusive lock on `path`, waiting up to `timeout_s` for the current holder.

    The lock file records who holds it (pid and `holder`, e.g. the flow run's name) so that a
    waiting run can say whom it waits for.
    """
    lock = Path(path) if path is not None else lock_path()
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        deadline = time.monotonic() + timeout_s
        announced = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not announced:
                    log(f"waiting for the pipeline lock {lock} (held by {_holder(lock)})")
                    announced = True
                if time.monotonic() > deadline:
                    raise LockTimeout(
                        f"{lock}: still held by {_holder(lock)} after {timeout_s:.0f} s"
                    ) from None
                time.sleep(poll_s)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "holder": holder}).encode(), 0)
        log(f"pipeline lock {lock} acquired")
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
            log(f"pipeline lock {lock} released")
    finally:
        os.close(fd)


def _holder(lock: Path) -> str:
    try:
        info = json.loads(lock.read_text() or "{}")
    except (OSError, ValueError):
        return "another process"
    return f"pid {info.get('pid')} {info.get('holder', '')}".strip() if info else "another process"
