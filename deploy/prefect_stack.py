"""`make prefect`: a local Prefect stack for this project, in one command.

1. a Prefect server on 127.0.0.1:PORT (reused when one already answers there),
2. the process work pool (created when missing),
3. the deployments of deploy/prefect.yaml (deploy/prefect_deploy.py),
4. a worker polling that pool; flow runs start in this project folder.
Then it prints the UI's address and waits; Ctrl-C stops the worker and the server it started.
Server data (runs, artifacts, schedules) lives in PREFECT_HOME (default ~/.prefect).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

BIN = Path(sys.executable).parent
HERE = Path(__file__).resolve().parent


def healthy(api: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api}/health", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def start_server(host: str, port: int, env: dict[str, str], timeout_s: float = 120):
    """Start `prefect server start` unless a server already answers; None when reused."""
    api = f"http://{host}:{port}/api"
    if healthy(api):
        print(f"a Prefect server already answers on {api}: using it")
        return None
    proc = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", host, "--port", str(port)], env=env
    )
    deadline = time.monotonic() + timeout_s
    while not healthy(api):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.terminate()
            raise SystemExit(f"the Prefect server did not start on {api}")
        time.sleep(0.5)
    return proc


def ensure_pool(pool: str, env: dict[str, str]) -> None:
    prefect = str(BIN / "prefect")
    found = subprocess.run(
        [prefect, "work-pool", "inspect", pool], env=env, capture_output=True, text=True
    )
    if found.returncode != 0:
        subprocess.run(
            [prefect, "work-pool", "create", pool, "--type", "process"], env=env, check=True
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4200)
    parser.add_argument("--pool", default="recsys-process", help="process work pool name")
    parser.add_argument("--project-dir", default=".", help="where flow runs start")
    parser.add_argument("--no-worker", action="store_true", help="register, start no worker")
    args = parser.parse_args(argv)
    # `make prefect &` or a service manager stops with SIGTERM: clean up as on Ctrl-C.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)

    api = f"http://{args.host}:{args.port}/api"
    env = dict(os.environ)
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    env["PREFECT_API_URL"] = api
    env["PREFECT_UI_API_URL"] = api  # the UI calls this API, whatever port was chosen
    server = start_server(args.host, args.port, env)
    worker = None
    try:
        ensure_pool(args.pool, env)
        subprocess.run(
            [
                sys.executable,
                str(HERE / "prefect_deploy.py"),
                "--project-dir",
                args.project_dir,
                "--pool",
                args.pool,
            ],
            env=env,
            check=True,
        )
        if not args.no_worker:
            worker = subprocess.Popen(
                [str(BIN / "prefect"), "worker", "start", "--pool", args.pool, "--type", "process"],
                env=env,
                cwd=args.project_dir,
            )
        print(f"\nPrefect UI: http://{args.host}:{args.port}  (API {api})")
        print("Deployments -> recsys-pipeline/full -> Run -> Quick run. Ctrl-C stops the stack.\n")
        if server is None and worker is None:
            return 0
        while True:
            for name, proc in (("server", server), ("worker", worker)):
                if proc is not None and proc.poll() is not None:
                    print(f"the Prefect {name} stopped (exit {proc.returncode})")
                    return 1
            time.sleep(1)
    except KeyboardInterrupt:
        return 0
    finally:
        for proc in (worker, server):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()


if __name__ == "__main__":
    sys.exit(main())
