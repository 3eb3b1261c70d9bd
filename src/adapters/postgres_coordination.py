"""PostgreSQL helpers for running several nodes: a leader lock and commit wake-ups.

``PostgresLeadership`` keeps one relay publishing at a time (a session advisory lock held on
its own connection: if the process dies, PostgreSQL releases it and a standby takes over).
``PostgresCommitListener`` LISTENs to the NOTIFY that eventsourcing's PostgreSQL recorder
sends on every insert, so the leader relays events written by *any* node within milliseconds
instead of waiting for its next poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)


def _libpq_url(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


class PostgresLeadership:
    """``async with leadership.lead():`` returns once this process holds the lock."""

    def __init__(self, url: str, key: int, *, retry_interval: float = 1.0) -> None:
        self._url = _libpq_url(url)
        self._key = key
        self._retry_interval = retry_interval
        self.is_leader = False

    @contextlib.asynccontextmanager
    async def lead(self) -> AsyncIterator[None]:
        while True:
            connection = await psycopg.AsyncConnection.connect(self._url, autocommit=True)
            try:
                cursor = await connection.execute("SELECT pg_try_advisory_lock(%s)", (self._key,))
                row = await cursor.fetchone()
                if row is not None and row[0]:
                    break
            except BaseException:
                await connection.close()
                raise
            await connection.close()
            await asyncio.sleep(self._retry_interval)
        self.is_leader = True
        try:
            yield
        finally:
            self.is_leader = False
            # Closing the session releases the advisory lock.
            await connection.close()


class PostgresCommitListener:
    """Calls ``wake()`` for every NOTIFY on ``channel``; reconnects after failures."""

    def __init__(self, url: str, channel: str, *, reconnect_interval: float = 1.0) -> None:
        self._url = _libpq_url(url)
        self._channel = channel
        self._reconnect_interval = reconnect_interval

    async def run(self, wake: Callable[[], None]) -> None:
        while True:
            try:
                connection = await psycopg.AsyncConnection.connect(self._url, autocommit=True)
                async with connection:
                    await connection.execute(
                        sql.SQL("LISTEN {}").format(sql.Identifier(self._channel))
                    )
                    wake()  # anything committed while we were not listening
                    async for _notify in connection.notifies():
                        wake()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("commit listener lost its connection; reconnecting", exc_info=True)
            await asyncio.sleep(self._reconnect_interval)
