"""The benchmark's own machinery: a training setting's rows sit beside the default ones, and the
compiled load generator counts what a real HTTP server on loopback answered."""

from __future__ import annotations

import http.server
import json
import shutil
import threading
from pathlib import Path

import pytest

from bench import bench_scale, bench_serve


def stage_row(stage: str, seconds: float, **extra) -> dict:
    return {"stage": stage, "status": "ok", "wall_s": seconds, "peak_rss_gib": 1.0} | extra


def pipeline_result(stages: list[dict]) -> dict:
    size = {"interactions": 1000, "users": 10, "items": 20}
    return {
        "benchmark": bench_scale.PIPELINE,
        "date": "2026-12-07T00:00:00+00:00",
        "size": size,
        "features": {},
        "load_avg_1m": [0.0, 0.0],
        "stages": stages,
    }


def test_a_rerun_with_a_setting_sits_beside_the_default_row_and_replaces_only_its_own(
    tmp_path: Path,
):
    path = tmp_path / "scale_pipeline.json"
    earlier = [stage_row("features", 5.0), stage_row("train_sasrec", 700.0)]
    path.write_text(json.dumps(pipeline_result(earlier)))
    bf16 = {"train.precision": "bf16-mixed"}
    first = bench_scale.merged(
        path, pipeline_result([stage_row("train_sasrec", 540.0, settings=bf16)])
    )
    path.write_text(json.dumps(first))
    again = bench_scale.merged(
        path, pipeline_result([stage_row("train_sasrec", 530.0, settings=bf16)])
    )
    rows = [(row["stage"], row["wall_s"], row.get("settings")) for row in again["stages"]]
    assert rows == [
        ("features", 5.0, None),
        ("train_sasrec", 700.0, None),
        ("train_sasrec", 530.0, bf16),
    ]
    assert [rerun["stages"] for rerun in again["reruns"]] == [["train_sasrec"], ["train_sasrec"]]


def test_settings_are_read_as_yaml_values_and_a_missing_value_is_refused():
    assert bench_scale.parse_setting("train.precision=bf16-mixed") == (
        "train.precision",
        "bf16-mixed",
    )
    assert bench_scale.parse_setting("train.validation_users=5000") == (
        "train.validation_users",
        5000,
    )
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        bench_scale.parse_setting("train.precision")


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_the_compiled_load_generator_counts_answers_and_errors_of_a_real_server():
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the service answers

        def do_GET(self):  # noqa: N802 (the standard library's name)
            body = b'{"ok": true}'
            self.send_response(200 if "good" in self.path else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        row = bench_serve.load(port, ["good", "bad"], clients=2, seconds=1.0)
    finally:
        server.shutdown()
        server.server_close()
    # client 0 always asks for /recommend/good, client 1 for /recommend/bad
    assert row["requests"] > 0 and row["errors"] > 0
    assert row["requests_per_s"] > 0 and row["p50_ms"] <= row["p99_ms"]
    assert row["client"] == "bench/loadgen.c"
