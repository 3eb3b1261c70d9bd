"""Spending callers' budgets: the quota and identity of every kind of hit (a REST request,
a WebSocket message, a failed authentication) on the ``RateLimiter`` port. The limiter is
shared by every node when it lives in Redis (ADR 0036), so a budget is a caller's, not a
node's."""

from __future__ import annotations

import logging

from .ports import RateLimiter
from .rate_limits import RateLimitPolicy, Verdict

__all__ = ["RateLimits"]

log = logging.getLogger(__name__)


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

    async def request(self, key_id: str | None, tier: str | None, address: str) -> Verdict:
        """One REST request by a key (``key_id``, ``tier``) or, without one, from ``address``."""
        return await self._spend("http", key_id, tier, address)

    async def message(self, key_id: str | None, tier: str | None, address: str) -> Verdict:
        """One WebSocket message, as ``request``."""
        return await self._spend("ws", key_id, tier, address)

    async def authentication_blocked(self, address: str) -> Verdict | None:
        """The refusal for ``address`` while it has used up its failed authentications,
        else None (looked at, not counted)."""
        quota = self.policy.auth_failures
        try:
            verdict = await self.limiter.peek(quota, f"addr:{address}")
        except Exception:
            self._failed()
            return None
        return None if verdict.allowed else verdict

    async def authentication_failed(self, address: str) -> None:
        """Count a failed authentication from ``address``."""
        try:
            await self.limiter.hit(self.policy.auth_failures, f"addr:{address}")
        except Exception:
            self._failed()

    async def _spend(
        self, kind: str, key_id: str | None, tier: str | None, address: str
    ) -> Verdict:
        if key_id is not None and tier is not None:
            quota, identity = self.policy.for_tier(tier), f"{kind}:key:{key_id}"
        else:
            quota, identity = self.policy.anonymous, f"{kind}:addr:{address}"
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
