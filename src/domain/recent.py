"""A bounded window of recent observations, for idempotent re-imports (docs/adr/0045).

An aggregate that records observations must tell an identical repeat (a no-op) from a new
observation or a correction. It used to keep every observation it ever recorded for that;
now it keeps, per series, the ``RECENT_PER_SERIES`` newest observation times with their
values, and a *horizon*: the newest time that ever left the window. The invariant:

    every observation recorded with a time after the horizon is in the window, with the
    value it was last recorded with.

So a time after the horizon is answered by the window alone (absent: never recorded); a
time at or before it may have been recorded, and only the stored events know: the caller
passes a ``StoredObservations`` that answers from them. The window is a fold of the events
(``remember`` runs in the events' ``apply``), so a replay and a snapshot give the same one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Protocol
from uuid import UUID

from eventsourcing.domain import BaseAggregate, Snapshot

# Observation times kept per series. Re-sending the last few batches (a retry, a re-read
# file, a poller that restarts) repeats the newest times of each series: they are answered
# here. Older repeats (a backfill) ask the store, once per ingest group.
RECENT_PER_SERIES: Final = 8

# A series: (metric, chain) of a protocol; a token's prices are the one series PRICE.
Series = tuple[str, str]
PRICE: Final[Series] = ("price", "")

_SERIES: dict[Series, Series] = {}
_SERIES_HELD: Final = 65_536


def series_key(metric: str, chain: str) -> Series:
    """``(metric, chain)`` as one shared tuple per series.

    A fresh tuple is tracked by the cyclic collector until a young collection untracks it;
    stored as a key in a dict that a full collection had untracked (all atoms), it makes
    the collector track that dict again, and the next full collection scan it: once per
    aggregate an observation moves, for nothing. A shared tuple is untracked for good after
    its first young collection (ADR 0057). At most ``_SERIES_HELD`` are shared (metrics
    times chains: far fewer); beyond, a fresh tuple, as before."""
    key = (metric, chain)
    if len(_SERIES) >= _SERIES_HELD:
        return _SERIES.get(key, key)
    return _SERIES.setdefault(key, key)


class StoredObservations(Protocol):
    """What the stored events say about observations older than an aggregate's window."""

    def value(self, aggregate_id: UUID, series: Series, observed_at: float) -> float | None:
        """The value last recorded for ``series`` at ``observed_at`` by the aggregate
        ``aggregate_id`` (its stored events and those recorded but not yet saved), or None
        if none was ever recorded."""
        ...


def known_value(
    window: dict[float, float] | None,
    horizon: float | None,
    observed_at: float,
    aggregate_id: UUID,
    series: Series,
    stored: StoredObservations | None,
) -> float | None:
    """The value last recorded for ``series`` at ``observed_at`` (None: never recorded).

    Within the window (after the horizon) the window answers; beyond it ``stored`` does.
    Without ``stored`` an observation beyond the window counts as never recorded: the caller
    vouches that no such repeat reaches it (tests, or an aggregate with no horizon yet)."""
    if horizon is None or observed_at > horizon:
        return None if window is None else window.get(observed_at)
    return None if stored is None else stored.value(aggregate_id, series, observed_at)


def remember(
    window: dict[float, float], horizon: float | None, observed_at: float, value: float
) -> float | None:
    """Record ``value`` at ``observed_at`` in ``window``; the new horizon.

    A time at or before the horizon stays out of the window (it cannot be among the newest
    times); otherwise it enters, and the oldest times beyond ``RECENT_PER_SERIES`` leave,
    moving the horizon up to them. In whatever order times arrive, the window ends up with
    the newest ``RECENT_PER_SERIES`` of them and the horizon at the newest one left out.
    """
    if horizon is not None and observed_at <= horizon:
        return horizon
    window[observed_at] = value
    while len(window) > RECENT_PER_SERIES:
        oldest = min(window)
        del window[oldest]
        horizon = oldest  # every time left in the window is newer than the evicted one
    return horizon


@dataclass(frozen=True)
class WindowedSnapshot(Snapshot):
    """A snapshot whose state is JSON-friendly (an aggregate's state keys dicts by tuples
    and floats, which JSON cannot): an aggregate's ``Snapshot`` subclass says how, with
    ``encode_state`` and ``decode_state``. Loading decodes, then is eventsourcing's own
    (class-version upcasts ``upcast_vN_vN+1`` on the aggregate class included)."""

    @staticmethod
    def encode_state(state: dict[str, Any]) -> dict[str, Any]:
        """The aggregate's attributes in a form JSON can hold."""
        return state

    @staticmethod
    def decode_state(state: dict[str, Any]) -> dict[str, Any]:
        """``encode_state``'s inverse."""
        return state

    @classmethod
    def take(cls, aggregate: Any) -> WindowedSnapshot:
        taken = super().take(aggregate)
        return cls(
            originator_id=taken.originator_id,
            originator_version=taken.originator_version,
            timestamp=taken.timestamp,
            topic=taken.topic,
            state=cls.encode_state(dict(taken.state)),
        )

    def mutate(self, _: None) -> BaseAggregate[UUID]:
        decoded = Snapshot(
            originator_id=self.originator_id,
            originator_version=self.originator_version,
            timestamp=self.timestamp,
            topic=self.topic,
            state=self.decode_state(dict(self.state)),
        )
        return decoded.mutate(None)


def window_pairs(window: dict[float, float]) -> list[list[float]]:
    """A window as JSON: ``[[observed_at, value], ...]``."""
    return [[stamp, value] for stamp, value in window.items()]


def window_of(pairs: list[list[float]]) -> dict[float, float]:
    """``window_pairs``' inverse."""
    return {float(stamp): float(value) for stamp, value in pairs}


def bounded(observations: dict[float, float]) -> tuple[dict[float, float], float | None]:
    """The window and horizon that recording ``observations`` (time -> last value) leaves:
    for upcasting a state that kept every observation."""
    window: dict[float, float] = {}
    horizon: float | None = None
    for stamp, value in observations.items():
        horizon = remember(window, horizon, stamp, value)
    return window, horizon
