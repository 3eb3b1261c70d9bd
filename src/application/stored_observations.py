"""Answers about observations older than an aggregate's recent window, from the store.

The domain keeps a bounded window of each series' newest observations (domain/recent.py,
docs/adr/0045-bounded-aggregates-and-snapshots.md); a repeat older than that is asked of a
``StoredObservations``. This one serves ONE ingest group (one attempt of it): it answers
from what the group itself recorded (``note``: not saved yet, so not in the store), then
from the aggregate's stored events, read once per group for every old observation the group
names (``prefetch``) and, for an observation that left the window during the group, read
then.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Mapper, StoredEvent
from eventsourcing.utils import get_topic

from ..domain.chains import canonical_chain
from ..domain.protocol import Protocol
from ..domain.recent import PRICE, Series
from ..domain.token import Token

Key = tuple[UUID, Series, float]
# Reads the stored events of the given aggregates (every one of them, in version order).
EventReader = Callable[[Sequence[UUID]], Iterable[StoredEvent]]

_METRIC_TOPIC = get_topic(Protocol.MetricRecorded)
_PRICE_TOPIC = get_topic(getattr(Token, "PriceRecorded"))  # noqa: B009 - made by @event


class GroupObservations:
    """``domain.recent.StoredObservations`` for one ingest group."""

    def __init__(self, read: EventReader, mapper: Mapper[UUID]) -> None:
        self._read = read
        self._mapper = mapper
        # What the group recorded, then what the store says (None: never recorded).
        self._recorded: dict[Key, float] = {}
        self._stored: dict[Key, float | None] = {}
        self.reads = 0  # aggregates whose events were read (for tests and telemetry)

    def note(self, aggregate_id: UUID, series: Series, observed_at: float, value: float) -> None:
        """The group recorded ``value`` (it is not in the store until the group is saved)."""
        self._recorded[(aggregate_id, series, observed_at)] = value

    def value(self, aggregate_id: UUID, series: Series, observed_at: float) -> float | None:
        key = (aggregate_id, series, observed_at)
        if key in self._recorded:
            return self._recorded[key]
        if key not in self._stored:
            self.prefetch({aggregate_id: [(series, observed_at)]})
        return self._stored[key]

    def prefetch(self, wanted: Mapping[UUID, Iterable[tuple[Series, float]]]) -> None:
        """Read, in one pass over their stored events, what was last recorded for each
        aggregate's wanted (series, time) pairs."""
        keys = {
            (aggregate_id, series, stamp)
            for aggregate_id, pairs in wanted.items()
            for series, stamp in pairs
            if (aggregate_id, series, stamp) not in self._stored
        }
        if not keys:
            return
        for key in keys:
            self._stored[key] = None
        ids = list({key[0] for key in keys})
        self.reads += len(ids)
        to_event = self._mapper.to_domain_event
        for stored in self._read(ids):
            if stored.topic == _METRIC_TOPIC:
                event: Any = to_event(stored)
                series = (event.metric, canonical_chain(event.chain))
                key = (event.originator_id, series, event.observed_at)
                if key in keys:
                    self._stored[key] = event.value
            elif stored.topic == _PRICE_TOPIC:
                event = to_event(stored)
                key = (event.originator_id, PRICE, event.observed_at)
                if key in keys:
                    self._stored[key] = event.price
