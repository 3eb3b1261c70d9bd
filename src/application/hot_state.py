"""How log entries fold into hot state: the one definition both hot projections share.

Everything here is pure. A projection keeps a ``ProtocolState`` per protocol and a
``TokenState`` per token; ``fold_entries`` turns the states before a batch into the states
the batch changed, and the states render the read-side views. The in-memory adapter keeps
the states themselves; the Redis adapter stores them in hashes and sorted sets and folds a
snapshot of the keys a batch touches.

Rules (the contract tests check both adapters against an independent reference fold):

* ``protocol_listed`` / ``protocol_updated`` set the listing (name, category, chains, url).
* ``metric`` moves the current value of its ``(metric, chain)`` only when it is at least as
  recent (``observed_at``) as the current one: late observations never win. A metric for a
  protocol never listed creates it (name = slug); a chain seen in a metric joins ``chains``.
* Every total-TVL observation within ``RECENT_WINDOW_SECONDS`` of the newest one is kept,
  late ones included (same timestamp: the later-recorded wins), for the change windows.
  Prices keep the same window for ``change_24h``.
* A protocol's or token's ``position`` is that of the last entry that changed it (moved a
  value, recorded history, or set its listing); entries that change nothing leave it.
* Alert entries and unknown kinds or metrics change nothing (their positions still count).
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Final

from ..domain.observations import METRICS, TOTAL
from .log import LogBatch, LogEntry, LogGapError
from .views import (
    CHANGE_WINDOWS,
    RECENT_WINDOW_SECONDS,
    SORT_FIELDS,
    PriceView,
    ProtocolQuery,
    ProtocolView,
    percent_change,
)

LISTING_KINDS: Final = frozenset({"protocol_listed", "protocol_updated"})
PROTOCOL_KINDS: Final = LISTING_KINDS | {"metric"}
PRICE_KIND: Final = "price"
PRICE_CHANGE_WINDOW: Final = 86_400.0

Point = tuple[float, float]
"""``(observed_at, value)``."""
Changes = Mapping[str, float | None]
"""``change_1h`` / ``change_1d`` / ``change_7d`` of a protocol."""


@dataclass(frozen=True, slots=True)
class Reading:
    """A current value and the data time it was observed at."""

    value: float
    observed_at: float


def pending(batch: LogBatch, position: int) -> LogBatch | None:
    """The part of ``batch`` a consumer at ``position`` still has to apply.

    None for a replay (nothing new); raises ``LogGapError`` when positions are missing.
    """
    if batch.last <= position:
        return None
    if batch.after > position:
        raise LogGapError(position, batch.after)
    return batch.since(position)


class Points:
    """A time-ordered series of ``(observed_at, value)`` points, held as two float arrays.

    Never changed in place: ``record_point`` builds a new one. The arrays are copied with a
    ``memcpy`` and the garbage collector walks none of their points, where a tuple of point
    tuples, built anew on every observation, made each young collection walk every point of
    every series it had just extended (37 ms per collection after 8 minutes at 1,000
    observations/s; see docs/benchmarks.md, "Soak"). They also take 16 bytes a point
    instead of ~100.
    """

    __slots__ = ("times", "values")

    def __init__(self, times: array[float] | None = None, values: array[float] | None = None):
        self.times: array[float] = array("d") if times is None else times
        self.values: array[float] = array("d") if values is None else values

    @classmethod
    def of(cls, points: Iterable[Point]) -> Points:
        pairs = list(points)
        return cls(array("d", (t for t, _ in pairs)), array("d", (v for _, v in pairs)))

    def since(self, start: int) -> Iterator[Point]:
        """The points from index ``start`` on."""
        return zip(self.times[start:], self.values[start:], strict=True)

    def __len__(self) -> int:
        return len(self.times)

    def __iter__(self) -> Iterator[Point]:
        return zip(self.times, self.values, strict=True)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Points):
            return NotImplemented
        return self.times == other.times and self.values == other.values

    def __hash__(self) -> int:
        return hash((self.times.tobytes(), self.values.tobytes()))

    def __repr__(self) -> str:
        return f"Points({list(self)!r})"


def record_point(recent: Points, observed_at: float, value: float, newest: float) -> Points | None:
    """``recent`` with the observation recorded, trimmed to the window behind ``newest``.

    ``newest`` already accounts for this observation. None when the observation is older
    than the window: there is nothing to record.
    """
    cutoff = newest - RECENT_WINDOW_SECONDS
    if observed_at < cutoff:
        return None
    times, values = recent.times, recent.values
    start = bisect_left(times, cutoff)
    at = bisect_left(times, observed_at)
    # Same timestamp: this observation was recorded later, so it replaces the old one.
    end = at + 1 if at < len(times) and times[at] == observed_at else at
    new_times, new_values = times[start:at], values[start:at]
    new_times.append(observed_at)
    new_values.append(value)
    if end < len(times):
        new_times += times[end:]
        new_values += values[end:]
    return Points(new_times, new_values)


def _change(recent: Points, value: float, observed_at: float, window: float) -> float | None:
    """``percent_change`` over ``recent``, skipping the points it can never pick.

    ``percent_change`` scans from the oldest point and considers those within half a
    window of ``observed_at - window``; with days of history, most of a scan used to be
    points far too old (the in-memory projection keeps the whole window). Points older than
    that range, with a margin far beyond rounding, are skipped here; the scan itself stops
    after the range. Same result, a fraction of the work (a short history is cheaper to
    scan whole than to bisect).
    """
    start = 0
    if len(recent) > _SCAN_WHOLE:
        start = bisect_left(recent.times, observed_at - window * (1.5 + 1e-6))
    return percent_change(recent.since(start), value, observed_at, window)


_SCAN_WHOLE: Final = 32


@dataclass(frozen=True, slots=True)
class ProtocolState:
    """Everything a hot projection knows about one protocol.

    ``current`` maps ``(metric, chain)`` to its current reading; ``recent`` holds the
    total-TVL history in time order (an adapter may hold only the points a computation
    needs, see ``RedisHotProjection``).
    """

    slug: str
    name: str
    category: str
    chains: tuple[str, ...]
    url: str
    current: Mapping[tuple[str, str], Reading] = field(default_factory=dict)
    recent: Points = field(default_factory=Points)
    position: int = 0

    @classmethod
    def unlisted(cls, slug: str) -> ProtocolState:
        """A protocol known only from its metrics."""
        return cls(slug=slug, name=slug, category="", chains=(), url="")

    @property
    def tvl(self) -> Reading | None:
        return self.current.get(("tvl", TOTAL))

    def chain_tvls(self) -> dict[str, float]:
        return {
            chain: reading.value
            for (metric, chain), reading in self.current.items()
            if metric == "tvl" and chain != TOTAL
        }

    def index_chains(self) -> frozenset[str]:
        """Chains the protocol is found under: listed ones and those with a chain TVL."""
        return frozenset(self.chains) | self.chain_tvls().keys()

    def changes(self) -> dict[str, float | None]:
        """TVL changes over ``CHANGE_WINDOWS``, computed from ``recent``."""
        tvl = self.tvl
        if tvl is None:
            return dict.fromkeys(CHANGE_WINDOWS)
        return {
            name: _change(self.recent, tvl.value, tvl.observed_at, window)
            for name, window in CHANGE_WINDOWS.items()
        }

    def view(self, changes: Changes) -> ProtocolView:
        """The read-side view, with ``changes`` as computed by ``changes()`` (or stored)."""
        tvl = self.tvl
        volume = self.current.get(("volume_24h", TOTAL))
        fees = self.current.get(("fees_24h", TOTAL))
        return ProtocolView(
            slug=self.slug,
            name=self.name,
            category=self.category,
            chains=self.chains,
            url=self.url,
            tvl=None if tvl is None else tvl.value,
            chain_tvls=self.chain_tvls(),
            change_1h=changes.get("change_1h"),
            change_1d=changes.get("change_1d"),
            change_7d=changes.get("change_7d"),
            volume_24h=None if volume is None else volume.value,
            fees_24h=None if fees is None else fees.value,
            # Data time of the freshest current value: what the numbers are "as of".
            updated_at=max((r.observed_at for r in self.current.values()), default=None),
            position=self.position,
        )


@dataclass(frozen=True, slots=True)
class TokenState:
    """Everything a hot projection knows about one token's price."""

    token: str
    price: float
    observed_at: float
    confidence: float | None
    recent: Points = field(default_factory=Points)
    position: int = 0

    def change_24h(self) -> float | None:
        return _change(self.recent, self.price, self.observed_at, PRICE_CHANGE_WINDOW)

    def view(self, change_24h: float | None) -> PriceView:
        """The read-side view, with ``change_24h`` as computed by ``change_24h()`` (or stored)."""
        return PriceView(
            token=self.token,
            price=self.price,
            observed_at=self.observed_at,
            confidence=self.confidence,
            change_24h=change_24h,
            position=self.position,
        )


def fold_protocol(state: ProtocolState | None, entry: LogEntry) -> ProtocolState | None:
    """The protocol after ``entry``, or None when the entry changes nothing."""
    if entry.kind in LISTING_KINDS:
        return _set_listing(state or ProtocolState.unlisted(entry.key), entry)
    if entry.kind == "metric":
        return _observe_metric(state, entry)
    return None


def _set_listing(base: ProtocolState, entry: LogEntry) -> ProtocolState:
    data = entry.data
    chains = data.get("chains")
    return replace(
        base,
        name=str(data.get("name", base.name)),
        category=str(data.get("category", base.category)),
        chains=base.chains if chains is None else tuple(dict.fromkeys(str(c) for c in chains)),
        url=str(data.get("url", base.url)),
        position=entry.position,
    )


def _observe_metric(state: ProtocolState | None, entry: LogEntry) -> ProtocolState | None:
    data = entry.data
    metric = str(data["metric"])
    if metric not in METRICS:
        return None
    chain = str(data.get("chain", TOTAL))
    reading = Reading(float(data["value"]), float(data["observed_at"]))
    base = state or ProtocolState.unlisted(entry.key)

    chains = base.chains
    if chain != TOTAL and chain not in chains:
        chains = (*chains, chain)

    previous = base.current.get((metric, chain))
    moved = previous is None or reading.observed_at >= previous.observed_at
    current = {**base.current, (metric, chain): reading} if moved else base.current

    recent: Points | None = None
    if metric == "tvl" and chain == TOTAL:
        total = base.tvl
        newest = (
            reading.observed_at if total is None else max(total.observed_at, reading.observed_at)
        )
        recent = record_point(base.recent, reading.observed_at, reading.value, newest)

    if state is not None and not moved and recent is None and chains == base.chains:
        return None
    # The constructor rather than ``dataclasses.replace``: this runs once per metric entry,
    # and ``replace`` introspects the fields on every call (a third of a rebuild's fold).
    return ProtocolState(
        slug=base.slug,
        name=base.name,
        category=base.category,
        chains=chains,
        url=base.url,
        current=current,
        recent=base.recent if recent is None else recent,
        position=entry.position,
    )


def fold_token(state: TokenState | None, entry: LogEntry) -> TokenState | None:
    """The token after a ``price`` entry, or None when the entry changes nothing."""
    if entry.kind != PRICE_KIND:
        return None
    data = entry.data
    price = float(data["price"])
    observed_at = float(data["observed_at"])
    raw_confidence = data.get("confidence")
    confidence = None if raw_confidence is None else float(raw_confidence)
    if state is None:
        return TokenState(
            token=entry.key,
            price=price,
            observed_at=observed_at,
            confidence=confidence,
            recent=Points(array("d", (observed_at,)), array("d", (price,))),
            position=entry.position,
        )
    newest = max(state.observed_at, observed_at)
    recent = record_point(state.recent, observed_at, price, newest)
    if observed_at >= state.observed_at:
        return TokenState(
            token=state.token,
            price=price,
            observed_at=observed_at,
            confidence=confidence,
            recent=state.recent if recent is None else recent,
            position=entry.position,
        )
    if recent is None:
        return None
    return replace(state, recent=recent, position=entry.position)


def fold_entries(
    entries: Iterable[LogEntry],
    protocols: Mapping[str, ProtocolState],
    tokens: Mapping[str, TokenState],
) -> tuple[dict[str, ProtocolState], dict[str, TokenState]]:
    """The protocols and tokens ``entries`` change, given the states before them.

    The inputs are not modified, so a caller can commit the result all at once (or not).
    """
    changed_protocols: dict[str, ProtocolState] = {}
    changed_tokens: dict[str, TokenState] = {}
    for entry in entries:
        if entry.kind in PROTOCOL_KINDS:
            before = changed_protocols.get(entry.key) or protocols.get(entry.key)
            protocol = fold_protocol(before, entry)
            if protocol is not None:
                changed_protocols[entry.key] = protocol
        elif entry.kind == PRICE_KIND:
            token = fold_token(changed_tokens.get(entry.key) or tokens.get(entry.key), entry)
            if token is not None:
                changed_tokens[entry.key] = token
    return changed_protocols, changed_tokens


def check_query(query: ProtocolQuery) -> None:
    if query.sort not in SORT_FIELDS:
        raise ValueError(
            f"unknown sort field {query.sort!r}; expected one of {sorted(SORT_FIELDS)}"
        )
    if query.limit < 0 or query.offset < 0:
        raise ValueError("limit and offset must not be negative")


def matches(view: ProtocolView, query: ProtocolQuery) -> bool:
    """Whether ``view`` passes the query's filters."""
    if query.chain is not None and not (
        query.chain in view.chains or query.chain in view.chain_tvls
    ):
        return False
    if query.category is not None and view.category.casefold() != query.category.casefold():
        return False
    return query.min_tvl is None or (view.tvl is not None and view.tvl >= query.min_tvl)


def order(views: Iterable[ProtocolView], sort: str, descending: bool) -> list[ProtocolView]:
    """Sorted by ``sort``; None values last in either direction, ties by slug ascending."""
    by_slug = sorted(views, key=lambda view: view.slug)
    if sort == "name":
        # Sorting is stable even with reverse=True, so ties keep the slug order.
        return sorted(by_slug, key=lambda view: view.name.casefold(), reverse=descending)
    valued: list[tuple[float, ProtocolView]] = []
    missing: list[ProtocolView] = []
    for view in by_slug:
        value = getattr(view, sort)
        if value is None:
            missing.append(view)
        else:
            valued.append((float(value), view))
    valued.sort(key=lambda pair: pair[0], reverse=descending)
    return [view for _, view in valued] + missing


def page_of(views: Sequence[ProtocolView], query: ProtocolQuery) -> list[ProtocolView]:
    return list(views[query.offset : query.offset + query.limit])
