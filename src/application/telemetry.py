"""What the application tells an operator about itself: the ``Telemetry`` port.

The application layer measures (commit times, delivery latency, delivery outcomes, cache
lookups) and reports through this port; it never imports a metrics library. The composition
root hands the Prometheus adapter (``adapters/prometheus_metrics.py``) to the objects that
report; tests and tools that want no metrics get ``NO_TELEMETRY``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Protocol

from .ports import QueryCache

__all__ = ["NO_TELEMETRY", "NoTelemetry", "ObservedQueryCache", "Telemetry"]


class Telemetry(Protocol):
    """Events worth a metric. Every method is cheap and synchronous, and must not raise."""

    def ingest_committed(self, seconds: float, items: int) -> None:
        """The writer committed a group of ``items`` items in ``seconds``."""
        ...

    def entries_delivered(self, latencies: list[float]) -> None:
        """The hub handed frames of log entries to their sockets, each this many seconds
        after the entry was recorded in the event store (one value per entry, not per
        socket)."""
        ...

    def notification_attempted(self, channel: str, outcome: str) -> None:
        """A notification attempt ended ``delivered``, ``failed`` or ``dead_lettered``."""
        ...

    def cache_looked_up(self, cache: str, hit: bool) -> None:
        """A cache was asked for an answer and had it (``hit``) or not."""
        ...

    def subscription_acks_written(self, outcome: str, subscriptions: int) -> None:
        """A write of durable subscriptions' acknowledged positions ended ``stored``,
        ``failed`` (kept for the next write) or ``gone`` (the subscriptions were deleted),
        for this many subscriptions (ADR 0038)."""
        ...

    def reconciliation_completed(
        self, seconds: float, discrepancies: Mapping[str, int], completed_at: float
    ) -> None:
        """A reconciliation run took ``seconds`` and found ``discrepancies`` keys per store
        (ADR 0035)."""
        ...


class NoTelemetry:
    """Reports nothing (the default of every object that can report)."""

    def ingest_committed(self, seconds: float, items: int) -> None:
        pass

    def entries_delivered(self, latencies: list[float]) -> None:
        pass

    def notification_attempted(self, channel: str, outcome: str) -> None:
        pass

    def cache_looked_up(self, cache: str, hit: bool) -> None:
        pass

    def subscription_acks_written(self, outcome: str, subscriptions: int) -> None:
        pass

    def reconciliation_completed(
        self, seconds: float, discrepancies: Mapping[str, int], completed_at: float
    ) -> None:
        pass


NO_TELEMETRY: Final[Telemetry] = NoTelemetry()


class ObservedQueryCache:
    """A ``QueryCache`` that reports its hits and misses (wraps any backend)."""

    def __init__(self, cache: QueryCache, telemetry: Telemetry, name: str = "query") -> None:
        self._cache = cache
        self._telemetry = telemetry
        self._name = name

    async def get(self, key: str) -> bytes | None:
        found = await self._cache.get(key)
        self._telemetry.cache_looked_up(self._name, found is not None)
        return found

    async def put(self, key: str, answer: bytes) -> None:
        await self._cache.put(key, answer)
