"""The Starlette application: REST + WebSocket, thin over the application layer."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from ..application.ingest import (
    DuplicateKeyError,
    IngestResult,
    InvalidItem,
    build_batch,
    no_duplicate_keys,
)
from ..application.realtime import MAX_FRAME_BYTES
from ..application.views import MAX_PAGE, SORT_FIELDS, ProtocolQuery, ProtocolView, SeriesQuery
from ..domain.api_key import ApiKey
from .alert_history_api import alert_history_routes
from .alerts_api import alert_routes
from .asyncapi import asyncapi_document
from .errors import ApiError, api_error_handler, http_error_handler, unexpected_error_handler
from .openapi import openapi_document
from .runtime import Runtime, running
from .settings import Settings
from .ws_server import GATEWAY_STATE_KEY, HandshakeRefused, SocketGateway

BUCKETS = {"5m": 300, "15m": 900, "1h": 3_600, "4h": 14_400, "1d": 86_400, "1w": 604_800}
KEY_CACHE_SECONDS = 5.0
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class Metrics:
    """Prometheus metrics of one app instance (own registry: several apps per process in
    tests must not collide)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "dr_http_requests", "HTTP requests", ["route", "status"], registry=self.registry
        )
        self.ingested = Counter(
            "dr_ingest_items", "Ingest items by outcome", ["outcome"], registry=self.registry
        )
        self.ws_connections = Gauge(
            "dr_websocket_connections", "Open WebSocket connections", registry=self.registry
        )
        self.log_head = Gauge("dr_log_position", "Node follower position", registry=self.registry)


class CountRequests:
    """ASGI middleware: ``dr_http_requests`` by route template (``unmatched`` for none) and
    status. The router records the matched endpoint in the scope, read after the response."""

    def __init__(self, app: ASGIApp, counter: Counter, paths: Mapping[Any, str]) -> None:
        self.app = app
        self.counter = counter
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # unless a response starts: the app failed before answering

        async def send_counting(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_counting)
        finally:
            route = self.paths.get(scope.get("endpoint"), "unmatched")
            self.counter.labels(route, str(status)).inc()


def _runtime(request: Request | WebSocket) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


async def _authenticate(scope_obj: Request | WebSocket, key: str | None) -> ApiKey | None:
    if not key:
        return None
    cache: dict[str, tuple[float, ApiKey | None]] = scope_obj.app.state.key_cache
    now = time.monotonic()
    cached = cache.get(key)
    if cached is not None and now - cached[0] < KEY_CACHE_SECONDS:
        return cached[1]
    found = await asyncio.to_thread(_runtime(scope_obj).app.authenticate, key)
    if len(cache) > 10_000:
        cache.clear()
    cache[key] = (now, found)
    return found


async def require_key(request: Request) -> ApiKey:
    key = await _authenticate(request, request.headers.get("x-api-key"))
    if key is None:
        raise ApiError(401, "unauthorized", "a valid X-API-Key header is required")
    return key


async def check_read_access(request: Request) -> None:
    settings: Settings = request.app.state.settings
    if settings.require_key_for_reads:
        await require_key(request)


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, "invalid_parameter", f"{name} must be an integer") from None
    if not low <= value <= high:
        raise ApiError(400, "invalid_parameter", f"{name} must be between {low} and {high}")
    return value


def _float_param(request: Request, name: str) -> float | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ApiError(400, "invalid_parameter", f"{name} must be a number") from None
    if not math.isfinite(value):
        raise ApiError(400, "invalid_parameter", f"{name} must be finite")
    return value


def _time_param(request: Request, name: str) -> float | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    from ..application.ingest import parse_timestamp

    try:
        return float(raw) if _is_number(raw) else parse_timestamp(raw)
    except (InvalidItem, ValueError):
        raise ApiError(
            400, "invalid_parameter", f"{name} must be unix seconds or ISO-8601"
        ) from None


def _is_number(raw: str) -> bool:
    try:
        float(raw)
    except ValueError:
        return False
    return True


# -- routes -----------------------------------------------------------------------------


async def health(request: Request) -> Response:
    runtime = _runtime(request)
    head = await asyncio.to_thread(runtime.event_log.head)
    follower = runtime.follower.position if runtime.follower else None
    return JSONResponse(
        {
            "status": "ok",
            "log_head": head,
            "node_position": follower,
            "hot_position": await runtime.hot.position(),
            "history_position": await asyncio.to_thread(runtime.history.position),
            "connections": len(runtime.hub.connections),
        }
    )


async def list_protocols(request: Request) -> Response:
    await check_read_access(request)
    params = request.query_params
    sort = params.get("sort", "tvl")
    if sort not in SORT_FIELDS:
        raise ApiError(400, "invalid_parameter", f"sort must be one of {sorted(SORT_FIELDS)}")
    order = params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise ApiError(400, "invalid_parameter", "order must be 'asc' or 'desc'")
    min_tvl = _float_param(request, "min_tvl")
    query = ProtocolQuery(
        chain=params.get("chain") or None,
        category=params.get("category") or None,
        min_tvl=min_tvl,
        sort=sort,
        descending=order == "desc",
        limit=_int_param(request, "limit", 100, 1, MAX_PAGE),
        offset=_int_param(request, "offset", 0, 0, 10_000_000),
    )
    page = await _runtime(request).hot.list_protocols(query)
    return JSONResponse(
        {
            "protocols": [view.to_json() for view in page.items],
            "total": page.total,
            "limit": page.limit,
            "offset": page.offset,
        }
    )


async def get_protocol(request: Request) -> Response:
    await check_read_access(request)
    slug = request.path_params["slug"]
    view = await _runtime(request).hot.get_protocol(slug)
    if view is None:
        raise ApiError(404, "protocol_not_found", f"protocol {slug!r} not found")
    return JSONResponse(view.to_json())


async def protocol_metrics(request: Request) -> Response:
    await check_read_access(request)
    runtime = _runtime(request)
    slug = request.path_params["slug"]
    if await runtime.hot.get_protocol(slug) is None:
        raise ApiError(404, "protocol_not_found", f"protocol {slug!r} not found")
    params = request.query_params
    metric = params.get("metric", "tvl")
    if metric not in ("tvl", "volume_24h", "fees_24h"):
        raise ApiError(400, "invalid_parameter", "metric must be tvl, volume_24h or fees_24h")
    bucket_raw = params.get("bucket")
    bucket: int | None = None
    if bucket_raw:
        if bucket_raw in BUCKETS:
            bucket = BUCKETS[bucket_raw]
        else:
            bucket = _int_param(request, "bucket", 0, 60, 31_536_000)
    query = SeriesQuery(
        slug=slug,
        metric=metric,
        chain=params.get("chain", "total"),
        start=_time_param(request, "start"),
        end=_time_param(request, "end"),
        bucket=bucket,
        as_of=_time_param(request, "as_of"),
        limit=_int_param(request, "limit", 10_000, 1, 100_000),
    )
    series = await asyncio.to_thread(runtime.history.series, query)
    return JSONResponse(
        {
            "slug": series.slug,
            "metric": series.metric,
            "chain": series.chain,
            "bucket": bucket,
            "as_of": query.as_of,
            "points": [{"timestamp": p.timestamp, "value": p.value} for p in series.points],
        }
    )


def _csv_param(request: Request, name: str) -> list[str] | None:
    raw = request.query_params.get(name)
    if not raw:
        return None
    values = [value.strip() for value in raw.split(",") if value.strip()]
    if len(values) > MAX_PAGE:
        raise ApiError(400, "invalid_parameter", f"{name} holds at most {MAX_PAGE} values")
    return values


def _realtime_limit(request: Request) -> int:
    """How many entries a realtime endpoint reports when no ids are named. Checked even when
    ids are named (it then changes nothing), so a bad limit is a 400 on every endpoint."""
    return _int_param(request, "limit", 100, 1, MAX_PAGE)


async def _realtime_protocols(
    request: Request, *, ranked_by: str, ranked_only: bool = False
) -> list[ProtocolView]:
    """The protocols named in ``protocolIds`` or, when none are named, the first ``limit``
    ranked by ``ranked_by`` (with ``ranked_only``, those without a ``ranked_by`` value left
    out)."""
    hot = _runtime(request).hot
    ids = _csv_param(request, "protocolIds")
    limit = _realtime_limit(request)
    if ids is not None:
        return await hot.get_protocols(ids)
    query = ProtocolQuery(sort=ranked_by, limit=limit)
    page = await hot.list_protocols(query)
    return [view for view in page.items if not ranked_only or getattr(view, ranked_by) is not None]


async def realtime_tvl(request: Request) -> Response:
    await check_read_access(request)
    views = await _realtime_protocols(request, ranked_by="tvl")
    return JSONResponse(
        {
            "data": [
                {
                    "id": view.slug,
                    "value": view.tvl,
                    "timestamp": view.updated_at,
                    "change24h": view.change_1d,
                    "change1h": view.change_1h,
                    "position": view.position,
                }
                for view in views
            ]
        }
    )


async def realtime_volumes(request: Request) -> Response:
    await check_read_access(request)
    views = await _realtime_protocols(request, ranked_by="volume_24h", ranked_only=True)
    return JSONResponse(
        {
            "data": [
                {
                    "id": view.slug,
                    "volume_24h": view.volume_24h,
                    "fees_24h": view.fees_24h,
                    "position": view.position,
                }
                for view in views
            ]
        }
    )


async def realtime_prices(request: Request) -> Response:
    await check_read_access(request)
    tokens = _csv_param(request, "tokens") or _csv_param(request, "tokenIds")
    # The projection ignores limit when tokens are named; _realtime_limit checks it anyway.
    prices = await _runtime(request).hot.prices(tokens, _realtime_limit(request))
    return JSONResponse({"data": [price.to_json() for price in prices]})


async def _read_json_body(request: Request) -> Any:
    settings: Settings = request.app.state.settings
    limit = settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "payload_too_large", f"request bodies are limited to {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(
                    413, "payload_too_large", f"request bodies are limited to {limit} bytes"
                )
            chunks.append(chunk)
    except ClientDisconnect:  # gone mid-upload: nobody to answer, nothing to log as an error
        raise ApiError(400, "client_disconnected", "the client closed the connection") from None
    try:
        # Strict UTF-8 (RFC 8259): refuses raw-encoded surrogates, which json.loads(bytes)
        # would let through; escaped lone surrogates ("\\ud800") are refused below. Such
        # strings cannot be stored (the event store encodes UTF-8): they must be a 400, not
        # a 500 that also fails every batch group-committed with them.
        text = b"".join(chunks).decode("utf-8-sig")
        # Duplicate keys are refused, not resolved: {"value": -1, "value": 5} must not pass
        # validation as 5 (the hook costs ~15 % of decoding, see docs/benchmarks.md).
        body = json.loads(
            text, parse_constant=_reject_constant, object_pairs_hook=no_duplicate_keys
        )
        if _SURROGATE_ESCAPE.search(text):
            json.dumps(body, ensure_ascii=False).encode()
    except DuplicateKeyError as error:
        raise ApiError(
            400, "invalid_json", f"body is not valid JSON: {error}", {"key": error.key}
        ) from None
    except (ValueError, RecursionError) as error:  # RecursionError: nesting too deep
        raise ApiError(400, "invalid_json", f"body is not valid JSON: {error}") from None
    return body


# The only spellings of ``?partial=``: anything else is a 400, not a silent "false".
_PARTIAL_QUERY_VALUES = {"true": True, "1": True, "false": False, "0": False}


def _partial(body: dict[str, Any], request: Request) -> bool:
    """Whether the caller asked for partial acceptance: ``"partial"`` in the body (a JSON
    boolean) or else the ``partial`` query parameter (``true``/``false``/``1``/``0``)."""
    if "partial" in body:
        partial = body["partial"]
        if not isinstance(partial, bool):
            raise ApiError(400, "invalid_body", "partial must be a JSON boolean (true or false)")
        return partial
    values = request.query_params.getlist("partial")
    if not values:
        return False
    if len(values) > 1 or values[0] not in _PARTIAL_QUERY_VALUES:
        raise ApiError(
            400,
            "invalid_parameter",
            "the partial query parameter must be given once, as true, false, 1 or 0",
            {"parameter": "partial"},
        )
    return _PARTIAL_QUERY_VALUES[values[0]]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a valid JSON number")


async def ingest(request: Request) -> Response:
    await require_key(request)
    body = await _read_json_body(request)
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_body", "the body must be a JSON object")
    unknown = sorted(set(body) - {"observations", "prices", "listings", "partial"})
    if unknown:
        raise ApiError(400, "invalid_body", f"unknown field(s): {', '.join(unknown)}")
    lists = {}
    for name in ("observations", "prices", "listings"):
        value = body.get(name, [])
        if not isinstance(value, list):
            raise ApiError(400, "invalid_body", f"{name} must be a list")
        lists[name] = value
    partial = _partial(body, request)
    if not any(lists.values()):
        raise ApiError(400, "empty_batch", "the batch has no observations, prices or listings")
    try:
        batch = build_batch(
            lists["observations"], lists["prices"], lists["listings"], partial=partial
        )
    except InvalidItem as error:
        raise ApiError(413, "batch_too_large", str(error)) from None
    runtime = _runtime(request)
    if batch.rejected and not partial:
        result = IngestResult(rejected=list(batch.rejected), committed=False)
    else:
        result = await runtime.writer.ingest(batch)
    metrics: Metrics = request.app.state.metrics
    metrics.ingested.labels("accepted").inc(result.accepted)
    metrics.ingested.labels("duplicate").inc(result.duplicates)
    metrics.ingested.labels("rejected").inc(len(result.rejected))
    if not result.committed:
        raise ApiError(
            422,
            "invalid_items",
            f"{len(result.rejected)} item(s) rejected; nothing was recorded "
            "(send partial=true to record the valid items)",
            result.to_json(),
        )
    return JSONResponse(result.to_json())


async def openapi(request: Request) -> Response:
    return JSONResponse(openapi_document())


async def metrics_endpoint(request: Request) -> Response:
    metrics: Metrics = request.app.state.metrics
    runtime = _runtime(request)
    metrics.ws_connections.set(len(runtime.hub.connections))
    if runtime.follower is not None:
        metrics.log_head.set(runtime.follower.position)
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


# -- WebSocket ---------------------------------------------------------------------------


async def asyncapi(request: Request) -> Response:
    return JSONResponse(asyncapi_document())


async def realtime_socket(websocket: WebSocket) -> None:
    """``/v2/realtime`` over Starlette's WebSocket (``WS_TRANSPORT=asgi``; with the lean
    transport uvicorn hands these sockets to ``ws_server.RealtimeWebSocketProtocol``)."""
    gateway: SocketGateway = websocket.app.state.gateway
    try:
        admission = await gateway.admit(
            {name.lower(): value for name, value in websocket.headers.items()},
            dict(websocket.query_params),
        )
    except HandshakeRefused as refused:
        await websocket.close(code=refused.code, reason=refused.reason)
        return
    try:
        await websocket.accept()
    except Exception:
        gateway.abandon(admission)
        raise

    async def close(code: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            await websocket.close(code=code, reason=reason)

    connection = gateway.open(admission, close=close, send_text=websocket.send_text)
    hub = gateway.hub
    try:
        # Idle connections are closed by the hub's sweeper (WS_IDLE_TIMEOUT).
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            text = message.get("text")
            if text is not None:
                hub.receive(connection, text)
                continue
            data = message.get("bytes") or b""
            # Binary frames are read like text; the hub answers oversize ones.
            hub.receive(
                connection, data if len(data) <= MAX_FRAME_BYTES else data[: MAX_FRAME_BYTES + 1]
            )
    except WebSocketDisconnect:
        pass
    finally:
        await hub.disconnect(connection)


# -- app ---------------------------------------------------------------------------------


def create_app(settings: Settings | None = None, *, role: str = "serve") -> Starlette:
    """The ASGI app. Resources open in the lifespan, never at import or construction."""
    settings = settings or Settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        async with running(settings, role) as runtime:
            app.state.runtime = runtime
            gateway = SocketGateway(runtime.hub, settings, runtime.app.authenticate)
            app.state.gateway = gateway
            sweeper = asyncio.create_task(
                runtime.hub.run_sweeper(settings.ws_idle_timeout, settings.ws_heartbeat_interval),
                name="realtime-sweeper",
            )
            try:
                # The lifespan state reaches uvicorn's app state: the lean WebSocket
                # transport finds the gateway there.
                yield {GATEWAY_STATE_KEY: gateway}
            finally:
                sweeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sweeper

    routes = [
        Route("/health", health),
        Route("/v2/protocols", list_protocols),
        Route("/v2/protocols/{slug:str}", get_protocol),
        Route("/v2/protocols/{slug:str}/metrics", protocol_metrics),
        Route("/v2/realtime/tvl", realtime_tvl),
        Route("/v2/realtime/prices", realtime_prices),
        Route("/v2/realtime/volumes", realtime_volumes),
        Route("/v2/ingest", ingest, methods=["POST"]),
        *alert_routes(require_key, _read_json_body),
        *alert_history_routes(require_key),
        Route("/openapi.json", openapi),
        Route("/asyncapi.json", asyncapi),
        Route("/metrics", metrics_endpoint),
        WebSocketRoute("/v2/realtime", realtime_socket),
    ]
    metrics = Metrics()
    paths = {route.endpoint: route.path for route in routes if isinstance(route, Route)}
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[Middleware(CountRequests, counter=metrics.requests, paths=paths)],
        exception_handlers={
            ApiError: api_error_handler,
            HTTPException: http_error_handler,
            Exception: unexpected_error_handler,
        },
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.key_cache = {}
    return app
