"""The Protocol aggregate: a listed DeFi protocol and its metric observations."""

from __future__ import annotations

import functools
import re
from typing import Any, Final, TypeGuard
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from .chains import canonical_chain
from .errors import InvalidObservation
from .observations import (
    TOTAL,
    check_chain,
    check_chains,
    check_label,
    check_metric,
    check_oracles,
    check_text,
    check_timestamp,
    check_value,
)
from .recent import (
    Series,
    StoredObservations,
    WindowedSnapshot,
    bounded,
    known_value,
    remember,
    series_key,
    window_of,
    window_pairs,
)

# DeFiLlama's slug alphabet (``aave-v3``, ``ether.fi-stake``): lower-case ASCII letters,
# digits, '-' and '.', starting with a letter or digit, no '..', at most 200 characters. So a
# slug is safe in a URL path, a log line and a Redis key, and two protocols cannot look alike.
# An ECMA-262 pattern as well, for the OpenAPI document.
SLUG_PATTERN: Final = r"^(?!.*\.\.)[a-z0-9][a-z0-9.-]{0,199}$"
_SLUG: Final = re.compile(SLUG_PATTERN)
# What slugify turns into one '-': any run of characters outside the alphabet (a '-' too).
_NOT_IN_SLUG: Final = re.compile(r"[^a-z0-9.]+")
_DOTS: Final = re.compile(r"\.{2,}")
PROTOCOL_NAMESPACE = uuid5(NAMESPACE_URL, "https://defi-realtime/protocol/")


def is_slug(slug: object) -> TypeGuard[str]:
    """Whether ``check_slug`` accepts ``slug`` (a test without a reason, for ingest)."""
    return isinstance(slug, str) and _SLUG.fullmatch(slug) is not None


def check_slug(slug: str) -> str:
    """Return ``slug`` if it matches ``SLUG_PATTERN``."""
    if not isinstance(slug, str) or not _SLUG.fullmatch(slug):
        raise InvalidObservation(
            f"invalid protocol slug {slug!r}: lower-case letters, digits, '-' and '.', "
            "starting with a letter or digit, no '..' (max 200)",
            field="protocol",
        )
    return slug


def slugify(name: str) -> str:
    """The slug DeFiLlama would give a protocol ``name``: lower-case, apostrophes dropped
    (``JPEG'd`` -> ``jpegd``), every other run of characters outside the slug alphabet
    (spaces, brackets, '+', '!') becomes one '-', runs of '.' one '.', and '-'/'.' are
    stripped from both ends. The result matches ``SLUG_PATTERN`` unless it is empty (a name
    with no letter or digit) or the name is longer than 200 characters."""
    dashed = _NOT_IN_SLUG.sub("-", name.lower().replace("'", ""))
    return _DOTS.sub(".", dashed).strip("-.")


class Protocol(Aggregate):
    """A DeFi protocol, identified by its slug (e.g. ``aave-v3``).

    Invariants: values are finite and non-negative; an identical repeated observation is a
    no-op; an observation older than the current one enters history but does not move the
    current value.

    Memory is bounded: per series it keeps the newest observations only (``domain.recent``:
    a window and its horizon); whether an older one repeats is asked of the stored events.
    Snapshots carry that bounded state (class version 2; version 1 kept every observation
    in ``history``).
    """

    class_version = 2

    class Snapshot(WindowedSnapshot):
        """Tuple- and float-keyed dicts as JSON lists."""

        @staticmethod
        def encode_state(state: dict[str, Any]) -> dict[str, Any]:
            state["current"] = [[m, c, v, t] for (m, c), (v, t) in state["current"].items()]
            state["recent"] = [[m, c, window_pairs(w)] for (m, c), w in state["recent"].items()]
            state["horizon"] = [[m, c, h] for (m, c), h in state["horizon"].items()]
            return state

        @staticmethod
        def decode_state(state: dict[str, Any]) -> dict[str, Any]:
            state["current"] = {(m, c): (v, t) for m, c, v, t in state["current"]}
            state["recent"] = {(m, c): window_of(w) for m, c, w in state["recent"]}
            state["horizon"] = {(m, c): h for m, c, h in state["horizon"]}
            return state

    @staticmethod
    def create_id(slug: str, *_: Any, **__: Any) -> UUID:
        return Protocol.id_for(slug)

    @staticmethod
    @functools.lru_cache(maxsize=65_536)
    def id_for(slug: str) -> UUID:
        # Cached: ingest derives it for every item (and create_id for every new protocol),
        # and uuid5 hashes each time.
        return uuid5(PROTOCOL_NAMESPACE, slug)

    # ``observed_at`` (when the listing details were true, None if unknown) and ``oracles``
    # (DeFiLlama's list of the price oracles the protocol relies on) default to None so that
    # events stored before they existed still replay (no oracles known: an empty list).
    @event("Listed")
    def __init__(
        self,
        slug: str,
        name: str,
        category: str,
        chains: list[str],
        url: str,
        observed_at: float | None = None,
        oracles: list[str] | None = None,
    ) -> None:
        self.slug = slug
        self.name = name
        self.category = category
        # Canonical names also for events recorded before chain names were normalised.
        self.chains = _canonical_chains(chains)
        self.url = url
        self.oracles: list[str] = list(oracles or [])
        # When the current details were observed: the time of the last change of details
        # that had one (None: not known).
        self.details_observed_at = observed_at
        # (metric, chain) -> (value, observed_at) of the newest observation.
        self.current: dict[tuple[str, str], tuple[float, float]] = {}
        # (metric, chain) -> {observed_at: value} of its newest observations, and the newest
        # time that left that window (domain/recent.py: older ones are asked of the store).
        self.recent: dict[Series, dict[float, float]] = {}
        self.horizon: dict[Series, float] = {}

    @classmethod
    def create(
        cls,
        slug: str,
        name: str,
        category: str = "",
        chains: list[str] | None = None,
        url: str = "",
        observed_at: float | None = None,
        oracles: list[str] | None = None,
    ) -> Protocol:
        """List a new protocol (command); ``observed_at`` is when the details were true."""
        check_slug(slug)
        check_label(name, what="name")
        return cls(
            slug=slug,
            name=name,
            category=check_text(category or "", field="category"),
            chains=check_chains(chains or []),
            url=check_text(url or "", field="url"),
            observed_at=None if observed_at is None else check_timestamp(observed_at),
            oracles=check_oracles(oracles or []),
        )

    def update_details(
        self,
        name: str | None = None,
        category: str | None = None,
        chains: list[str] | None = None,
        url: str | None = None,
        observed_at: float | None = None,
        oracles: list[str] | None = None,
    ) -> bool:
        """Change listing details; returns False (and records nothing) if nothing changes.

        Details observed before the current ones (``observed_at`` older than
        ``details_observed_at``, the time of the last change) change nothing, as a late
        observation does not move the current value: so importing snapshots newest first, or
        a file a second time, leaves the newest details in place and records nothing. The
        same details again do not move that time (that would take an event per item).
        Details without a time apply as given and keep the current time.
        """
        if (
            (name is None or name == self.name)
            and (category is None or category == self.category)
            and (chains is None or chains == self.chains)
            and (url is None or url == self.url)
            and (oracles is None or oracles == self.oracles)
        ):
            # Nothing changes, so nothing to check: what the protocol holds was checked when
            # it was recorded. Ingest calls this for every item that carries a listing, and
            # re-checking each chain of an unchanged list was most of its cost.
            return False
        if observed_at is not None:
            check_timestamp(observed_at)
            if self.details_observed_at is not None and observed_at < self.details_observed_at:
                return False
        new_name = check_label(name, what="name") if name is not None else self.name
        new_category = (
            check_text(category, field="category") if category is not None else self.category
        )
        new_chains = check_chains(chains) if chains is not None else self.chains
        new_url = check_text(url, field="url") if url is not None else self.url
        new_oracles = check_oracles(oracles) if oracles is not None else self.oracles
        if (new_name, new_category, new_chains, new_url, new_oracles) == (
            self.name,
            self.category,
            self.chains,
            self.url,
            self.oracles,
        ):
            return False
        self._details_updated(
            self.slug, new_name, new_category, new_chains, new_url, observed_at, new_oracles
        )
        return True

    # Events name the slug as well as the aggregate id: downstream consumers (projections,
    # WebSocket clients) work with slugs and should not need a lookup to read a fact.
    @event("DetailsUpdated")
    def _details_updated(
        self,
        slug: str,
        name: str,
        category: str,
        chains: list[str],
        url: str,
        observed_at: float | None = None,
        oracles: list[str] | None = None,
    ) -> None:
        self.name = name
        self.category = category
        self.chains = _canonical_chains(chains)
        self.url = url
        # None: an event stored before oracles were kept, which did not change them.
        if oracles is not None:
            self.oracles = list(oracles)
        if observed_at is not None:
            self.details_observed_at = observed_at

    def record_metric(
        self,
        metric: str,
        chain: str,
        value: float,
        observed_at: float,
        source: str = "",
        stored: StoredObservations | None = None,
    ) -> bool:
        """Record one observation; returns False if it is an identical repeat (a no-op):
        the value last recorded for its series and time is the same. ``stored`` answers
        for times beyond the recent window (``domain.recent``)."""
        chain, number, stamp, known = self._checked(
            metric, chain, value, observed_at, source, stored
        )
        if known == number:
            return False
        # What trigger_event does, without its keyword plumbing and the frozen dataclass
        # __init__ (~40 % of this method): the event is built as eventsourcing's mapper builds
        # the events it reads back, from its state dict, with the fields in the dataclass's
        # order (so the same stored state); mutate() checks its id and version and applies
        # it. Ingest records one per observation (tests/unit/test_domain.py compares both).
        recorded = object.__new__(self.MetricRecorded)
        recorded.__dict__.update(
            originator_id=self.id,
            originator_version=self.version + 1,
            timestamp=self.MetricRecorded.create_timestamp(),
            slug=self.slug,
            metric=metric,
            chain=chain,
            value=number,
            observed_at=stamp,
            source=source or "",
        )
        recorded.mutate(self)
        self.pending_events.append(recorded)
        return True

    # An explicit event class rather than ``@event`` on a method: the decorator maps call
    # arguments to event fields and back (``_coerce_args_to_kwargs``, two
    # ``filter_kwargs_for_method_params`` per event), half of ``record_metric``'s cost; this is
    # the event ingest creates most. Same qualified name, so the same stored topic.
    class MetricRecorded(Aggregate.Event):
        slug: str
        metric: str
        chain: str
        value: float
        observed_at: float
        source: str

        def apply(self, aggregate: Aggregate) -> None:
            assert isinstance(aggregate, Protocol)
            aggregate._apply_metric(self.metric, self.chain, self.value, self.observed_at)

    def _checked(
        self,
        metric: str,
        chain: str,
        value: float,
        observed_at: float,
        source: str,
        stored: StoredObservations | None,
    ) -> tuple[str, float, float, float | None]:
        """The observation's fields validated (chain canonical), and the value last recorded
        for its series and time (None: never), as ``record_metric`` and ``retract_metric``
        both need them."""
        check_metric(metric)
        chain = check_chain(chain)
        number = check_value(value)
        stamp = check_timestamp(observed_at)
        check_text(source or "", field="source")
        series = series_key(metric, chain)
        known = known_value(
            self.recent.get(series), self.horizon.get(series), stamp, self.id, series, stored
        )
        return chain, number, stamp, known

    def retract_metric(
        self,
        metric: str,
        chain: str,
        observed_at: float,
        restored: float,
        source: str = "",
        stored: StoredObservations | None = None,
    ) -> bool:
        """Retract the observation at ``(metric, chain, observed_at)``: its source learnt it
        was never true (an EVM block orphaned by a reorg). The value there becomes
        ``restored`` (what was true before it), as a correction would make it; the
        retraction is a fact of its own, never an edit. False (nothing recorded) when
        nothing was observed there or it already holds ``restored``. ``stored`` answers for
        times beyond the recent window, as in ``record_metric``."""
        chain, number, stamp, held = self._checked(
            metric, chain, restored, observed_at, source, stored
        )
        if held is None or held == number:
            return False
        self._metric_retracted(self.slug, metric, chain, number, stamp, source or "")
        return True

    @event("MetricRetracted")
    def _metric_retracted(
        self, slug: str, metric: str, chain: str, value: float, observed_at: float, source: str
    ) -> None:
        self._apply_metric(metric, chain, value, observed_at)

    def _apply_metric(self, metric: str, chain: str, value: float, observed_at: float) -> None:
        chain = canonical_chain(chain)  # an event recorded before names were normalised
        series = series_key(metric, chain)
        window = self.recent.get(series)
        if window is None:
            window = self.recent[series] = {}
        horizon = remember(window, self.horizon.get(series), observed_at, value)
        if horizon is not None:
            self.horizon[series] = horizon
        current = self.current.get((metric, chain))
        # A late observation is history only; ties go to the newest recording (a correction).
        if current is None or observed_at >= current[1]:
            self.current[(metric, chain)] = (value, observed_at)
        if chain != TOTAL and chain not in self.chains:
            self.chains.append(chain)

    def current_value(self, metric: str = "tvl", chain: str = TOTAL) -> float | None:
        current = self.current.get((metric, chain))
        return None if current is None else current[0]

    def beyond_window(self, metric: str, chain: str, observed_at: float) -> bool:
        """Whether only the stored events can tell if this observation was recorded (its
        time is at or before its series' horizon). ``chain`` in its canonical spelling."""
        horizon = self.horizon.get((metric, chain))
        return horizon is not None and observed_at <= horizon

    @staticmethod
    def upcast_v1_v2(state: dict[str, Any]) -> None:
        """A version-1 state kept every observation in ``history``: keep the window of it."""
        by_series: dict[Series, dict[float, float]] = {}
        for (metric, chain, stamp), value in state.pop("history", {}).items():
            by_series.setdefault((metric, chain), {})[stamp] = value
        state["recent"] = {}
        state["horizon"] = {}
        for series, observations in by_series.items():
            state["recent"][series], horizon = bounded(observations)
            if horizon is not None:
                state["horizon"][series] = horizon


def _canonical_chains(chains: list[str]) -> list[str]:
    return list(dict.fromkeys(map(canonical_chain, chains)))
