"""Register the deployments declared in deploy/prefect.yaml with a Prefect server.

    PREFECT_API_URL=http://127.0.0.1:4200/api python -m deploy.prefect_deploy [--project-dir .]

deploy/prefect.yaml stays the one declaration (names, entrypoints, parameters, schedules, work
pool); this script only reads it. Why not `prefect deploy --all --prefect-file ...`: with
prefect 3.8.8 the CLI creates the first deployment and then stops with a 422, because after
each deployment it asks the server for the pool's workers with `limit: null`, which this server
refuses (the same client/server mismatch tests/test_pipeline_e2e.py works around).

Flow runs start in the project folder (a `set_working_directory` pull step to
--project-dir), so the flows find params.yaml and the data where `make prefect` was run.
A deployment that already exists keeps its schedules unless --reset-schedules is given: a
schedule changed in the UI survives `make prefect`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
DEFAULT_FILE = HERE / "prefect.yaml"


def read_config(path: str | Path = DEFAULT_FILE) -> list[dict[str, Any]]:
    """The `deployments:` entries of a prefect.yaml."""
    config = yaml.safe_load(Path(path).read_text()) or {}
    deployments = config.get("deployments") or []
    if not deployments:
        raise SystemExit(f"{path}: no deployments declared")
    return deployments


def _schedules(entry: dict[str, Any]) -> list[Any]:
    from prefect.schedules import Cron

    found = []
    for item in entry.get("schedules") or []:
        if "cron" not in item:
            raise SystemExit(f"deployment {entry['name']}: only cron schedules are supported")
        found.append(
            Cron(item["cron"], timezone=item.get("timezone"), active=item.get("active", True))
        )
    return found


def register(
    entry: dict[str, Any], project_dir: Path, pool: str | None, reset_schedules: bool
) -> tuple[str, str]:
    """Create or update one deployment; return its full name and id."""
    from prefect import Flow
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    flow = Flow.from_source(source=str(project_dir), entrypoint=entry["entrypoint"])
    full_name = f"{flow.name}/{entry['name']}"
    with get_client(sync_client=True) as client:
        try:
            client.read_deployment_by_name(full_name)
            exists = True
        except ObjectNotFound:
            exists = False
    work_pool = entry.get("work_pool") or {}
    kwargs: dict[str, Any] = {
        "name": entry["name"],
        "parameters": entry.get("parameters") or {},
        "description": entry.get("description"),
        "tags": entry.get("tags") or [],
        "work_pool_name": pool or work_pool.get("name"),
        "work_queue_name": work_pool.get("work_queue_name"),
        "job_variables": work_pool.get("job_variables") or {},
    }
    if entry.get("concurrency_limit"):
        kwargs["concurrency_limit"] = entry["concurrency_limit"]
    if not exists or reset_schedules:
        kwargs["schedules"] = _schedules(entry)
    deployment_id = flow.to_deployment(**kwargs).apply()
    return full_name, str(deployment_id)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", default=str(DEFAULT_FILE), help="the prefect.yaml to read")
    parser.add_argument(
        "--project-dir", default=".", help="where flow runs start (params.yaml is there)"
    )
    parser.add_argument("--pool", help="work pool for every deployment (default: the file's)")
    parser.add_argument(
        "--reset-schedules",
        action="store_true",
        help="overwrite schedules edited in the UI with the file's",
    )
    args = parser.parse_args(argv)
    project = Path(args.project_dir).resolve()
    for entry in read_config(args.file):
        name, deployment_id = register(entry, project, args.pool, args.reset_schedules)
        print(f"deployment {name} registered ({deployment_id})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
