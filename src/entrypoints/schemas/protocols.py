"""``/v2/protocols``: listing, one protocol, and its metric time series.

DeFiLlama's field names where they exist (``tvl``, ``chainTvls``, ``change_1d``...).
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, Field, WithJsonSchema

from ...application.views import MAX_PAGE, SortField
from ...domain.chains import canonical_chain
from ...domain.observations import TOTAL, Metric
from .common import ANSWER, QUERY, CheckedSlug, QueryText, QueryTime, SlugText, date_time

__all__ = [
    "BUCKETS",
    "MetricSeries",
    "Protocol",
    "ProtocolListQuery",
    "ProtocolPage",
    "ProtocolPath",
    "SeriesPoint",
    "SeriesQuery",
    "TimeTravelQuery",
]

BUCKETS: Final[dict[str, int]] = {
    "5m": 300,
    "15m": 900,
    "1h": 3_600,
    "4h": 14_400,
    "1d": 86_400,
    "1w": 604_800,
}
MIN_BUCKET: Final = 60
MAX_BUCKET: Final = 31_536_000
MAX_POINTS: Final = 100_000
MAX_OFFSET: Final = 10_000_000


def _canonical(chain: str | None) -> str | None:
    return None if chain is None else canonical_chain(chain)


def _blank_is_none(raw: Any) -> Any:
    return None if raw == "" else raw


def _known_at(raw: Any) -> Any:
    """A log position (digits) or an ISO-8601 time (a string that is not all digits)."""
    if raw is None or raw == "":
        return None
    if isinstance(raw, str):
        if raw.isascii() and raw.isdigit():
            return int(raw)
        try:
            return date_time(raw)
        except ValueError:
            raise ValueError("must be a log position or an ISO-8601 time") from None
    return raw


AsOf = Annotated[
    QueryTime,
    Field(
        alias="asOf",
        description="the state at this time: each series' latest observation at or before it",
    ),
]
KnownAt = Annotated[
    Annotated[int, Field(ge=0)] | float | None,
    BeforeValidator(_known_at),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "format": "date-time"},
            ],
            "description": "what was known then: a log position, or an ISO-8601 time (the "
            "last position recorded by then); later facts and corrections are left out",
        },
        mode="validation",
    ),
    Field(alias="knownAt"),
]


class ProtocolPath(BaseModel):
    """``{slug}``: a slug that cannot be listed (it breaks the rule) is not found (404)."""

    model_config = QUERY
    slug: Annotated[CheckedSlug, Field(description="the protocol's slug")]


class ProtocolListQuery(BaseModel):
    """``GET /v2/protocols``: filter, sort, paginate."""

    model_config = QUERY
    chain: Annotated[
        QueryText | None,
        BeforeValidator(_blank_is_none),
        AfterValidator(_canonical),
        Field(description="only protocols on it (any case; an alias such as Binance for BSC)"),
    ] = None
    category: Annotated[
        QueryText | None, BeforeValidator(_blank_is_none), Field(description="exact category")
    ] = None
    min_tvl: Annotated[
        # The constraint on the number itself: pydantic does not carry it into an Optional.
        Annotated[float, Field(allow_inf_nan=False)] | None,
        BeforeValidator(_blank_is_none),
        Field(description="tvl at least this (with chain: the TVL on that chain)"),
    ] = None
    sort: Annotated[
        SortField,
        Field(
            description="sort key (no value sorts last); with chain, tvl is the TVL on that "
            "chain: the protocol's own figure for it, or its total when it lists that chain "
            "alone"
        ),
    ] = "tvl"
    order: Literal["asc", "desc"] = "desc"
    limit: Annotated[int, Field(ge=1, le=MAX_PAGE, description="page size")] = 100
    offset: Annotated[int, Field(ge=0, le=MAX_OFFSET, description="page start")] = 0
    as_of: AsOf = None
    known_at: KnownAt = None


class TimeTravelQuery(BaseModel):
    """``GET /v2/protocols/{slug}`` and ``GET /protocols``: the state at a time."""

    model_config = QUERY
    as_of: AsOf = None
    known_at: KnownAt = None


def _named_bucket(raw: Any) -> Any:
    if raw == "":
        return None
    return BUCKETS.get(raw, raw) if isinstance(raw, str) else raw


Bucket = Annotated[
    Annotated[int, Field(ge=MIN_BUCKET, le=MAX_BUCKET)] | None,
    BeforeValidator(_named_bucket),
    WithJsonSchema(
        {
            "anyOf": [
                {"enum": list(BUCKETS)},
                {"type": "integer", "minimum": MIN_BUCKET, "maximum": MAX_BUCKET},
            ],
            "description": "bucket width: 5m, 15m, 1h, 4h, 1d, 1w or seconds; each bucket "
            "reports its last observation, stamped with the bucket's start",
        },
        mode="validation",
    ),
]


class SeriesQuery(BaseModel):
    """``GET /v2/protocols/{slug}/metrics``: which series, which part of it."""

    model_config = QUERY
    metric: Metric = "tvl"
    chain: Annotated[
        QueryText,
        AfterValidator(_canonical),
        Field(description="'total' or a chain name (any case; an alias such as Binance for BSC)"),
    ] = TOTAL
    start: QueryTime = None
    end: QueryTime = None
    bucket: Bucket = None
    as_of: Annotated[QueryTime, Field(description="only observations at or before this time")] = (
        None
    )
    known_at: KnownAt = None
    limit: Annotated[
        int, Field(ge=1, le=MAX_POINTS, description="the most recent points at most")
    ] = 10_000


class Protocol(BaseModel):
    """A protocol's listing and current values."""

    model_config = ANSWER
    slug: SlugText
    name: str
    category: str
    chains: list[str]
    url: str
    tvl: float | None
    chainTvls: dict[str, float] = Field(validation_alias="chain_tvls")
    change_1h: float | None = Field(description="percent change of the tvl over 1 hour")
    change_1d: float | None = Field(description="percent change of the tvl over 1 day")
    change_7d: float | None = Field(description="percent change of the tvl over 7 days")
    volume_24h: float | None
    fees_24h: float | None
    volume_24h_change_1d: float | None = Field(
        description="percent change of volume_24h against the figure a day before"
    )
    volume_24h_change_7d: float | None = Field(
        description="percent change of volume_24h against the figure a week before"
    )
    fees_24h_change_1d: float | None = Field(
        description="percent change of fees_24h against the figure a day before"
    )
    fees_24h_change_7d: float | None = Field(
        description="percent change of fees_24h against the figure a week before"
    )
    updated_at: float | None = Field(description="unix time of the latest observation")
    tvl_at: float | None = Field(description="unix time the current tvl was observed at")
    volume_24h_at: float | None = Field(
        description="unix time the current volume_24h was observed at"
    )
    fees_24h_at: float | None = Field(description="unix time the current fees_24h was observed at")
    sections: dict[str, float] = Field(
        description="DeFiLlama's TVL sections, keyed as its chainTvls are (staking, pool2, "
        "borrowed, Ethereum-borrowed...): metrics of their own, never part of tvl"
    )
    oracles: list[str] = Field(
        description="DeFiLlama's oracles of the listing: the price oracles the protocol "
        "relies on (empty when none is named or not known)"
    )
    position: int = Field(description="log position of the latest change")


class ProtocolPage(BaseModel):
    """One page of the listing."""

    model_config = ANSWER
    protocols: list[Protocol]
    total: int = Field(description="protocols matching the filter, on all pages")
    limit: int
    offset: int
    asOf: float | None = Field(default=None, description="the asOf asked for, if any")
    knownAt: int | None = Field(
        default=None, description="the log position knownAt stands for, if asked"
    )


class SeriesPoint(BaseModel):
    model_config = ANSWER
    timestamp: float
    value: float


class MetricSeries(BaseModel):
    """A metric's time series (raw or bucketed), oldest first."""

    model_config = ANSWER
    slug: SlugText
    metric: Metric
    chain: str
    bucket: int | None = Field(description="bucket width in seconds; null for raw points")
    as_of: float | None
    knownAt: int | None = Field(
        default=None, description="the log position knownAt stands for, if asked"
    )
    points: list[SeriesPoint]
