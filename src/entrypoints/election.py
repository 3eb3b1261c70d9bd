"""Running a background loop on one node only (production) or here (embedded)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from ..adapters.postgres_coordination import PostgresLeadership

log = logging.getLogger(__name__)

Loop = Callable[[], Awaitable[None]]


def elected(run: Loop, *, database_url: str | None, lock_key: int, what: str) -> Loop:
    """``run`` wrapped so that only the process holding the PostgreSQL advisory lock
    ``lock_key`` runs it; embedded (no database URL) there is one process, so ``run`` as is.
    A standby waits for the lock and takes over when the leader's session ends."""
    if database_url is None:
        return run
    leadership = PostgresLeadership(database_url, lock_key)

    async def lead() -> None:
        async with leadership.lead():
            log.info("this node now %s", what)
            await run()

    return lead
