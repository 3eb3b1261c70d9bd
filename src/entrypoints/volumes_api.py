"""DeFiLlama's volume and fee paths: ``/overview/dexs``, ``/overview/fees``,
``/summary/dexs/{protocol}``, ``/summary/fees/{protocol}`` (rules: ``application/volumes``).

Read from the history read model's daily ``volume_24h`` / ``fees_24h`` series and the hot
projection's listings.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from ..application.time_travel import Cut
from ..application.views import ALL_PROTOCOLS, ProtocolQuery, ProtocolView
from ..application.volumes import Summary, daily_by_protocol, overall, summarise
from ..domain.chains import canonical_chain, chain_key
from ..domain.observations import TOTAL
from .errors import ApiError
from .node import Node
from .operations import Operation, OperationRoute, json_answer
from .schemas.llama import ChainPath
from .schemas.protocols import ProtocolPath
from .schemas.volumes import DexsQuery, FeesQuery, Overview, OverviewProtocol, ProtocolSummary
from .validation import path_slug

__all__ = ["volume_routes"]

_KINDS: Final[dict[str, tuple[str, type[BaseModel]]]] = {
    "dexs": ("volume_24h", DexsQuery),
    "fees": ("fees_24h", FeesQuery),
}


def _totals(summary: Summary) -> dict[str, Any]:
    return {
        "total24h": summary.total24h,
        "total48hto24h": summary.total48hto24h,
        "total7d": summary.total7d,
        "total30d": summary.total30d,
        "change_1d": summary.change_1d,
        "change_7d": summary.change_7d,
        "change_1m": summary.change_1m,
    }


def _series(
    node: Node,
    metric: str,
    protocol: str | None,
    chain: str | None = None,
    single_chain: Mapping[str, str] | None = None,
) -> dict[str, dict[int, float]]:
    """Each protocol's daily series of ``metric``, every day held: its total or, with
    ``chain``, its own series on the chain, else the total of a protocol listed on that chain
    alone (``single_chain``: slug -> its one chain), as chain TVL is attributed."""
    rows = node.history.daily_metric_values([metric], None, None, Cut(), protocol)
    if chain is None:
        return daily_by_protocol((r.protocol, r.day, r.value) for r in rows if r.chain == TOTAL)
    wanted = chain_key(chain)
    own = {r.protocol for r in rows if chain_key(r.chain) == wanted}
    alone = {slug for slug, only in (single_chain or {}).items() if chain_key(only) == wanted}
    return daily_by_protocol(
        (r.protocol, r.day, r.value)
        for r in rows
        if (r.protocol in own and chain_key(r.chain) == wanted)
        or (r.protocol not in own and r.protocol in alone and r.chain == TOTAL)
    )


def _overview(metric: str) -> Callable[[Request, Any], Awaitable[Response]]:
    async def overview(request: Request, query: DexsQuery | FeesQuery) -> Response:
        node: Node = request.app.state.node
        page = await node.hot.list_protocols(ProtocolQuery(limit=ALL_PROTOCOLS))
        views = {view.slug: view for view in page.items}
        chain = None
        if "chain" in request.path_params:
            chain = canonical_chain(request.path_params["chain"])
        single = {slug: v.chains[0] for slug, v in views.items() if len(v.chains) == 1}
        series = await asyncio.to_thread(_series, node, metric, None, chain, single)
        protocols = []
        for slug, days in series.items():
            view = views.get(slug)
            summary = summarise(days)
            protocols.append(
                OverviewProtocol(
                    **_totals(summary),
                    **_listing(slug, view),
                    module=slug,
                )
            )
        protocols.sort(key=lambda p: (p.total24h is None, -(p.total24h or 0.0), p.slug))
        chart = summarise(overall(series))
        names = {slug: (views[slug].name if slug in views else slug) for slug in series}
        breakdown = [
            (day * 86_400, {names[slug]: days[day] for slug, days in series.items() if day in days})
            for day in sorted({day for days in series.values() for day in days})
        ]
        return json_answer(
            Overview(
                **_totals(chart),
                totalDataChart=[] if query.excludeTotalDataChart else chart.chart,
                totalDataChartBreakdown=[] if query.excludeTotalDataChartBreakdown else breakdown,
                protocols=protocols,
                allChains=sorted({c for p in protocols for c in p.chains}),
            )
        )

    return overview


def _listing(slug: str, view: ProtocolView | None) -> dict[str, Any]:
    name = slug if view is None else view.name
    return {
        "name": name,
        "displayName": name,
        "slug": slug,
        "defillamaId": slug,
        "category": "" if view is None else view.category,
        "chains": [] if view is None else list(view.chains),
    }


def _summary(metric: str) -> Callable[[Request, Any], Awaitable[Response]]:
    async def summary(request: Request, _: Any) -> Response:
        node: Node = request.app.state.node
        raw = request.path_params["slug"]
        slug = path_slug(request)
        view = None if slug is None else await node.hot.get_protocol(slug)
        series = {} if slug is None else await asyncio.to_thread(_series, node, metric, slug)
        days = series.get(slug or "", {})
        if view is None or not days:
            raise ApiError(404, "protocol_not_found", f"no {metric} of protocol {raw!r}")
        summed = summarise(days)
        return json_answer(
            ProtocolSummary(
                **_totals(summed),
                **_listing(view.slug, view),
                totalAllTime=math.fsum(days.values()),
                totalDataChart=summed.chart,
                totalDataChartBreakdown=[],
            )
        )

    return summary


def volume_routes() -> list[OperationRoute]:
    routes = []
    for kind, (metric, query) in _KINDS.items():
        what = "volumes" if kind == "dexs" else "fees"
        overview = Operation(
            "GET",
            f"llamaOverview{kind.title()}",
            f"DeFiLlama's /overview/{kind}: every protocol's daily {what}, totals and changes",
            query,
            Overview,
            access="read",
        )
        on_chain = Operation(
            "GET",
            f"llamaOverview{kind.title()}OnChain",
            f"DeFiLlama's /overview/{kind}/{{chain}}: the {what} on one chain",
            query,
            Overview,
            access="read",
            path=ChainPath,
            description="A protocol's figure on the chain: its own series there, or its total "
            "when it lists that chain alone (as chain TVL).",
        )
        summary = Operation(
            "GET",
            f"llamaSummary{kind.title()}",
            f"DeFiLlama's /summary/{kind}/{{protocol}}: one protocol's daily {what}",
            query,
            ProtocolSummary,
            access="read",
            path=ProtocolPath,
            errors=(404,),
        )
        routes.append(OperationRoute(f"/overview/{kind}", overview.serve(_overview(metric))))
        routes.append(
            OperationRoute(f"/overview/{kind}/{{chain:str}}", on_chain.serve(_overview(metric)))
        )
        routes.append(
            OperationRoute(f"/summary/{kind}/{{slug:str}}", summary.serve(_summary(metric)))
        )
    return routes
