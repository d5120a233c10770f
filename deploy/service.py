"""The recommendation service: the champion of artifacts/ behind FastAPI, onnxruntime only.

    python -m deploy.service --artifacts artifacts --host 127.0.0.1 --port 8000

Endpoints (ids are the ORIGINAL ids of the data, as in the raw files):
- GET  /recommend/{user_id}?k=10&include_genres=..&exclude_genres=..   a known user's history
       drives the model; an unknown user gets the popularity fallback ("fallback": true)
- POST /recommend  {"items": [...], "k": 10, "include_genres": [...], "exclude_genres": [...]}
- GET  /items/{item_id}/similar?k=10   item-kNN: its neighbour lists; models with item
       embeddings: cosine over them; other history models: their scores for that item alone;
       an item added after export (`recsys embed-items`, artifacts/new_items/): the catalogue
       by text similarity, when the artifact carries text embeddings of the same encoder
Above export.ann.min_items items, dot-product models answer through an HNSW index: a candidate
pool re-scored exactly and filtered (tasks/artifact_store.py, tasks/ann.py).
- GET  /healthz (the process is up), /readyz (a model is loaded), /metrics (Prometheus)
- GET  /docs (Swagger UI), /redoc: the API pages, their assets served by this process
Every answer names the scale of its scores (`score_scale`, deploy/schemas.py); fallbacks say so.
Items the user has already seen (or sent) are never recommended.

Hot reload: a thread reads champion.json every --poll seconds; when it names another version,
that version is loaded completely (sha256s checked, sessions built, one warm-up inference) and
then swapped in by replacing one reference. Each request reads that reference once, so it is
answered by one model from start to end and no request is dropped. A version that fails to
load is refused with one logged error and the running champion keeps serving; it is retried
only when champion.json changes again. When nothing is being served yet (at start) and the
champion is refused, the newest version under artifacts/ that verifies is served instead, as a
fallback that /readyz and /metrics report, until a champion loads.

--workers N runs N server processes on one socket (uvicorn's supervisor), so a machine's cores
all answer requests: each process loads the champion and polls it on its own, the HNSW index is
memory-mapped and so shared, and /metrics counts the requests of the process that answers it.

Limits, so that a hostile or broken client cannot exhaust the process: request bodies over
--max-body-bytes get 413 before they are read; a connection that has not sent a request's
headers within --header-timeout seconds, or stays idle --keep-alive-timeout seconds after a
response, is closed; past --limit-concurrency connections, requests get 503. Integers in
requests must be integers (true, 10.0, "10" and 1e400 get 422, never 500).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import asynccontextmanager
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, HTTPException, Query, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi_offline import FastAPIOffline
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from deploy import schemas
from tasks.artifact_store import (
    NEW_ITEMS,
    NewItems,
    Recommendation,
    ServedModel,
    VerificationError,
    read_new_items,
)
from tasks.errors import RecsysError
from tasks.registry import champion_folder, list_versions, read_champion

log = logging.getLogger("recsys.serve")
MAX_K = 1000
# A POST /recommend body is a few KB (--max-history ids); 1 MiB leaves room and bounds what
# one request can make the process hold.
MAX_BODY_BYTES = 2**20
HEADER_TIMEOUT_S = 10.0
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
KEEP_ALIVE_TIMEOUT_S = 5.0
LIMIT_CONCURRENCY = 256


def _digits(value: object) -> object:
    """A query integer written as plain decimal digits: pydantic alone would also take "10.0",
    "+10", " 10" and "1_0" (a str is never a strict int, so StrictInt cannot say this)."""
    if isinstance(value, str) and not (value.isascii() and value.isdigit()):
        raise ValueError("must be a whole number written in digits, like 10")
    return value


K = Annotated[int, BeforeValidator(_digits), Query(ge=1, le=MAX_K, description="how many items")]
Genres = Annotated[list[str] | None, Query(description="genre names, repeated or comma-separated")]
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Champion:
    """The model being served, and the thread that swaps in a newly promoted one."""

    def __init__(self, artifacts: Path, poll_seconds: float, threads: int, metrics: Metrics):
        self.artifacts, self.poll_seconds, self.threads = artifacts, poll_seconds, threads
        self.metrics = metrics
        self.current: ServedModel | None = None
        # Set while `current` is a fallback: the champion that was refused, and why.
        self.fallback_from: dict[str, str] | None = None
        self._seen: str | None = None  # the champion.json content last acted on
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> None:
        """Load the version champion.json names if it is new; never raises."""
        try:
            pointer = read_champion(self.artifacts)
        except RecsysError as exc:
            if self._once(f"unreadable:{exc}", f"{exc}; {self._still()}"):
                self.metrics.refused.labels(reason="pointer").inc()
                if self.current is None:
                    self._fall_back({"error": str(exc)})
            return
        if pointer is None:
            self._once("none", f"{self.artifacts}/champion.json: no champion promoted yet")
            return
        key = json.dumps(pointer, sort_keys=True)
        if key == self._seen:
            return
        self._seen = key
        current = self.current
        if (
            current
            and not self.fallback_from  # a fallback promoted on purpose is loaded as champion
            and (current.name, current.version) == (pointer["model"], pointer["version"])
        ):
            return
        start = time.perf_counter()
        try:
            folder = champion_folder(self.artifacts, pointer)
            model = ServedModel(folder, pointer.get("manifest_sha256"), self.threads)
        except (RecsysError, OSError) as exc:
            reason = "verify" if isinstance(exc, VerificationError) else "load"
            self.metrics.reloads.labels(result="refused").inc()
            self.metrics.refused.labels(reason=reason).inc()
            log.error("refusing champion %s/%s: %s; %s", *_name(pointer), exc, self._still())
            if self.current is None:
                model_name, version = _name(pointer)
                self._fall_back({"model": model_name, "version": version, "error": str(exc)})
            return
        self._serve(model, None)
        self.metrics.reloads.labels(result="loaded").inc()
        seconds = time.perf_counter() - start
        log.info("serving %s/%s (loaded in %.2f s)", model.name, model.version, seconds)

    def _fall_back(self, refused: dict[str, str]) -> None:
        """Nothing is served and the champion cannot be: serve the newest version that
        verifies, so that one damaged folder or pointer does not turn every request into a
        503 while good versions sit beside it. Newest by version name, which starts with the
        export time, across all models; the refused version itself is not tried again."""
        versions = sorted(list_versions(self.artifacts), key=lambda v: v["version"], reverse=True)
        for entry in versions:
            if (entry["model"], entry["version"]) == (refused.get("model"), refused.get("version")):
                continue
            try:
                model = ServedModel(entry["path"], None, self.threads)
            except (RecsysError, OSError) as exc:
                log.warning("fallback candidate %s/%s refused: %s", *_name(entry), exc)
                continue
            self._serve(model, refused)
            self.metrics.fallback_versions.inc()
            log.warning(
                "serving %s/%s as a fallback (the newest version that verifies) until a "
                "champion loads",
                model.name,
                model.version,
            )
            return
        log.error("no version under %s verifies: no model loaded", self.artifacts)

    def _serve(self, model: ServedModel, fallback_from: dict[str, str] | None) -> None:
        # fallback_from first: whoever sees the new model also sees whether it is a fallback
        self.fallback_from = fallback_from
        self.current = model  # the swap: one reference, read once per request
        self.metrics.set_model(model, fallback=fallback_from is not None)

    def _once(self, key: str, message: str) -> bool:
        """Log a persisting condition once, not at every poll; True the first time."""
        if key == self._seen:
            return False
        self._seen = key
        if key == "none":
            log.warning(message)
        else:
            log.error(message)
        return True

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
    """(model, version) of a pointer or list_versions entry, for log messages."""
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
        self.refused = Counter(
            "recsys_champion_refused_total",
            "Champions refused, by reason: pointer (champion.json unreadable), verify (files "
            "differ from the manifest or pointer), load (the version would not load or run)",
            ["reason"],
            registry=self.registry,
        )
        self.fallback_versions = Counter(
            "recsys_champion_fallbacks_total",
            "Times the champion could not be served and the newest good version was instead",
            registry=self.registry,
        )
        self.serving_fallback = Gauge(
            "recsys_serving_fallback",
            "1 while the model served is a fallback, not the promoted champion",
            registry=self.registry,
        )
        self._labels: tuple[str, str] | None = None
        self._lock = threading.Lock()

    def set_model(self, model: ServedModel, fallback: bool = False) -> None:
        with self._lock:
            if self._labels:
                self.model.remove(*self._labels)
            self._labels = (model.name, model.version)
            self.model.labels(*self._labels).set(1)
            self.serving_fallback.set(1 if fallback else 0)


class RecommendBody(BaseModel):
    # strict: with lax parsing, k=true, k=10.0 and items [true] or [2.0] were taken as 1, 10,
    # "1" and "2"; now only JSON integers are integers and only strings are strings
    model_config = ConfigDict(strict=True)

    items: list[str | int] = Field(description="the user's items, original ids, oldest first")
    k: int = Field(10, ge=1, le=MAX_K, description="how many items")
    include_genres: list[str] | None = Field(None, description="only items of these genres")
    exclude_genres: list[str] | None = Field(None, description="no item of these genres")


# Every page this process serves may load only from itself: ReDoc's sidebar shows a logo from
# its CDN (hidden when it fails to load), which the browser now refuses without asking the
# network, so the pages make no outside request at all.
DOCS_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' blob:; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
    "worker-src 'self' blob:; connect-src 'self'; font-src 'self' data:"
)


class NewItemsFile:
    """artifacts/new_items/, reread when its manifest changes (a new `recsys embed-items`)."""

    def __init__(self, artifacts: Path):
        self.manifest = artifacts / NEW_ITEMS / "manifest.json"
        self.artifacts = artifacts
        self.stamp: tuple[int, int] | None = None
        self.items: NewItems | None = None
        self.lock = threading.Lock()

    def get(self) -> NewItems | None:
        try:
            stat = self.manifest.stat()
            stamp = (stat.st_mtime_ns, stat.st_ino)
        except FileNotFoundError:
            return None
        with self.lock:
            if stamp != self.stamp:
                try:
                    self.items = read_new_items(self.artifacts)
                except RecsysError as exc:  # a broken folder answers 404s, said once per change
                    log.error("%s", exc)
                    self.items = None
                self.stamp = stamp
            return self.items


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` gets 413 before it is held in memory.

    FastAPI reads a body into memory whole, whatever its size. Here the declared
    Content-Length is checked before the first byte is read, and a chunked body (no length
    declared) is counted as it streams, so at most max_bytes and one chunk are ever held. The
    413 is raised as an HTTPException from `receive`, inside the route that reads the body,
    which FastAPI answers (and the metrics middleware counts) like any other error.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        received = 0

        async def limited() -> Message:
            nonlocal received
            if declared.isdigit() and int(declared) > self.max_bytes:
                raise self._too_large()
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._too_large()
            return message

        await self.app(scope, limited, send)

    def _too_large(self) -> HTTPException:
        return HTTPException(413, f"request body too large: at most {self.max_bytes} bytes")


class CountRequests:
    """Counts and times every request by route template, method and status (/metrics), and
    sets the API pages' Content-Security-Policy on every answer.

    A plain ASGI layer: Starlette's @app.middleware("http") wraps each request and response in
    extra tasks and memory streams, work that every request pays for on a process that answers
    on one core at a time.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the client gets when the app raises before answering

        async def send_with_policy(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)["Content-Security-Policy"] = DOCS_POLICY
            await send(message)

        try:
            await self.app(scope, receive, send_with_policy)
        finally:
            endpoint = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(endpoint, scope["method"], str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)


class HeaderTimeoutHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol (its C parser) with a deadline for each request's headers.

    uvicorn closes a connection left idle after a response (timeout_keep_alive), but it has
    no header timeout (checked in 0.55): a connection that sends nothing, or trickles a
    request's headers a byte at a time (slowloris), holds its socket for ever. Here a timer
    starts when the connection opens, and with the first byte of each later request, and
    closes the connection if the request's headers are still incomplete when it fires.
    main() (or, in a worker process, app_from_environment()) sets `header_timeout`.
    """

    header_timeout: float = HEADER_TIMEOUT_S
    _header_timer: asyncio.TimerHandle | None = None
    _awaiting_headers = True

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._awaiting_headers = True
        self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._awaiting_headers = False
        self._cancel_header_timer()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        # armed once per request, not moved by each byte: trickling cannot extend it
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_late)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self._awaiting_headers and not self.transport.is_closing():
            log.debug(
                "closing %s: no complete request headers in %s s", self.client, self.header_timeout
            )
            self.transport.close()


def _finite(value: Any) -> Any:
    """`value` with every inf and NaN float replaced by its text, so that it can be JSON."""
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def create_app(
    artifacts: str | Path = "artifacts",
    poll_seconds: float = 1.0,
    threads: int = 1,
    max_history: int = 1000,
    max_body_bytes: int = MAX_BODY_BYTES,
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

    # /docs and /redoc from assets installed with fastapi-offline, served by this process: the
    # pages work on a closed network (FastAPI's own pages load them from a CDN).
    app = FastAPIOffline(
        title="recsys",
        description=schemas.DESCRIPTION,
        version=_version(),
        openapi_tags=schemas.TAGS,
        lifespan=lifespan,
        swagger_ui_parameters={"validatorUrl": None},  # no badge fetched from swagger.io
    )
    app.state.champion = champion
    new_items = NewItemsFile(Path(artifacts))
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    # added after BodyLimit, so it runs outside it: the 413s are counted too
    app.add_middleware(CountRequests, metrics=metrics)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        """FastAPI's 422, safe for any input: a JSON number such as 1e400 parses to inf, and
        Python's parser takes NaN and Infinity; echoing one back in the error made FastAPI's
        own handler fail (strict JSON has no inf), turning a bad request into a 500."""
        return JSONResponse({"detail": _finite(jsonable_encoder(exc.errors()))}, status_code=422)

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

    def answer(model: ServedModel, rec: Recommendation, **extra: Any) -> JSONResponse:
        if rec.fallback:
            metrics.fallbacks.labels(reason=rec.reason or "").inc()
        body = {"model": model.name, "version": model.version, **extra, "fallback": rec.fallback}
        body["score_scale"] = "popularity" if rec.fallback else "model"
        if rec.reason:
            body["reason"] = rec.reason
        return JSONResponse(body | {"items": rec.items})

    def popular(model: ServedModel, k: int, exclude: np.ndarray, genres, reason: str):
        items = model.top_k(model.popularity, k, exclude, *genres)
        return Recommendation(items, fallback=True, reason=reason)

    @app.get(
        "/recommend/{user_id}",
        tags=["recommend"],
        summary="Recommend items to a known user",
        response_model=schemas.Recommendations,
        response_model_exclude_none=True,
        responses=schemas.problems(400, 503),
    )
    async def recommend_user(
        user_id: str,
        k: K = 10,
        include_genres: Genres = None,
        exclude_genres: Genres = None,
    ) -> JSONResponse:
        """The user's training history (original user id) drives the champion; the k best
        unseen items that pass the genre filters. An unknown user gets the popular items
        (`fallback: true`, reason `unknown user`)."""
        model = serving()
        genres = filters(model, include_genres, exclude_genres)
        user_idx = model.user_index.get(user_id)
        if user_idx is None:
            rec = popular(model, k, np.zeros(0, np.int64), genres, "unknown user")
        else:
            history, seen = model.user_history(user_idx)
            rec = Recommendation(model.recommend(history, user_idx, k, seen, *genres), False)
        return answer(model, rec, user_id=user_id)

    @app.post(
        "/recommend",
        tags=["recommend"],
        summary="Recommend items for a history sent in the request",
        response_model=schemas.Recommendations,
        response_model_exclude_none=True,
        responses=schemas.problems(400, 413, 503),
    )
    async def recommend_items(body: RecommendBody) -> JSONResponse:
        """A session or an anonymous user: the items sent (oldest first) are the history.
        An empty history, or a model that scores only the users it was trained on, gets the
        popular items (`fallback: true` with the reason)."""
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
            items = model.recommend(history, 0, body.k, history, *genres)
            rec = Recommendation(items, fallback=False)
        return answer(model, rec)

    @app.get(
        "/items/{item_id}/similar",
        tags=["recommend"],
        summary="Items similar to an item",
        response_model=schemas.SimilarItems,
        responses=schemas.problems(404, 503),
    )
    async def similar(item_id: str, k: K = 10) -> JSONResponse:
        """The k items nearest to the item (original id), the item itself excluded: item-kNN
        by its neighbour lists, models with item vectors by cosine, other history models by
        their scores for that item alone; a 404 for models with no notion of it."""
        model = serving()
        body = {"model": model.name, "version": model.version, "item_id": item_id}
        idx = model.item_index.get(item_id)
        if idx is None:
            return JSONResponse(body | similar_new_item(model, item_id, k))
        if model.similar_by is None:
            raise HTTPException(
                404,
                f"model {model.name} has no item similarity (it scores users by id alone "
                "or everyone the same)",
            )
        items = model.similar(idx, k)
        scale = "model" if model.similar_by == "one_item_history" else "cosine"
        return JSONResponse(
            body | {"score_scale": scale, "similar_by": model.similar_by, "items": items}
        )

    def similar_new_item(model: ServedModel, item_id: str, k: int) -> dict[str, Any]:
        """An item added after export (`recsys embed-items`): the catalogue by text."""
        found = new_items.get()
        row = found.find(item_id) if found is not None else None
        if row is None:
            raise HTTPException(404, f"unknown item id {item_id!r}")
        if model.text_encoder != found.encoder_sha256:
            raise HTTPException(
                404,
                f"item {item_id!r} is known by its text only, and model {model.name} "
                "was exported without text embeddings of the same encoder",
            )
        items = model.similar_in_text(found.vectors[row], k)
        return {"score_scale": "cosine", "similar_by": "text", "items": items}

    @app.get("/healthz", tags=["operations"], summary="Liveness", response_model=schemas.Health)
    def healthz() -> dict[str, str]:
        """200 while the process answers, model or not (a liveness probe)."""
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["operations"],
        summary="Readiness: which model is served",
        response_model=schemas.Readiness,
        response_model_exclude_none=True,
        responses={503: {"model": schemas.Readiness, "description": "no model loaded yet"}},
    )
    def readyz(response: Response) -> dict[str, Any]:
        """200 with the served model, version and catalogue once a model is loaded; 503
        before (a readiness probe). `fallback: true`: the promoted champion was refused and the
        newest version that verifies is served until a champion loads."""
        model = champion.current
        fallback_from = champion.fallback_from
        if model is None:
            response.status_code = 503
            return {"ready": False}
        body = {"ready": True, **model.summary(), "fallback": fallback_from is not None}
        if fallback_from is not None:
            body["refused_champion"] = fallback_from
        return body

    @app.get(
        "/metrics",
        tags=["operations"],
        summary="Prometheus metrics",
        response_class=PlainTextResponse,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "text format"}},
    )
    def prometheus() -> Response:
        """Requests by endpoint and status, latency histograms, fallbacks by reason, the
        served model and version (Prometheus text format)."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _version() -> str:
    """The installed project's version, shown on the API pages."""
    try:
        return metadata.version("recsys-platform")
    except metadata.PackageNotFoundError:
        return "unknown"


def _split(values: list[str] | None) -> list[str]:
    """Repeated parameters or comma-separated lists (?include_genres=Drama,Comedy) alike."""
    return [part.strip() for v in values or [] for part in v.split(",") if part.strip()]


OPTIONS_ENV = "RECSYS_SERVICE_OPTIONS"  # main()'s options, for the --workers processes


def app_from_environment() -> FastAPI:
    """The app of one --workers process. uvicorn starts them fresh (multiprocessing's spawn)
    and imports this factory, so main() hands its options over in the environment."""
    options = json.loads(os.environ[OPTIONS_ENV])
    logging.basicConfig(level=options.pop("log_level").upper(), format=LOG_FORMAT)
    HeaderTimeoutHttpTools.header_timeout = options.pop("header_timeout")
    return create_app(**options)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", default="artifacts", help="artifacts folder")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1, help="server processes (one socket)")
    parser.add_argument("--poll", type=float, default=1.0, help="seconds between champion checks")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads per request")
    parser.add_argument("--max-history", type=int, default=1000, help="most items per POST")
    parser.add_argument(
        "--max-body-bytes", type=int, default=MAX_BODY_BYTES, help="larger bodies get 413"
    )
    parser.add_argument(
        "--header-timeout",
        type=float,
        default=HEADER_TIMEOUT_S,
        help="seconds a connection may take to send a request's headers",
    )
    parser.add_argument(
        "--keep-alive-timeout",
        type=float,
        default=KEEP_ALIVE_TIMEOUT_S,
        help="seconds an idle connection is kept open after a response",
    )
    parser.add_argument(
        "--limit-concurrency",
        type=int,
        default=LIMIT_CONCURRENCY,
        help="open connections (or requests) past which requests get 503",
    )
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    logging.basicConfig(level=args.log_level.upper(), format=LOG_FORMAT)
    HeaderTimeoutHttpTools.header_timeout = args.header_timeout
    served = dict(
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=False,
        http=HeaderTimeoutHttpTools,
        timeout_keep_alive=args.keep_alive_timeout,
        limit_concurrency=args.limit_concurrency,
    )
    options = {
        "artifacts": args.artifacts,
        "poll_seconds": args.poll,
        "threads": args.threads,
        "max_history": args.max_history,
        "max_body_bytes": args.max_body_bytes,
    }
    if args.workers == 1:
        uvicorn.run(create_app(**options), **served)
        return
    extra = {"header_timeout": args.header_timeout, "log_level": args.log_level}
    os.environ[OPTIONS_ENV] = json.dumps(options | extra)
    uvicorn.run("deploy.service:app_from_environment", factory=True, workers=args.workers, **served)


if __name__ == "__main__":
    main()
