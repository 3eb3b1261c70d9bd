"""DeFiLlama's TVL API (``api.llama.fi``) served beside ``/v2``: the same paths and shapes,
so a DeFiLlama client works unchanged when its base URL points here.

``/protocols``, ``/protocol/{slug}`` and ``/tvl/{slug}`` read the hot projection (current
values) and the history read model (daily series); ``/v2/chains`` sums the current values
per chain and ``/v2/historicalChainTvl`` the daily ones, by the rules of
``application/chain_tvl.py``.
"""

from __future__ import annotations

import asyncio
from typing import Final

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from ..application.chain_tvl import DAY, chain_totals, daily_chain_tvl, tvl_by_chain
from ..application.time_travel import cut_of, page_of_views, protocols_at
from ..application.views import ALL_PROTOCOLS, ProtocolQuery, ProtocolView, SeriesQuery
from ..domain.chains import chain_info, chain_key
from ..domain.observations import TOTAL, Metric, chain_tvls_key
from .errors import ApiError
from .node import Node
from .operations import Operation, OperationRoute, json_answer
from .schemas.common import NoParameters
from .schemas.llama import (
    ChainPath,
    LlamaChain,
    LlamaChains,
    LlamaChainSeries,
    LlamaDatedTvl,
    LlamaHistoricalTvl,
    LlamaProtocol,
    LlamaProtocolDetail,
    LlamaProtocols,
    LlamaTvl,
    LlamaTvlPoint,
)
from .schemas.protocols import MAX_POINTS, ProtocolPath, TimeTravelQuery
from .validation import path_slug

__all__ = ["llama_routes"]

_MULTI_CHAIN: Final = "Multi-Chain"

LIST = Operation(
    "GET",
    "llamaProtocols",
    "DeFiLlama's /protocols: every protocol with its current TVL (or as of a time)",
    TimeTravelQuery,
    LlamaProtocols,
    access="read",
)
PROTOCOL = Operation(
    "GET",
    "llamaProtocol",
    "DeFiLlama's /protocol/{slug}: listing, TVL per chain and daily history",
    NoParameters,
    LlamaProtocolDetail,
    access="read",
    path=ProtocolPath,
    errors=(404,),
)
TVL = Operation(
    "GET",
    "llamaTvl",
    "DeFiLlama's /tvl/{slug}: the current TVL as a bare number",
    NoParameters,
    LlamaTvl,
    access="read",
    path=ProtocolPath,
    errors=(404,),
)
CHAINS = Operation(
    "GET",
    "llamaChains",
    "DeFiLlama's /v2/chains: current TVL of every chain",
    NoParameters,
    LlamaChains,
    access="read",
)
HISTORICAL = Operation(
    "GET",
    "llamaHistoricalChainTvl",
    "DeFiLlama's /v2/historicalChainTvl: daily TVL of all chains",
    NoParameters,
    LlamaHistoricalTvl,
    access="read",
)
HISTORICAL_CHAIN = Operation(
    "GET",
    "llamaHistoricalChainTvlOf",
    "DeFiLlama's /v2/historicalChainTvl/{chain}: daily TVL of one chain",
    NoParameters,
    LlamaHistoricalTvl,
    access="read",
    path=ChainPath,
    errors=(404,),
)


def _node(request: Request) -> Node:
    node: Node = request.app.state.node
    return node


def _main_chain(chains: tuple[str, ...]) -> str:
    return chains[0] if len(chains) == 1 else _MULTI_CHAIN


async def _protocol(request: Request) -> ProtocolView:
    raw = request.path_params["slug"]
    slug = path_slug(request)
    view = None if slug is None else await _node(request).hot.get_protocol(slug)
    if view is None:
        raise ApiError(404, "protocol_not_found", f"protocol {raw!r} not found")
    return view


async def protocols(request: Request, query: TimeTravelQuery) -> Response:
    node = _node(request)
    everything = ProtocolQuery(limit=ALL_PROTOCOLS)
    if query.as_of is None and query.known_at is None:
        page = await node.hot.list_protocols(everything)
    else:
        views = await asyncio.to_thread(_at, node, query.as_of, query.known_at)
        page = page_of_views(views, everything)
    return json_answer(
        LlamaProtocols(
            [
                LlamaProtocol(
                    id=view.slug,
                    name=view.name,
                    url=view.url,
                    chain=_main_chain(view.chains),
                    category=view.category,
                    chains=list(view.chains),
                    oracles=list(view.oracles),
                    slug=view.slug,
                    tvl=view.tvl,
                    # As DeFiLlama's: the chains, then the sections ("staking",
                    # "Ethereum-borrowed"), which its tvl leaves out as ours does.
                    chainTvls={**view.chain_tvls, **view.sections},
                    change_1h=view.change_1h,
                    change_1d=view.change_1d,
                    change_7d=view.change_7d,
                )
                for view in page.items
            ]
        )
    )


def _at(node: Node, as_of: float | None, known_at: float | None) -> list[ProtocolView]:
    return protocols_at(node.history, cut_of(node.history, as_of, known_at))


def _daily(node: Node, slug: str, chain: str, metric: Metric = "tvl") -> list[LlamaTvlPoint]:
    series = node.history.series(
        SeriesQuery(slug=slug, metric=metric, chain=chain, bucket=DAY, limit=MAX_POINTS)
    )
    return [
        LlamaTvlPoint(date=int(point.timestamp), totalLiquidityUSD=point.value)
        for point in series.points
    ]


async def protocol(request: Request, query: NoParameters) -> Response:
    node = _node(request)
    view = await _protocol(request)
    total = await asyncio.to_thread(_daily, node, view.slug, TOTAL)
    chain_series = {
        chain: LlamaChainSeries(tvl=await asyncio.to_thread(_daily, node, view.slug, chain))
        for chain in view.chain_tvls
    }
    if not chain_series and len(view.chains) == 1:
        # One chain and only a total: the total is that chain's (as currentChainTvls says).
        chain_series = {view.chains[0]: LlamaChainSeries(tvl=total)}
    for key in view.sections:
        section, chain = chain_tvls_key(key)
        points = await asyncio.to_thread(_daily, node, view.slug, chain, section)
        chain_series[key] = LlamaChainSeries(tvl=points)
    return json_answer(
        LlamaProtocolDetail(
            id=view.slug,
            name=view.name,
            url=view.url,
            chains=list(view.chains),
            chain=_main_chain(view.chains),
            category=view.category,
            slug=view.slug,
            oracles=list(view.oracles),
            currentChainTvls={
                **tvl_by_chain(view.chains, view.chain_tvls, view.tvl),
                **view.sections,
            },
            chainTvls=chain_series,
            tvl=total,
        )
    )


async def tvl(request: Request, query: NoParameters) -> Response:
    view = await _protocol(request)
    if view.tvl is None:
        raise ApiError(404, "tvl_not_found", f"protocol {view.slug!r} has no TVL")
    return json_answer(LlamaTvl(view.tvl))


async def chains(request: Request, query: NoParameters) -> Response:
    page = await _node(request).hot.list_protocols(ProtocolQuery(limit=ALL_PROTOCOLS))
    totals = chain_totals(page.items)
    answer = []
    for name, value in sorted(totals.by_chain.items(), key=lambda item: (-item[1], item[0])):
        info = chain_info(name)
        answer.append(
            LlamaChain(
                gecko_id=None if info is None else info.gecko_id,
                tvl=value,
                tokenSymbol=None if info is None else info.token_symbol,
                cmcId=None if info is None else info.cmc_id,
                name=name,
                chainId=None if info is None else info.chain_id,
            )
        )
    return json_answer(LlamaChains(answer))


def _historical(node: Node, chain: str | None) -> list[tuple[int, float]]:
    listings = node.history.listings()
    if chain is not None and chain_info(chain) is None:
        wanted = chain_key(chain)
        if not any(chain_key(c) == wanted for one in listings.values() for c in one.chains):
            raise ApiError(404, "chain_not_found", f"chain {chain!r} not found")
    return daily_chain_tvl(node.history.daily_values(chain), listings, chain)


def _historical_answer(days: list[tuple[int, float]]) -> Response:
    return json_answer(LlamaHistoricalTvl([LlamaDatedTvl(date=d, tvl=v) for d, v in days]))


async def historical(request: Request, query: NoParameters) -> Response:
    return _historical_answer(await asyncio.to_thread(_historical, _node(request), None))


async def historical_chain(request: Request, query: NoParameters) -> Response:
    raw = request.path_params["chain"]
    try:
        chain = ChainPath.model_validate({"chain": raw}).chain
    except ValidationError:
        raise ApiError(404, "chain_not_found", f"chain {raw!r} not found") from None
    return _historical_answer(await asyncio.to_thread(_historical, _node(request), chain))


def llama_routes() -> list[OperationRoute]:
    """DeFiLlama's TVL paths (``/v2/chains`` and ``/v2/historicalChainTvl`` share our
    ``/v2`` prefix, as they do on DeFiLlama)."""
    return [
        OperationRoute("/protocols", LIST.serve(protocols)),
        OperationRoute("/protocol/{slug:str}", PROTOCOL.serve(protocol)),
        OperationRoute("/tvl/{slug:str}", TVL.serve(tvl)),
        OperationRoute("/v2/chains", CHAINS.serve(chains)),
        OperationRoute("/v2/historicalChainTvl", HISTORICAL.serve(historical)),
        OperationRoute(
            "/v2/historicalChainTvl/{chain:str}", HISTORICAL_CHAIN.serve(historical_chain)
        ),
    ]
