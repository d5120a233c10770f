"""Serving benchmark: SASRec on MovieLens-100K, onnxruntime against torch eager, then HTTP.

1. In process, on held-out users' histories (left-padded to max_seq_len): per-request latency
   p50/p99 at batch 1, and throughput (users scored per second) at batch 256, for torch eager
   (`net.score`) and for the exported model.onnx in onnxruntime. Batch 1 runs single-threaded
   (as the server runs each request); batch 256 runs with one thread and with every core (on a
   machine whose cores are busy with other work, torch's extra threads can cost far more than
   they give, which the two rows show).
2. End to end: `python -m deploy.service` in its own process on loopback, and a closed-loop load
   generator (bench/loadgen.c, compiled with the machine's cc for each measurement; wrk and locust
   are not installed here): one persistent keep-alive connection per concurrent client, sending
   GET /recommend/{user_id}?k=10 for known users in turn, at each concurrency level: latency
   p50/p99 and requests per second. Client and server share the machine's cores; the compiled
   client takes a few microseconds of them a request (a Python one took about as much CPU as
   the server).

Each measurement runs for --duration seconds (the issue asks for 30). The model is exported
into a temporary artifacts folder and promoted there; the real artifacts/ is never touched.
Writes bench/results/serve.json and serve.md.

    python bench/bench_serve.py                      # models/sasrec, 30 s per measurement
    python bench/bench_serve.py --duration 5 --models-dir /tmp/m
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.common import machine, torch_info, write_results  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sasrec", help="a folder of --models-dir")
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--features", type=Path, default=ROOT / "data" / "features")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per measurement")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--batch", type=int, default=256, help="throughput batch size")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if not (args.models_dir / args.model / "weights.pt").is_file():
        raise SystemExit(
            f"{args.models_dir / args.model}: no trained model; run "
            f"`recsys train --model {args.model}` (or `dvc repro train@{args.model}`) first"
        )

    from tasks.export import export
    from tasks.registry import promote

    load_before = os.getloadavg()[0]
    machine_info = f"{machine()}, {torch_info()}"  # before the benchmark changes thread counts
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        artifacts = Path(tmp) / "artifacts"
        manifest = export(args.model, args.models_dir, args.features, artifacts)
        promote(artifacts, args.model, manifest["version"], "benchmark")
        folder = artifacts / args.model / manifest["version"]
        in_process = bench_in_process(args, folder)
        http_rows = bench_http(args, artifacts, folder)
    result = {
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_info,
        "model": args.model,
        "models_dir": str(args.models_dir),
        "version": manifest["version"],
        "features": str(args.features),
        "duration_s": args.duration,
        "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "parity": {k: manifest["parity"][k] for k in ("max_abs_diff", "top10_agreement", "rows")},
        "in_process": in_process,
        "http": http_rows,
        "load_generator": LOAD_GENERATOR,
    }
    write_results(args.out, "serve", result, markdown(result))
    print(markdown(result))


# --- in process -------------------------------------------------------------------------------


def bench_in_process(args: argparse.Namespace, folder: Path) -> list[dict]:
    import onnxruntime as ort
    import torch

    from tasks.feature_store import load_features
    from tasks.model_store import load_model

    data = load_features(args.features)
    net = load_model(args.models_dir / args.model, data).eval()
    users = np.flatnonzero(data.test_target > 0)
    rows = np.ascontiguousarray(data.test_input[users], dtype=np.int64)
    batch = np.resize(rows, (args.batch, rows.shape[1]))  # repeats rows if there are fewer
    cores = os.cpu_count() or 1

    def session(threads: int):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        return ort.InferenceSession(str(folder / "model.onnx"), options)

    def eager(history: np.ndarray):
        with torch.no_grad():
            return net.score(torch.zeros(len(history), dtype=torch.long), torch.from_numpy(history))

    results = []
    for runtime in ("torch eager", "onnxruntime"):
        for size, threads in ((1, 1), (args.batch, 1), (args.batch, cores)):
            torch.set_num_threads(threads)
            if runtime == "onnxruntime":
                sess = session(threads)

                def call(h, sess=sess):
                    return sess.run(None, {"history": h})

            else:
                call = eager
            inputs = [rows[i : i + 1] for i in range(len(rows))] if size == 1 else [batch]
            times = timed_loop(call, inputs, args.duration)
            row = {
                "runtime": runtime,
                "batch": size,
                "threads": threads,
                "calls": len(times),
                "p50_ms": round(float(np.percentile(times, 50)) * 1000, 4),
                "p99_ms": round(float(np.percentile(times, 99)) * 1000, 4),
                "users_per_s": round(size * len(times) / float(np.sum(times)), 1),
            }
            print(row, flush=True)
            results.append(row)
    return results


def timed_loop(call, inputs: list[np.ndarray], seconds: float) -> np.ndarray:
    """Call on the inputs in turn for `seconds` (after a short warm-up); each call's seconds."""
    for i in range(10):
        call(inputs[i % len(inputs)])
    times, end, i = [], time.perf_counter() + seconds, 0
    while time.perf_counter() < end:
        start = time.perf_counter()
        call(inputs[i % len(inputs)])
        times.append(time.perf_counter() - start)
        i += 1
    return np.asarray(times)


# --- HTTP -------------------------------------------------------------------------------------


def bench_http(
    args: argparse.Namespace, artifacts: Path, folder: Path, workers: int = 1
) -> list[dict]:
    """The service (`workers` processes) under a closed loop at each --concurrency."""
    import polars as pl

    users = pl.read_parquet(folder / "user_map.parquet")["user_id"].cast(pl.Utf8).to_list()
    port = free_port()
    cmd = [sys.executable, "-m", "deploy.service", "--artifacts", str(artifacts)]
    cmd += ["--port", str(port), "--log-level", "warning", "--workers", str(workers)]
    proc = subprocess.Popen(cmd, cwd=ROOT)
    try:
        wait_ready(port, proc)
        rows = []
        for clients in args.concurrency:
            row = {"workers": workers} | load(port, users, clients, args.duration)
            print(row, flush=True)
            rows.append(row)
        return rows
    finally:
        proc.terminate()
        proc.wait(timeout=20)


LOAD_GENERATOR = "closed loop, one keep-alive connection per client, bench/loadgen.c (compiled)"


def load(port: int, users: list[str], clients: int, seconds: float) -> dict:
    """`clients` keep-alive connections, each sending its next request as soon as the last one
    is answered (bench/loadgen.c: a compiled client, so that its own CPU, taken from the cores
    the server runs on, stays small)."""
    with tempfile.TemporaryDirectory(prefix="loadgen-") as tmp:
        paths = Path(tmp) / "paths.txt"
        paths.write_text("".join(f"/recommend/{quote(user)}?k=10\n" for user in users))
        command = [str(compile_loadgen(Path(tmp))), str(port), str(seconds), str(clients)]
        out = subprocess.run([*command, str(paths)], capture_output=True, text=True, check=True)
    out = out.stdout
    head, *lines = out.splitlines()
    requests, errors, wall = head.split()
    times = np.asarray(lines, dtype=np.float64) / 1000
    return {
        "concurrency": clients,
        "client": "bench/loadgen.c",
        "requests": int(requests),
        "errors": int(errors),
        "requests_per_s": round(int(requests) / float(wall), 1),
        "p50_ms": round(float(np.percentile(times, 50)), 3) if len(times) else None,
        "p99_ms": round(float(np.percentile(times, 99)), 3) if len(times) else None,
    }


def compile_loadgen(folder: Path) -> Path:
    """bench/loadgen.c compiled into `folder` (a fraction of a second)."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise SystemExit("error: the HTTP load needs a C compiler (cc) for bench/loadgen.c")
    binary = folder / "loadgen"
    source = ROOT / "bench" / "loadgen.c"
    subprocess.run([compiler, "-O2", "-pthread", "-o", str(binary), str(source)], check=True)
    return binary


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port: int, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("deploy.service exited before it was ready")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise SystemExit("deploy.service was not ready in time")


# --- report -----------------------------------------------------------------------------------


def tables(r: dict) -> dict[str, str]:
    """The markdown blocks of bench/results/serve.json, keyed by id: the .md and the README's
    generated blocks (bench/tables.py) come from this one function, so they cannot drift."""
    in_process = [
        "| runtime | batch | threads | p50 ms | p99 ms | users/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in r["in_process"]:
        in_process.append(
            f"| {row['runtime']} | {row['batch']} | {row['threads']} | {row['p50_ms']} "
            f"| {row['p99_ms']} | {row['users_per_s']:,} |"
        )
    http = [
        "| concurrency | requests | errors | requests/s | p50 ms | p99 ms |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in r["http"]:
        http.append(
            f"| {row['concurrency']} | {row['requests']:,} | {row['errors']} "
            f"| {row['requests_per_s']:,} | {row['p50_ms']} | {row['p99_ms']} |"
        )
    return {
        "setup": f"Machine: {r['machine']}. Model: {r['models_dir']}/{r['model']} (version "
        f"{r['version']}) on {r['features']}; "
        f"{r['duration_s']:g} s per measurement; 1-minute load average {r['load_avg_1m'][0]} "
        f"before, {r['load_avg_1m'][1]} after. Parity of the graph: max abs diff "
        f"{r['parity']['max_abs_diff']:.2g}, same top-10 for {r['parity']['top10_agreement']:.4f}"
        f" of {r['parity']['rows']} rows.",
        "in_process": "\n".join(in_process),
        "http": "\n".join(http),
    }


def markdown(r: dict) -> str:
    t = tables(r)
    return (
        f"{t['setup']}\n\n{t['in_process']}\n\n"
        f"HTTP, GET /recommend/{{user_id}}?k=10 on loopback ({r['load_generator']}):\n\n"
        f"{t['http']}\n"
    )


if __name__ == "__main__":
    main()
