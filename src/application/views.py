"""Read-side shapes returned by queries (DeFiLlama field names where they exist)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, get_args

SortField = Literal[
    "tvl",
    "change_1h",
    "change_1d",
    "change_7d",
    "name",
    "volume_24h",
    "fees_24h",
    "volume_24h_change_1d",
    "volume_24h_change_7d",
    "fees_24h_change_1d",
    "fees_24h_change_7d",
]
CHANGE_WINDOWS: Final[dict[str, float]] = {
    "change_1h": 3_600.0,
    "change_1d": 86_400.0,
    "change_7d": 604_800.0,
}
# The daily flows' own changes (DeFiLlama's /overview ``change_1d``/``change_7d``): today's
# 24 h volume or fees against the nearest figure a day or a week before (ADR 0006's rule).
# An hourly change of a 24 h figure says little, so there is none.
FLOW_CHANGE_WINDOWS: Final[dict[str, float]] = {
    "change_1d": CHANGE_WINDOWS["change_1d"],
    "change_7d": CHANGE_WINDOWS["change_7d"],
}


def flow_change_field(metric: str, change: str) -> str:
    """The view field of a flow metric's change: ``volume_24h_change_1d``."""
    return f"{metric}_{change}"


SORT_FIELDS: Final[frozenset[str]] = frozenset(get_args(SortField))
# How much recent total-TVL history a hot projection keeps per protocol (7d + slack).
RECENT_WINDOW_SECONDS: Final = 8 * 86_400.0
# The most items one API read returns, or names in an id list.
MAX_PAGE: Final = 1_000
# A limit that takes every protocol (DeFiLlama's /protocols, aggregate queries).
ALL_PROTOCOLS: Final = 1_000_000


@dataclass(frozen=True, slots=True)
class ProtocolView:
    slug: str
    name: str
    category: str
    chains: tuple[str, ...]
    url: str
    tvl: float | None
    chain_tvls: dict[str, float]
    change_1h: float | None
    change_1d: float | None
    change_7d: float | None
    volume_24h: float | None
    fees_24h: float | None
    updated_at: float | None
    position: int
    # Each metric's own data time (``updated_at`` is the freshest of them).
    tvl_at: float | None = None
    volume_24h_at: float | None = None
    fees_24h_at: float | None = None
    # DeFiLlama's TVL sections, keyed as its chainTvls are ("staking", "Ethereum-borrowed"):
    # metrics of their own, never part of ``tvl``.
    sections: dict[str, float] = field(default_factory=dict)
    # The flows' own changes (``FLOW_CHANGE_WINDOWS``), in percent like the TVL's.
    volume_24h_change_1d: float | None = None
    volume_24h_change_7d: float | None = None
    fees_24h_change_1d: float | None = None
    fees_24h_change_7d: float | None = None
    # DeFiLlama's ``oracles``: the price oracles the protocol's listing names.
    oracles: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "slug": self.slug,
            "name": self.name,
            "category": self.category,
            "chains": list(self.chains),
            "url": self.url,
            "tvl": self.tvl,
            "chainTvls": dict(self.chain_tvls),
            "change_1h": self.change_1h,
            "change_1d": self.change_1d,
            "change_7d": self.change_7d,
            "volume_24h": self.volume_24h,
            "fees_24h": self.fees_24h,
            "volume_24h_change_1d": self.volume_24h_change_1d,
            "volume_24h_change_7d": self.volume_24h_change_7d,
            "fees_24h_change_1d": self.fees_24h_change_1d,
            "fees_24h_change_7d": self.fees_24h_change_7d,
            "updated_at": self.updated_at,
            "tvl_at": self.tvl_at,
            "volume_24h_at": self.volume_24h_at,
            "fees_24h_at": self.fees_24h_at,
            "sections": dict(self.sections),
            "oracles": list(self.oracles),
            "position": self.position,
        }


@dataclass(frozen=True, slots=True)
class PriceView:
    token: str
    price: float
    observed_at: float
    confidence: float | None
    change_24h: float | None
    position: int

    def to_json(self) -> dict[str, Any]:
        return {
            "token": self.token,
            "price": self.price,
            "timestamp": self.observed_at,
            "confidence": self.confidence,
            "change24h": self.change_24h,
            "position": self.position,
        }


@dataclass(frozen=True, slots=True)
class ProtocolQuery:
    """Filter, sort and paginate protocols. ``None`` values sort last whatever the order."""

    chain: str | None = None
    category: str | None = None
    min_tvl: float | None = None
    sort: str = "tvl"
    descending: bool = True
    limit: int = 100
    offset: int = 0


@dataclass(frozen=True, slots=True)
class Page:
    items: Sequence[ProtocolView]
    total: int
    limit: int
    offset: int


@dataclass(frozen=True, slots=True)
class SeriesPoint:
    timestamp: float
    value: float


@dataclass(frozen=True, slots=True)
class SeriesQuery:
    slug: str
    metric: str = "tvl"
    chain: str = "total"
    start: float | None = None
    end: float | None = None
    # Bucket width in seconds; the last value in each bucket is reported. None: raw points.
    bucket: int | None = None
    # Only observations recorded (as facts) at or before this data time; None: everything.
    as_of: float | None = None
    limit: int = 10_000
    # Only observations at or before this log position; None: everything applied. (The
    # alert evaluator seeds its series up to the position it has evaluated.)
    until_position: int | None = None


@dataclass(frozen=True, slots=True)
class Series:
    slug: str
    metric: str
    chain: str
    points: Sequence[SeriesPoint] = field(default=())


def percent_change(
    recent: Iterable[tuple[float, float]], now_value: float | None, now_at: float, window: float
) -> float | None:
    """Percent change of ``now_value`` against the value observed nearest to
    ``now_at - window``, within half a window of it (so "1d" means the previous day's
    observation even when captures are irregular, and there is no "1h" change for data
    sampled daily).

    ``recent`` is a time-ordered series of ``(observed_at, value)``. Returns None when there is
    no reference point in range or the reference is zero.
    """
    if now_value is None:
        return None
    cutoff = now_at - window
    tolerance = window / 2
    reference: float | None = None
    distance = math.inf
    for observed_at, value in recent:
        if observed_at > cutoff + tolerance:
            break
        gap = abs(observed_at - cutoff)
        if gap <= tolerance and gap <= distance:
            # ``<=``: of equally near points, the later recording (a correction) wins.
            reference, distance = value, gap
    if reference is None or reference == 0:
        return None
    return (now_value - reference) / reference * 100.0


@dataclass(frozen=True, slots=True)
class AnomalyQuery:
    """Which recorded anomalies to list (``GET /v2/analytics/anomalies``): every given
    condition holds; the most recent first (by observation time, then position)."""

    protocol: str | None = None
    token: str | None = None
    measure: str | None = None
    start: float | None = None  # observed_at >= start
    end: float | None = None  # observed_at <= end
    min_score: float | None = None
    limit: int = 100


@dataclass(frozen=True, slots=True)
class AnomalyView:
    """One ``AnomalyDetected`` fact as the read model holds it."""

    position: int
    subject: str
    series: str
    measure: str
    observed_at: float
    value: float
    score: float
    direction: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "id": self.subject,
            "kind": "token" if self.series.startswith("token:") else "protocol",
            "series": self.series,
            "measure": self.measure,
            "timestamp": self.observed_at,
            "value": self.value,
            "score": self.score,
            "direction": self.direction,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class MevQuery:
    """Which live MEV detections to list (``GET /v2/analytics/mev``): every given condition
    holds; the most recent block first. Totals cover every match, not only the page."""

    pool: str | None = None
    actor: str | None = None
    from_block: int | None = None  # block >= from_block
    to_block: int | None = None  # block <= to_block
    kind: str | None = None
    limit: int = 100


@dataclass(frozen=True, slots=True)
class MevView:
    """One ``MevDetected`` fact, not retracted, as the read model holds it."""

    key: str
    position: int
    chain_id: int
    kind: str
    block: int
    block_hash: str
    pool: str
    actor: str
    victim: str | None
    quote_token: str
    profit: str
    profit_quote: float
    profit_usd: float | None
    tx_hashes: tuple[str, ...]
    recorded_at: float = 0.0  # when the detection was recorded (unix seconds)

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "position": self.position,
            "chainId": self.chain_id,
            "kind": self.kind,
            "block": self.block,
            "blockHash": self.block_hash,
            "pool": self.pool,
            "actor": self.actor,
            "victim": self.victim,
            "quoteToken": self.quote_token,
            "profit": self.profit,
            "profitQuote": self.profit_quote,
            "profitUsd": self.profit_usd,
            "txHashes": list(self.tx_hashes),
        }


@dataclass(frozen=True, slots=True)
class MevTotals:
    """What every detection matching a ``MevQuery`` adds up to (USD: those with a price)."""

    detections: int
    sandwiches: int
    arbitrages: int
    profit_usd: float

    def to_json(self) -> dict[str, Any]:
        return {
            "detections": self.detections,
            "sandwiches": self.sandwiches,
            "arbitrages": self.arbitrages,
            "profitUsd": self.profit_usd,
        }
