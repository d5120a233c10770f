"""What every benchmark script shares: timing a child process and naming the machine."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path


def run_timed(
    cmd: list[str], log: Path | None = None, cwd: Path | None = None
) -> tuple[float, float]:
    """Wall seconds and peak RSS (GiB) of one child process, from the kernel's rusage of it;
    a non-zero exit stops the benchmark with the command's output."""
    wall, rss, code, detail = _run(cmd, log, cwd)
    if code != 0:
        raise SystemExit(f"benchmark command failed: {' '.join(cmd)}\n{detail}")
    return wall, rss


def run_status(cmd: list[str], log: Path, cwd: Path | None = None) -> tuple[float, float, int]:
    """Wall seconds, peak RSS (GiB) and exit status of one child process writing to `log`: for a
    benchmark that records a failed stage and goes on instead of stopping (bench_scale.py
    --pipeline)."""
    wall, rss, code, _ = _run(cmd, log, cwd)
    return wall, rss, code


def _run(cmd: list[str], log: Path | None, cwd: Path | None) -> tuple[float, float, int, str]:
    out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=out, stderr=subprocess.STDOUT if log else subprocess.PIPE, cwd=cwd
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if log:
        out.close()
    detail = (
        log.read_text()[-3000:] if log else (proc.stderr.read().decode() if proc.stderr else "")
    )
    return wall, usage.ru_maxrss / 1024**2, proc.returncode, detail  # ru_maxrss: KiB on Linux


def machine() -> str:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    py = platform.python_version()
    return f"{platform.machine()}, {os.cpu_count()} cores, {mem:.0f} GiB, Python {py}"


def torch_info() -> str:
    """torch's version and thread count, which every training figure depends on."""
    import torch

    return f"torch {torch.__version__} ({torch.get_num_threads()} threads)"


def write_results(folder: Path, name: str, result: dict, table: str) -> None:
    """A benchmark's figures as bench/results/<name>.json and its markdown table <name>.md."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (folder / f"{name}.md").write_text(table)


def code_version() -> str:
    """The commit a run's figures come from, with "+changes" when the code or parameters in
    the working tree differ from it (so a row measured before a commit says so)."""
    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=False
        ).stdout.strip()

    changed = git("status", "--porcelain", "--", "recsys_models", "tasks", "cli", "params.yaml")
    return (git("rev-parse", "--short", "HEAD") or "unknown") + ("+changes" if changed else "")
