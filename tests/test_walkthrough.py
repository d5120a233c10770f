"""The README's "Walkthrough: your CSV to a served model", followed as written in a project
folder under tmp_path: its yaml block becomes the ingest section of params.yaml, its bash
block runs line by line (only the service's port is changed, to a free one), on a generated
log and catalogue in the files and columns the yaml names. A README edit that breaks the
walkthrough breaks this test.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from tests.conftest import free_port, stop

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TITLE = "### Walkthrough: your CSV to a served model"
T0_MS = 1_700_000_000_000
CATEGORIES = ["Skin Care", "Make-up", "Hair", "Fragrance", "Bath & Body", "Nails"]


def walkthrough_blocks() -> dict[str, list[str]]:
    """The fenced blocks of the walkthrough subsection, by language."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert TITLE in text, f"README.md has no {TITLE!r}"
    section = text.split(TITLE, 1)[1]
    section = re.split(r"\n#{2,3} ", section, maxsplit=1)[0]
    blocks: dict[str, list[str]] = {}
    for lang, body in re.findall(r"^```(\w*)\n(.*?)^```", section, re.M | re.S):
        blocks.setdefault(lang, []).append(body)
    return blocks


def merged(base: dict, update: dict) -> dict:
    """`base` with `update`'s keys written over it, nested mappings key by key: what a user
    does who edits only the keys the README shows."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def write_log(path: Path, ingest: dict, known_user: str, seed: int = 0) -> None:
    """Power-law user activity and item popularity, string ids (u1, B0003), times in epoch
    milliseconds, in the columns and delimiter the ingest section names; `known_user` (the
    one the README asks the service about) has a long history."""
    rng = np.random.default_rng(seed)
    n_users, n_items = 400, 60
    cols = ingest["columns"]
    popularity = 1.0 / np.arange(1, n_items + 1) ** 1.1
    popularity /= popularity.sum()
    rows = []
    for u in range(1, n_users + 1):
        user = f"u{u}"
        if user == known_user:
            items = rng.permutation(n_items)[:30]
        else:
            count = int(min(rng.zipf(1.5), 50))
            items = rng.choice(n_items, size=count, p=popularity)
        start = T0_MS + int(rng.integers(0, 10**9))
        for k, item in enumerate(items):
            rows.append([user, f"B{int(item):04d}", start + 60_000 * k, int(rng.integers(1, 6))])
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter=ingest.get("sep") or ",")
        writer.writerow([cols["user"], cols["item"], cols["time"], cols["rating"]])
        writer.writerows(rows)


def write_items(path: Path, items: dict, n_items: int = 60) -> list[str]:
    """The catalogue: a title and one to three categories per item; returns the ids."""
    cols = items["columns"]
    ids = [f"B{i:04d}" for i in range(n_items)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter=items.get("sep") or ",")
        writer.writerow([cols["id"], cols["title"], cols["categories"]])
        for i, item in enumerate(ids):
            cats = [CATEGORIES[(i + k) % len(CATEGORIES)] for k in range(1 + i % 3)]
            title = f"{CATEGORIES[i % len(CATEGORIES)]} product {i}"
            writer.writerow([item, title, items["list_sep"].join(cats)])
    return ids


def wait_ready(url: str, proc: subprocess.Popen, log: Path, deadline_s: float = 300) -> None:
    """Until the service answers 200 on /readyz (a model is loaded)."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=5) as resp:
                if resp.status == 200:
                    return
        except (OSError, urllib.error.HTTPError):
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"the service never got ready:\n{log.read_text()}")
        time.sleep(0.5)


def run(line: str, cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(
        ["bash", "-c", line], cwd=cwd, env=env, capture_output=True, text=True, timeout=1800
    )
    assert done.returncode == 0, f"{line}\nexit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def fetch_json(line: str, cwd: Path, env: dict[str, str]) -> Any:
    """The curl line as written where curl exists, else the same GET with urllib."""
    if shutil.which("curl", path=env["PATH"]):
        return json.loads(run(line, cwd, env))
    url = re.search(r"'([^']+)'", line).group(1)
    with urllib.request.urlopen(f"http://{url}", timeout=30) as resp:
        return json.loads(resp.read())


@pytest.mark.slow
def test_the_readme_walkthrough_runs_as_written(tmp_path: Path) -> None:
    blocks = walkthrough_blocks()
    assert len(blocks.get("yaml", [])) == 1 and len(blocks.get("bash", [])) >= 1, blocks.keys()
    readme_params = yaml.safe_load(blocks["yaml"][0])
    lines = [
        line.strip() for block in blocks["bash"] for line in block.splitlines() if line.strip()
    ]
    curl = [line for line in lines if line.startswith("curl ")]
    assert len(curl) == 1, "the walkthrough asks the service once"
    known_user = re.search(r"/recommend/([^?'\s]+)", curl[0]).group(1)

    project = tmp_path / "project"
    project.mkdir()
    params = merged(yaml.safe_load((ROOT / "params.yaml").read_text()), readme_params)
    (project / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True))
    ingest = params["ingest"]
    write_log(project / ingest["path"], ingest, known_user)
    catalogue = set(write_items(project / ingest["items"]["path"], ingest["items"]))

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PATH=f"{BIN}:{env.get('PATH', '')}",
        PYTHONPATH=str(ROOT),  # this checkout's code, whatever the installed package points to
        RECSYS_LOCK_FILE=str(tmp_path / "pipeline.lock"),
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        GX_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
    )
    port, service, log = None, None, tmp_path / "serve.log"
    try:
        for line in lines:
            if port is not None:
                line = line.replace(f"localhost:{port}", f"localhost:{env['TEST_PORT']}")
            if re.search(r"&\s*(#.*)?$", line):  # the service, in the background
                port = re.search(r"--port (\d+)", line).group(1)
                env["TEST_PORT"] = str(free_port())
                command = re.sub(r"\s*&\s*(#.*)?$", "", line).replace(
                    f"--port {port}", f"--port {env['TEST_PORT']}"
                )
                with log.open("w") as out:
                    service = subprocess.Popen(
                        ["bash", "-c", f"exec {command}"],
                        cwd=project,
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                wait_ready(f"http://127.0.0.1:{env['TEST_PORT']}", service, log)
            elif line.startswith("curl "):
                assert service is not None, "curl before the service starts"
                answer = fetch_json(line, project, env)
            else:
                run(line, project, env)
    finally:
        if service is not None:
            stop(service)

    assert (project / "reports/evaluation/report.html").is_file()
    assert (project / "data/interim/interactions.parquet").is_file()  # in the project, not ROOT
    promoted = next(line.split()[2] for line in lines if line.startswith("recsys promote "))
    assert answer["model"] == promoted and answer["fallback"] is False, answer
    served = [item["item_id"] for item in answer["items"]]
    k = int(re.search(r"[?&]k=(\d+)", curl[0]).group(1))
    assert len(served) == k and set(served) <= catalogue, served
