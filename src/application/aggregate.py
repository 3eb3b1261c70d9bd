"""Aggregate queries: filter protocols, group them, measure a metric, rank the top ones,
now, at a cut (``asOf``/``knownAt``) or per time bucket.

A protocol's value of a metric is its current (or in-cut) total; grouped by chain, it is its
value on that chain by ``chain_tvl.tvl_by_chain``'s rule (its own figure for the chain, or
its total when it lists that one chain alone), so chain groups add up as DeFiLlama's chain
TVL does. Groups by category or protocol take the total. Per time bucket, a protocol's value
is its last observation up to the bucket's end, no older than ``CARRY_DAYS`` (as the daily
chain TVL).
"""

from __future__ import annotations

import math
import statistics
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, Literal

from ..domain.chains import chain_key
from .chain_tvl import CARRY_DAYS, DAY, Listing
from .hot_state import tvl_on
from .views import ProtocolView

__all__ = [
    "BUCKETS",
    "MAX_BUCKETS",
    "AggregateQuery",
    "BucketValue",
    "Bucketed",
    "Group",
    "Measure",
    "ProtocolValue",
    "aggregate",
    "bucket_starts",
    "bucketed",
]

GroupBy = Literal["chain", "category", "protocol"]
Op = Literal["sum", "avg", "count", "min", "max", "median"]
MetricName = Literal["tvl", "volume_24h", "fees_24h"]
BucketName = Literal["1h", "1d", "1w", "1mo"]
BUCKETS: Final[dict[str, int]] = {"1h": 3_600, "1d": DAY, "1w": 7 * DAY}
MAX_BUCKETS: Final = 1_000
_ALL: Final = "all"


@dataclass(frozen=True, slots=True)
class Measure:
    op: Op
    metric: MetricName

    @property
    def name(self) -> str:
        return f"{self.op}_{self.metric}"


@dataclass(frozen=True, slots=True)
class AggregateQuery:
    chains: frozenset[str] | None = None
    categories: frozenset[str] | None = None
    protocols: frozenset[str] | None = None
    min_tvl: float | None = None
    group_by: GroupBy | None = None
    measures: tuple[Measure, ...] = (Measure("sum", "tvl"),)
    top: int | None = None
    top_by: MetricName = "tvl"
    top_per_group: bool = False


@dataclass(frozen=True, slots=True)
class ProtocolValue:
    """One protocol's values in one group (what the measures and the ranking read)."""

    slug: str
    values: Mapping[str, float | None]


@dataclass(frozen=True, slots=True)
class Group:
    key: str
    protocols: int
    measures: dict[str, float | None]
    top: list[ProtocolValue] = field(default_factory=list)


_OPS: Final[dict[str, Callable[[list[float]], float]]] = {
    "sum": math.fsum,
    "avg": statistics.fmean,
    "count": lambda values: float(len(values)),
    "min": min,
    "max": max,
    "median": statistics.median,
}


def _measure(op: Op, values: list[float]) -> float | None:
    if not values:
        return 0.0 if op in ("sum", "count") else None
    return _OPS[op](values)


@dataclass(frozen=True, slots=True)
class _Member:
    """A protocol as one group sees it."""

    view: ProtocolView
    values: dict[str, float | None]


def _values_on(view: ProtocolView, chain: str | None) -> dict[str, float | None]:
    """The protocol's metrics, in total or on ``chain``."""
    if chain is None:
        return {"tvl": view.tvl, "volume_24h": view.volume_24h, "fees_24h": view.fees_24h}
    only = len(view.chains) == 1 and chain_key(view.chains[0]) == chain_key(chain)
    return {
        "tvl": tvl_on(view, chain),
        "volume_24h": view.volume_24h if only else None,
        "fees_24h": view.fees_24h if only else None,
    }


def _selected(view: ProtocolView, query: AggregateQuery) -> bool:
    if query.protocols is not None and view.slug not in query.protocols:
        return False
    if query.categories is not None and view.category.casefold() not in query.categories:
        return False
    if query.chains is not None and not {chain_key(c) for c in view.chains} & query.chains:
        return False
    return query.min_tvl is None or (view.tvl is not None and view.tvl >= query.min_tvl)


def _members(views: Iterable[ProtocolView], query: AggregateQuery) -> dict[str, list[_Member]]:
    groups: dict[str, list[_Member]] = defaultdict(list)
    for view in views:
        if not _selected(view, query):
            continue
        if query.group_by == "chain":
            chains = dict.fromkeys((*view.chains, *view.chain_tvls))
            for chain in chains:
                if query.chains is None or chain_key(chain) in query.chains:
                    groups[chain].append(_Member(view, _values_on(view, chain)))
        elif query.group_by == "category":
            groups[view.category].append(_Member(view, _values_on(view, None)))
        elif query.group_by == "protocol":
            groups[view.slug].append(_Member(view, _values_on(view, None)))
        else:
            groups[_ALL].append(_Member(view, _values_on(view, None)))
    return groups


def _ranked(members: Sequence[_Member], query: AggregateQuery) -> list[ProtocolValue]:
    valued = [m for m in members if m.values[query.top_by] is not None]
    valued.sort(key=lambda m: (-(m.values[query.top_by] or 0.0), m.view.slug))
    return [ProtocolValue(m.view.slug, m.values) for m in valued[: query.top]]


def aggregate(views: Iterable[ProtocolView], query: AggregateQuery) -> list[Group]:
    """The groups (largest first by the first measure), each measured; with ``top``, the
    top protocols of each group (``top_per_group``) or of all (in a group ``all``)."""
    groups = _members(views, query)
    answer = []
    for key, members in groups.items():
        measures = {
            measure.name: _measure(
                measure.op,
                [v for m in members if (v := m.values[measure.metric]) is not None],
            )
            for measure in query.measures
        }
        top = _ranked(members, query) if query.top is not None and query.top_per_group else []
        answer.append(Group(key, len(members), measures, top))
    first = query.measures[0].name
    answer.sort(key=lambda g: (g.measures[first] is None, -(g.measures[first] or 0.0), g.key))
    if query.top is not None and not query.top_per_group:
        everyone = [m for members in groups.values() for m in members]
        if query.group_by == "chain":  # one protocol on several chains: rank its total
            everyone = [
                _Member(m.view, _values_on(m.view, None))
                for m in {m.view.slug: m for m in everyone}.values()
            ]
        answer.append(Group(_ALL, len(everyone), {}, _ranked(everyone, query)))
    return answer


# -- per time bucket ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BucketValue:
    """A protocol's last value of a metric on a chain (or ``total``) in one day."""

    protocol: str
    metric: str
    chain: str
    day: int
    value: float


@dataclass(frozen=True, slots=True)
class Bucketed:
    start: float
    groups: list[Group]


def bucket_starts(bucket: BucketName, start: float, end: float) -> list[float]:
    """The starts of the buckets that meet ``[start, end]`` (UTC; months by the calendar)."""
    if bucket == "1mo":
        first = datetime.fromtimestamp(start, UTC).replace(
            day=1, hour=0, minute=0, second=0, microsecond=0
        )
        starts = []
        year, month = first.year, first.month
        while (moment := datetime(year, month, 1, tzinfo=UTC).timestamp()) <= end:
            starts.append(moment)
            year, month = (year + 1, 1) if month == 12 else (year, month + 1)
        return starts
    width = BUCKETS[bucket]
    first_index = math.floor(start / width)
    return [index * width for index in range(first_index, math.floor(end / width) + 1)]


def bucketed(
    rows: Iterable[BucketValue],
    listings: Mapping[str, Listing],
    query: AggregateQuery,
    starts: Sequence[float],
    end: float,
) -> list[Bucketed]:
    """``aggregate`` at the end of each bucket: each protocol's last daily value up to it,
    carried at most ``CARRY_DAYS``. ``rows`` are daily last values (``history``)."""
    series: dict[str, dict[tuple[str, str], _Daily]] = defaultdict(lambda: defaultdict(_Daily))
    for row in sorted(rows, key=lambda row: row.day):
        daily = series[row.protocol][(row.metric, row.chain)]
        daily.days.append(row.day)
        daily.values.append(row.value)
    ends = [*starts[1:], end + 1]
    answer = []
    for bucket_start, bucket_end in zip(starts, ends, strict=True):
        last_day = math.floor((bucket_end - 1) / DAY)
        views = [
            _view_at(slug, by_series, listings.get(slug), last_day)
            for slug, by_series in series.items()
        ]
        answer.append(Bucketed(bucket_start, aggregate([v for v in views if v is not None], query)))
    return answer


@dataclass(slots=True)
class _Daily:
    """One series' daily values, day-ordered."""

    days: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)

    def at(self, day: int) -> float | None:
        """The last value up to ``day``, no older than ``CARRY_DAYS``."""
        index = bisect_right(self.days, day) - 1
        if index < 0 or day - self.days[index] > CARRY_DAYS:
            return None
        return self.values[index]


def _view_at(
    slug: str,
    by_series: Mapping[tuple[str, str], _Daily],
    listing: Listing | None,
    day: int,
) -> ProtocolView | None:
    values = {key: daily.at(day) for key, daily in by_series.items()}
    if all(value is None for value in values.values()):
        return None
    return ProtocolView(
        slug=slug,
        name=slug,
        category="" if listing is None else listing.category,
        chains=() if listing is None else listing.chains,
        url="",
        tvl=values.get(("tvl", "total")),
        chain_tvls={
            chain: value
            for (metric, chain), value in values.items()
            if metric == "tvl" and chain != "total" and value is not None
        },
        change_1h=None,
        change_1d=None,
        change_7d=None,
        volume_24h=values.get(("volume_24h", "total")),
        fees_24h=values.get(("fees_24h", "total")),
        updated_at=None,
        position=0,
    )
