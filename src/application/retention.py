"""Retention of the history's raw detail (ADR 0047).

The history read model may drop the raw observations (``protocol_observations``,
``price_observations``) older than ``HISTORY_DETAIL_RETENTION_DAYS``; never the event log,
from which a rebuild brings everything back, and never the rollups (series states, day
closes, group days), which hold what the cuts and the aggregate buckets read. A read that
asks for raw detail from before the horizon is refused with ``DetailExpired`` rather than
answered from what is left.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Final

from .ports import DetailDropped, DetailStore

__all__ = ["DAY", "DetailExpired", "DetailRetention", "require_detail"]

DAY: Final = 86_400.0
log = logging.getLogger(__name__)


class DetailExpired(Exception):
    """A read asked for raw detail observed before the history's retention horizon."""

    def __init__(self, asked: float, horizon: float) -> None:
        super().__init__(
            f"detail before {horizon:.0f} (unix seconds) is no longer held "
            f"(HISTORY_DETAIL_RETENTION_DAYS); asked from {asked:.0f}"
        )
        self.asked = asked
        self.horizon = horizon


def require_detail(horizon: float | None, *bounds: float | None) -> None:
    """Raise ``DetailExpired`` when any of a read's time ``bounds`` (None: unbounded) falls
    before ``horizon``. An unbounded read is answered from what is held."""
    asked = [bound for bound in bounds if bound is not None]
    if horizon is not None and asked and min(asked) < horizon:
        raise DetailExpired(min(asked), horizon)


class DetailRetention:
    """Drops ``store``'s detail older than ``days`` days, once (``run``) or periodically
    (``run_every``)."""

    def __init__(
        self, store: DetailStore, days: float, *, clock: Callable[[], float] = time.time
    ) -> None:
        if days <= 0:
            raise ValueError(f"retention must be a positive number of days, got {days}")
        self._store = store
        self._days = days
        self._clock = clock

    def run(self) -> DetailDropped:
        """One run (synchronous: call it from a thread)."""
        dropped = self._store.drop_detail_before(self._clock() - self._days * DAY)
        log.info(
            "history detail before %.0f dropped: %d partitions, %d rows",
            dropped.horizon,
            dropped.partitions,
            dropped.rows,
        )
        return dropped

    async def run_every(self, interval: float) -> None:
        """Run now, then every ``interval`` seconds; forever (cancel to stop)."""
        while True:
            await asyncio.to_thread(self.run)
            await asyncio.sleep(interval)
