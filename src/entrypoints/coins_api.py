"""DeFiLlama's coins API (coins.llama.fi) on our base URL: ``/prices/current``,
``/prices/historical``, ``/batchHistorical``, ``/chart``, ``/percentage``,
``/prices/first``, with DeFiLlama's paths, parameters and answer shapes, read from the
history read model's prices (``application/coins.py`` says what each answer means).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, TypeVar

from starlette.requests import Request
from starlette.responses import Response

from ..application.coins import MAX_COINS, MAX_POINTS, CoinPriceReader, CoinQueryError
from ..application.ports import PriceHistory, PricePoint
from .errors import ApiError
from .operations import Operation, OperationRoute, json_answer
from .schemas.coins import (
    CoinBatchPoint,
    CoinBatchPrices,
    CoinBatchQuery,
    CoinBatchSeries,
    CoinChart,
    CoinChartPoint,
    CoinChartQuery,
    CoinChartSeries,
    CoinCurrentQuery,
    CoinFirstPrice,
    CoinFirstPrices,
    CoinHistoricalPath,
    CoinHistoricalQuery,
    CoinPercentageQuery,
    CoinPercentages,
    CoinPrice,
    CoinPrices,
    CoinsPath,
)
from .schemas.common import NoParameters
from .validation import parse_query

__all__ = [
    "BATCH_HISTORICAL",
    "CHART",
    "CURRENT_PRICES",
    "FIRST_PRICES",
    "HISTORICAL_PRICES",
    "PERCENTAGE",
    "coin_routes",
]

T = TypeVar("T")

_LIMITS: Final = (
    f"At most {MAX_COINS} coins per request. Coins without a price are left out of `coins`; "
    "`symbol` and `decimals` are null (we do not hold them)."
)

CURRENT_PRICES = Operation(
    "GET",
    "getCoinPricesCurrent",
    "Current prices of coins (DeFiLlama's /prices/current)",
    CoinCurrentQuery,
    CoinPrices,
    access="read",
    path=CoinsPath,
    errors=(404,),
    description="Each coin's latest price, if it is at most `searchWidth` (default 6h) old. "
    + _LIMITS,
)
HISTORICAL_PRICES = Operation(
    "GET",
    "getCoinPricesHistorical",
    "Prices of coins at a time (DeFiLlama's /prices/historical)",
    CoinHistoricalQuery,
    CoinPrices,
    access="read",
    path=CoinHistoricalPath,
    errors=(404,),
    description="Each coin's price observed nearest to `timestamp`, at most `searchWidth` "
    "(default 6h) before or after it; of two equally near, the earlier. " + _LIMITS,
)
BATCH_HISTORICAL = Operation(
    "GET",
    "getCoinPricesBatchHistorical",
    "Prices of coins at several times each (DeFiLlama's /batchHistorical)",
    CoinBatchQuery,
    CoinBatchPrices,
    access="read",
    description="For each time of each coin, its price nearest to that time within "
    f"`searchWidth` (default 6h) either side. At most {MAX_POINTS} times in all. " + _LIMITS,
)
CHART = Operation(
    "GET",
    "getCoinChart",
    "Prices of coins at regular intervals (DeFiLlama's /chart)",
    CoinChartQuery,
    CoinChart,
    access="read",
    path=CoinsPath,
    errors=(404,),
    description="`span` points `period` apart (default 1d), forward from `start` or back from "
    "`end` (default now; not both), each the price nearest to its time within `searchWidth` "
    "(default a tenth of `period`); a price found by two points is reported once, oldest "
    f"first. At most {MAX_POINTS} points per request (coins x span). " + _LIMITS,
)
PERCENTAGE = Operation(
    "GET",
    "getCoinPercentage",
    "Percent price change of coins over a period (DeFiLlama's /percentage)",
    CoinPercentageQuery,
    CoinPercentages,
    access="read",
    path=CoinsPath,
    errors=(404,),
    description="The change between the prices nearest to `timestamp` (default now) and to "
    "`timestamp` - `period` (or + `period` with `lookForward=true`), each within 15 minutes, "
    "scaled to `period` when the two prices are not exactly that far apart. A coin without "
    "both prices (or whose earlier price is 0) is left out. "
    + f"At most {MAX_COINS} coins per request.",
)
FIRST_PRICES = Operation(
    "GET",
    "getCoinPricesFirst",
    "The earliest price of coins (DeFiLlama's /prices/first)",
    NoParameters,
    CoinFirstPrices,
    access="read",
    path=CoinsPath,
    errors=(404,),
    description=_LIMITS,
)


def coin_routes() -> list[OperationRoute]:
    """The routes of DeFiLlama's coins API (public market data: ``read`` access)."""

    async def current(request: Request, query: CoinCurrentQuery) -> Response:
        coins = parse_query(CoinsPath, request.path_params).coins
        found = await _read(request, lambda reader: reader.current(coins, query.search_width))
        return json_answer(CoinPrices(coins=_prices(found)))

    async def historical(request: Request, query: CoinHistoricalQuery) -> Response:
        path = parse_query(CoinHistoricalPath, request.path_params)
        found = await _read(
            request,
            lambda reader: reader.historical(path.coins, path.timestamp, query.search_width),
        )
        return json_answer(CoinPrices(coins=_prices(found)))

    async def batch_historical(request: Request, query: CoinBatchQuery) -> Response:
        found = await _read(
            request, lambda reader: reader.batch(query.coins or {}, query.search_width)
        )
        return json_answer(
            CoinBatchPrices(
                coins={
                    coin: CoinBatchSeries(
                        prices=[
                            CoinBatchPoint(
                                timestamp=point.timestamp,
                                price=point.price,
                                confidence=point.confidence,
                            )
                            for point in points
                        ]
                    )
                    for coin, points in found.items()
                }
            )
        )

    async def chart(request: Request, query: CoinChartQuery) -> Response:
        coins = parse_query(CoinsPath, request.path_params).coins
        found = await _read(
            request,
            lambda reader: reader.chart(
                coins,
                start=query.start,
                end=query.end,
                span=query.span,
                period=query.period,
                search_width=query.search_width,
            ),
        )
        return json_answer(
            CoinChart(
                coins={
                    coin: CoinChartSeries(
                        confidence=points[-1].confidence,
                        prices=[
                            CoinChartPoint(timestamp=point.timestamp, price=point.price)
                            for point in points
                        ],
                    )
                    for coin, points in found.items()
                }
            )
        )

    async def percentage(request: Request, query: CoinPercentageQuery) -> Response:
        coins = parse_query(CoinsPath, request.path_params).coins
        found = await _read(
            request,
            lambda reader: reader.percentage(
                coins,
                timestamp=query.timestamp,
                look_forward=query.look_forward,
                period=query.period,
            ),
        )
        return json_answer(CoinPercentages(coins=found))

    async def first(request: Request, query: NoParameters) -> Response:
        coins = parse_query(CoinsPath, request.path_params).coins
        found = await _read(request, lambda reader: reader.first(coins))
        return json_answer(
            CoinFirstPrices(
                coins={
                    coin: CoinFirstPrice(price=point.price, timestamp=point.timestamp)
                    for coin, point in found.items()
                }
            )
        )

    return [
        OperationRoute("/prices/current/{coins:str}", CURRENT_PRICES.serve(current)),
        OperationRoute(
            "/prices/historical/{timestamp:str}/{coins:str}", HISTORICAL_PRICES.serve(historical)
        ),
        OperationRoute("/batchHistorical", BATCH_HISTORICAL.serve(batch_historical)),
        OperationRoute("/chart/{coins:str}", CHART.serve(chart)),
        OperationRoute("/percentage/{coins:str}", PERCENTAGE.serve(percentage)),
        OperationRoute("/prices/first/{coins:str}", FIRST_PRICES.serve(first)),
    ]


async def _read(request: Request, read: Callable[[CoinPriceReader], T]) -> T:
    """``read`` on the node's price history, in a worker thread; the application's refusal
    as a 400 naming the parameters at fault."""
    prices: PriceHistory = request.app.state.node.history.prices
    try:
        return await asyncio.to_thread(read, CoinPriceReader(prices))
    except CoinQueryError as error:
        raise ApiError(400, "invalid_parameter", str(error), _details(error.parameters)) from None


def _details(parameters: Sequence[str]) -> dict[str, Any]:
    if len(parameters) == 1:
        return {"parameter": parameters[0]}
    return {"parameters": list(parameters)}


def _prices(found: Mapping[str, PricePoint]) -> dict[str, CoinPrice]:
    return {
        coin: CoinPrice(price=point.price, timestamp=point.timestamp, confidence=point.confidence)
        for coin, point in found.items()
    }
