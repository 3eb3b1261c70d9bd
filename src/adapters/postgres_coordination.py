"""PostgreSQL helpers for running several nodes: a leader lock and commit wake-ups.

``PostgresLeadership`` keeps one relay (or projector, dispatcher, ...) running at a time:
session advisory locks, all of a process's on one connection; if the process dies or its
session ends, PostgreSQL releases them and a standby takes over, and the loops that ran
under them are told to stop.
``PostgresCommitListener`` LISTENs to the NOTIFY that eventsourcing's PostgreSQL recorder
sends on every insert, so the leader relays events written by *any* node within milliseconds
instead of waiting for its next poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)


def _libpq_url(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


class LeadershipLost(ConnectionError):
    """The session holding this process's advisory locks ended: another process may lead
    now, so whatever ran under a lock must stop (and stand for election again)."""


class PostgresLeadership:
    """The advisory locks of one process, all held on one connection.

    ``async with leadership.lead(key) as lost:`` returns once this process holds ``key``;
    ``lost`` is set if the session ends while it does (PostgreSQL has released every lock
    of the session then). One connection per process, not one per elected loop: a node
    runs up to seven of them, and PostgreSQL's connections are few. A key is held by one
    task of the process at a time (PostgreSQL's session locks are re-entrant, so this is
    counted here).
    """

    def __init__(
        self, url: str, *, retry_interval: float = 1.0, check_interval: float = 2.0
    ) -> None:
        self._url = _libpq_url(url)
        self._retry_interval = retry_interval
        self._check_interval = check_interval
        self._guard = asyncio.Lock()
        self._connection: psycopg.AsyncConnection[Any] | None = None
        self._held: dict[int, asyncio.Event] = {}
        self._watch: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def lead(self, key: int) -> AsyncIterator[asyncio.Event]:
        while not await self._try_lock(key):  # noqa: ASYNC110 - polling PostgreSQL, not us
            await asyncio.sleep(self._retry_interval)
        lost = self._held[key]
        try:
            yield lost
        finally:
            await self._unlock(key)

    async def close(self) -> None:
        """Release every lock (by ending the session)."""
        async with self._guard:
            await self._drop_session()

    async def _try_lock(self, key: int) -> bool:
        async with self._guard:
            if key in self._held:
                return False  # another task of this process leads on it
            if self._connection is None or self._connection.closed:
                self._connection = await psycopg.AsyncConnection.connect(self._url, autocommit=True)
            try:
                cursor = await self._connection.execute("SELECT pg_try_advisory_lock(%s)", (key,))
                row = await cursor.fetchone()
            except psycopg.OperationalError:
                await self._drop_session()  # any lock it held is gone with it
                raise
            if row is None or not row[0]:
                if not self._held:
                    await self._drop_session()  # a standby holds no idle connection
                return False
            self._held[key] = asyncio.Event()
            if self._watch is None or self._watch.done():
                self._watch = asyncio.create_task(self._watch_session(), name="leadership-watch")
            return True

    async def _unlock(self, key: int) -> None:
        async with self._guard:
            lost = self._held.pop(key, None)
            connection = self._connection
            if lost is None or lost.is_set() or connection is None:
                return
            # Released before this returns (a closed session's locks go only when its
            # backend has ended, a moment later); the session closes with its last lock.
            try:
                await connection.execute("SELECT pg_advisory_unlock(%s)", (key,))
            except psycopg.OperationalError:
                await self._drop_session()
                return
            if not self._held:
                await self._drop_session()

    async def _watch_session(self) -> None:
        """Ask the session every ``check_interval`` while it holds locks; if it is gone,
        tell every holder."""
        while True:
            await asyncio.sleep(self._check_interval)
            async with self._guard:
                connection = self._connection
                if connection is None or not self._held:
                    return
                try:
                    await connection.execute("SELECT 1")
                except psycopg.OperationalError:
                    log.warning("the session holding the advisory locks ended")
                    await self._drop_session()
                    return

    async def _drop_session(self) -> None:
        """Close the connection; every lock still counted as held is lost."""
        for lost in self._held.values():
            lost.set()
        self._held.clear()
        connection, self._connection = self._connection, None
        if connection is not None and not connection.closed:
            with contextlib.suppress(psycopg.Error):
                await connection.close()
        watch, self._watch = self._watch, None
        if watch is not None and watch is not asyncio.current_task():
            watch.cancel()


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
