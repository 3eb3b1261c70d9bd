"""The Starlette application: REST + WebSocket, thin over the application layer."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from ..adapters.prometheus_metrics import CONTENT_TYPE_LATEST, PrometheusMetrics
from ..application.data_quality import ADD_UP_TOLERANCE, JUMPS, KINDS, STALE_AFTER, check
from ..application.ingest import (
    DuplicateKeyError,
    IngestResult,
    InvalidItem,
    build_batch,
    no_duplicate_keys,
)
from ..application.realtime import MAX_FRAME_BYTES
from ..application.retention import DetailExpired, require_detail
from ..application.time_travel import cut_of, page_of_views, protocols_at
from ..application.views import ALL_PROTOCOLS, ProtocolQuery, ProtocolView
from ..application.views import SeriesQuery as SeriesRequest
from .alert_history_api import alert_history_routes
from .alerts_api import alert_routes
from .analytics_api import analytics_routes
from .anomalies_api import anomaly_routes
from .asyncapi import asyncapi_document
from .audit_api import AUDIT_DETAIL, AuditRequests, audit_routes
from .auth import on_auth_error, require_key
from .auth_api import auth_routes
from .coins_api import coin_routes
from .container import build_container, provide
from .cors import cors_middleware
from .dashboard import dashboard_routes
from .dead_letters_api import dead_letter_routes
from .docs_ui import docs_routes
from .errors import ApiError, api_error_handler, http_error_handler, unexpected_error_handler
from .health_api import health_routes
from .keys_api import key_routes
from .llama_api import llama_routes
from .logs import RequestIds
from .mev_api import mev_routes
from .node import Node, running
from .observability import run_sampler, sample
from .openapi import OpenApi
from .operations import Operation, OperationRoute, Text, json_answer
from .privacy_api import privacy_routes
from .query_api import query_routes
from .rate_limits import LimitRequests, ThrottleAuthFailures, TrustedProxies, marking_failures
from .schemas.common import JsonDocument, NoParameters
from .schemas.health import Health, ProjectionHealth, ProjectionStall
from .schemas.ingest import IngestBody, IngestQuery
from .schemas.ingest import IngestResult as IngestAnswer
from .schemas.protocols import (
    MetricSeries,
    Protocol,
    ProtocolListQuery,
    ProtocolPage,
    ProtocolPath,
    SeriesPoint,
    SeriesQuery,
    TimeTravelQuery,
)
from .schemas.quality import DataQuality, DataQualityQuery, QualityFinding
from .schemas.realtime import (
    PriceEntry,
    PriceSnapshot,
    RealtimePricesQuery,
    RealtimeProtocolsQuery,
    TvlEntry,
    TvlSnapshot,
    VolumeEntry,
    VolumeSnapshot,
)
from .schemas.reconciliation import ReconciliationRun
from .settings import Settings
from .smart_money_api import smart_money_routes
from .subscriptions_api import subscription_routes
from .validation import path_slug
from .volumes_api import volume_routes
from .ws_server import GATEWAY_STATE_KEY, HandshakeRefused, SocketGateway

_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class CountRequests:
    """ASGI middleware: ``dr_http_requests`` and ``dr_http_request_duration_seconds`` by
    route template (``unmatched`` for none), method and status. The router records the
    matched endpoint in the scope, read after the response."""

    def __init__(self, app: ASGIApp, metrics: PrometheusMetrics, paths: Mapping[Any, str]) -> None:
        self.app = app
        self.metrics = metrics
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # unless a response starts: the app failed before answering
        started = time.perf_counter()

        async def send_counting(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_counting)
        finally:
            route = self.paths.get(scope.get("endpoint"), "unmatched")
            self.metrics.request_answered(
                route, scope["method"], status, time.perf_counter() - started
            )


def _node(request: Request | WebSocket) -> Node:
    node: Node = request.app.state.node
    return node


def _slug(request: Request) -> str:
    """The ``{slug}`` of the path; one that breaks the slug rule cannot be listed: 404."""
    slug = path_slug(request)
    if slug is None:
        raise _protocol_not_found(request.path_params["slug"])
    return slug


def _protocol_not_found(slug: str) -> ApiError:
    return ApiError(404, "protocol_not_found", f"protocol {slug!r} not found")


# -- routes -----------------------------------------------------------------------------


HEALTH = Operation(
    "GET",
    "getHealth",
    "Liveness, log positions and the projections' progress",
    NoParameters,
    Health,
    also=((503, Health),),
    description="`degraded` (503) while a projection this node runs cannot apply the log: "
    "`projections` says which, where it stopped and why.",
)


async def health(request: Request, query: NoParameters) -> Response:
    """``ok`` (200), or ``degraded`` (503) while a projection this node runs cannot apply
    the log: ``projections`` says which, where it stopped and why."""
    node = _node(request)
    head = await asyncio.to_thread(node.event_log.head)
    follower = node.follower.position if node.follower else None
    projections = {
        name: ProjectionHealth(
            position=runner.position,
            lag=max(head - runner.position, 0),
            stalled=None if runner.stall is None else ProjectionStall.model_validate(runner.stall),
        )
        for name, runner in node.runners.items()
    }
    stalled = any(runner.stall is not None for runner in node.runners.values())
    answer = Health(
        status="degraded" if stalled else "ok",
        log_head=head,
        node_position=follower,
        hot_position=await node.hot.position(),
        history_position=await asyncio.to_thread(node.history.position),
        connections=len(node.hub.connections),
        projections=projections,
    )
    return json_answer(answer, 503 if stalled else 200)


LIST_PROTOCOLS = Operation(
    "GET",
    "listProtocols",
    "List protocols (filter, sort, paginate)",
    ProtocolListQuery,
    ProtocolPage,
    access="read",
)


async def list_protocols(request: Request, query: ProtocolListQuery) -> Response:
    wanted = ProtocolQuery(
        chain=query.chain,
        category=query.category,
        min_tvl=query.min_tvl,
        sort=query.sort,
        descending=query.order == "desc",
        limit=query.limit,
        offset=query.offset,
    )
    node = _node(request)
    known_at = None
    if query.as_of is None and query.known_at is None:
        page = await node.hot.list_protocols(wanted)
    else:
        cut = await asyncio.to_thread(cut_of, node.history, query.as_of, query.known_at)
        known_at = cut.known_at
        views = await asyncio.to_thread(protocols_at, node.history, cut)
        page = page_of_views(views, wanted)
    return json_answer(
        ProtocolPage(
            protocols=[Protocol.model_validate(view) for view in page.items],
            total=page.total,
            limit=page.limit,
            offset=page.offset,
            asOf=query.as_of,
            knownAt=known_at,
        )
    )


GET_PROTOCOL = Operation(
    "GET",
    "getProtocol",
    "One protocol's listing and current values (or as of a time)",
    TimeTravelQuery,
    Protocol,
    access="read",
    path=ProtocolPath,
    errors=(404,),
)


async def get_protocol(request: Request, query: TimeTravelQuery) -> Response:
    slug = _slug(request)
    node = _node(request)
    if query.as_of is None and query.known_at is None:
        view = await node.hot.get_protocol(slug)
    else:
        cut = await asyncio.to_thread(cut_of, node.history, query.as_of, query.known_at)
        views = await asyncio.to_thread(protocols_at, node.history, cut, slug)
        view = views[0] if views else None
    if view is None:
        raise _protocol_not_found(slug)
    return json_answer(Protocol.model_validate(view))


PROTOCOL_METRICS = Operation(
    "GET",
    "getProtocolMetrics",
    "Time series of a metric, bucketed, as of a time",
    SeriesQuery,
    MetricSeries,
    access="read",
    path=ProtocolPath,
    errors=(404, 410),
)


async def protocol_metrics(request: Request, query: SeriesQuery) -> Response:
    node = _node(request)
    slug = _slug(request)
    if await node.hot.get_protocol(slug) is None:
        raise _protocol_not_found(slug)
    horizon = await asyncio.to_thread(node.history.detail_since)
    try:
        require_detail(horizon, query.start, query.end, query.as_of)
    except DetailExpired as expired:
        raise ApiError(410, "detail_expired", str(expired), {"horizon": expired.horizon}) from None
    known_at = None
    if query.known_at is not None:
        cut = await asyncio.to_thread(cut_of, node.history, None, query.known_at)
        known_at = cut.known_at
    series = await asyncio.to_thread(
        node.history.series,
        SeriesRequest(
            slug=slug,
            metric=query.metric,
            chain=query.chain,
            start=query.start,
            end=query.end,
            bucket=query.bucket,
            as_of=query.as_of,
            limit=query.limit,
            until_position=known_at,
        ),
    )
    return json_answer(
        MetricSeries(
            slug=series.slug,
            metric=query.metric,
            chain=series.chain,
            bucket=query.bucket,
            as_of=query.as_of,
            knownAt=known_at,
            points=[SeriesPoint.model_validate(point) for point in series.points],
        )
    )


async def _realtime_protocols(
    request: Request, query: RealtimeProtocolsQuery, *, ranked_by: str, ranked_only: bool = False
) -> list[ProtocolView]:
    """The protocols named in ``protocolIds`` or, when none are named, the first ``limit``
    ranked by ``ranked_by`` (with ``ranked_only``, those without a ``ranked_by`` value left
    out). ``limit`` is checked even next to ids (it then changes nothing)."""
    hot = _node(request).hot
    if query.protocol_ids is not None:
        return await hot.get_protocols(query.protocol_ids)
    page = await hot.list_protocols(ProtocolQuery(sort=ranked_by, limit=query.limit))
    return [view for view in page.items if not ranked_only or getattr(view, ranked_by) is not None]


RECONCILIATION = Operation(
    "GET",
    "getLatestReconciliation",
    "The last reconciliation of the read models against the event log",
    NoParameters,
    ReconciliationRun,
    access="read",
    description="404 before the first run. Runs every RECONCILE_INTERVAL, or with "
    "`defi-realtime reconcile` (docs/reconciliation.md).",
    errors=(404,),
)

DATA_QUALITY = Operation(
    "GET",
    "getDataQuality",
    "Data-quality report: chains that do not add up, sudden jumps, stale series",
    DataQualityQuery,
    DataQuality,
    access="read",
    description="A validator, not a gate: flagged values are kept everywhere. Thresholds: "
    f"chains within {ADD_UP_TOLERANCE:.0%} of the total; jumps of "
    + ", ".join(f"{limit:.0f}% ({window})" for window, limit in JUMPS.items())
    + f"; stale after {STALE_AFTER / 86_400:.0f} days behind the freshest TVL.",
)


async def latest_reconciliation(request: Request, query: NoParameters) -> Response:
    latest = await asyncio.to_thread(_node(request).app.latest_reconciliation)
    if latest is None:
        raise ApiError(404, "no_reconciliation", "no reconciliation has run yet")
    return json_answer(
        ReconciliationRun.model_validate(
            {
                "run": latest["run"],
                "startedAt": latest["started_at"],
                "completedAt": latest["completed_at"],
                "positions": latest["positions"],
                "compared": latest["compared"],
                "discrepancyCounts": latest["discrepancy_counts"],
                "discrepancies": latest["discrepancies"],
                "repaired": latest["repaired"],
                "skipped": latest["skipped"],
            }
        )
    )


async def data_quality(request: Request, query: DataQualityQuery) -> Response:
    hot = _node(request).hot
    position = await hot.position()
    page = await hot.list_protocols(ProtocolQuery(limit=ALL_PROTOCOLS))
    findings = check(page.items)
    counts = {kind: sum(1 for f in findings if f.kind == kind) for kind in KINDS}
    wanted = [f for f in findings if query.kind is None or f.kind == query.kind]
    return json_answer(
        DataQuality(
            position=position,
            counts=counts,
            findings=[QualityFinding.model_validate(f) for f in wanted[: query.limit]],
        )
    )


REALTIME_TVL = Operation(
    "GET",
    "getRealtimeTvl",
    "Latest TVL of given (protocolIds=a,b) or the largest protocols",
    RealtimeProtocolsQuery,
    TvlSnapshot,
    access="read",
    description="Without protocolIds: the `limit` protocols with the largest TVL, those "
    "without a TVL last.",
)


async def realtime_tvl(request: Request, query: RealtimeProtocolsQuery) -> Response:
    views = await _realtime_protocols(request, query, ranked_by="tvl")
    return json_answer(
        TvlSnapshot(
            data=[
                TvlEntry(
                    id=view.slug,
                    value=view.tvl,
                    # The tvl's own data time: a volume or a chain observed later must not
                    # make an old total look fresh.
                    timestamp=view.tvl_at,
                    change24h=view.change_1d,
                    change1h=view.change_1h,
                    position=view.position,
                )
                for view in views
            ]
        )
    )


REALTIME_VOLUMES = Operation(
    "GET",
    "getRealtimeVolumes",
    "Latest 24h volumes and fees of given (protocolIds=a,b) or the largest volumes",
    RealtimeProtocolsQuery,
    VolumeSnapshot,
    access="read",
    description="Named protocols are reported even without a volume. Without protocolIds: "
    "the `limit` protocols with the largest 24h volume, those without one left out.",
)


async def realtime_volumes(request: Request, query: RealtimeProtocolsQuery) -> Response:
    views = await _realtime_protocols(request, query, ranked_by="volume_24h", ranked_only=True)
    return json_answer(
        VolumeSnapshot(
            data=[
                VolumeEntry(
                    id=view.slug,
                    volume_24h=view.volume_24h,
                    fees_24h=view.fees_24h,
                    volume_24h_at=view.volume_24h_at,
                    fees_24h_at=view.fees_24h_at,
                    position=view.position,
                )
                for view in views
            ]
        )
    )


REALTIME_PRICES = Operation(
    "GET",
    "getRealtimePrices",
    "Latest prices of given (tokens=a,b) or recently updated tokens",
    RealtimePricesQuery,
    PriceSnapshot,
    access="read",
)


async def realtime_prices(request: Request, query: RealtimePricesQuery) -> Response:
    # The projection ignores limit when tokens are named; it is checked anyway.
    prices = await _node(request).hot.prices(query.named, query.limit)
    return json_answer(PriceSnapshot(data=[PriceEntry.model_validate(p) for p in prices]))


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


INGEST = Operation(
    "POST",
    "ingest",
    "Record a batch of observations, prices and listings",
    IngestQuery,
    IngestAnswer,
    access="key",
    body=IngestBody,
    errors=(413, 422),
    description="Each rejected item is answered with its index and reason. A batch with "
    "rejected items records nothing (422 `invalid_items`, the details being this answer's "
    "shape) unless `partial` is true: then its valid items are recorded.",
)


async def ingest(request: Request, query: IngestQuery) -> Response:
    require_key(request)
    body = await _read_json_body(request)
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_body", "the body must be a JSON object")
    unknown = sorted(set(body) - set(IngestBody.model_fields))
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
    node = _node(request)
    if batch.rejected and not partial:
        result = IngestResult(rejected=list(batch.rejected), committed=False)
    else:
        result = await node.writer.ingest(batch)
    metrics: PrometheusMetrics = request.app.state.metrics
    metrics.ingested.labels("accepted").inc(result.accepted)
    metrics.ingested.labels("duplicate").inc(result.duplicates)
    metrics.ingested.labels("rejected").inc(len(result.rejected))
    # The audit record names the account that sent these observations and where the main
    # log holds them (ADR 0041).
    setattr(request.state, AUDIT_DETAIL, result.audit_detail())
    if not result.committed:
        raise ApiError(
            422,
            "invalid_items",
            f"{len(result.rejected)} item(s) rejected; nothing was recorded "
            "(send partial=true to record the valid items)",
            result.to_json(),
        )
    # Rendered without the IngestResult model, which documents it: validating up to 50,000
    # rejections on the way out would double the cost of this answer (tests check the shape).
    return JSONResponse(result.to_json())


OPENAPI = Operation("GET", "getOpenApi", "This document (OpenAPI 3.1)", NoParameters, JsonDocument)


async def openapi(request: Request, query: NoParameters) -> Response:
    document: OpenApi = request.app.state.openapi
    return Response(document.rendered, media_type="application/json")


METRICS = Operation(
    "GET", "getMetrics", "Prometheus metrics", NoParameters, Text(CONTENT_TYPE_LATEST)
)


async def metrics_endpoint(request: Request, query: NoParameters) -> Response:
    metrics: PrometheusMetrics = request.app.state.metrics
    await sample(metrics, _node(request), getattr(request.app.state, "gateway", None))
    return Response(metrics.scrape(), media_type=CONTENT_TYPE_LATEST)


# -- WebSocket ---------------------------------------------------------------------------


ASYNCAPI = Operation(
    "GET",
    "getAsyncApi",
    "AsyncAPI document of the WebSocket protocol (/v2/realtime)",
    NoParameters,
    JsonDocument,
)


async def asyncapi(request: Request, query: NoParameters) -> Response:
    return JSONResponse(asyncapi_document())


async def realtime_socket(websocket: WebSocket) -> None:
    """``/v2/realtime`` over Starlette's WebSocket (``WS_TRANSPORT=asgi``; with the lean
    transport uvicorn hands these sockets to ``ws_transport.RealtimeWebSocketProtocol``)."""
    gateway: SocketGateway = websocket.app.state.gateway
    try:
        admission = await gateway.admit(
            {name.lower(): value for name, value in websocket.headers.items()},
            dict(websocket.query_params),
            websocket.client.host if websocket.client is not None else None,
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
            if gateway.rate_limits is not None:
                refusal = await gateway.message_refusal(admission)
                if refusal is not None:
                    connection.last_seen = time.monotonic()
                    connection.offer_message(refusal)
                    continue
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
    container = build_container(settings, role)
    metrics: PrometheusMetrics = container.metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        async with running(settings, role, container=container) as node:
            app.state.node = node
            gateway: SocketGateway = await provide(node.container.gateway)
            app.state.gateway = gateway
            # Read by the rate-limit middlewares (None: RATE_LIMITS=off).
            app.state.rate_limits = gateway.rate_limits
            # Read by the audit middleware and GET /v2/audit (ADR 0041).
            app.state.audit_journal = await provide(node.container.audit_journal)
            app.state.audit_trail = await provide(node.container.audit_trail)
            sweeper = asyncio.create_task(
                node.hub.run_sweeper(settings.ws_idle_timeout, settings.ws_heartbeat_interval),
                name="realtime-sweeper",
            )
            # The top wallets the smart-money channel streams, ranked now and then (ADR 0051).
            ranker = (
                asyncio.create_task(
                    node.hub.smart_money.run(settings.smart_money_ws_refresh),
                    name="smart-money-ranking",
                )
                if node.hub.smart_money.serving
                else None
            )
            metrics.start()
            sampler = asyncio.create_task(
                run_sampler(metrics, node, gateway, settings.metrics_interval),
                name="metrics-sampler",
            )
            try:
                # The lifespan state reaches uvicorn's app state: the lean WebSocket
                # transport finds the gateway there.
                yield {GATEWAY_STATE_KEY: gateway}
            finally:
                # Records of requests still being answered are written before the store
                # closes.
                await app.state.audit_journal.drain()
                sweeper.cancel()
                sampler.cancel()
                if ranker is not None:
                    ranker.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await ranker  # a ranking under way ends before the store closes
                with contextlib.suppress(asyncio.CancelledError):
                    await sweeper
                with contextlib.suppress(asyncio.CancelledError):
                    await sampler
                metrics.stop()

    # Each HTTP route is built from its operations: what the document says is what is served.
    routes: list[BaseRoute] = [
        OperationRoute("/health", HEALTH.serve(health)),
        *health_routes(),
        OperationRoute("/v2/protocols", LIST_PROTOCOLS.serve(list_protocols)),
        OperationRoute("/v2/protocols/{slug:str}", GET_PROTOCOL.serve(get_protocol)),
        OperationRoute(
            "/v2/protocols/{slug:str}/metrics", PROTOCOL_METRICS.serve(protocol_metrics)
        ),
        *analytics_routes(),
        OperationRoute("/v2/data-quality", DATA_QUALITY.serve(data_quality)),
        OperationRoute("/v2/reconciliation/latest", RECONCILIATION.serve(latest_reconciliation)),
        OperationRoute("/v2/realtime/tvl", REALTIME_TVL.serve(realtime_tvl)),
        OperationRoute("/v2/realtime/prices", REALTIME_PRICES.serve(realtime_prices)),
        OperationRoute("/v2/realtime/volumes", REALTIME_VOLUMES.serve(realtime_volumes)),
        OperationRoute("/v2/ingest", INGEST.serve(ingest)),
        *auth_routes(),
        *audit_routes(),
        *alert_routes(_read_json_body),
        *alert_history_routes(),
        *subscription_routes(_read_json_body),
        *privacy_routes(),
        *key_routes(_read_json_body),
        *dead_letter_routes(),
        *llama_routes(),
        *coin_routes(),
        *volume_routes(),
        *anomaly_routes(),
        *mev_routes(),
        *smart_money_routes(),
        *query_routes(_read_json_body),
        OperationRoute("/openapi.json", OPENAPI.serve(openapi)),
        OperationRoute("/asyncapi.json", ASYNCAPI.serve(asyncapi)),
        OperationRoute("/metrics", METRICS.serve(metrics_endpoint)),
        *docs_routes(),
        WebSocketRoute("/v2/realtime", realtime_socket),
        *dashboard_routes(),
    ]
    paths = {route.endpoint: route.path for route in routes if isinstance(route, Route)}
    proxies = TrustedProxies(settings.trusted_proxies)
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[
            Middleware(RequestIds),
            # Outside authentication and the limits: their refusals are audited too.
            Middleware(AuditRequests, routes=routes, proxies=settings.trusted_networks),
            # Before authentication: a preflight is answered before it sees the request.
            *cors_middleware(settings.cors_origins),
            Middleware(CountRequests, metrics=metrics, paths=paths),
            # Around authentication: its failures are counted (ADR 0036).
            Middleware(ThrottleAuthFailures, proxies=proxies),
            Middleware(
                AuthenticationMiddleware,
                backend=container.auth_backend(),
                on_error=marking_failures(on_auth_error),
            ),
            # After it: the budget spent is the key's (or the anonymous address's).
            Middleware(LimitRequests, proxies=proxies),
        ],
        exception_handlers={
            ApiError: api_error_handler,
            HTTPException: http_error_handler,
            Exception: unexpected_error_handler,
        },
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.sessions = container.sessions()
    app.state.openapi = OpenApi(routes, require_key_for_reads=settings.require_key_for_reads)
    return app
