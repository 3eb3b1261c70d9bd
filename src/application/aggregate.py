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

import functools
import math
import statistics
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, Literal, NamedTuple, Protocol

from ..domain.chains import chain_key
from .chain_tvl import CARRY_DAYS, DAY, Listing
from .hot_state import tvl_by_chain_key
from .time_travel import Cut
from .views import ProtocolView

__all__ = [
    "BUCKETS",
    "DIMENSIONS",
    "MAX_BUCKETS",
    "ROLLUP_METRICS",
    "AggregateQuery",
    "BucketFacts",
    "BucketValue",
    "Bucketed",
    "Group",
    "GroupDay",
    "Measure",
    "ProtocolValue",
    "aggregate",
    "bucket_starts",
    "bucketed",
    "bucketed_from_rollup",
    "buckets_of",
    "contributions",
    "rollup_serves",
]

GroupBy = Literal["chain", "category", "protocol"]
Op = Literal["sum", "avg", "count", "min", "max", "median"]
MetricName = Literal["tvl", "volume_24h", "fees_24h"]
BucketName = Literal["1h", "1d", "1w", "1mo"]
BUCKETS: Final[dict[str, int]] = {"1h": 3_600, "1d": DAY, "1w": 7 * DAY}
MAX_BUCKETS: Final = 1_000
_ALL: Final = "all"
# What a time bucket reads of every protocol (whatever the query measures, so that which
# protocols a group has does not depend on the measures).
ROLLUP_METRICS: Final = ("tvl", "volume_24h", "fees_24h")
# The groupings the group-days rollup keeps (dimension -> ``group_by``).
DIMENSIONS: Final[dict[str, GroupBy | None]] = {
    "all": None,
    "category": "category",
    "chain": "chain",
}


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


# The values of a protocol on a chain it has no figure for (shared, never written).
_NO_VALUES: Final[dict[str, float | None]] = {"tvl": None, "volume_24h": None, "fees_24h": None}


class _Member(NamedTuple):
    """A protocol as one group sees it (a tuple: a chain grouping makes tens of thousands)."""

    view: ProtocolView
    values: dict[str, float | None]


def _totals(view: ProtocolView) -> dict[str, float | None]:
    """The protocol's metrics in total."""
    return {"tvl": view.tvl, "volume_24h": view.volume_24h, "fees_24h": view.fees_24h}


def _values_by_chain(view: ProtocolView) -> dict[str, dict[str, float | None]]:
    """The protocol's metrics on each of its chains, by ``chain_key``: its TVL there
    (``tvl_by_chain_key``, the listing ranking's rule), and its volume and fees when it
    lists that chain alone."""
    on_chain = tvl_by_chain_key(view)
    only = chain_key(view.chains[0]) if len(view.chains) == 1 else None
    answer = {}
    for chain in (*view.chains, *view.chain_tvls):
        key = chain_key(chain)
        tvl = on_chain.get(key)
        answer[key] = (
            _NO_VALUES
            if tvl is None and key != only
            else {
                "tvl": tvl,
                "volume_24h": view.volume_24h if key == only else None,
                "fees_24h": view.fees_24h if key == only else None,
            }
        )
    return answer


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
            by_chain = _values_by_chain(view)
            for chain in dict.fromkeys((*view.chains, *view.chain_tvls)):
                key = chain_key(chain)
                if query.chains is None or key in query.chains:
                    groups[chain].append(_Member(view, by_chain[key]))
        elif query.group_by == "category":
            groups[view.category].append(_Member(view, _totals(view)))
        elif query.group_by == "protocol":
            groups[view.slug].append(_Member(view, _totals(view)))
        else:
            groups[_ALL].append(_Member(view, _totals(view)))
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
                _Member(m.view, _totals(m.view))
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


# -- the group-days rollup ------------------------------------------------------------------
#
# ``bucketed`` rebuilds every protocol's view at every bucket's end; over years of daily
# points that is millions of rows read per query. The history projection keeps instead, per
# group of each dimension, metric and day, the sum and count of the members' values at the
# day's end and how many protocols the group has: each protocol's ``contributions`` (the
# same ``_view_at`` and ``_members`` as ``bucketed``), added and taken back as its day closes
# and listing change. A bucket is then the groups' rows of its last day.


@dataclass(frozen=True, slots=True)
class GroupDay:
    """A group's sum and count of one metric at one day's end, and its protocols."""

    dimension: str
    group: str
    metric: str
    day: int
    total: float
    counted: int
    members: int


Contribution = tuple[float, int, int]
"""(value or 0, 1 if valued, 1): what one protocol adds to a ``GroupDay``."""


def contributions(
    slug: str, closes: Iterable[BucketValue], listing: Listing | None, days: Iterable[int]
) -> dict[tuple[str, str, str, int], Contribution]:
    """What protocol ``slug`` adds, on each of ``days``, to each (dimension, group, metric,
    day), from its day closes (``closes``: every series, the ``CARRY_DAYS`` before the first
    day included)."""
    by_series: dict[tuple[str, str], _Daily] = defaultdict(_Daily)
    for close in sorted(closes, key=lambda close: close.day):
        daily = by_series[(close.metric, close.chain)]
        daily.days.append(close.day)
        daily.values.append(close.value)
    answer: dict[tuple[str, str, str, int], Contribution] = {}
    category, chains = ("", ()) if listing is None else (listing.category, listing.chains)
    for day in days:
        values = {key: daily.at(day) for key, daily in by_series.items()}
        present = frozenset(key for key, value in values.items() if value is not None)
        if not present:
            continue
        plan = _plan(present, category, chains)
        for dimension, group, metric, source in plan:
            value = None if source is None else values[source]
            answer[(dimension, group, metric, day)] = (
                0.0 if value is None else value,
                int(value is not None),
                1,
            )
    return answer


_Feed = tuple[str, str, str, tuple[str, str] | None]
"""(dimension, group, metric, the series whose value it takes, or None)."""


@functools.lru_cache(maxsize=65_536)
def _plan(
    present: frozenset[tuple[str, str]], category: str, chains: tuple[str, ...]
) -> tuple[_Feed, ...]:
    """Which series feeds each group's metrics when ``present`` series have a value.

    The groups and their values depend on which series have a value, never on the values
    (a group takes a series' value as it is: ``_totals``, ``_values_by_chain``): ``_members``
    is run once on a view whose values are distinct markers, and each value found is traced
    to its series.
    """
    markers = {key: float(index) for index, key in enumerate(sorted(present), 1)}
    by_series = {key: _Daily([0], [marker]) for key, marker in markers.items()}
    view = _view_at("", by_series, Listing("", category, chains), 0)
    traced = {marker: key for key, marker in markers.items()}
    plan: list[_Feed] = []
    if view is None:
        return ()
    for dimension, group_by in DIMENSIONS.items():
        for key, members in _members([view], AggregateQuery(group_by=group_by)).items():
            values = members[0].values
            for metric in ROLLUP_METRICS:
                value = values[metric]
                plan.append((dimension, key, metric, None if value is None else traced[value]))
    return tuple(plan)


_ROLLUP_OPS: Final = frozenset({"sum", "count", "avg"})


def rollup_serves(query: AggregateQuery) -> bool:
    """Whether the group-days rollup answers ``query`` per bucket (its measures are sums,
    counts or means, it filters only on what it groups by and ranks nothing)."""
    return (
        all(measure.op in _ROLLUP_OPS for measure in query.measures)
        and query.top is None
        and query.min_tvl is None
        and query.protocols is None
        and (query.chains is None or query.group_by == "chain")
        and (query.categories is None or query.group_by == "category")
        and query.group_by != "protocol"
    )


def _rollup_measure(op: Op, row: GroupDay | None) -> float | None:
    counted = 0 if row is None else row.counted
    if op == "count":
        return float(counted)
    if op == "sum":
        return row.total if row is not None and row.counted else 0.0
    return None if row is None or not counted else row.total / counted


def bucketed_from_rollup(
    rows: Iterable[GroupDay], query: AggregateQuery, starts: Sequence[float], end: float
) -> list[Bucketed]:
    """``bucketed`` from the group-days rows of the buckets' last days (``rollup_serves``)."""
    by_day: dict[int, dict[str, dict[str, GroupDay]]] = defaultdict(lambda: defaultdict(dict))
    for row in rows:
        by_day[row.day][row.group][row.metric] = row
    ends = [*starts[1:], end + 1]
    answer = []
    first = query.measures[0].name
    for bucket_start, bucket_end in zip(starts, ends, strict=True):
        groups = []
        for key, metrics in by_day.get(math.floor((bucket_end - 1) / DAY), {}).items():
            if query.chains is not None and chain_key(key) not in query.chains:
                continue
            if query.categories is not None and key.casefold() not in query.categories:
                continue
            members = max(row.members for row in metrics.values())
            if not members:
                continue
            measures = {
                measure.name: _rollup_measure(measure.op, metrics.get(measure.metric))
                for measure in query.measures
            }
            groups.append(Group(key, members, measures))
        groups.sort(key=lambda g: (g.measures[first] is None, -(g.measures[first] or 0.0), g.key))
        answer.append(Bucketed(bucket_start, groups))
    return answer


class BucketFacts(Protocol):
    """What per-bucket answers read (the history read model implements it)."""

    def daily_metric_values(
        self, metrics: Sequence[str], first_day: int | None, last_day: int | None, cut: Cut
    ) -> list[BucketValue]: ...

    def listings(self) -> dict[str, Listing]: ...

    def group_days(
        self, dimension: str, days: Sequence[int], metrics: Iterable[str]
    ) -> list[GroupDay]: ...


def buckets_of(
    facts: BucketFacts,
    query: AggregateQuery,
    starts: Sequence[float],
    end: float,
    cut: Cut,
) -> list[Bucketed]:
    """``query`` at the end of each bucket (synchronous): from the group-days rollup when it
    serves the query and the cut holds whole days (a rollup holds everything recorded), else
    from every series' day closes."""
    last_day = math.floor(end / DAY)
    whole_days = cut.known_at is None and (
        cut.as_of is None or cut.as_of >= (last_day + 1) * DAY - 1
    )
    if whole_days and rollup_serves(query):
        days = [math.floor((bucket_end - 1) / DAY) for bucket_end in [*starts[1:], end + 1]]
        dimension = "all" if query.group_by is None else query.group_by
        metrics = {measure.metric for measure in query.measures}
        return bucketed_from_rollup(facts.group_days(dimension, days, metrics), query, starts, end)
    first_day = math.floor(starts[0] / DAY) - CARRY_DAYS  # what the first bucket may carry
    rows = facts.daily_metric_values(ROLLUP_METRICS, first_day, last_day, cut)
    return bucketed(rows, facts.listings(), query, starts, end)
