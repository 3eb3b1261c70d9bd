"""``ConnectionSlots`` in Redis: concurrent anonymous sockets per client address, counted
across every node (ADR 0049).

Each address is a hash ``<prefix>slots:addr:<address>`` of node id -> sockets that node
holds from it; the live nodes are a sorted set ``<prefix>slots:nodes`` scored by when each
node's heartbeat lapses (Redis's own clock). A slot is taken by one script that sums the
fields of live nodes only (dropping a dead node's fields as it goes) and increments this
node's field if the sum is under the limit; a closed socket decrements it. A node that
crashes stops beating: within ``ttl`` its sockets no longer count anywhere. A node that was
taken for dead (a beat too late) writes its own counts back at its next beat.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import TYPE_CHECKING, Final

from ..application.realtime.slots import LocalConnectionSlots

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

__all__ = ["RedisConnectionSlots"]

log = logging.getLogger(__name__)

# Without any acquire or release for this long an address's hash expires: a bound on what a
# dead node leaves behind at an address no one comes from again.
ADDRESS_TTL: Final = 86_400

_NOW: Final = (
    "local t = redis.call('TIME') "
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) "
)

# KEYS: address hash, nodes set. ARGV: node, limit, address ttl (s).
# 1: taken; 0: all held; -1: this node is not (or no longer) registered as alive.
_ACQUIRE: Final = (
    _NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then return -1 end
local fields = redis.call('HGETALL', KEYS[1])
local total = 0
for i = 1, #fields, 2 do
  if redis.call('ZSCORE', KEYS[2], fields[i]) then
    total = total + tonumber(fields[i + 1])
  else
    redis.call('HDEL', KEYS[1], fields[i])
  end
end
if total >= tonumber(ARGV[2]) then return 0 end
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""
)

# KEYS: address hash. ARGV: node.
_RELEASE: Final = """
local left = redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
if left <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
return left
"""

# KEYS: nodes set. ARGV: node, ttl (ms). 1 when the node was not registered (new, or
# taken for dead): its counts must be written again.
_BEAT: Final = (
    _NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
"""
)


class RedisConnectionSlots:
    """Implements ``ConnectionSlots`` over the node's Redis client, under its key prefix.

    ``ttl`` (seconds): how long a node's slots outlive its last heartbeat (a beat every
    third of it). This node's own counts are kept in process too (``local``): they are the
    truth its beats write back after it was taken for dead or a release could not reach
    Redis.
    """

    def __init__(
        self, client: Redis, prefix: str, *, ttl: float = 15.0, node: str | None = None
    ) -> None:
        self._client = client
        self._prefix = f"{prefix}slots:"
        self._nodes = f"{self._prefix}nodes"
        self.node = node or uuid.uuid4().hex
        self.ttl = ttl
        self.local = LocalConnectionSlots()
        self._acquire: AsyncScript = client.register_script(_ACQUIRE)
        self._release: AsyncScript = client.register_script(_RELEASE)
        self._beat: AsyncScript = client.register_script(_BEAT)
        # Addresses whose count in Redis may differ from ours (a call that failed midway).
        self._unsure: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._heartbeat: asyncio.Task[None] | None = None

    def _key(self, address: str) -> str:
        return f"{self._prefix}addr:{address}"

    async def start(self) -> None:
        """Register this node as alive and keep it so (a heartbeat task)."""
        await self.beat()
        if self._heartbeat is None:
            self._heartbeat = asyncio.create_task(self._run(), name="connection-slots-heartbeat")

    async def beat(self) -> None:
        """Tell Redis this node is alive; write its counts back if it was taken for dead."""
        ttl_ms = int(self.ttl * 1000)
        added = await self._beat(keys=[self._nodes], args=[self.node, ttl_ms])
        unsure, self._unsure = self._unsure, set()
        addresses = set(self.local.held) | unsure if added else unsure
        if not addresses:
            return
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for address in addresses:
                    held = self.local.held.get(address, 0)
                    if held:
                        pipe.hset(self._key(address), self.node, held)
                        pipe.expire(self._key(address), ADDRESS_TTL)
                    else:
                        pipe.hdel(self._key(address), self.node)
                await pipe.execute()
        except Exception:
            self._unsure |= addresses
            raise

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                await self.beat()
            except Exception:
                log.warning("connection slots: heartbeat failed", exc_info=True)

    async def acquire(self, address: str, limit: int) -> bool:
        keys = [self._key(address), self._nodes]
        try:
            taken = await self._acquire(keys=keys, args=[self.node, limit, ADDRESS_TTL])
            if taken == -1:  # taken for dead: come back to life, then ask again
                await self.beat()
                taken = await self._acquire(keys=keys, args=[self.node, limit, ADDRESS_TTL])
        except Exception:
            self._unsure.add(address)  # the increment may have happened
            raise
        if taken != 1:
            return False
        self.local.held[address] = self.local.held.get(address, 0) + 1
        return True

    def release(self, address: str) -> None:
        self.local.release(address)
        task = asyncio.get_running_loop().create_task(self._give_back(address))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _give_back(self, address: str) -> None:
        try:
            await self._release(keys=[self._key(address)], args=[self.node])
        except Exception:
            # The next beat writes this node's count of the address back.
            self._unsure.add(address)
            log.warning("connection slots: release failed", exc_info=True)

    async def aclose(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
            self._heartbeat = None
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        addresses = set(self.local.held) | self._unsure
        self.local.held.clear()
        self._unsure.clear()
        # Off the live set first: whatever fields remain no longer count anywhere.
        with contextlib.suppress(Exception):
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.zrem(self._nodes, self.node)
                for address in addresses:
                    pipe.hdel(self._key(address), self.node)
                await pipe.execute()
