"""Rate limits: which budget a caller spends, and what the limiter says about it.

A ``Quota`` is a named budget (``limit`` hits per ``window`` seconds); a ``RateLimiter``
(the port, ``ports.py``) counts hits against it per identity and answers a ``Verdict``:
allowed or not, how many hits remain, and in how many seconds one is free again. Which
quota a caller spends is ``RateLimitPolicy``'s; spending it is ``rate_limiting.RateLimits``'.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from ..domain.api_key import TIER_LIMITS, TierLimits

__all__ = [
    "MINUTE",
    "Quota",
    "RateLimitPolicy",
    "Verdict",
]

MINUTE: Final = 60


@dataclass(frozen=True, slots=True)
class Quota:
    """A budget: ``limit`` hits per ``window`` seconds, known by ``name`` (the policy name
    of the ``RateLimit-Policy`` header and of the WebSocket ``rate_limited`` error)."""

    name: str
    limit: int
    window: int = MINUTE


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the limiter said about one hit (or a look without one)."""

    allowed: bool
    quota: Quota
    remaining: int
    reset_after: float
    """Seconds until a hit is free again (the Retry-After of a refusal); 0 while the
    budget is untouched."""

    @property
    def retry_after(self) -> int:
        """Whole seconds a refused caller waits (at least 1)."""
        return max(1, int(self.reset_after + 0.999))


@dataclass(frozen=True, slots=True)
class RateLimitPolicy:
    """The quotas: per tier for keys, per client address for anonymous callers and for
    failed authentications."""

    anonymous_per_minute: int
    auth_failures_per_minute: int
    tiers: Mapping[str, TierLimits] = field(default_factory=lambda: TIER_LIMITS)

    def for_tier(self, tier: str) -> Quota:
        return Quota(f"tier-{tier}", self.tiers[tier].requests_per_minute)

    @property
    def anonymous(self) -> Quota:
        return Quota("anonymous", self.anonymous_per_minute)

    @property
    def auth_failures(self) -> Quota:
        return Quota("auth-failures", self.auth_failures_per_minute)
