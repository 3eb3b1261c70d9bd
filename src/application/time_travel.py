"""Protocols as they stood at a time, or as the system knew them at a log position.

Two cuts of the facts, which combine:

* ``as_of`` (data time): only observations made at or before it count; each series' value
  is its latest observation at or before ``as_of`` (the latest recording of that time, a
  correction, wins), and its changes are computed as the live view computes them, from the
  points before it.
* ``known_at`` (a log position, bitemporal): only facts recorded at or before that position
  count, so a correction recorded later is not seen: the answer is what the system believed
  then. A time is turned into the last position recorded at or before it.

The answer is the live view of a log that held only the facts inside the cut: the same
``ProtocolState`` and change rules as the hot projections (tests/property/test_time_travel.py
compares it with such a fold). Listing details (name, category, chains, url, oracles) are
those of the last listing inside the cut: recorded by ``known_at``, and true by ``as_of`` (a
listing without a time, ADR 0017, is true at any time). A protocol with no observation inside
the cut is not listed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from ..domain.observations import TOTAL, TVL_SECTIONS, section_key
from .hot_state import matches, order
from .series_states import OPEN, SeriesState, changes_at, has_changes
from .views import RECENT_WINDOW_SECONDS, Page, ProtocolQuery, ProtocolView

__all__ = [
    "CHANGE_SPAN",
    "ChangePoint",
    "Cut",
    "FactsInCut",
    "LatestValue",
    "ListingDetails",
    "cut_of",
    "page_of_views",
    "protocols_at",
    "views_at",
    "views_of_states",
]

# How far behind a protocol's newest total TVL its changes may look: what the hot
# projections keep (``RECENT_WINDOW_SECONDS``), so a cut at "now" answers as they do.
CHANGE_SPAN: Final = RECENT_WINDOW_SECONDS


@dataclass(frozen=True, slots=True)
class Cut:
    """Which facts count (None: no bound)."""

    as_of: float | None = None
    known_at: int | None = None


@dataclass(frozen=True, slots=True)
class LatestValue:
    """A series' latest observation inside a cut."""

    protocol: str
    metric: str
    chain: str
    value: float
    observed_at: float
    position: int
    first_position: int
    """Where the series was first observed inside the cut (orders a protocol's chains)."""


@dataclass(frozen=True, slots=True)
class ChangePoint:
    """A point of a series with changes (``has_changes``: the total TVL and flows), within
    ``CHANGE_SPAN`` of its newest."""

    protocol: str
    metric: str
    observed_at: float
    value: float


@dataclass(frozen=True, slots=True)
class ListingDetails:
    slug: str
    name: str
    category: str
    chains: tuple[str, ...]
    url: str
    oracles: tuple[str, ...] = ()


def views_at(
    latest: Iterable[LatestValue],
    change_points: Iterable[ChangePoint],
    listings: Mapping[str, ListingDetails],
) -> list[ProtocolView]:
    """The view of every protocol with a value in the cut, from what the read model found
    inside it (``latest``: one row per series; ``change_points``: time-ordered per series,
    one per time): each series' state at the cut, its changes computed from the points, as
    the series states hold them."""
    points: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    for point in change_points:
        points[(point.protocol, point.metric)].append((point.observed_at, point.value))
    states = []
    for row in sorted(latest, key=lambda row: row.first_position):
        changes: tuple[float | None, ...] = (None, None, None)
        if has_changes(row.metric, row.chain):
            series = sorted(points[(row.protocol, row.metric)])
            recent = [p for p in series if p[0] < row.observed_at]
            recent.append((row.observed_at, row.value))
            times, values = [t for t, _ in recent], [v for _, v in recent]
            changes = changes_at(times, values, len(times) - 1)
        states.append(
            SeriesState(
                row.protocol,
                row.metric,
                row.chain,
                row.observed_at,
                row.value,
                row.position,
                row.first_position,
                OPEN,
                *changes,
            )
        )
    return views_of_states(states, listings)


def views_of_states(
    states: Iterable[SeriesState], listings: Mapping[str, ListingDetails]
) -> list[ProtocolView]:
    """The views of the series states that hold at a cut, ordered by their first positions
    (the live view's rules: tests/property/test_time_travel.py holds them equal to a fold)."""
    by_protocol: dict[str, list[SeriesState]] = defaultdict(list)
    for state in states:  # in the order of their first positions
        by_protocol[state.protocol].append(state)
    views = []
    for slug, found in by_protocol.items():
        listing = listings.get(slug)
        tvl = volume = fees = None
        chain_tvls: dict[str, float] = {}
        sections: dict[str, float] = {}
        chains = [] if listing is None else list(listing.chains)
        for state in found:
            if state.metric in TVL_SECTIONS:
                sections[section_key(state.metric, state.chain)] = state.value
            if state.chain != TOTAL:
                chains.append(state.chain)
                if state.metric == "tvl":
                    chain_tvls[state.chain] = state.value
            elif state.metric == "tvl":
                tvl = state
            elif state.metric == "volume_24h":
                volume = state
            elif state.metric == "fees_24h":
                fees = state
        views.append(
            ProtocolView(
                slug=slug,
                name=slug if listing is None else listing.name,
                category="" if listing is None else listing.category,
                chains=tuple(dict.fromkeys(chains)),
                url="" if listing is None else listing.url,
                tvl=None if tvl is None else tvl.value,
                chain_tvls=chain_tvls,
                change_1h=None if tvl is None else tvl.change_1h,
                change_1d=None if tvl is None else tvl.change_1d,
                change_7d=None if tvl is None else tvl.change_7d,
                volume_24h=None if volume is None else volume.value,
                fees_24h=None if fees is None else fees.value,
                updated_at=max(state.observed_at for state in found),
                position=max(state.position for state in found),
                tvl_at=None if tvl is None else tvl.observed_at,
                volume_24h_at=None if volume is None else volume.observed_at,
                fees_24h_at=None if fees is None else fees.observed_at,
                sections=sections,
                volume_24h_change_1d=None if volume is None else volume.change_1d,
                volume_24h_change_7d=None if volume is None else volume.change_7d,
                fees_24h_change_1d=None if fees is None else fees.change_1d,
                fees_24h_change_7d=None if fees is None else fees.change_7d,
                oracles=() if listing is None else listing.oracles,
            )
        )
    return views


class FactsInCut(Protocol):
    """What a read model finds inside a cut (the history read model implements it)."""

    def latest_values(self, cut: Cut, protocol: str | None = None) -> list[LatestValue]: ...

    def change_points(self, cut: Cut, protocol: str | None = None) -> list[ChangePoint]: ...

    def listing_details(self, cut: Cut | None = None) -> dict[str, ListingDetails]: ...

    def position_recorded_by(self, time: float) -> int: ...

    def series_states(
        self, as_of: float | None, protocol: str | None = None
    ) -> list[SeriesState]: ...


def cut_of(facts: FactsInCut, as_of: float | None, known_at: int | float | None) -> Cut:
    """The cut ``asOf``/``knownAt`` ask for: ``knownAt`` as a time (a float) is the last
    log position recorded by then (synchronous)."""
    if isinstance(known_at, float):
        known_at = facts.position_recorded_by(known_at)
    return Cut(as_of=as_of, known_at=known_at)


def protocols_at(facts: FactsInCut, cut: Cut, slug: str | None = None) -> list[ProtocolView]:
    """Every protocol's view inside ``cut`` (or only ``slug``'s; synchronous): from the
    series states when the cut is a time alone, else from the raw facts inside it."""
    if cut.known_at is None:
        return views_of_states(facts.series_states(cut.as_of, slug), facts.listing_details(cut))
    return views_at(
        facts.latest_values(cut, slug), facts.change_points(cut, slug), facts.listing_details(cut)
    )


def page_of_views(views: Sequence[ProtocolView], query: ProtocolQuery) -> Page:
    """Filter, sort and paginate views as the hot projections do."""
    selected = order(
        (view for view in views if matches(view, query)), query.sort, query.descending, query.chain
    )
    return Page(
        items=selected[query.offset : query.offset + query.limit],
        total=len(selected),
        limit=query.limit,
        offset=query.offset,
    )
