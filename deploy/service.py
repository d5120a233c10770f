"""The recommendation service: the champion of artifacts/ behind FastAPI, onnxruntime only.

    python -m deploy.service --artifacts artifacts --host 127.0.0.1 --port 8000

Endpoints (ids are the ORIGINAL ids of the data, as in the raw files):
- GET  /recommend/{user_id}?k=10&include_genres=..&exclude_genres=..   a known user's history
       drives the model; an unknown user gets the popularity fallback ("fallback": true)
- POST /recommend  {"items": [...], "k": 10, "include_genres": [...], "exclude_genres": [...]}
- GET  /items/{item_id}/similar?k=10   cosine over the champion's item embeddings
- GET  /healthz (the process is up), /readyz (a model is loaded), /metrics (Prometheus)
Items the user has already seen (or sent) are never recommended.

Hot reload: a thread reads champion.json every --poll seconds; when it names another version,
that version is loaded completely (sha256s checked, sessions built, one warm-up inference) and
then swapped in by replacing one reference. Each request reads that reference once, so it is
answered by one model from start to end and no request is dropped. A version that fails to
load is refused with one logged error and the running champion keeps serving; it is retried
only when champion.json changes again.
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, HTTPException, Query, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, Field

from deploy.model import Recommendation, ServedModel
from tasks.errors import RecsysError
from tasks.registry import champion_folder, read_champion

log = logging.getLogger("recsys.serve")
MAX_K = 1000
K = Annotated[int, Query(ge=1, le=MAX_K, description="how many items")]
Genres = Annotated[list[str] | None, Query(description="genre names, repeated or comma-separated")]
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Champion:
    """The model being served, and the thread that swaps in a newly promoted one."""

    def __init__(self, artifacts: Path, poll_seconds: float, threads: int, metrics: Metrics):
        self.artifacts, self.poll_seconds, self.threads = artifacts, poll_seconds, threads
        self.metrics = metrics
        self.current: ServedModel | None = None
        self._seen: str | None = None  # the champion.json content last acted on
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> None:
        """Load the version champion.json names if it is new; never raises."""
        try:
            pointer = read_champion(self.artifacts)
        except RecsysError as exc:
            self._once(f"unreadable:{exc}", f"{exc}; {self._still()}")
            return
        if pointer is None:
            self._once("none", f"{self.artifacts}/champion.json: no champion promoted yet")
            return
        key = json.dumps(pointer, sort_keys=True)
        if key == self._seen:
            return
        self._seen = key
        current = self.current
        if current and (current.name, current.version) == (pointer["model"], pointer["version"]):
            return
        start = time.perf_counter()
        try:
            folder = champion_folder(self.artifacts, pointer)
            model = ServedModel(folder, pointer.get("manifest_sha256"), self.threads)
        except (RecsysError, OSError) as exc:
            self.metrics.reloads.labels(result="refused").inc()
            log.error("refusing champion %s/%s: %s; %s", *_name(pointer), exc, self._still())
            return
        self.current = model  # the swap: one reference, read once per request
        self.metrics.set_model(model)
        self.metrics.reloads.labels(result="loaded").inc()
        seconds = time.perf_counter() - start
        log.info("serving %s/%s (loaded in %.2f s)", model.name, model.version, seconds)

    def _once(self, key: str, message: str) -> None:
        """Log a persisting condition once, not at every poll."""
        if key == self._seen:
            return
        self._seen = key
        if key == "none":
            log.warning(message)
        else:
            log.error(message)

    def _still(self) -> str:
        current = self.current
        return f"still serving {current.name}/{current.version}" if current else "no model loaded"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="champion-poll", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.check()
            except Exception:  # noqa: BLE001 - the poller must outlive any one bad check
                log.exception("champion check failed; trying again at the next poll")


def _name(pointer: dict[str, Any]) -> tuple[str, str]:
    return str(pointer.get("model")), str(pointer.get("version"))


class Metrics:
    """Prometheus series in a registry of the app's own (several apps can share a process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "recsys_requests_total",
            "HTTP requests by endpoint (route template), method and status code",
            ["endpoint", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "recsys_request_duration_seconds",
            "HTTP request latency by endpoint",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.model = Gauge(
            "recsys_model_info",
            "The model being served (1 for the current model and version)",
            ["model", "version"],
            registry=self.registry,
        )
        self.reloads = Counter(
            "recsys_model_reloads_total",
            "Champion loads: loaded, or refused (the running model kept serving)",
            ["result"],
            registry=self.registry,
        )
        self.fallbacks = Counter(
            "recsys_fallback_total",
            "Requests answered by the popularity fallback, by reason",
            ["reason"],
            registry=self.registry,
        )
        self._labels: tuple[str, str] | None = None
        self._lock = threading.Lock()

    def set_model(self, model: ServedModel) -> None:
        with self._lock:
            if self._labels:
                self.model.remove(*self._labels)
            self._labels = (model.name, model.version)
            self.model.labels(*self._labels).set(1)


class RecommendBody(BaseModel):
    items: list[str | int] = Field(description="the user's items, original ids, oldest first")
    k: int = Field(10, ge=1, le=MAX_K)
    include_genres: list[str] | None = None
    exclude_genres: list[str] | None = None


def create_app(
    artifacts: str | Path = "artifacts",
    poll_seconds: float = 1.0,
    threads: int = 1,
    max_history: int = 1000,
) -> FastAPI:
    """The app; the champion is loaded before it returns, and polled while it runs."""
    metrics = Metrics()
    champion = Champion(Path(artifacts), poll_seconds, threads, metrics)
    champion.check()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Iterator[None]:
        champion.start()
        yield
        champion.stop()

    app = FastAPI(title="recsys", lifespan=lifespan)
    app.state.champion = champion

    @app.middleware("http")
    async def count(request: Request, call_next):
        start = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            route = request.scope.get("route")
            endpoint = getattr(route, "path", "unmatched")
            metrics.requests.labels(endpoint, request.method, str(status)).inc()
            metrics.latency.labels(endpoint).observe(time.perf_counter() - start)

    def serving() -> ServedModel:
        model = champion.current
        if model is None:
            raise HTTPException(503, "no model loaded yet (see the server log; promote one)")
        return model

    def filters(model: ServedModel, include: list[str] | None, exclude: list[str] | None):
        try:
            return model.genre_columns(_split(include)), model.genre_columns(_split(exclude))
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from exc

    def answer(model: ServedModel, rec: Recommendation, **extra: Any) -> dict[str, Any]:
        if rec.fallback:
            metrics.fallbacks.labels(reason=rec.reason or "").inc()
        body = {"model": model.name, "version": model.version, **extra, "fallback": rec.fallback}
        if rec.reason:
            body["reason"] = rec.reason
        return body | {"items": rec.items}

    def popular(model: ServedModel, k: int, exclude: np.ndarray, genres, reason: str):
        items = model.top_k(model.popularity, k, exclude, *genres)
        return Recommendation(items, fallback=True, reason=reason)

    @app.get("/recommend/{user_id}")
    def recommend_user(
        user_id: str,
        k: K = 10,
        include_genres: Genres = None,
        exclude_genres: Genres = None,
    ) -> dict[str, Any]:
        model = serving()
        genres = filters(model, include_genres, exclude_genres)
        user_idx = model.user_index.get(user_id)
        if user_idx is None:
            rec = popular(model, k, np.zeros(0, np.int64), genres, "unknown user")
        else:
            history, seen = model.user_history(user_idx)
            scores = model.scores(history, user_idx)
            rec = Recommendation(model.top_k(scores, k, seen, *genres), fallback=False)
        return answer(model, rec, user_id=user_id)

    @app.post("/recommend")
    def recommend_items(body: RecommendBody) -> dict[str, Any]:
        model = serving()
        if len(body.items) > max_history:
            raise HTTPException(
                400, f"items: {len(body.items)} ids, at most {max_history} are accepted"
            )
        ids = [str(item) for item in body.items]
        unknown = [item for item in ids if item not in model.item_index]
        if unknown:
            shown = ", ".join(repr(u) for u in unknown[:5])
            raise HTTPException(400, f"unknown item id(s): {shown} ({len(unknown)} in all)")
        genres = filters(model, body.include_genres, body.exclude_genres)
        history = np.array([model.item_index[item] for item in ids], dtype=np.int64)
        if not len(history):
            rec = popular(model, body.k, history, genres, "empty history")
        elif not model.uses_history:
            rec = popular(model, body.k, history, genres, f"{model.name} scores known users only")
        else:
            scores = model.scores(history, 0)
            rec = Recommendation(model.top_k(scores, body.k, history, *genres), fallback=False)
        return answer(model, rec)

    @app.get("/items/{item_id}/similar")
    def similar(item_id: str, k: K = 10) -> dict[str, Any]:
        model = serving()
        if model.item_vectors is None:
            raise HTTPException(404, f"model {model.name} has no item embeddings")
        idx = model.item_index.get(item_id)
        if idx is None:
            raise HTTPException(404, f"unknown item id {item_id!r}")
        items = model.similar(idx, k)
        return {"model": model.name, "version": model.version, "item_id": item_id, "items": items}

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz(response: Response) -> dict[str, Any]:
        model = champion.current
        if model is None:
            response.status_code = 503
            return {"ready": False}
        return {"ready": True, **model.summary()}

    @app.get("/metrics")
    def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _split(values: list[str] | None) -> list[str]:
    """Repeated parameters or comma-separated lists (?include_genres=Drama,Comedy) alike."""
    return [part.strip() for v in values or [] for part in v.split(",") if part.strip()]


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", default="artifacts", help="artifacts folder")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--poll", type=float, default=1.0, help="seconds between champion checks")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads per request")
    parser.add_argument("--max-history", type=int, default=1000, help="most items per POST")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = create_app(args.artifacts, args.poll, args.threads, args.max_history)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)


if __name__ == "__main__":
    main()
