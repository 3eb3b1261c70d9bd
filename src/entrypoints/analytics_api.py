"""``GET /v2/protocols/{slug}/analytics`` and ``GET /v2/analytics/risk`` (ADR 0033).

Thin: the measures and the score are ``application.analytics``; here the facts they need
are gathered. "Now" reads the hot projection's views and the history's day closes; a cut
(``asOf``/``knownAt``) reads both from the history read model.
"""

from __future__ import annotations

import asyncio
import time

from starlette.requests import Request
from starlette.responses import Response

from ..application.analytics import RISK_DAYS, analyse, risk_page
from ..application.time_travel import Cut, cut_of, protocols_at
from ..application.views import ALL_PROTOCOLS, ProtocolQuery, ProtocolView, SeriesQuery
from .errors import ApiError
from .node import Node
from .operations import Operation, OperationRoute, json_answer
from .schemas.analytics import (
    ProtocolAnalyticsAnswer,
    RiskEntryAnswer,
    RiskListQuery,
    RiskPageAnswer,
)
from .schemas.protocols import MAX_POINTS, ProtocolPath, TimeTravelQuery
from .validation import path_slug

__all__ = ["analytics_routes"]

_DAY = 86_400

PROTOCOL_ANALYTICS = Operation(
    "GET",
    "getProtocolAnalytics",
    "A protocol's TVL volatility, drawdowns, trend, chain concentration, category standing, "
    "oracles, series age and staleness, and a risk score with its components",
    TimeTravelQuery,
    ProtocolAnalyticsAnswer,
    access="read",
    path=ProtocolPath,
    errors=(404,),
    description="Measures over the daily TVL closes; windows end at the latest close. The "
    "score is the sum of its components' contributions, each 100 * effective_weight * "
    "normalised (docs/analytics.md, ADR 0033). With asOf, the state at that time.",
)

RISK_LIST = Operation(
    "GET",
    "listRiskScores",
    "Protocols by risk score (the filters, sort and pages of /v2/protocols)",
    RiskListQuery,
    RiskPageAnswer,
    access="read",
    description="Each protocol's score with its components, as /v2/protocols/{slug}/analytics "
    "computes it; sorted by score (highest risk first) unless sort says otherwise.",
)


def _not_found(slug: str) -> ApiError:
    return ApiError(404, "protocol_not_found", f"protocol {slug!r} not found")


async def _view_and_peers(
    node: Node, slug: str, cut: Cut | None
) -> tuple[ProtocolView | None, list[ProtocolView]]:
    """The protocol's view and those of its category (every view, at a cut)."""
    if cut is None:
        view = await node.hot.get_protocol(slug)
        if view is None or not view.category:
            return view, []
        page = await node.hot.list_protocols(
            ProtocolQuery(category=view.category, limit=ALL_PROTOCOLS)
        )
        return view, list(page.items)
    views = await asyncio.to_thread(protocols_at, node.history, cut)
    return next((view for view in views if view.slug == slug), None), views


async def protocol_analytics(request: Request, query: TimeTravelQuery) -> Response:
    node: Node = request.app.state.node
    slug = path_slug(request)
    if slug is None:
        raise _not_found(request.path_params["slug"])
    cut = None
    if query.as_of is not None or query.known_at is not None:
        cut = await asyncio.to_thread(cut_of, node.history, query.as_of, query.known_at)
    view, peers = await _view_and_peers(node, slug, cut)
    if view is None:
        raise _not_found(slug)
    known_at = None if cut is None else cut.known_at
    series = await asyncio.to_thread(
        node.history.series,
        SeriesQuery(
            slug=slug,
            bucket=_DAY,
            as_of=query.as_of,
            limit=MAX_POINTS,
            until_position=known_at,
        ),
    )
    reference = time.time() if query.as_of is None else query.as_of
    found = analyse(view, series.points, peers, reference)
    return json_answer(ProtocolAnalyticsAnswer.of(found, query.as_of, known_at))


async def risk_list(request: Request, query: RiskListQuery) -> Response:
    node: Node = request.app.state.node
    wanted = ProtocolQuery(
        chain=query.chain,
        category=query.category,
        min_tvl=query.min_tvl,
        sort=query.sort,
        descending=query.order == "desc",
        limit=query.limit,
        offset=query.offset,
    )
    if query.as_of is None and query.known_at is None:
        cut = Cut()
        # The filters first (the hot projection's indexes), the scores of those only.
        filtered = ProtocolQuery(
            chain=query.chain, category=query.category, min_tvl=query.min_tvl, limit=ALL_PROTOCOLS
        )
        views = list((await node.hot.list_protocols(filtered)).items)
    else:
        cut = await asyncio.to_thread(cut_of, node.history, query.as_of, query.known_at)
        views = await asyncio.to_thread(protocols_at, node.history, cut)
    closes = await asyncio.to_thread(node.history.recent_tvl_closes, cut, RISK_DAYS)
    reference = time.time() if query.as_of is None else query.as_of
    page = await asyncio.to_thread(risk_page, views, closes, reference, wanted)
    return json_answer(
        RiskPageAnswer(
            protocols=[RiskEntryAnswer.of(entry) for entry in page.items],
            total=page.total,
            limit=page.limit,
            offset=page.offset,
            reference=reference,
            asOf=query.as_of,
            knownAt=cut.known_at,
        )
    )


def analytics_routes() -> list[OperationRoute]:
    """The two routes (``/v2/protocols/{slug}/analytics`` must come before any catch-all)."""
    return [
        OperationRoute(
            "/v2/protocols/{slug:str}/analytics", PROTOCOL_ANALYTICS.serve(protocol_analytics)
        ),
        OperationRoute("/v2/analytics/risk", RISK_LIST.serve(risk_list)),
    ]
