"""The ``ConnectionSlots`` contract (ADR 0049), run against the in-process count and the
Redis one; then what only Redis promises: two nodes share the count, a crashed node's
slots come free, a node taken for dead writes its own back."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from defi_realtime.adapters.redis_connection_slots import RedisConnectionSlots
from defi_realtime.application.ports import ConnectionSlots
from defi_realtime.application.realtime.slots import LocalConnectionSlots
from tests.services import redis_url

Node = Callable[..., Awaitable[RedisConnectionSlots]]


async def settled(slots: ConnectionSlots) -> None:
    """Let a release reach the shared count (Redis: a task under way)."""
    for _ in range(50):
        await asyncio.sleep(0.005)
        if not getattr(slots, "_tasks", None):
            return


class ConnectionSlotsContract:
    @pytest.fixture
    def slots(self) -> ConnectionSlots:
        raise NotImplementedError

    async def test_takes_up_to_the_limit_per_address(self, slots: ConnectionSlots) -> None:
        assert [await slots.acquire("198.51.100.1", 2) for _ in range(3)] == [True, True, False]
        assert await slots.acquire("198.51.100.2", 2)

    async def test_a_release_frees_a_slot(self, slots: ConnectionSlots) -> None:
        assert await slots.acquire("198.51.100.1", 1)
        assert not await slots.acquire("198.51.100.1", 1)
        slots.release("198.51.100.1")
        await settled(slots)
        assert await slots.acquire("198.51.100.1", 1)
        assert not await slots.acquire("198.51.100.1", 1)

    async def test_closing_gives_every_slot_back(self, slots: ConnectionSlots) -> None:
        assert await slots.acquire("198.51.100.1", 1)
        await slots.aclose()
        assert await slots.acquire("198.51.100.1", 1)


class TestLocalConnectionSlots(ConnectionSlotsContract):
    @pytest.fixture
    def slots(self) -> ConnectionSlots:
        return LocalConnectionSlots()


@pytest.mark.redis
class TestRedisConnectionSlots(ConnectionSlotsContract):
    @pytest.fixture
    async def prefix(self) -> AsyncIterator[str]:
        from redis.asyncio import Redis

        prefix = f"dr_test_slots_{uuid.uuid4().hex[:12]}:"
        yield prefix
        client = Redis.from_url(redis_url())
        try:
            keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()

    @pytest.fixture
    async def node(self, prefix: str) -> AsyncIterator[Node]:
        from redis.asyncio import Redis

        clients: list[Redis] = []
        nodes: list[RedisConnectionSlots] = []

        async def node(ttl: float = 15.0) -> RedisConnectionSlots:
            client = Redis.from_url(redis_url())
            clients.append(client)
            slots = RedisConnectionSlots(client, prefix, ttl=ttl)
            await slots.start()
            nodes.append(slots)
            return slots

        yield node
        for slots in nodes:
            await slots.aclose()
        for client in clients:
            await client.aclose()

    @pytest.fixture
    async def slots(self, node: Node) -> ConnectionSlots:  # type: ignore[override]
        return await node()

    async def test_two_nodes_share_the_count(self, node: Node) -> None:
        first: RedisConnectionSlots = await node()
        second: RedisConnectionSlots = await node()
        assert await first.acquire("198.51.100.1", 2)
        assert await second.acquire("198.51.100.1", 2)
        assert not await first.acquire("198.51.100.1", 2)
        assert not await second.acquire("198.51.100.1", 2)
        first.release("198.51.100.1")
        await settled(first)
        assert await second.acquire("198.51.100.1", 2)
        # A node shutting down frees its slots for the others at once.
        await second.aclose()
        assert await first.acquire("198.51.100.1", 2)
        assert await first.acquire("198.51.100.1", 2)
        assert not await first.acquire("198.51.100.1", 2)

    async def test_a_crashed_nodes_slots_come_free_after_its_ttl(self, node: Node) -> None:
        crashed: RedisConnectionSlots = await node(ttl=0.3)
        alive: RedisConnectionSlots = await node()
        assert await crashed.acquire("198.51.100.1", 1)
        # A crash: the heartbeat stops and nothing is given back.
        assert crashed._heartbeat is not None
        crashed._heartbeat.cancel()
        assert not await alive.acquire("198.51.100.1", 1)
        await asyncio.sleep(0.4)
        assert await alive.acquire("198.51.100.1", 1)

    async def test_a_node_taken_for_dead_writes_its_counts_back(self, node: Node) -> None:
        late: RedisConnectionSlots = await node(ttl=0.3)
        other: RedisConnectionSlots = await node()
        assert late._heartbeat is not None
        late._heartbeat.cancel()
        assert await late.acquire("198.51.100.1", 2)
        await asyncio.sleep(0.4)
        # Taken for dead: its socket does not count, and the other node drops its field.
        assert await other.acquire("198.51.100.1", 2)
        other.release("198.51.100.1")
        await settled(other)
        # Its next beat writes its socket back: one left for the address, not two.
        await late.beat()
        assert await other.acquire("198.51.100.1", 2)
        assert not await other.acquire("198.51.100.1", 2)
        # A late node asking for a slot comes back to life first.
        await asyncio.sleep(0.4)
        assert not await late.acquire("198.51.100.1", 2)
