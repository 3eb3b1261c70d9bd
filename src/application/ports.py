"""Ports: the roles the application needs from infrastructure, as ``typing.Protocol``s.

Adapters (``defi_realtime.adapters``) implement them; every port with an embedded and a
production adapter has one contract test suite run against both.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from .log import LogBatch
from .views import Page, PriceView, ProtocolQuery, ProtocolView, Series, SeriesQuery

BatchHandler = Callable[[LogBatch], Awaitable[None]]


class Clock(Protocol):
    def now(self) -> float:
        """Unix seconds."""
        ...


class EventLog(Protocol):
    """Reads the event store's global sequence (synchronous: call it from a thread)."""

    def read(self, after: int, limit: int) -> LogBatch:
        """Up to ``limit`` positions after ``after``; ``last`` is the last position scanned."""
        ...

    def head(self) -> int:
        """The highest position recorded so far (0 for an empty store)."""
        ...


class EventFanout(Protocol):
    """Carries log batches from the process that follows the event store to every process
    that serves clients. At-least-once and ordered per publisher; consumers drop duplicates
    by position and fill gaps from the ``EventLog``."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def publish(self, batch: LogBatch) -> None:
        """Returns once the batch is accepted by the transport (broker confirm)."""
        ...

    def listen(self, handler: BatchHandler) -> None:
        """Register a handler for every batch published from now on (call before start)."""
        ...


class PositionStore(Protocol):
    """Durable tracking position of a log follower (e.g. the relay)."""

    async def load(self, name: str) -> int: ...

    async def save(self, name: str, position: int) -> None: ...


class HotProjection(Protocol):
    """Current values, changes and rankings, applied exactly once with tracking."""

    async def position(self) -> int:
        """The last log position applied."""
        ...

    async def apply(self, batch: LogBatch) -> bool:
        """Apply a batch atomically with its tracking position (exactly once).

        Entries at or below the current position are skipped: a replayed batch changes
        nothing and returns False. A batch whose ``after`` is beyond the current position
        would leave a gap: it raises ``LogGapError`` and changes nothing."""
        ...

    async def list_protocols(self, query: ProtocolQuery) -> Page: ...

    async def get_protocol(self, slug: str) -> ProtocolView | None: ...

    async def get_protocols(self, slugs: Sequence[str]) -> list[ProtocolView]: ...

    async def prices(
        self, tokens: Sequence[str] | None = None, limit: int = 100
    ) -> list[PriceView]:
        """Latest prices of the given tokens (or the most recently updated ones)."""
        ...

    async def reset(self) -> None:
        """Forget everything (before a rebuild)."""
        ...


class HistoryReadModel(Protocol):
    """Every observation as queryable history (synchronous: call it from a thread)."""

    def position(self) -> int: ...

    def apply(self, batch: LogBatch) -> bool:
        """Same contract as ``HotProjection.apply``: one transaction with the tracking row,
        replays skipped (returns False), gaps refused with ``LogGapError``."""
        ...

    def series(self, query: SeriesQuery) -> Series: ...

    def reset(self) -> None: ...

    def close(self) -> None: ...
