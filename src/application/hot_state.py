"""How log entries fold into hot state: the one definition both hot projections share.

Everything here is pure. A projection keeps a ``ProtocolState`` per protocol and a
``TokenState`` per token; ``fold_entries`` turns the states before a batch into the states
the batch changed, and the states render the read-side views. The in-memory adapter keeps
the states themselves; the Redis adapter stores them in hashes and sorted sets and folds a
snapshot of the keys a batch touches.

Rules (the contract tests check both adapters against an independent reference fold):

* ``protocol_listed`` / ``protocol_updated`` set the listing (name, category, chains, url,
  oracles; the chains it has a value on stay among its chains).
* ``metric`` moves the current value of its ``(metric, chain)`` only when it is at least as
  recent (``observed_at``) as the current one: late observations never win. A metric for a
  protocol never listed creates it (name = slug); a chain seen in a metric joins ``chains``.
* Every total-TVL observation within ``RECENT_WINDOW_SECONDS`` of the newest one is
  history, late ones included (same timestamp: the later-recorded wins), for the change
  windows; so are the total volume and fee observations, for their own, and prices, for
  ``change_24h``. A series holds only the part of its history a change can still select
  (``keep_from``, ADR 0044): the answers are those of the whole window.
* A protocol's or token's ``position`` is that of the last entry that changed it (moved a
  value, recorded history, or set its listing); entries that change nothing leave it.
* Alert entries and unknown kinds or metrics change nothing (their positions still count).
"""

from __future__ import annotations

import struct
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Final, cast

from ..domain.chains import chain_key
from ..domain.observations import METRICS, TOTAL, TVL_SECTIONS, VOLUME_METRICS, section_key
from .chain_tvl import tvl_by_chain
from .log import LogBatch, LogEntry, pending
from .views import (
    CHANGE_WINDOWS,
    FLOW_CHANGE_WINDOWS,
    RECENT_WINDOW_SECONDS,
    SORT_FIELDS,
    PriceView,
    ProtocolQuery,
    ProtocolView,
    flow_change_field,
    percent_change,
)

LISTING_KINDS: Final = frozenset({"protocol_listed", "protocol_updated"})
PROTOCOL_KINDS: Final = LISTING_KINDS | {"metric"}
PRICE_KIND: Final = "price"
PRICE_CHANGE_WINDOW: Final = 86_400.0
# Live frames carry each series' own 24 h change.
SERIES_CHANGE_WINDOW: Final = 86_400.0
# Metrics whose total series a ``ProtocolState`` keeps besides the TVL's ``recent``, for
# their own changes (``FLOW_CHANGE_WINDOWS``: a day and a week, so the same window as the
# TVL's).
SERIES_METRICS: Final = VOLUME_METRICS
# The longest window each kind of series is read with (``record_point``'s ``reach``): the
# TVL's and the flows' own changes and the live frames' 24 h change, a price's 24 h change.
TVL_REACH: Final = max(*CHANGE_WINDOWS.values(), SERIES_CHANGE_WINDOW)
FLOW_REACH: Final = max(*FLOW_CHANGE_WINDOWS.values(), SERIES_CHANGE_WINDOW)
PRICE_REACH: Final = PRICE_CHANGE_WINDOW

Point = tuple[float, float]
"""``(observed_at, value)``."""
Changes = Mapping[str, float | None]
"""``change_1h`` / ``change_1d`` / ``change_7d`` of a protocol's TVL, and its flows' own
(``volume_24h_change_1d``...): view fields, by name."""


@dataclass(frozen=True, slots=True)
class Reading:
    """A current value and the data time it was observed at."""

    value: float
    observed_at: float


_FLOAT: Final = struct.Struct("=d")
_WIDTH: Final = _FLOAT.size


class Points:
    """A time-ordered series of ``(observed_at, value)`` points, held as two ``bytes`` of
    native doubles (``times`` and ``values`` read them as float sequences, without a copy).

    Never changed in place: ``record_point`` builds a new one. The points are copied with a
    ``memcpy`` and the garbage collector walks none of them, where a tuple of point tuples,
    built anew on every observation, made each young collection walk every point of every
    series it had just extended (37 ms per collection after 8 minutes at 1,000
    observations/s; see docs/benchmarks.md, "Soak"). They take 16 bytes a point instead of
    ~100. ``bytes`` rather than two ``array``s: the collector does not track ``bytes``, so a
    series is one tracked object, not three; every protocol an observation touches leaves a
    new series for the next full collection to scan (ADR 0057).
    """

    __slots__ = ("time_bytes", "value_bytes")

    def __init__(
        self,
        times: bytes | array[float] | None = None,
        values: bytes | array[float] | None = None,
    ):
        # ``bytes(b)`` of a ``bytes`` is that object itself: no copy.
        self.time_bytes: bytes = b"" if times is None else bytes(times)
        self.value_bytes: bytes = b"" if values is None else bytes(values)

    @classmethod
    def of(cls, points: Iterable[Point]) -> Points:
        pairs = list(points)
        return cls(array("d", (t for t, _ in pairs)), array("d", (v for _, v in pairs)))

    @property
    def times(self) -> Sequence[float]:
        """The points' times, a view of ``time_bytes`` (sliced without copying)."""
        return _floats(self.time_bytes)

    @property
    def values(self) -> Sequence[float]:
        """The points' values, a view of ``value_bytes``."""
        return _floats(self.value_bytes)

    def since(self, start: int) -> Iterator[Point]:
        """The points from index ``start`` on."""
        return zip(self.times[start:], self.values[start:], strict=True)

    def __len__(self) -> int:
        return len(self.time_bytes) // _WIDTH

    def __iter__(self) -> Iterator[Point]:
        return zip(self.times, self.values, strict=True)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Points):
            return NotImplemented
        # Compared as floats, as the arrays were (0.0 == -0.0), not byte by byte.
        return self.times == other.times and self.values == other.values

    def __hash__(self) -> int:
        return hash((self.time_bytes, self.value_bytes))

    def __repr__(self) -> str:
        return f"Points({list(self)!r})"


def _floats(raw: bytes) -> Sequence[float]:
    return cast(Sequence[float], memoryview(raw).cast("d"))


def record_point(
    recent: Points,
    observed_at: float,
    value: float,
    newest: float,
    reach: float,
    window: float = RECENT_WINDOW_SECONDS,
) -> Points | None:
    """``recent`` with the observation recorded, thinned to what a change can still select.

    ``newest`` already accounts for this observation; ``reach`` is the longest change window
    that reads the series (``TVL_REACH``...). None when the observation is older than
    ``window`` behind ``newest``: it is not history, and the caller's state does not move.
    Otherwise the result holds exactly the points ``keep_from`` keeps (ADR 0044), which may
    leave out the observation itself when it is too old for any change to select.
    """
    cutoff = newest - window
    if observed_at < cutoff:
        return None
    times = recent.times
    start = bisect_left(times, cutoff)
    at = bisect_left(times, observed_at)
    # Same timestamp: this observation was recorded later, so it replaces the old one.
    end = at + 1 if at < len(times) and times[at] == observed_at else at
    new_times = _spliced(recent.time_bytes, start, at, end, observed_at)
    kept = _floats(new_times)
    drop = bisect_left(kept, keep_from(kept, newest, reach, window))
    return Points(
        new_times[drop * _WIDTH :],  # the same object when nothing drops
        _spliced(recent.value_bytes, start, at, end, value, drop),
    )


def _spliced(raw: bytes, start: int, at: int, end: int, point: float, drop: int = 0) -> bytes:
    """Doubles ``raw[start:at] + [point] + raw[end:]``, less their first ``drop``, in one
    copy."""
    view = memoryview(raw)
    if drop > at - start:  # the point itself is dropped
        return bytes(view[(end + drop - (at - start) - 1) * _WIDTH :])
    head = view[(start + drop) * _WIDTH : at * _WIDTH]
    return b"".join((head, _FLOAT.pack(point), view[end * _WIDTH :]))


def keep_from(times: Sequence[float], newest: float, reach: float, window: float) -> float:
    """The oldest time a series read by change windows of at most ``reach`` must keep.

    ADR 0006's rule selects, at a data time ``now``, the point nearest ``now - w`` (ties: the
    later one) for each window ``w``. ``now`` never goes back, so every later query looks
    at or after ``newest - reach``: of the points at or before that time only the last one
    can ever be nearest, whatever arrives later (a new point only adds a competitor), and
    every point after it can be (at ``now = point + w``). So the series keeps the last
    point at or before ``newest - reach`` and everything after it; with none there, what
    the ``window`` behind ``newest`` holds (ADR 0044).
    """
    horizon = newest - reach
    last = bisect_right(times, horizon) - 1
    if last >= 0 and times[last] >= newest - window:
        return times[last]
    return newest - window


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
    needs, see ``RedisHotProjection``); ``series`` the recent total series of the flows
    (``SERIES_METRICS``, as long as ``recent``), for their own changes in views and frames.
    """

    slug: str
    name: str
    category: str
    chains: tuple[str, ...]
    url: str
    current: Mapping[tuple[str, str], Reading] = field(default_factory=dict)
    recent: Points = field(default_factory=Points)
    position: int = 0
    series: Mapping[str, Points] = field(default_factory=dict)
    oracles: tuple[str, ...] = ()

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

    def sections(self) -> dict[str, float]:
        """DeFiLlama's TVL sections, keyed as its ``chainTvls`` are."""
        return {
            section_key(metric, chain): reading.value
            for (metric, chain), reading in self.current.items()
            if metric in TVL_SECTIONS
        }

    def index_chains(self) -> frozenset[str]:
        """Chains the protocol is found under: listed ones and those with a chain TVL."""
        return frozenset(self.chains) | self.chain_tvls().keys()

    def changes(self) -> dict[str, float | None]:
        """Every change the view shows: the TVL's and each flow's."""
        changes = self.tvl_changes()
        for metric in SERIES_METRICS:
            changes.update(self.flow_changes(metric))
        return changes

    def tvl_changes(self) -> dict[str, float | None]:
        """TVL changes over ``CHANGE_WINDOWS``, computed from ``recent``."""
        tvl = self.tvl
        if tvl is None:
            return dict.fromkeys(CHANGE_WINDOWS)
        return {
            name: _change(self.recent, tvl.value, tvl.observed_at, window)
            for name, window in CHANGE_WINDOWS.items()
        }

    def flow_changes(self, metric: str) -> dict[str, float | None]:
        """``metric``'s (a ``SERIES_METRICS``) changes over ``FLOW_CHANGE_WINDOWS``,
        computed from its ``series``, by view field."""
        reading = self.current.get((metric, TOTAL))
        series = self.series.get(metric)
        return {
            flow_change_field(metric, name): None
            if reading is None or series is None
            else _change(series, reading.value, reading.observed_at, window)
            for name, window in FLOW_CHANGE_WINDOWS.items()
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
            # Each metric's own data time: one metric moving never dates another.
            tvl_at=None if tvl is None else tvl.observed_at,
            volume_24h_at=None if volume is None else volume.observed_at,
            fees_24h_at=None if fees is None else fees.observed_at,
            sections=self.sections(),
            volume_24h_change_1d=changes.get("volume_24h_change_1d"),
            volume_24h_change_7d=changes.get("volume_24h_change_7d"),
            fees_24h_change_1d=changes.get("fees_24h_change_1d"),
            fees_24h_change_7d=changes.get("fees_24h_change_7d"),
            oracles=self.oracles,
        )

    def change_24h(self, metric: str, value: float, observed_at: float) -> float | None:
        """The 24 h change of ``metric``'s total series for a reading of it, from what this
        state holds (the TVL's ``recent``, or ``series``)."""
        if metric == "tvl":
            return _change(self.recent, value, observed_at, SERIES_CHANGE_WINDOW)
        series = self.series.get(metric)
        if series is None:
            return None
        return _change(series, value, observed_at, SERIES_CHANGE_WINDOW)


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
    listed = data.get("chains")
    chains = base.chains
    if listed is not None:
        # The listing's chains, then every chain the protocol has a value on (in the order
        # first seen): a listing naming fewer chains never hides a chain with TVL.
        valued = (chain for _, chain in base.current if chain != TOTAL)
        chains = tuple(dict.fromkeys([*map(str, listed), *valued]))
    oracles = data.get("oracles")
    return replace(
        base,
        name=str(data.get("name", base.name)),
        category=str(data.get("category", base.category)),
        chains=chains,
        url=str(data.get("url", base.url)),
        oracles=base.oracles if oracles is None else tuple(str(o) for o in oracles),
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
    series = base.series
    if chain == TOTAL:
        newest = (
            reading.observed_at
            if previous is None
            else max(previous.observed_at, reading.observed_at)
        )
        if metric == "tvl":
            recent = record_point(
                base.recent, reading.observed_at, reading.value, newest, TVL_REACH
            )
        elif metric in SERIES_METRICS:
            points = record_point(
                series.get(metric, _NO_POINTS),
                reading.observed_at,
                reading.value,
                newest,
                FLOW_REACH,
            )
            if points is not None:
                series = {**series, metric: points}

    if (
        state is not None
        and not moved
        and recent is None
        and series is base.series
        and chains == base.chains
    ):
        return None  # nothing a view shows changed
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
        series=series,
        oracles=base.oracles,
    )


_NO_POINTS: Final = Points()


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
    recent = record_point(state.recent, observed_at, price, newest, PRICE_REACH)
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


@dataclass(frozen=True, slots=True)
class EntryFacts:
    """What the hot state held right after one metric or price entry: its protocol's or
    token's state at that position, and whether the entry became the current value (False:
    a late observation, older than the current one, kept as history only).

    Live frames are built from these, so a frame says what was true at its entry's position,
    not what a later entry of the same batch (or another node's projector) made true.
    """

    state: ProtocolState | TokenState | None
    current: bool

    def change_24h(self, entry: LogEntry) -> float | None:
        """The 24 h change of the entry's own series (None for a late observation, a chain
        of a protocol, or when no point a day back is known)."""
        state, data = self.state, entry.data
        if not self.current or state is None:
            return None
        if isinstance(state, TokenState):
            return state.change_24h()
        if data.get("chain", TOTAL) != TOTAL:
            return None
        return state.change_24h(
            str(data.get("metric")), float(data["value"]), float(data["observed_at"])
        )


def fold_entries(
    entries: Iterable[LogEntry],
    protocols: Mapping[str, ProtocolState],
    tokens: Mapping[str, TokenState],
    facts: dict[int, EntryFacts] | None = None,
) -> tuple[dict[str, ProtocolState], dict[str, TokenState]]:
    """The protocols and tokens ``entries`` change, given the states before them; with
    ``facts``, also each metric and price entry's ``EntryFacts`` by position.

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
            if facts is not None and entry.kind == "metric":
                facts[entry.position] = EntryFacts(
                    protocol or before, _became_current(before, entry)
                )
        elif entry.kind == PRICE_KIND:
            before_token = changed_tokens.get(entry.key) or tokens.get(entry.key)
            token = fold_token(before_token, entry)
            if token is not None:
                changed_tokens[entry.key] = token
            if facts is not None:
                facts[entry.position] = EntryFacts(
                    token or before_token,
                    before_token is None
                    or float(entry.data["observed_at"]) >= before_token.observed_at,
                )
    return changed_protocols, changed_tokens


def _became_current(before: ProtocolState | None, entry: LogEntry) -> bool:
    """Whether a metric entry moves its ``(metric, chain)``'s current value (ties: yes, the
    later recording is a correction)."""
    if before is None:
        return True
    data = entry.data
    previous = before.current.get((str(data["metric"]), str(data.get("chain", TOTAL))))
    return previous is None or float(data["observed_at"]) >= previous.observed_at


class HotState:
    """The hot state of one process, folded from the log in memory: what the embedded hot
    projection answers REST reads from, and what a serving node's realtime hub takes each
    frame's facts from (``facts``: the ``EntryFacts`` of the last batch applied, by
    position; kept only with ``record_facts``).

    Synchronous and never half-applied: ``apply`` folds first and commits after, with no
    suspension point, so readers in the same event loop see a batch whole or not at all.
    Views are rendered once per change rather than per read, since reads far outnumber
    writes.
    """

    def __init__(self, *, record_facts: bool = False) -> None:
        self.position = 0
        self.protocols: dict[str, ProtocolState] = {}
        self.protocol_views: dict[str, ProtocolView] = {}
        self.tokens: dict[str, TokenState] = {}
        self.price_views: dict[str, PriceView] = {}
        self.record_facts = record_facts
        self.facts: dict[int, EntryFacts] = {}

    def apply(self, batch: LogBatch) -> bool:
        """Apply a batch exactly once (replays change nothing: False; gaps raise)."""
        todo = pending(batch, self.position)
        if todo is None:
            return False
        facts: dict[int, EntryFacts] | None = {} if self.record_facts else None
        # Fold first, commit after: a malformed entry raises before anything changed.
        protocols, tokens = fold_entries(todo.entries, self.protocols, self.tokens, facts)
        protocol_views = {slug: state.view(state.changes()) for slug, state in protocols.items()}
        price_views = {token: state.view(state.change_24h()) for token, state in tokens.items()}
        self.protocols.update(protocols)
        self.protocol_views.update(protocol_views)
        self.tokens.update(tokens)
        self.price_views.update(price_views)
        if facts is not None:
            self.facts = facts
        self.position = todo.last
        return True

    def reset(self) -> None:
        self.position = 0
        self.protocols.clear()
        self.protocol_views.clear()
        self.tokens.clear()
        self.price_views.clear()
        self.facts = {}


def check_query(query: ProtocolQuery) -> None:
    if query.sort not in SORT_FIELDS:
        raise ValueError(
            f"unknown sort field {query.sort!r}; expected one of {sorted(SORT_FIELDS)}"
        )
    if query.limit < 0 or query.offset < 0:
        raise ValueError("limit and offset must not be negative")


def tvl_by_chain_key(view: ProtocolView) -> dict[str, float]:
    """The protocol's TVL on each chain it can be attributed to (``chain_tvl``'s rule), by
    ``chain_key`` (the first spelling of a chain wins)."""
    attributed: dict[str, float] = {}
    for name, value in tvl_by_chain(view.chains, view.chain_tvls, view.tvl).items():
        attributed.setdefault(chain_key(name), value)
    return attributed


def tvl_on(view: ProtocolView, chain: str | None) -> float | None:
    """The TVL a listing filtered by ``chain`` ranks by: the protocol's TVL on that chain
    (its own figure, or its total when it lists that chain alone; ``chain_tvl``'s rule),
    or its total without a chain."""
    if chain is None:
        return view.tvl
    return tvl_by_chain_key(view).get(chain_key(chain))


def matches(view: ProtocolView, query: ProtocolQuery) -> bool:
    """Whether ``view`` passes the query's filters (``min_tvl``: on the chain, with one)."""
    if query.chain is not None:
        wanted = chain_key(query.chain)  # case-insensitive, like DeFiLlama's chain filter
        if not any(chain_key(chain) == wanted for chain in (*view.chains, *view.chain_tvls)):
            return False
    if query.category is not None and view.category.casefold() != query.category.casefold():
        return False
    if query.min_tvl is None:
        return True
    tvl = tvl_on(view, query.chain)
    return tvl is not None and tvl >= query.min_tvl


def order(
    views: Iterable[ProtocolView], sort: str, descending: bool, chain: str | None = None
) -> list[ProtocolView]:
    """Sorted by ``sort``; None values last in either direction, ties by slug ascending.
    With ``chain``, ``tvl`` is the TVL on that chain (``tvl_on``)."""
    by_slug = sorted(views, key=lambda view: view.slug)
    if sort == "name":
        # Sorting is stable even with reverse=True, so ties keep the slug order.
        return sorted(by_slug, key=lambda view: view.name.casefold(), reverse=descending)
    valued: list[tuple[float, ProtocolView]] = []
    missing: list[ProtocolView] = []
    for view in by_slug:
        value = tvl_on(view, chain) if sort == "tvl" else getattr(view, sort)
        if value is None:
            missing.append(view)
        else:
            valued.append((float(value), view))
    valued.sort(key=lambda pair: pair[0], reverse=descending)
    return [view for _, view in valued] + missing


def page_of(views: Sequence[ProtocolView], query: ProtocolQuery) -> list[ProtocolView]:
    return list(views[query.offset : query.offset + query.limit])
