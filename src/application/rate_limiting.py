"""Spending callers' budgets: the quota and identity of every kind of hit (a REST request,
a WebSocket message, a failed authentication) on the ``RateLimiter`` port. The limiter is
shared by every node when it lives in Redis (ADR 0036), so a budget is a caller's, not a
node's."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from .ports import RateLimiter
from .rate_limits import Quota, RateLimitPolicy, Verdict

__all__ = ["LeasedRateLimiter", "RateLimits"]

log = logging.getLogger(__name__)

# How many leases under way a hit waits for before it asks for itself alone.
_LEASE_WAITS = 3


class RateLimits:
    """Spends callers' budgets on a ``RateLimiter``.

    Identities: a key by its id (every node, every transport: one budget per key), an
    anonymous caller by its client address. REST requests and WebSocket messages have
    budgets of the same size but apart, so a socket's pings do not eat a bot's REST calls.
    When the limiter fails (Redis down) the hit is allowed and logged: the limits protect
    the service, they must not take it down with them (ADR 0036).
    """

    def __init__(self, limiter: RateLimiter, policy: RateLimitPolicy) -> None:
        self.limiter = limiter
        self.policy = policy
        self.failures = 0  # limiter errors answered by letting the hit through
        # The quotas, made once: a request spends one without building it (or hashing a
        # fresh one in the limiter's tables).
        self._tiers = {tier: policy.for_tier(tier) for tier in policy.tiers}
        self._anonymous = policy.anonymous
        self._auth_failures = policy.auth_failures

    async def request(self, key_id: str | None, tier: str | None, address: str) -> Verdict:
        """One REST request by a key (``key_id``, ``tier``) or, without one, from ``address``."""
        return await self._spend("http", key_id, tier, address)

    async def message(self, key_id: str | None, tier: str | None, address: str) -> Verdict:
        """One WebSocket message, as ``request``."""
        return await self._spend("ws", key_id, tier, address)

    async def authentication_blocked(self, address: str) -> Verdict | None:
        """The refusal for ``address`` while it has used up its failed authentications,
        else None (looked at, not counted)."""
        quota = self._auth_failures
        try:
            verdict = await self.limiter.peek(quota, f"addr:{address}")
        except Exception:
            self._failed()
            return None
        return None if verdict.allowed else verdict

    async def authentication_failed(self, address: str) -> None:
        """Count a failed authentication from ``address``."""
        try:
            await self.limiter.hit(self._auth_failures, f"addr:{address}")
        except Exception:
            self._failed()

    async def _spend(
        self, kind: str, key_id: str | None, tier: str | None, address: str
    ) -> Verdict:
        if key_id is not None and tier is not None:
            quota = self._tiers.get(tier) or self.policy.for_tier(tier)
            identity = f"{kind}:key:{key_id}"
        else:
            quota, identity = self._anonymous, f"{kind}:addr:{address}"
        try:
            return await self.limiter.hit(quota, identity)
        except Exception:
            self._failed()
            return Verdict(True, quota, quota.limit, 0.0)

    def _failed(self) -> None:
        self.failures += 1
        # The first failure and one in a thousand after it: an outage must not flood the logs.
        if self.failures % 1000 == 1:
            log.warning(
                "rate limiter unavailable: letting hits through (%d so far)",
                self.failures,
                exc_info=True,
            )


@dataclass(slots=True)
class _Lease:
    tokens: int
    remaining: int  # what the shared budget had left when the lease was taken
    reset_after: float
    expires: float

    def usable(self, now: float) -> bool:
        return self.tokens > 0 and now < self.expires


class LeasedRateLimiter:
    """A ``RateLimiter`` that takes a large budget's hits from the shared one in blocks.

    Each round trip to Redis costs the node ~0.25 ms of CPU (two Lua calls through
    redis-py), more than a cheap request itself (ADR 0036). A budget of ``limit`` hits is
    therefore leased ``share`` of it at a time (``hit(cost=block)``, counted by the
    ``limits`` strategy like any hits) and the block spent in process within
    ``lease_seconds`` of its lease; tokens left then are lost, never handed out twice or
    late, so the shared budget is never exceeded: at worst a caller is refused while other
    nodes hold up to ``share`` of its budget each, unspent. The next block is leased in the
    background once a quarter of the current one is left, so hits do not wait for Redis; a
    hit that finds no tokens waits for the lease under way (one at a time per budget) or
    takes one. Budgets under ``2 / share`` hits (the free and basic tiers, anonymous
    callers by default) are not leased: every hit is exact; when a block no longer fits,
    single hits are asked for, exactly.
    """

    def __init__(
        self,
        inner: RateLimiter,
        *,
        share: float = 0.01,
        lease_seconds: float = 1.0,
        size: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = inner
        self.share = share
        self.lease_seconds = lease_seconds
        self._clock = clock
        self.size = size
        # Per budget (quota name, identity): the lease being spent, then the one leased
        # ahead of it. A plain dict, bounded by dropping the oldest budgets when full (an
        # LRU's bookkeeping was a tenth of a cheap request's limiter cost): a dropped lease
        # only loses its unspent tokens, never grants one twice.
        self._leases: dict[tuple[str, str], list[_Lease]] = {}
        self._leasing: dict[tuple[str, str], asyncio.Future[bool]] = {}
        self._background: set[asyncio.Task[bool]] = set()

    def _spend(self, quota: Quota, key: tuple[str, str], block: int) -> Verdict | None:
        leases = self._leases.get(key)
        if not leases:
            return None
        now = self._clock()
        while leases and not leases[0].usable(now):
            leases.pop(0)
        if not leases:
            return None
        lease = leases[0]
        lease.tokens -= 1
        if len(leases) == 1 and lease.tokens < block // 4 and key not in self._leasing:
            task = asyncio.get_running_loop().create_task(
                self._lease(quota, key, block, self._start_lease(key))
            )
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        in_hand = sum(one.tokens for one in leases)
        return Verdict(True, quota, leases[-1].remaining + in_hand, lease.reset_after)

    def _start_lease(self, key: tuple[str, str]) -> asyncio.Future[bool]:
        """Say a lease for ``key`` is under way (before it starts: one at a time)."""
        leasing = self._leasing[key] = asyncio.get_running_loop().create_future()
        return leasing

    async def _lease(
        self, quota: Quota, key: tuple[str, str], block: int, leasing: asyncio.Future[bool]
    ) -> bool:
        """Lease a block for ``key``; whether one was granted (also ``leasing``'s result)."""
        granted = False
        try:
            verdict = await self.inner.hit(quota, key[1], block)
            granted = verdict.allowed
            if granted:
                lease = _Lease(
                    block,
                    verdict.remaining,
                    verdict.reset_after,
                    self._clock() + self.lease_seconds,
                )
                leases = self._leases.get(key)
                if leases is None:
                    if len(self._leases) >= self.size:
                        self._drop_oldest()
                    leases = self._leases[key] = []
                leases.append(lease)
            return granted
        except Exception:  # the hit that needs it asks alone, and RateLimits fails open
            log.debug("leasing a block failed", exc_info=True)
            return False
        finally:
            del self._leasing[key]
            leasing.set_result(granted)

    def _drop_oldest(self) -> None:
        # A tenth at once: the next thousands of new budgets insert without dropping.
        for key in list(itertools.islice(self._leases, max(1, self.size // 10))):
            del self._leases[key]

    async def hit(self, quota: Quota, identity: str, cost: int = 1) -> Verdict:
        block = int(quota.limit * self.share)
        if block < 2 or cost != 1:
            return await self.inner.hit(quota, identity, cost)
        key = (quota.name, identity)
        for _ in range(_LEASE_WAITS):
            spent = self._spend(quota, key, block)
            if spent is not None:
                return spent
            leasing = self._leasing.get(key)
            if leasing is None:
                if not await self._lease(quota, key, block, self._start_lease(key)):
                    break
            # Hits arriving while a block is leased wait for it rather than each taking a
            # block (16 at once wasted most of a budget).
            elif not await asyncio.shield(leasing):
                break
        # No block fits (or none could be had): one hit, exactly.
        return await self.inner.hit(quota, identity)

    async def peek(self, quota: Quota, identity: str) -> Verdict:
        return await self.inner.peek(quota, identity)
