"""Shared fixtures: a real Prefect server on loopback with its own PREFECT_HOME."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api_call(api: str, path: str, body: dict | None = None, method: str = "POST") -> Any:
    """The REST calls the Prefect UI makes (the 3.8 client sends nulls this server refuses).

    A 503 is retried: Prefect's SQLite-backed server answers it while the database is busy,
    which on a loaded 2-core machine happens; the UI retries such calls too. A read (GET or a
    /filter query) that times out for the same reason is retried as well; a call that creates
    something is not, since it may have gone through.
    """
    import json
    import urllib.error

    data = None if body is None else json.dumps(body).encode()
    read = method == "GET" or path.endswith("/filter")
    for attempt in range(6):
        req = urllib.request.Request(
            api + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            if exc.code != 503 or attempt == 5:
                raise
        except TimeoutError:
            if not read or attempt == 5:
                raise
        time.sleep(1 + attempt)
    raise AssertionError("unreachable")


def prefect_env(home: Path, api_url: str | None = None) -> dict[str, str]:
    """The environment of a process that talks to one test's Prefect server (or none)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PATH=f"{BIN}:{env.get('PATH', '')}",
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        GX_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
    )
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def start_prefect_server(home: Path, log_path: Path) -> tuple[subprocess.Popen, str]:
    """`prefect server start` on a free loopback port with its own PREFECT_HOME; the UI told to
    call that port's API (its default is port 4200 whatever --port says)."""
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = prefect_env(home) | {"PREFECT_UI_API_URL": api}
    log = open(log_path, "w")  # noqa: SIM115 - the process owns it until it ends
    proc = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 300  # minutes on a 2-core machine busy with other tests
    while True:
        try:
            with urllib.request.urlopen(f"{api}/health", timeout=5) as resp:
                if resp.status == 200:
                    return proc, api
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            raise RuntimeError(f"prefect server did not start:\n{log_path.read_text()}")
        time.sleep(0.5)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
def prefect_server(tmp_path: Path) -> Iterator[str]:
    """A real Prefect server on loopback for one test; yields its API URL."""
    proc, api = start_prefect_server(tmp_path / "prefect-server-home", tmp_path / "server.log")
    try:
        yield api
    finally:
        stop(proc)


@pytest.fixture(autouse=True)
def own_pipeline_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test's CLI commands and flows lock a file of their own: tests run side by side
    (pytest-xdist) and must neither wait for each other nor for a run in the checkout."""
    monkeypatch.setenv("RECSYS_LOCK_FILE", str(tmp_path / "pipeline.lock"))


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """The tests' tensors are tiny: a second thread only adds contention on a 2-core machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def synthetic_features(
    root: Path,
    n_users: int,
    n_items: int,
    n_interactions: int,
    seed: int,
    params: Any = None,
    users: Any = None,
) -> Any:
    """synth -> features (no validation) -> FeatureData, the way the train stage loads it.

    `users`, a polars frame, becomes the interim users.parquet (for user-feature tests).
    """
    from tasks.feature_store import load_features
    from tasks.features import build_features
    from tasks.params import FeaturesParams
    from tasks.synth import synthesize

    synthesize(root / "interim", n_users, n_items, n_interactions, seed=seed)
    if users is not None:
        users.write_parquet(root / "interim" / "users.parquet")
    build_features(root / "interim", root / "features", params or FeaturesParams(), 0, None)
    return load_features(root / "features")


def quiet_trainer(max_epochs: int) -> Any:
    """A CPU Lightning Trainer with no logger, checkpoints, bars or sanity check."""
    import lightning

    return lightning.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
