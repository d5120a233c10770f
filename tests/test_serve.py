"""The HTTP service, run as a real uvicorn subprocess on a loopback port against a temporary
artifacts folder: every endpoint, the fallback, 4xx answers, hot reload under load, a
corrupted champion refused while the running one keeps serving (or, at start, the newest good
version served instead), and the limits that keep hostile clients from exhausting the process:
body size, header and idle timeouts, strict integers."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import polars as pl
import psutil
import pytest

from deploy import service
from tasks import export as export_stage
from tasks import registry
from tasks import train as train_stage
from tasks.io import file_sha256, write_json
from tasks.params import FeaturesParams, load_params
from tests.conftest import free_port, synthetic_features

SMALL = {
    "train.accelerator": "cpu",
    "train.max_epochs": 1,
    "train.sasrec": {"hidden": 16, "batch_size": 256},
    "train.two_tower": {"dim": 16, "hidden": 32, "batch_size": 256, "history_len": 8},
}
MODELS = ("sasrec", "popularity", "two_tower")
MAX_HISTORY = 40
ROOT = Path(__file__).resolve().parents[1]  # deploy/ is run from the repository root


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Tiny features, three models trained and exported once: {name: version folder}."""
    root = tmp_path_factory.mktemp("serve")
    params = FeaturesParams(min_user_interactions=1, min_item_interactions=1, max_seq_len=12)
    synthetic_features(root, 100, 60, 2_500, seed=2, params=params)
    train_params = load_params(root / "absent.yaml", SMALL)
    folders = {}
    for name in MODELS:
        train_stage.train(name, root / "features", root / "models" / name, train_params)
        manifest = export_stage.export(
            name, root / "models", root / "features", root / "artifacts", latency_calls=5
        )
        folders[name] = root / "artifacts" / name / manifest["version"]
    return folders


def fresh_artifacts(exported: dict, tmp_path: Path, champion: str | None) -> Path:
    """A copy of the exported versions in a folder of the test's own, `champion` promoted."""
    artifacts = tmp_path / "artifacts"
    for name, src in exported.items():
        shutil.copytree(src, artifacts / name / src.name)
    if champion:
        registry.promote(artifacts, champion, exported[champion].name, "test")
    return artifacts


@contextlib.contextmanager
def server(artifacts: Path, log: Path, *extra: str) -> Iterator[httpx.Client]:
    """`python -m deploy.service` on a free loopback port (`extra`: more command-line
    options); yields a client bound to it."""
    port = free_port()
    cmd = [sys.executable, "-m", "deploy.service", "--artifacts", str(artifacts)]
    cmd += ["--port", str(port), "--poll", "0.2", "--max-history", str(MAX_HISTORY), *extra]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.TransportError):
                if client.get("/healthz").status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"service did not start:\n{log.read_text()}")
            time.sleep(0.2)
        yield client
    finally:
        client.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def wait_for(predicate, seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.1)


class Maps:
    """The artifact's id maps and histories, to check answers in the original id space."""

    def __init__(self, folder: Path):
        items = pl.read_parquet(folder / "item_map.parquet")
        users = pl.read_parquet(folder / "user_map.parquet")
        self.item_idx = dict(zip(items["item_id"], items["item_idx"], strict=True))
        self.item_id = {v: k for k, v in self.item_idx.items()}
        self.user_idx = dict(zip(users["user_id"], users["user_idx"], strict=True))
        self.indptr = np.load(folder / "seen_indptr.npy")
        self.seen = np.load(folder / "seen_items.npy")
        self.popularity = np.load(folder / "popularity.npy")

    def seen_ids(self, user_id: str) -> set[str]:
        u = self.user_idx[user_id]
        return {self.item_id[int(i)] for i in self.seen[self.indptr[u] : self.indptr[u + 1]]}


@pytest.fixture(scope="module")
def sasrec_server(exported: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("sasrec_server")
    artifacts = fresh_artifacts(exported, tmp, "sasrec")
    with server(artifacts, tmp / "serve.log") as client:
        yield {"client": client, "folder": exported["sasrec"], "maps": Maps(exported["sasrec"])}


def test_serving_never_imports_torch():
    code = "import sys, deploy.service, tasks.artifact_store; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_health_ready_and_known_user(sasrec_server: dict):
    client, maps = sasrec_server["client"], sasrec_server["maps"]
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["ready"] and ready["model"] == "sasrec"
    assert ready["version"] == sasrec_server["folder"].name
    user = next(iter(maps.user_idx))
    body = client.get(f"/recommend/{user}", params={"k": 7}).json()
    assert body["fallback"] is False and body["user_id"] == user and body["model"] == "sasrec"
    ids = [item["item_id"] for item in body["items"]]
    assert len(ids) == 7 == len(set(ids)) and set(ids) <= set(maps.item_idx)
    assert not set(ids) & maps.seen_ids(user)  # nothing the user has seen
    scores = [item["score"] for item in body["items"]]
    assert scores == sorted(scores, reverse=True)
    assert {"title", "genres"} <= set(body["items"][0])


def test_unknown_user_gets_the_popularity_fallback(sasrec_server: dict):
    client, maps = sasrec_server["client"], sasrec_server["maps"]
    body = client.get("/recommend/no-such-user", params={"k": 5}).json()
    assert body["fallback"] is True and body["reason"] == "unknown user"
    order = np.lexsort((np.arange(len(maps.popularity)), -maps.popularity))
    expected = [maps.item_id[int(i)] for i in order if i != 0][:5]
    assert [item["item_id"] for item in body["items"]] == expected


def test_post_history_matches_the_onnx_graph_offline(sasrec_server: dict):
    client, maps, folder = sasrec_server["client"], sasrec_server["maps"], sasrec_server["folder"]
    sent = [maps.item_id[i] for i in (3, 1, 4, 1, 5)]
    body = client.post("/recommend", json={"items": sent, "k": 10}).json()
    assert body["fallback"] is False
    got = [item["item_id"] for item in body["items"]]
    assert not set(got) & set(sent)
    session = ort.InferenceSession(str(folder / "model.onnx"))
    scores = session.run(None, {"history": np.array([[3, 1, 4, 1, 5]], dtype=np.int64)})[0][0]
    scores[[0, 3, 1, 4, 5]] = -np.inf
    expected = [maps.item_id[int(i)] for i in np.argsort(-scores, kind="stable")[:10]]
    assert got == expected
    # ids may be sent as numbers too; an empty history is the fallback
    numeric = [int(s) for s in sent if s.isdigit()]
    if len(numeric) == len(sent):
        assert client.post("/recommend", json={"items": numeric}).status_code == 200
    empty = client.post("/recommend", json={"items": []}).json()
    assert empty["fallback"] is True and empty["reason"] == "empty history"


def test_genre_filters_on_get_and_post(sasrec_server: dict):
    client, maps = sasrec_server["client"], sasrec_server["maps"]
    user = next(iter(maps.user_idx))
    items = client.get(f"/recommend/{user}", params={"k": 50}).json()["items"]
    genres = [g for item in items for g in item["genres"]]
    assert genres, "the synthetic catalogue has genres: some recommended item must carry one"
    genre = genres[0]
    body = client.get(f"/recommend/{user}", params={"k": 10, "include_genres": genre}).json()
    assert body["items"] and all(genre in item["genres"] for item in body["items"])
    body = client.get(f"/recommend/{user}", params={"k": 10, "exclude_genres": genre}).json()
    assert all(genre not in item["genres"] for item in body["items"])
    post = {"items": [maps.item_id[1]], "k": 10, "exclude_genres": [genre]}
    assert all(
        genre not in i["genres"] for i in client.post("/recommend", json=post).json()["items"]
    )


def test_similar_items_by_cosine(sasrec_server: dict):
    client, maps, folder = sasrec_server["client"], sasrec_server["maps"], sasrec_server["folder"]
    item = maps.item_id[2]
    body = client.get(f"/items/{item}/similar", params={"k": 4}).json()
    ids = [i["item_id"] for i in body["items"]]
    assert len(ids) == 4 and item not in ids
    vectors = np.load(folder / "item_embeddings.npy")
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(1e-12)
    sims = unit @ unit[2]
    sims[[0, 2]] = -np.inf
    assert ids == [maps.item_id[int(i)] for i in np.argsort(-sims, kind="stable")[:4]]


def test_bad_requests_get_a_clear_4xx(sasrec_server: dict):
    client, maps = sasrec_server["client"], sasrec_server["maps"]
    user = next(iter(maps.user_idx))
    r = client.post("/recommend", json={"items": ["definitely-not-an-item"]})
    assert r.status_code == 400 and "unknown item id" in r.json()["detail"]
    for k in (0, 1001, "ten"):
        assert client.get(f"/recommend/{user}", params={"k": k}).status_code == 422
    assert client.post("/recommend", json={"items": [], "k": 0}).status_code == 422
    r = client.post(
        "/recommend", content=b'{"items": [', headers={"content-type": "application/json"}
    )
    assert r.status_code == 422 and "json" in r.text.lower()
    assert client.post("/recommend", json={"k": 3}).status_code == 422  # no items
    longest = {"items": [maps.item_id[1 + i % 5] for i in range(MAX_HISTORY)]}
    assert client.post("/recommend", json=longest).status_code == 200  # > max_seq_len: cut
    too_long = {"items": [maps.item_id[1]] * (MAX_HISTORY + 1)}
    r = client.post("/recommend", json=too_long)
    assert r.status_code == 400 and f"at most {MAX_HISTORY}" in r.json()["detail"]
    r = client.get(f"/recommend/{user}", params={"include_genres": "NoSuchGenre"})
    assert r.status_code == 400 and "unknown genre 'NoSuchGenre'" in r.json()["detail"]
    r = client.get("/items/nope/similar")
    assert r.status_code == 404 and "unknown item id" in r.json()["detail"]
    assert client.get("/no/such/route").status_code == 404


def test_metrics_in_prometheus_text_format(sasrec_server: dict):
    client, folder = sasrec_server["client"], sasrec_server["folder"]
    client.get("/recommend/no-such-user")
    client.post("/recommend", json={"items": ["definitely-not-an-item"]})
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert (
        'recsys_requests_total{endpoint="/recommend/{user_id}",method="GET",status="200"}' in text
    )
    assert 'recsys_requests_total{endpoint="/recommend",method="POST",status="400"}' in text
    assert 'recsys_request_duration_seconds_bucket{endpoint="/recommend/{user_id}",le=' in text
    assert f'recsys_model_info{{model="sasrec",version="{folder.name}"}} 1.0' in text
    assert 'recsys_fallback_total{reason="unknown user"}' in text


def test_no_champion_means_not_ready_until_one_is_promoted(exported: dict, tmp_path: Path):
    artifacts = fresh_artifacts(exported, tmp_path, None)
    with server(artifacts, tmp_path / "serve.log") as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 503
        r = client.get("/recommend/1")
        assert r.status_code == 503 and "no model loaded" in r.json()["detail"]
        registry.promote(artifacts, "popularity", exported["popularity"].name, "first")
        wait_for(lambda: client.get("/readyz").status_code == 200)
        assert client.get("/recommend/1").json()["model"] == "popularity"
        # popularity has no item embeddings: similar items are a clear 404
        r = client.get("/items/1/similar")
        assert r.status_code == 404 and "no item similarity" in r.json()["detail"]


def test_hot_reload_under_concurrent_requests_drops_nothing(exported: dict, tmp_path: Path):
    artifacts = fresh_artifacts(exported, tmp_path, "sasrec")
    maps = Maps(exported["sasrec"])
    users = list(maps.user_idx)[:20] + ["unknown-user"]
    history = [maps.item_id[i] for i in (1, 2, 3)]
    with server(artifacts, tmp_path / "serve.log") as client:
        url = str(client.base_url)
        stop = threading.Event()
        failures: list[str] = []
        served: Counter[str] = Counter()

        def hammer(worker: int) -> None:
            with httpx.Client(base_url=url, timeout=10) as own:
                n = 0
                while not stop.is_set():
                    n += 1
                    try:
                        if n % 2:
                            r = own.get(f"/recommend/{users[(n + worker) % len(users)]}")
                        else:
                            r = own.post("/recommend", json={"items": history, "k": 5})
                        if r.status_code != 200:
                            failures.append(f"{r.status_code} {r.text[:200]}")
                        else:
                            served[r.json()["model"]] += 1
                    except httpx.HTTPError as exc:
                        failures.append(repr(exc))

        threads = [threading.Thread(target=hammer, args=(w,)) for w in range(6)]
        for t in threads:
            t.start()
        try:
            for name in ("two_tower", "popularity", "sasrec"):
                time.sleep(0.7)
                registry.promote(artifacts, name, exported[name].name, f"swap to {name}")
                wait_for(lambda n=name: client.get("/readyz").json()["model"] == n)
            time.sleep(0.5)
        finally:
            stop.set()
            for t in threads:
                t.join()
    assert failures == []
    assert set(served) == set(MODELS) and sum(served.values()) > 50


def corrupt(path: Path) -> None:
    with open(path, "r+b") as fh:
        fh.seek(max(0, path.stat().st_size // 2))
        fh.write(b"\x00corrupted\x00" * 8)


def test_corrupted_new_champion_is_refused_and_the_old_keeps_serving(
    exported: dict, tmp_path: Path
):
    artifacts = fresh_artifacts(exported, tmp_path, "sasrec")
    old = exported["sasrec"].name
    log = tmp_path / "serve.log"
    with server(artifacts, log) as client:
        # 1. a file changed after export: its sha256 no longer matches the manifest
        bad = artifacts / "two_tower" / "v-bad-sha"
        shutil.copytree(exported["two_tower"], bad)
        corrupt(bad / "user_embedding.onnx")
        write_json({"model": "two_tower", "version": bad.name}, artifacts / "champion.json")
        wait_for(lambda: "v-bad-sha" in log.read_text())
        assert "sha256 differs" in log.read_text()

        # 2. a graph onnxruntime cannot load, with a manifest (and pointer) that agree with it
        broken = artifacts / "two_tower" / "v-bad-onnx"
        shutil.copytree(exported["two_tower"], broken)
        (broken / "user_embedding.onnx").write_bytes(b"not an onnx graph")
        manifest = json.loads((broken / "manifest.json").read_text())
        manifest["files"]["user_embedding.onnx"] = file_sha256(broken / "user_embedding.onnx")
        manifest["version"] = broken.name
        (broken / "manifest.json").write_text(json.dumps(manifest))
        pointer = {"model": "two_tower", "version": broken.name}
        write_json(
            pointer | {"manifest_sha256": file_sha256(broken / "manifest.json")},
            artifacts / "champion.json",
        )
        wait_for(lambda: "v-bad-onnx" in log.read_text())

        # 3. a champion.json that is not JSON at all
        (artifacts / "champion.json").write_text("{half a pointer")
        wait_for(lambda: "unreadable champion pointer" in log.read_text())

        body = client.get("/recommend/no-such-user").json()
        assert (body["model"], body["version"]) == ("sasrec", old)
        assert client.get("/readyz").json()["version"] == old
        text = client.get("/metrics").text
        assert 'recsys_model_reloads_total{result="refused"} 2.0' in text
        for reason in ("verify", "load", "pointer"):
            assert f'recsys_champion_refused_total{{reason="{reason}"}} 1.0' in text
        assert "recsys_champion_fallbacks_total 0.0" in text  # a model was being served
        assert f'recsys_model_info{{model="sasrec",version="{old}"}} 1.0' in text
    refusals = [line for line in log.read_text().splitlines() if "refusing champion" in line]
    assert len(refusals) == 2 and all(f"still serving sasrec/{old}" in r for r in refusals)


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """(status, body) of one HTTP/1.1 response with a Content-Length, off a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed after {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = dict(line.lower().split(":", 1) for line in lines[1:])
    length = int(fields.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), body[:length]


def wait_closed(sock: socket.socket, deadline: float) -> None:
    """Return once the server has closed `sock` (recv gives b"" or a reset); fail at
    `deadline` (time.monotonic()) if it is still open."""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError("the server kept the connection open")
        sock.settimeout(remaining)
        try:
            if not sock.recv(65536):
                return
        except ConnectionResetError:
            return
        except TimeoutError:
            raise AssertionError("the server kept the connection open") from None


def test_request_bodies_over_the_limit_get_413_before_they_are_read(sasrec_server: dict):
    client, maps = sasrec_server["client"], sasrec_server["maps"]
    limit = service.MAX_BODY_BYTES
    address = ("127.0.0.1", client.base_url.port)
    head = "POST /recommend HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
    # 1. a declared length over the limit: refused before a byte of the body is sent
    with socket.create_connection(address, timeout=30) as sock:
        sock.sendall(f"{head}Content-Length: {64 * 2**20}\r\n\r\n".encode())
        status, body = read_response(sock)
    assert status == 413 and f"at most {limit} bytes" in json.loads(body)["detail"]
    # 2. a chunked body (no length declared): refused once the bytes received pass the
    #    limit, with the request still unfinished
    with socket.create_connection(address, timeout=30) as sock:
        sock.sendall(f"{head}Transfer-Encoding: chunked\r\n\r\n".encode())
        chunk = b"%x\r\n%s\r\n" % (65536, b" " * 65536)
        for _ in range(limit // 65536 + 1):
            sock.sendall(chunk)
        status, body = read_response(sock)
    assert status == 413 and f"at most {limit} bytes" in json.loads(body)["detail"]
    # 3. a body of exactly the limit is read as usual
    payload = json.dumps({"items": [maps.item_id[1]], "k": 3}).encode()
    padded = payload + b" " * (limit - len(payload))
    r = client.post("/recommend", content=padded, headers={"content-type": "application/json"})
    assert r.status_code == 200 and len(r.json()["items"]) == 3
    # the service keeps answering, and counts the refusals
    assert client.get("/healthz").status_code == 200
    text = client.get("/metrics").text
    assert 'recsys_requests_total{endpoint="/recommend",method="POST",status="413"} 2.0' in text


def test_idle_and_slow_connections_are_closed(exported: dict, tmp_path: Path):
    artifacts = fresh_artifacts(exported, tmp_path, "popularity")
    options = ["--header-timeout", "3", "--keep-alive-timeout", "2", "--limit-concurrency", "4"]
    with server(artifacts, tmp_path / "serve.log", *options) as client:
        address = ("127.0.0.1", client.base_url.port)
        idle = [socket.create_connection(address, timeout=30) for _ in range(2)]  # send nothing
        slow = socket.create_connection(address, timeout=30)
        slow.sendall(b"GET /healthz HT")  # half a request line, then nothing
        try:
            # four connections open: the concurrency limit answers 503 (httpx's own
            # connection, if still open, only adds to it)
            with socket.create_connection(address, timeout=30) as probe:
                probe.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
                assert read_response(probe)[0] == 503
            deadline = time.monotonic() + 30
            for sock in [*idle, slow]:
                wait_closed(sock, deadline)
        finally:
            for sock in [*idle, slow]:
                sock.close()

        # after a request: idle keep-alive is closed; so is a next request whose headers stall
        kept = socket.create_connection(address, timeout=30)
        stalled = socket.create_connection(address, timeout=30)
        try:
            for sock in (kept, stalled):
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
                assert read_response(sock) == (200, b'{"status":"ok"}')
            stalled.sendall(b"GET /healthz HTTP/1.1\r\nHost: te")
            deadline = time.monotonic() + 30
            wait_closed(kept, deadline)
            wait_closed(stalled, deadline)
        finally:
            kept.close()
            stalled.close()
        assert httpx.get(client.base_url.join("/healthz"), timeout=10).status_code == 200


def test_integers_must_be_integers_and_no_value_makes_a_500(sasrec_server: dict):
    client, maps = sasrec_server["client"], sasrec_server["maps"]
    user, item = next(iter(maps.user_idx)), maps.item_id[1]
    json_type = {"content-type": "application/json"}
    # raw JSON text: 1e400 (a float overflowing to inf), NaN and Infinity (which Python's
    # parser accepts) are not what json.dumps would write
    bad_k = ["1e400", "-1e400", "NaN", "Infinity", "true", "10.0", '"10"', "-1", "0", "1001"]
    bad_k += [str(10**30), "null", "[10]"]
    for k in bad_k:
        r = client.post(
            "/recommend", content=f'{{"items": ["{item}"], "k": {k}}}', headers=json_type
        )
        assert r.status_code == 422 and r.json()["detail"], (k, r.status_code, r.text)
    for items in ("[true]", "[2.0]", "[1e400]", "[NaN]", f'["{item}", 2.0]', "[[1]]", '"1"'):
        r = client.post("/recommend", content=f'{{"items": {items}}}', headers=json_type)
        assert r.status_code == 422 and r.json()["detail"], (items, r.status_code, r.text)
    for k in ("10.0", "1e400", "true", "-1", "+10", " 10", "1_0", str(10**30), "\u0661\u0660"):
        r = client.get(f"/recommend/{user}", params={"k": k})
        assert r.status_code == 422, (k, r.status_code, r.text)
        r = client.get(f"/items/{item}/similar", params={"k": k})
        assert r.status_code == 422, (k, r.status_code, r.text)
    assert len(client.post("/recommend", json={"items": [item], "k": 10}).json()["items"]) == 10
    assert len(client.get(f"/recommend/{user}", params={"k": "10"}).json()["items"]) == 10
    assert len(client.get(f"/items/{item}/similar", params={"k": "3"}).json()["items"]) == 3


def flip_bytes(path: Path) -> None:
    """Tamper with a file in place: same size, other content (so another sha256)."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_tampered_champion_at_start_falls_back_to_the_newest_good_version(
    exported: dict, tmp_path: Path
):
    artifacts = fresh_artifacts(exported, tmp_path, "sasrec")
    champion = artifacts / "sasrec" / exported["sasrec"].name
    assert "histories.npy" in json.loads((champion / "manifest.json").read_text())["files"]
    flip_bytes(champion / "histories.npy")
    good = {name: exported[name].name for name in ("popularity", "two_tower")}
    newest = max(good, key=good.get)  # version names sort by export time
    other = min(good, key=good.get)
    log = tmp_path / "serve.log"
    with server(artifacts, log) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200
        body = ready.json()
        assert (body["model"], body["version"], body["fallback"]) == (newest, good[newest], True)
        refused = body["refused_champion"]
        assert (refused["model"], refused["version"]) == ("sasrec", champion.name)
        r = client.get("/recommend/no-such-user")
        assert r.status_code == 200 and r.json()["model"] == newest
        text = client.get("/metrics").text
        assert "recsys_champion_fallbacks_total 1.0" in text
        assert 'recsys_champion_refused_total{reason="verify"} 1.0' in text
        assert "recsys_serving_fallback 1.0" in text
        assert f'recsys_model_info{{model="{newest}",version="{good[newest]}"}} 1.0' in text
        assert "sha256 differs" in log.read_text() and "fallback" in log.read_text()

        # promoting the version already served ends the fallback; another one is swapped in
        registry.promote(artifacts, newest, good[newest], "the fallback, now on purpose")
        wait_for(lambda: client.get("/readyz").json()["fallback"] is False)
        assert client.get("/readyz").json()["version"] == good[newest]
        registry.promote(artifacts, other, good[other], "repair")
        wait_for(lambda: client.get("/readyz").json()["model"] == other)
        ready = client.get("/readyz").json()
        assert (ready["version"], ready["fallback"]) == (good[other], False)
        assert client.get("/recommend/no-such-user").json()["model"] == other
        text = client.get("/metrics").text
        assert "recsys_serving_fallback 0.0" in text
        assert "recsys_champion_fallbacks_total 1.0" in text


def test_new_items_are_merged_by_id_and_refused_across_encoders(tmp_path: Path):
    """artifacts/new_items/: a second embed-items run replaces the rows of ids it encodes
    again and keeps the others; vectors of another encoder are never mixed in."""
    import numpy as np
    import polars as pl

    from tasks.artifact_store import read_new_items, write_new_items
    from tasks.errors import RecsysError

    def items(ids: list[str]) -> pl.DataFrame:
        return pl.DataFrame({"item_id": ids, "title": ids, "genres": [[] for _ in ids]})

    encoder = {"weights_sha256": "a" * 64}
    write_new_items(tmp_path, items(["x", "y"]), np.eye(2, 3, dtype=np.float32), encoder)
    write_new_items(tmp_path, items(["y", "z"]), np.full((2, 3), 0.5, np.float32), encoder)
    found = read_new_items(tmp_path)
    assert found.ids == ["x", "y", "z"]
    assert found.vectors[found.find("x")].tolist() == [1.0, 0.0, 0.0]
    assert found.vectors[found.find("y")].tolist() == [0.5, 0.5, 0.5]
    assert found.find("nope") is None
    with pytest.raises(RecsysError, match="holds vectors of encoder"):
        write_new_items(
            tmp_path, items(["w"]), np.ones((1, 3), np.float32), {"weights_sha256": "b" * 64}
        )


def test_several_worker_processes_answer_as_one(
    exported: dict, sasrec_server: dict, tmp_path: Path
):
    users = list(sasrec_server["maps"].user_idx)[:20]
    one = sasrec_server["client"]
    want = {u: one.get(f"/recommend/{u}", params={"k": 5}).json()["items"] for u in users}
    artifacts = fresh_artifacts(exported, tmp_path, "sasrec")
    with server(artifacts, tmp_path / "serve.log", "--workers", "2") as client:
        port = str(client.base_url.port)  # the module's other server is a child too
        supervisor = next(p for p in psutil.Process().children() if port in p.cmdline())

        def workers() -> list[psutil.Process]:
            return [
                p
                for p in supervisor.children()
                if "multiprocessing" in " ".join(p.cmdline())
                and "resource_tracker" not in " ".join(p.cmdline())
            ]

        wait_for(lambda: len(workers()) == 2, seconds=60)
        wait_for(lambda: client.get("/readyz").json()["ready"], seconds=60)
        for user in users:  # a new connection each time: either process may answer
            got = httpx.get(client.base_url.join(f"/recommend/{user}"), params={"k": 5}, timeout=30)
            assert got.status_code == 200 and got.json()["items"] == want[user]
