"""``RateLimiter`` over the ``limits`` library (ADR 0036): its moving-window or
sliding-window-counter strategy on its asyncio storages, in process memory
(``MemoryRateLimiter``) or in Redis (``RedisRateLimiter``, shared by every node)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Final, Literal

from limits import RateLimitItem, RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import (
    MovingWindowRateLimiter,
    RateLimiter,
    SlidingWindowCounterRateLimiter,
)
from limits.util import WindowStats

from ..application.rate_limits import Quota, Verdict

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["STRATEGIES", "LimitsRateLimiter", "MemoryRateLimiter", "RedisRateLimiter", "Strategy"]

Strategy = Literal["moving-window", "sliding-window"]
STRATEGIES: Final[dict[str, type[RateLimiter]]] = {
    "moving-window": MovingWindowRateLimiter,
    "sliding-window": SlidingWindowCounterRateLimiter,
}
NAMESPACE: Final = "dr"


class LimitsRateLimiter:
    """A ``limits`` strategy over a ``limits`` asyncio storage."""

    def __init__(self, storage: Storage, strategy: Strategy = "moving-window") -> None:
        self.storage = storage
        self.strategy = strategy
        self._limiter = STRATEGIES[strategy](storage)
        self._items: dict[Quota, RateLimitItem] = {}

    def _item(self, quota: Quota) -> RateLimitItem:
        item = self._items.get(quota)
        if item is None:
            item = self._items[quota] = RateLimitItemPerSecond(
                quota.limit, quota.window, namespace=NAMESPACE
            )
        return item

    async def hit(self, quota: Quota, identity: str, cost: int = 1) -> Verdict:
        item = self._item(quota)
        allowed = await self._limiter.hit(item, quota.name, identity, cost=cost)
        return await self._verdict(allowed, quota, item, identity)

    async def peek(self, quota: Quota, identity: str) -> Verdict:
        # One round trip: what remains says whether a hit would pass (the strategies'
        # ``test`` reads the same window again).
        item = self._item(quota)
        stats = await self._limiter.get_window_stats(item, quota.name, identity)
        return self._from_stats(stats.remaining >= 1, quota, stats)

    async def _verdict(
        self, allowed: bool, quota: Quota, item: RateLimitItem, identity: str
    ) -> Verdict:
        # A second round trip: the strategies' ``hit`` answers a bool only, and the headers
        # need what is left (ADR 0036 measures the cost).
        stats = await self._limiter.get_window_stats(item, quota.name, identity)
        return self._from_stats(allowed, quota, stats)

    @staticmethod
    def _from_stats(allowed: bool, quota: Quota, stats: WindowStats) -> Verdict:
        remaining = max(0, min(quota.limit, stats.remaining))
        reset_after = 0.0 if remaining >= quota.limit else max(0.0, stats.reset_time - time.time())
        if not allowed and reset_after <= 0.0:
            # A hit refused across a window boundary can come with a reset already past
            # (the sliding window's stats read the new window): a refusal never says "now";
            # it says the 1 s that Retry-After says.
            reset_after = 1.0
        return Verdict(allowed, quota, remaining, reset_after)


class MemoryRateLimiter(LimitsRateLimiter):
    """The embedded limiter: budgets in this process's memory (one node's)."""

    def __init__(self, strategy: Strategy = "moving-window") -> None:
        super().__init__(MemoryStorage(), strategy)


class RedisRateLimiter(LimitsRateLimiter):
    """The production limiter: budgets in Redis, shared by every node, over the node's
    own Redis connection pool (``client``); keys under ``prefix``."""

    def __init__(self, client: Redis, prefix: str, strategy: Strategy = "moving-window") -> None:
        storage = RedisStorage(
            "async+redis://",
            implementation="redispy",
            key_prefix=f"{prefix}limits",
            # Documented by limits (the node's pool, not a second one), typed too narrowly.
            connection_pool=client.connection_pool,  # type: ignore[arg-type]
        )
        super().__init__(storage, strategy)
