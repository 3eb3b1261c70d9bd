"""Advisory-lock leadership on the real PostgreSQL: one session per process for all its
locks, a standby taking over when the leader lets go, and a leader that loses its session
stopping what it ran (``LeadershipLost``) instead of running on beside the new leader."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
from collections.abc import AsyncIterator

import psycopg
import pytest

from defi_realtime.adapters.postgres_coordination import LeadershipLost, PostgresLeadership
from defi_realtime.entrypoints.node import elected
from defi_realtime.entrypoints.roles import Lock
from tests.services import postgres_url

pytestmark = pytest.mark.postgres

# Keys of this test only (per pytest process, so parallel runs do not meet).
_KEYS = itertools.count(7_300_000_000 + os.getpid() * 16)


async def _holders(keys: list[int]) -> dict[int, int]:
    """The backend pid holding each advisory lock of ``keys``."""
    async with await psycopg.AsyncConnection.connect(postgres_url(), autocommit=True) as conn:
        cursor = await conn.execute(
            "SELECT (classid::bigint << 32) | objid::bigint, pid FROM pg_locks "
            "WHERE locktype = 'advisory' AND granted AND objsubid = 1"
        )
        return {key: pid for key, pid in await cursor.fetchall() if key in keys}


@contextlib.asynccontextmanager
async def _leadership(**kwargs: float) -> AsyncIterator[PostgresLeadership]:
    leadership = PostgresLeadership(postgres_url(), **kwargs)
    try:
        yield leadership
    finally:
        await leadership.close()


async def test_all_locks_of_a_process_share_one_session_and_release_on_exit() -> None:
    first, second = next(_KEYS), next(_KEYS)
    async with _leadership() as leadership:
        async with leadership.lead(first), leadership.lead(second):
            holders = await _holders([first, second])
            assert set(holders) == {first, second}
            assert len(set(holders.values())) == 1, holders
        assert await _holders([first, second]) == {}


async def test_a_standby_takes_over_when_the_leader_lets_go() -> None:
    key = next(_KEYS)
    async with _leadership() as leader, _leadership(retry_interval=0.05) as standby:
        async with leader.lead(key):

            async def stand() -> None:
                async with standby.lead(key):
                    pass

            waiting = asyncio.create_task(stand())
            await asyncio.sleep(0.3)
            assert not waiting.done()  # the leader still holds it
        await asyncio.wait_for(waiting, 5)


async def test_a_key_is_led_by_one_task_of_the_process_at_a_time() -> None:
    # PostgreSQL's session locks are re-entrant: a second task of the same process would
    # get the key again on the shared session if the process did not count it itself.
    key = next(_KEYS)
    async with _leadership(retry_interval=0.05) as leadership:
        order: list[str] = []

        async def task(name: str, hold: float) -> None:
            async with leadership.lead(key):
                order.append(f"{name} in")
                await asyncio.sleep(hold)
                order.append(f"{name} out")

        first = asyncio.create_task(task("a", 0.3))
        await asyncio.sleep(0.05)
        await asyncio.wait_for(asyncio.gather(first, task("b", 0.0)), 5)
        assert order == ["a in", "a out", "b in", "b out"]


async def test_a_leader_whose_session_ends_stops_and_the_standby_leads() -> None:
    key = next(_KEYS)
    lock = Lock("test_leadership", key)
    async with (
        _leadership(check_interval=0.1) as leader,
        _leadership(retry_interval=0.05) as standby,
    ):
        running = asyncio.Event()
        stopped = asyncio.Event()

        async def body() -> None:
            running.set()
            try:
                await asyncio.sleep(60)
            finally:
                stopped.set()

        led = asyncio.create_task(elected(body, leadership=leader, lock=lock, what="tests")())
        await asyncio.wait_for(running.wait(), 5)
        [pid] = (await _holders([key])).values()
        async with await psycopg.AsyncConnection.connect(postgres_url(), autocommit=True) as conn:
            await conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        # The body is stopped, and the loop reports why (supervise restarts it).
        with pytest.raises(LeadershipLost):
            await asyncio.wait_for(led, 5)
        assert stopped.is_set()
        taken = asyncio.Event()

        async def takeover() -> None:
            async with standby.lead(key):
                taken.set()

        await asyncio.wait_for(takeover(), 5)
        assert taken.is_set()


async def test_a_body_that_ends_or_fails_releases_the_lock() -> None:
    key = next(_KEYS)
    lock = Lock("test_leadership", key)
    async with _leadership() as leadership:
        await elected(lambda: asyncio.sleep(0), leadership=leadership, lock=lock, what="tests")()
        assert await _holders([key]) == {}

        async def fail() -> None:
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError, match="boom"):
            await elected(fail, leadership=leadership, lock=lock, what="tests")()
        assert await _holders([key]) == {}
