"""The ``RateLimiter`` contract, run against the embedded limiter (process memory) and the
production one (Redis), each with both strategies of the ``limits`` library."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from defi_realtime.adapters.limits_rate_limiter import (
    LimitsRateLimiter,
    MemoryRateLimiter,
    RedisRateLimiter,
    Strategy,
)
from defi_realtime.application.rate_limits import Quota
from tests.services import redis_url

QUOTA = Quota("test", limit=3, window=60)


class RateLimiterContract:
    strategy: Strategy = "moving-window"

    @pytest.fixture
    def limiter(self) -> LimitsRateLimiter:
        raise NotImplementedError

    async def test_allows_the_quota_then_refuses_with_what_is_left(
        self, limiter: LimitsRateLimiter
    ) -> None:
        verdicts = [await limiter.hit(QUOTA, "caller") for _ in range(4)]
        assert [v.allowed for v in verdicts] == [True, True, True, False]
        assert [v.remaining for v in verdicts] == [2, 1, 0, 0]
        refused = verdicts[-1]
        assert refused.quota == QUOTA
        assert 0 < refused.reset_after <= QUOTA.window
        assert 1 <= refused.retry_after <= QUOTA.window

    async def test_identities_and_quotas_have_budgets_apart(
        self, limiter: LimitsRateLimiter
    ) -> None:
        for _ in range(3):
            await limiter.hit(QUOTA, "a")
        assert not (await limiter.hit(QUOTA, "a")).allowed
        assert (await limiter.hit(QUOTA, "b")).allowed
        other = Quota("other", limit=3, window=60)
        assert (await limiter.hit(other, "a")).allowed

    async def test_peek_does_not_count(self, limiter: LimitsRateLimiter) -> None:
        for _ in range(5):
            looked = await limiter.peek(QUOTA, "caller")
            assert looked.allowed
            assert looked.remaining == 3
        assert (await limiter.hit(QUOTA, "caller")).remaining == 2
        for _ in range(2):
            await limiter.hit(QUOTA, "caller")
        assert not (await limiter.peek(QUOTA, "caller")).allowed

    async def test_the_budget_frees_as_the_window_moves(self, limiter: LimitsRateLimiter) -> None:
        quota = Quota("short", limit=2, window=1)
        assert (await limiter.hit(quota, "caller")).allowed
        assert (await limiter.hit(quota, "caller")).allowed
        assert not (await limiter.hit(quota, "caller")).allowed
        # The sliding-window counter weighs the previous window: up to two windows to clear.
        await asyncio.sleep(2.05 if self.strategy == "sliding-window" else 1.05)
        assert (await limiter.hit(quota, "caller")).allowed


class TestMemoryMovingWindow(RateLimiterContract):
    @pytest.fixture
    def limiter(self) -> LimitsRateLimiter:
        return MemoryRateLimiter(self.strategy)


class TestMemorySlidingWindow(TestMemoryMovingWindow):
    strategy: Strategy = "sliding-window"


@pytest.mark.redis
class TestRedisMovingWindow(RateLimiterContract):
    @pytest.fixture
    async def limiter(self) -> AsyncIterator[LimitsRateLimiter]:  # type: ignore[override]
        from redis.asyncio import Redis

        client = Redis.from_url(redis_url())
        prefix = f"dr_test_limits_{uuid.uuid4().hex[:12]}:"
        try:
            yield RedisRateLimiter(client, prefix, self.strategy)
        finally:
            keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
            if keys:
                await client.delete(*keys)
            await client.aclose()

    async def test_keys_live_under_the_prefix_and_expire(self, limiter: LimitsRateLimiter) -> None:
        assert isinstance(limiter, RedisRateLimiter)
        await limiter.hit(QUOTA, "caller")
        from redis.asyncio import Redis

        client = Redis.from_url(redis_url())
        try:
            keys = [key async for key in client.scan_iter(match="dr_test_limits_*limits*caller*")]
            assert keys
            for key in keys:
                assert 0 < await client.ttl(key) <= 2 * QUOTA.window
        finally:
            await client.aclose()


class TestRedisSlidingWindow(TestRedisMovingWindow):
    strategy: Strategy = "sliding-window"
