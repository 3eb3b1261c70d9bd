"""DeFiLlama's coins API (coins.llama.fi): its paths' parameters and answers, as it writes
them (``searchWidth``, ``lookForward``; ``{"coins": {"coingecko:ethereum": {...}}}``).

What each answer means is in ``application/coins.py``. Fields DeFiLlama serves that we do
not hold (a token's ``symbol`` and ``decimals``) are present and null.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any, Final

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    Field,
    PlainSerializer,
    Strict,
    WithJsonSchema,
)

from ...application.coins import (
    DURATION_PATTERN,
    MAX_COINS,
    MAX_DURATION,
    MAX_POINTS,
    MAX_TIME,
    parse_duration,
)
from ...application.ingest import no_duplicate_keys
from ...domain.errors import DomainError
from ...domain.token import TOKEN_ID_PATTERN, check_token_id
from .common import ANSWER, QUERY

__all__ = [
    "CoinBatchPoint",
    "CoinBatchPrices",
    "CoinBatchQuery",
    "CoinBatchSeries",
    "CoinChart",
    "CoinChartPoint",
    "CoinChartQuery",
    "CoinChartSeries",
    "CoinCurrentQuery",
    "CoinFirstPrice",
    "CoinFirstPrices",
    "CoinHistoricalPath",
    "CoinHistoricalQuery",
    "CoinPercentageQuery",
    "CoinPercentages",
    "CoinPrice",
    "CoinPrices",
    "CoinsPath",
]

_ID: Final = TOKEN_ID_PATTERN.removeprefix("^").removesuffix("$")
COINS_PATTERN: Final = f"^{_ID}(?:,{_ID}){{0,{MAX_COINS - 1}}}$"
_EXAMPLE: Final = "coingecko:ethereum,ethereum:0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48"
_BATCH_EXAMPLE: Final = '{"coingecko:ethereum": [1700000000, 1700086400]}'


# -- coin ids ---------------------------------------------------------------------------------


def _checked_coin(coin: str) -> str:
    """A coin id the domain accepts, kept as spelled: answers are keyed by the ids as the
    request wrote them (the reads use their canonical form)."""
    try:
        check_token_id(coin)
    except DomainError as error:
        raise ValueError(str(error)) from None
    return coin


def _comma_separated(raw: Any) -> Any:
    # Blanks between commas dropped (``a,,b``, a trailing comma): an empty list is refused.
    return [coin for coin in raw.split(",") if coin] if isinstance(raw, str) else raw


CoinId = Annotated[str, AfterValidator(_checked_coin)]
CoinList = Annotated[
    list[CoinId],
    BeforeValidator(_comma_separated),
    Field(min_length=1, max_length=MAX_COINS),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": COINS_PATTERN,
            "description": f"comma-separated coin ids, at most {MAX_COINS}: 'coingecko:<id>' "
            "or '<chain>:<address>' (an EVM address in any case); answers are keyed by the "
            "ids as written here",
            "examples": [_EXAMPLE],
        },
        mode="validation",
    ),
]


# -- times and durations ----------------------------------------------------------------------

UnixTime = Annotated[
    float,
    Field(ge=0, le=MAX_TIME, allow_inf_nan=False, description="unix seconds"),
]


def _duration(*, zero: bool) -> Callable[[Any], Any]:
    """A BeforeValidator reading DeFiLlama's durations (blank: none, the default); zero
    is accepted only with ``zero``."""

    def read(raw: Any) -> Any:
        if raw is None or raw == "":
            return None
        seconds = parse_duration(raw) if isinstance(raw, str) else raw
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise ValueError("must be a duration")
        if not (0 <= seconds <= MAX_DURATION) or (seconds == 0 and not zero):
            low = "at least 0" if zero else "more than 0"
            raise ValueError(f"must be {low} and at most {MAX_DURATION / 86_400:.0f}d")
        return float(seconds)

    return read


_DURATION_TEXT: Final = (
    "seconds (600) or a number with w, d, h or m (minutes), any case: 4h, 2d, 1w"
)
SearchWidth = Annotated[
    float | None,
    BeforeValidator(_duration(zero=True)),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": DURATION_PATTERN,
            "description": "how far from the time asked a price may be, either side: "
            + _DURATION_TEXT,
        },
        mode="validation",
    ),
]
Period = Annotated[
    float | None,
    BeforeValidator(_duration(zero=False)),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": DURATION_PATTERN,
            "description": "time between points: " + _DURATION_TEXT,
        },
        mode="validation",
    ),
]


def _blank_is_none(raw: Any) -> Any:
    return None if raw == "" else raw


OptionalTime = Annotated[UnixTime | None, BeforeValidator(_blank_is_none)]


# -- paths --------------------------------------------------------------------------------------


class CoinsPath(BaseModel):
    """``{coins}``: comma-separated coin ids."""

    model_config = QUERY
    coins: CoinList


class CoinHistoricalPath(BaseModel):
    """``/prices/historical/{timestamp}/{coins}``."""

    model_config = QUERY
    timestamp: Annotated[UnixTime, Field(description="the time to price at, unix seconds")]
    coins: CoinList


# -- queries ----------------------------------------------------------------------------------


class CoinCurrentQuery(BaseModel):
    """``GET /prices/current/{coins}``."""

    model_config = QUERY
    search_width: Annotated[
        SearchWidth,
        Field(
            alias="searchWidth",
            description="the oldest a current price may be (default 6h): " + _DURATION_TEXT,
        ),
    ] = None


class CoinHistoricalQuery(BaseModel):
    """``GET /prices/historical/{timestamp}/{coins}``."""

    model_config = QUERY
    search_width: Annotated[
        SearchWidth,
        Field(
            alias="searchWidth",
            description="how far before or after the timestamp a price may be (default 6h): "
            + _DURATION_TEXT,
        ),
    ] = None


def _json_object(raw: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    try:
        value = json.loads(raw, parse_constant=_no_constant, object_pairs_hook=no_duplicate_keys)
    except (ValueError, RecursionError) as error:  # DuplicateKeyError is a ValueError
        raise ValueError(f"must be a JSON object of coin -> timestamps: {error}") from None
    if not isinstance(value, dict):
        raise ValueError("must be a JSON object of coin -> timestamps, e.g. " + _BATCH_EXAMPLE)
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


BatchTime = Annotated[float, Strict(), Field(ge=0, le=MAX_TIME, allow_inf_nan=False)]


class CoinBatchQuery(BaseModel):
    """``GET /batchHistorical``."""

    model_config = QUERY
    coins: Annotated[
        # Optional only in the schema (no query parameter is required): absent, it is the
        # application's 400 (no coin named).
        Annotated[
            dict[CoinId, Annotated[list[BatchTime], Field(max_length=MAX_POINTS)]],
            Field(min_length=1, max_length=MAX_COINS),
        ]
        | None,
        BeforeValidator(_json_object),
        WithJsonSchema(
            {
                "type": "string",
                "description": "a JSON object: each coin id (at most "
                f"{MAX_COINS}) -> the unix times to price it at; at most {MAX_POINTS} times "
                "in all",
                "examples": [_BATCH_EXAMPLE],
            },
            mode="validation",
        ),
    ] = None
    search_width: Annotated[
        SearchWidth,
        Field(
            alias="searchWidth",
            description="how far before or after each time a price may be (default 6h): "
            + _DURATION_TEXT,
        ),
    ] = None


class CoinChartQuery(BaseModel):
    """``GET /chart/{coins}``."""

    model_config = QUERY
    start: Annotated[
        OptionalTime,
        Field(description="the first point's time: points go forward from it (not with end)"),
    ] = None
    end: Annotated[
        OptionalTime,
        Field(description="the last point's time: points go back from it (default now)"),
    ] = None
    span: Annotated[
        int,
        Field(
            ge=0,
            le=MAX_POINTS,
            description=f"how many points (0 and 1: one); coins x span at most {MAX_POINTS}",
        ),
    ] = 0
    period: Annotated[Period, Field(description="time between points (default 1d)")] = None
    search_width: Annotated[
        SearchWidth,
        Field(
            alias="searchWidth",
            description="how far from each point's time its price may be (default a tenth of "
            "period): " + _DURATION_TEXT,
        ),
    ] = None


class CoinPercentageQuery(BaseModel):
    """``GET /percentage/{coins}``."""

    model_config = QUERY
    timestamp: Annotated[
        OptionalTime, Field(description="the time the change ends (or starts) at; default now")
    ] = None
    look_forward: Annotated[
        bool,
        Field(
            alias="lookForward",
            description="true: the change over the period after timestamp; false (default): "
            "before it",
        ),
    ] = False
    period: Annotated[Period, Field(description="how long the change is over (default 1d)")] = None


# -- answers ------------------------------------------------------------------------------------


def _unix(value: float) -> float | int:
    # DeFiLlama's timestamps are integers; ours are whenever a price was observed.
    return int(value) if value.is_integer() else value


UnixSeconds = Annotated[
    float,
    PlainSerializer(_unix, return_type=int | float),
    WithJsonSchema({"type": "number"}, mode="serialization"),
    Field(description="when the price was observed, unix seconds"),
]
Symbol = Annotated[None, Field(description="always null: we do not hold token symbols")]
Decimals = Annotated[None, Field(description="always null: we do not hold token decimals")]
Confidence = Annotated[
    float | None, Field(description="0 to 1, as the source gave it; null if it gave none")
]


class CoinPrice(BaseModel):
    """One coin's price (``/prices/current``, ``/prices/historical``)."""

    model_config = ANSWER
    decimals: Decimals = None
    price: float
    symbol: Symbol = None
    timestamp: UnixSeconds
    confidence: Confidence


class CoinPrices(BaseModel):
    """Prices by coin id as requested; coins without a price are left out."""

    model_config = ANSWER
    coins: dict[str, CoinPrice]


class CoinBatchPoint(BaseModel):
    model_config = ANSWER
    timestamp: UnixSeconds
    price: float
    confidence: Confidence


class CoinBatchSeries(BaseModel):
    """One coin's prices, one per requested time that found one, in the requested order."""

    model_config = ANSWER
    symbol: Symbol = None
    prices: list[CoinBatchPoint]


class CoinBatchPrices(BaseModel):
    model_config = ANSWER
    coins: dict[str, CoinBatchSeries]


class CoinChartPoint(BaseModel):
    model_config = ANSWER
    timestamp: UnixSeconds
    price: float


class CoinChartSeries(BaseModel):
    """One coin's chart, oldest first, each price once."""

    model_config = ANSWER
    symbol: Symbol = None
    confidence: Annotated[
        float | None, Field(description="the confidence of the chart's latest price")
    ]
    decimals: Decimals = None
    prices: list[CoinChartPoint]


class CoinChart(BaseModel):
    model_config = ANSWER
    coins: dict[str, CoinChartSeries]


class CoinPercentages(BaseModel):
    """Percent price change by coin id as requested."""

    model_config = ANSWER
    coins: dict[str, float]


class CoinFirstPrice(BaseModel):
    model_config = ANSWER
    price: float
    symbol: Symbol = None
    timestamp: UnixSeconds


class CoinFirstPrices(BaseModel):
    model_config = ANSWER
    coins: dict[str, CoinFirstPrice]
