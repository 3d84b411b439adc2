"""The HTTP API: FastAPI routes over an :class:`~mgrec.server.engine.Engine`.

Routes (all JSON; the OpenAPI schema is at ``/openapi.json``, the docs at ``/docs``):

* ``GET /v1/users/{user_id}/recommendations`` (``read``): a known user's top-k.
* ``POST /v1/recommendations`` (``read``): a user described by history, features, friends, time.
* ``GET /v1/items/{item_id}/similar`` (``read``).
* ``POST /v1/events`` (``write``): one event or ``{"events": [...]}``; durable when answered.
* ``POST /v1/admin/reload`` (``admin``): swap in the model folder again (or another one).
* ``GET /v1/users``, ``GET /v1/users/{user_id}``, ``GET /v1/items``, ``GET /v1/info``
  (``read``): what the web page shows.
* ``GET /healthz`` (alive), ``GET /readyz`` (a model is loaded), ``GET /metrics``
  (Prometheus text), ``GET /`` (the web page). These need no key.

Keys go in ``Authorization: Bearer <key>``: a missing or unknown key gets 401, a key without
the role 403. Bad input gets a 4xx JSON body ``{"error": ..., "field": ...}`` naming the field;
request bodies over ``max_body_bytes`` get 413 before they are read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from importlib.resources import files
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag
from starlette.exceptions import HTTPException as StarletteHTTPException

from mgrec.errors import ConfigError, DataError, MgrecError
from mgrec.server.auth import ApiKeys
from mgrec.server.engine import Engine, NotFound, Recommendation
from mgrec.store import Event

__all__ = ["create_app", "Limits"]

log = logging.getLogger("mgrec.server")


class Limits(BaseModel):
    """Caps on what one request may ask for."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    max_k: int = 1000
    max_body_bytes: int = 1 << 20
    max_history: int = 1000
    max_friends: int = 1000
    max_events: int = 10_000


# ---------------------------------------------------------------------- schemas
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HistoryItem(_Strict):
    item_id: str = Field(min_length=1, max_length=256)
    timestamp: float | None = Field(None, allow_inf_nan=False, description="unix seconds")


FeatureValue = str | float | int | bool | list[str] | None
UserId = Annotated[str, Path(min_length=1, max_length=256)]
ItemId = Annotated[str, Path(min_length=1, max_length=256)]


class ContextRequest(_Strict):
    history: list[HistoryItem] = Field(default_factory=list, description="items the user interacted with")
    features: dict[str, FeatureValue] = Field(default_factory=dict, description="profile features by name")
    friends: list[str] = Field(default_factory=list, description="ids of known users who are friends")
    time: float | None = Field(None, allow_inf_nan=False, description="request time, unix seconds")
    k: int = Field(10, ge=1)
    exclude_seen: bool = True
    explain: bool = False


class EventIn(_Strict):
    user_id: str = Field(min_length=1, max_length=256)
    item_id: str = Field(min_length=1, max_length=256)
    timestamp: float | None = Field(None, allow_inf_nan=False, description="unix seconds; default: now")
    weight: float = Field(1.0, ge=0, allow_inf_nan=False)


class EventBatch(_Strict):
    events: list[EventIn] = Field(min_length=1)


def _event_kind(value: Any) -> str:
    return "batch" if isinstance(value, dict) and "events" in value else "one"


#: ``POST /v1/events`` takes one event or ``{"events": [...]}``; errors name the event's field
#: (``weight``, or ``events.3.weight``), not both readings of the union.
EventsBody = Annotated[Annotated[EventIn, Tag("one")] | Annotated[EventBatch, Tag("batch")],
                       Discriminator(_event_kind)]


class ReloadRequest(_Strict):
    model_dir: str | None = Field(None, description="a model folder; default: the one being served")


class ScoredItem(BaseModel):
    item_id: str
    score: float
    contributions: dict[str, float] | None = None


class RecommendationsOut(BaseModel):
    user_id: str | None
    items: list[ScoredItem]
    model_version: str
    ignored: dict[str, list[str]] = Field(default_factory=dict)
    fallback: str | None = None


class SimilarOut(BaseModel):
    item_id: str
    items: list[ScoredItem]
    model_version: str


class EventsOut(BaseModel):
    stored: int
    applied: int
    unknown_items: list[str]
    last_seq: int


# ---------------------------------------------------------------------- helpers
def _error(status: int, message: str, field: str | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, "field": field, **extra}, status_code=status)


class _HTTPError(Exception):
    def __init__(self, status: int, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        self.status, self.message, self.field, self.headers = status, message, field, headers
        super().__init__(message)


def _field_name(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    if loc and loc[0] == "body" and len(loc) > 1 and loc[1] in ("one", "batch"):  # union tags
        parts = parts[1:]
    return ".".join(parts) or str(loc[0] if loc else "body")


def _items(rec: Recommendation) -> list[ScoredItem]:
    contrib = rec.contributions or [None] * len(rec.items)
    return [ScoredItem(item_id=i, score=s, contributions=c) for i, s, c in zip(rec.items, rec.scores, contrib)]


class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("mgrec_requests_total", "HTTP requests", ["method", "route", "status"],
                                registry=self.registry)
        self.latency = Histogram("mgrec_request_seconds", "request latency", ["route"], registry=self.registry,
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5))
        self.events = Counter("mgrec_events_total", "events stored", registry=self.registry)
        self.model = Gauge("mgrec_model_info", "the model being served", ["version", "model"], registry=self.registry)
        self.reloads = Counter("mgrec_reloads_total", "model reloads", ["outcome"], registry=self.registry)

    def set_model(self, version: str, model: str) -> None:
        self.model.clear()
        self.model.labels(version=version, model=model).set(1)


class _Guard:
    """Pure-ASGI middleware: body cap (413) and request metrics (cheaper than
    ``BaseHTTPMiddleware``)."""

    def __init__(self, app: Any, metrics: _Metrics, max_body: int) -> None:
        self.app, self.metrics, self.max_body = app, metrics, max_body

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
                       send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = {"code": 500}
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_body
                except ValueError:
                    too_big = True
                if too_big:
                    await _error(413, f"request body over {self.max_body} bytes", "body")(scope, receive, send)
                    self._observe(scope, 413, t0)
                    return
        seen = {"n": 0}

        async def capped_receive() -> dict[str, Any]:
            msg = await receive()
            if msg["type"] == "http.request":
                seen["n"] += len(msg.get("body", b""))
                if seen["n"] > self.max_body:
                    raise _HTTPError(413, f"request body over {self.max_body} bytes", "body")
            return msg

        async def tracking_send(msg: dict[str, Any]) -> None:
            if msg["type"] == "http.response.start":
                status["code"] = msg["status"]
            await send(msg)

        try:
            await self.app(scope, capped_receive, tracking_send)
        finally:
            self._observe(scope, status["code"], t0)

    def _observe(self, scope: dict[str, Any], status: int, t0: float) -> None:
        route = getattr(scope.get("route"), "path", None) or "unmatched"
        self.metrics.requests.labels(scope.get("method", ""), route, str(status)).inc()
        self.metrics.latency.labels(route).observe(time.perf_counter() - t0)


# ---------------------------------------------------------------------- the app
def create_app(engine: Engine, keys: ApiKeys | None, *, limits: Limits | None = None) -> FastAPI:
    """The FastAPI application.

    Args:
        engine: the model being served.
        keys: accepted API keys; ``None`` turns authentication off (local development only).
        limits: request caps.
    """
    limits = limits or Limits()
    metrics = _Metrics()
    metrics.set_model(engine.snapshot.version, str(engine.snapshot.run.record.get("model")))
    app = FastAPI(title="mgrec", version="1", summary="Multi-granularity recommendations over HTTP",
                  docs_url="/docs", redoc_url=None)
    app.state.engine, app.state.metrics, app.state.limits = engine, metrics, limits

    def require(role: str) -> Callable[[Request], Awaitable[None]]:
        # async, so FastAPI runs it on the event loop instead of a thread-pool hop per request
        async def check(request: Request) -> None:
            if keys is None:
                return
            header = request.headers.get("authorization", "")
            scheme, _, key = header.partition(" ")
            if scheme.lower() != "bearer" or not key.strip():
                raise _HTTPError(401, "missing API key: send 'Authorization: Bearer <key>'", "Authorization",
                                 {"WWW-Authenticate": "Bearer"})
            have = keys.role_of(key.strip())
            if have is None:
                raise _HTTPError(401, "unknown API key", "Authorization", {"WWW-Authenticate": "Bearer"})
            if not ApiKeys.allows(have, role):
                raise _HTTPError(403, f"this key has the role '{have}'; this call needs '{role}'", "Authorization")
        check.__name__ = f"require_{role}"
        return check

    read, write, admin = (Depends(require(r)) for r in ("read", "write", "admin"))

    def k_param(k: int, field: str = "k") -> int:
        if k > limits.max_k:
            raise _HTTPError(422, f"k must be at most {limits.max_k}", field)
        return k

    # -------------------------------------------------------------- error bodies
    @app.exception_handler(_HTTPError)
    async def _on_http_error(_: Request, err: _HTTPError) -> JSONResponse:
        resp = _error(err.status, err.message, err.field)
        for name, value in (err.headers or {}).items():
            resp.headers[name] = value
        return resp

    @app.exception_handler(RequestValidationError)
    async def _on_validation(_: Request, err: RequestValidationError) -> JSONResponse:
        details = [{"field": _field_name(tuple(e.get("loc", ()))), "message": e.get("msg", "")}
                   for e in err.errors()]
        first = details[0] if details else {"field": "body", "message": "invalid request"}
        return _error(422, f"{first['field']}: {first['message']}", first["field"], details=details)

    @app.exception_handler(StarletteHTTPException)
    async def _on_starlette(_: Request, err: StarletteHTTPException) -> JSONResponse:
        return _error(err.status_code, str(err.detail), None)

    @app.exception_handler(NotFound)
    async def _on_not_found(_: Request, err: NotFound) -> JSONResponse:
        return _error(404, err.message, err.field)

    @app.exception_handler(DataError)
    async def _on_data_error(_: Request, err: DataError) -> JSONResponse:
        return _error(422, err.message, err.field)

    @app.exception_handler(ConfigError)
    async def _on_config_error(_: Request, err: ConfigError) -> JSONResponse:
        return _error(400, str(err), None)

    # --------------------------------------------------------------- the routes

    @app.get("/v1/users/{user_id}/recommendations", response_model=RecommendationsOut, dependencies=[read],
             tags=["recommendations"])
    async def user_recommendations(user_id: UserId, k: int = Query(10, ge=1), exclude_seen: bool = True,
                                   explain: bool = False) -> RecommendationsOut:
        """Top-k items for a user the model knows (or one with stored events)."""
        rec, snap = engine.recommend_user(user_id, k_param(k), exclude_seen=exclude_seen, explain=explain)
        return RecommendationsOut(user_id=user_id, items=_items(rec), model_version=snap.version,
                                  ignored=rec.ignored, fallback=rec.fallback)

    @app.post("/v1/recommendations", response_model=RecommendationsOut, dependencies=[read],
              tags=["recommendations"])
    async def context_recommendations(body: ContextRequest) -> RecommendationsOut:
        """Top-k items for a user described by the request: new users, anonymous sessions."""
        k_param(body.k)
        if len(body.history) > limits.max_history:
            raise _HTTPError(422, f"at most {limits.max_history} history items", "history")
        if len(body.friends) > limits.max_friends:
            raise _HTTPError(422, f"at most {limits.max_friends} friends", "friends")
        rec, snap = engine.recommend_context([(h.item_id, h.timestamp) for h in body.history], body.features,
                                             body.friends, body.time, body.k, explain=body.explain,
                                             exclude_seen=body.exclude_seen)
        return RecommendationsOut(user_id=None, items=_items(rec), model_version=snap.version,
                                  ignored=rec.ignored, fallback=rec.fallback)

    @app.get("/v1/items/{item_id}/similar", response_model=SimilarOut, dependencies=[read], tags=["items"])
    async def similar_items(item_id: ItemId,
                            k: int = Query(10, ge=1)) -> SimilarOut:
        """Items most similar to ``item_id``."""
        rec, snap = engine.similar(item_id, k_param(k))
        return SimilarOut(item_id=item_id, items=_items(rec), model_version=snap.version)

    @app.post("/v1/events", response_model=EventsOut, dependencies=[write], tags=["events"])
    async def post_events(body: EventsBody) -> EventsOut:
        """Store one event or a batch; the users' next recommendations read them. The answer
        comes once the events are committed (the committer thread groups concurrent calls)."""
        events = body.events if isinstance(body, EventBatch) else [body]
        if len(events) > limits.max_events:
            raise _HTTPError(422, f"at most {limits.max_events} events per request", "events")
        done = engine.submit_events([Event(e.user_id, e.item_id, e.timestamp, e.weight) for e in events])
        out = await asyncio.wrap_future(done)
        metrics.events.inc(out["stored"])
        return EventsOut(**out)

    @app.post("/v1/admin/reload", dependencies=[admin], tags=["admin"])
    def reload(body: ReloadRequest | None = None) -> dict[str, Any]:
        """Load the model folder again (or ``model_dir``) and swap it in atomically; on failure
        the old model keeps serving and the answer is 409."""
        try:
            version = engine.reload(body.model_dir if body else None)
        except MgrecError as err:
            metrics.reloads.labels("failed").inc()
            log.warning("reload failed, the old model keeps serving: %s", err)
            raise _HTTPError(409, f"reload failed, the old model keeps serving: {err}", "model_dir") from None
        metrics.reloads.labels("ok").inc()
        snap = engine.snapshot
        metrics.set_model(snap.version, str(snap.run.record.get("model")))
        return {"model_version": version, "reloads": engine.reloads}

    @app.get("/v1/users", dependencies=[read], tags=["browse"])
    async def list_users(prefix: str = Query("", max_length=256), limit: int = Query(50, ge=1, le=1000),
                         offset: int = Query(0, ge=0)) -> dict[str, Any]:
        """User ids, for pickers."""
        return engine.list_ids("users", prefix, limit, offset)

    @app.get("/v1/items", dependencies=[read], tags=["browse"])
    async def list_items(prefix: str = Query("", max_length=256), limit: int = Query(50, ge=1, le=1000),
                         offset: int = Query(0, ge=0)) -> dict[str, Any]:
        """Item ids, for pickers."""
        return engine.list_ids("items", prefix, limit, offset)

    @app.get("/v1/users/{user_id}", dependencies=[read], tags=["browse"])
    async def user_info(user_id: UserId, limit: int = Query(50, ge=1, le=1000)) -> dict[str, Any]:
        """A user's latest events (newest first) and friends."""
        return engine.user_info(user_id, limit)

    @app.get("/v1/info", dependencies=[read], tags=["browse"])
    async def info() -> dict[str, Any]:
        """The model being served."""
        return engine.info()

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"])
    async def readyz() -> JSONResponse:
        snap = engine.snapshot
        ok = snap is not None
        return JSONResponse({"ready": ok, "model_version": snap.version if ok else None},
                            status_code=200 if ok else 503)

    @app.get("/metrics", tags=["ops"])
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    page = files("mgrec.server").joinpath("static/index.html")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page.read_text(encoding="utf-8"))

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        return Response(status_code=204)

    app.add_middleware(_Guard, metrics=metrics, max_body=limits.max_body_bytes)

    return app
