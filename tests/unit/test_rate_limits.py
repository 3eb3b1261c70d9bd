"""Rate limits' rules on fakes: the policy's quotas, identities, failing open, the client
address behind proxies and the headers' syntax."""

from __future__ import annotations

import asyncio

import pytest

from defi_realtime.adapters.limits_rate_limiter import MemoryRateLimiter
from defi_realtime.application.rate_limiting import LeasedRateLimiter, RateLimits
from defi_realtime.application.rate_limits import Quota, RateLimitPolicy, Verdict
from defi_realtime.domain.api_key import TIER_LIMITS
from defi_realtime.entrypoints.rate_limits import TrustedProxies, exempt, limit_headers

POLICY = RateLimitPolicy(anonymous_per_minute=7, auth_failures_per_minute=2)


class FakeRateLimiter:
    """Records hits; allows everything, or raises when ``broken``."""

    def __init__(self, *, broken: bool = False) -> None:
        self.broken = broken
        self.hits: list[tuple[Quota, str]] = []

    async def hit(self, quota: Quota, identity: str, cost: int = 1) -> Verdict:
        if self.broken:
            raise ConnectionError("redis is down")
        self.hits.append((quota, identity))
        return Verdict(True, quota, quota.limit - 1, 1.0)

    async def peek(self, quota: Quota, identity: str) -> Verdict:
        if self.broken:
            raise ConnectionError("redis is down")
        return Verdict(True, quota, quota.limit, 0.0)


def test_quotas_come_from_the_tiers_and_the_settings() -> None:
    for tier, limits in TIER_LIMITS.items():
        assert POLICY.for_tier(tier) == Quota(f"tier-{tier}", limits.requests_per_minute, 60)
    assert POLICY.anonymous == Quota("anonymous", 7, 60)
    assert POLICY.auth_failures == Quota("auth-failures", 2, 60)


async def test_keys_spend_by_id_anonymous_callers_by_address_rest_and_ws_apart() -> None:
    limiter = FakeRateLimiter()
    limits = RateLimits(limiter, POLICY)
    await limits.request("k1", "pro", "10.0.0.1")
    await limits.request(None, None, "10.0.0.1")
    await limits.message("k1", "pro", "10.0.0.2")
    await limits.message(None, None, "10.0.0.2")
    await limits.authentication_failed("10.0.0.3")
    assert [(quota.name, identity) for quota, identity in limiter.hits] == [
        ("tier-pro", "http:key:k1"),
        ("anonymous", "http:addr:10.0.0.1"),
        ("tier-pro", "ws:key:k1"),
        ("anonymous", "ws:addr:10.0.0.2"),
        ("auth-failures", "addr:10.0.0.3"),
    ]


async def test_a_failing_limiter_lets_hits_through_and_counts_the_failures(
    caplog: pytest.LogCaptureFixture,
) -> None:
    limits = RateLimits(FakeRateLimiter(broken=True), POLICY)
    verdict = await limits.request("k1", "free", "10.0.0.1")
    assert verdict.allowed
    assert verdict.remaining == verdict.quota.limit == TIER_LIMITS["free"].requests_per_minute
    assert await limits.authentication_blocked("10.0.0.1") is None
    await limits.authentication_failed("10.0.0.1")
    assert limits.failures == 3
    assert "rate limiter unavailable" in caplog.text


def test_the_client_address_is_the_peer_unless_it_is_a_trusted_proxy() -> None:
    none = TrustedProxies("")
    assert none.client("192.0.2.1", "203.0.113.9") == "192.0.2.1"
    assert none.client(None, None) == "unknown"
    proxies = TrustedProxies("127.0.0.1, 10.0.0.0/8")
    assert proxies.client("192.0.2.1", "203.0.113.9") == "192.0.2.1"  # not a proxy: ignored
    assert proxies.client("127.0.0.1", None) == "127.0.0.1"
    assert proxies.client("127.0.0.1", "203.0.113.9") == "203.0.113.9"
    # The nearest hop that is not a trusted proxy; what the client wrote before it is not.
    assert proxies.client("127.0.0.1", "198.51.100.1, 203.0.113.9, 10.1.2.3") == "203.0.113.9"
    assert proxies.client("127.0.0.1", "garbage, 203.0.113.9") == "203.0.113.9"
    assert proxies.client("127.0.0.1", "10.0.0.5") == "10.0.0.5"  # only proxies: the first


def test_headers_follow_the_ietf_draft_and_a_refusal_says_when_to_retry() -> None:
    quota = Quota("tier-free", 60, 60)
    allowed = limit_headers(Verdict(True, quota, 59, 59.2))
    assert allowed == [
        ("RateLimit-Policy", '"tier-free";q=60;w=60'),
        ("RateLimit", '"tier-free";r=59;t=60'),
    ]
    refused = dict(limit_headers(Verdict(False, quota, 0, 12.01)))
    assert refused["RateLimit"] == '"tier-free";r=0;t=13'
    assert refused["Retry-After"] == "13"
    assert dict(limit_headers(Verdict(False, quota, 0, 0.0)))["Retry-After"] == "1"


def test_probes_and_scrapes_are_exempt() -> None:
    assert exempt("/health")
    assert exempt("/health/ready")
    assert exempt("/metrics")
    assert not exempt("/healthz")
    assert not exempt("/v2/protocols")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_small_budgets_are_counted_exactly_by_the_shared_limiter() -> None:
    shared = MemoryRateLimiter()
    node = LeasedRateLimiter(shared, share=0.01)
    quota = Quota("tier-free", 60)
    verdicts = [await node.hit(quota, "k") for _ in range(61)]
    assert [v.allowed for v in verdicts].count(True) == 60
    assert (await shared.peek(quota, "k")).remaining == 0


async def test_two_nodes_leasing_never_exceed_the_shared_budget() -> None:
    shared = MemoryRateLimiter()
    nodes = [LeasedRateLimiter(shared, share=0.01), LeasedRateLimiter(shared, share=0.01)]
    quota = Quota("tier-pro", 1000)
    first = await nodes[0].hit(quota, "k")
    assert (first.allowed, first.remaining) == (True, 999)  # 10 leased: 990 + 9 in hand
    allowed = 1 + sum([(await nodes[n % 2].hit(quota, "k")).allowed for n in range(1, 1100)])
    assert allowed == 1000
    assert not (await nodes[0].hit(quota, "k")).allowed
    assert not (await nodes[1].hit(quota, "k")).allowed


async def test_an_expired_lease_loses_its_tokens_and_the_last_hits_are_exact() -> None:
    shared = MemoryRateLimiter()
    clock = FakeClock()
    node = LeasedRateLimiter(shared, share=0.01, lease_seconds=1.0, clock=clock)
    quota = Quota("tier-pro", 1000)
    await node.hit(quota, "k")
    assert (await shared.peek(quota, "k")).remaining == 990
    clock.now += 1.5  # 9 tokens unspent: lost, never handed out again
    await node.hit(quota, "k")
    assert (await shared.peek(quota, "k")).remaining == 980
    for _ in range(975):
        await shared.hit(quota, "k")  # other nodes spend the rest but 5
    clock.now += 1.5
    near_the_end = await node.hit(quota, "k")  # a block of 10 does not fit: one hit
    assert (near_the_end.allowed, near_the_end.remaining) == (True, 4)


async def test_concurrent_hits_wait_for_one_lease_instead_of_each_taking_a_block() -> None:
    shared = MemoryRateLimiter()
    node = LeasedRateLimiter(shared, share=0.01)
    quota = Quota("tier-enterprise", 60_000)
    verdicts = await asyncio.gather(*(node.hit(quota, "k") for _ in range(16)))
    assert all(v.allowed for v in verdicts)
    assert (await shared.peek(quota, "k")).remaining == 60_000 - 600


async def test_the_next_block_is_leased_ahead_so_hits_do_not_wait_for_redis() -> None:
    shared = MemoryRateLimiter()
    node = LeasedRateLimiter(shared, share=0.01)
    quota = Quota("tier-pro", 1000)
    for _ in range(9):  # a block of 10: one token left, under a quarter
        await node.hit(quota, "k")
    await asyncio.sleep(0.01)  # the lease ahead, in the background
    assert (await shared.peek(quota, "k")).remaining == 980
    remaining = [(await node.hit(quota, "k")).remaining for _ in range(11)]
    await asyncio.sleep(0.01)
    assert (await shared.peek(quota, "k")).remaining == 970  # and the one after, ahead too
    assert remaining[:3] == [980 + 10, 980 + 9, 980 + 8]


def test_a_refusal_whose_window_stats_say_reset_already_passed_still_says_wait() -> None:
    """Across a sliding-window boundary the library can refuse a hit while its stats give
    a reset time already past; the verdict must not tell the caller to retry now."""
    import time

    from limits.util import WindowStats

    from defi_realtime.adapters.limits_rate_limiter import LimitsRateLimiter
    from defi_realtime.application.rate_limits import Quota

    quota = Quota("edge", limit=3, window=60)
    refused = LimitsRateLimiter._from_stats(False, quota, WindowStats(time.time() - 0.5, 0))
    assert not refused.allowed
    assert 0 < refused.reset_after <= quota.window
    assert refused.retry_after == 1
    allowed = LimitsRateLimiter._from_stats(True, quota, WindowStats(time.time() + 30, 1))
    assert 29 < allowed.reset_after <= 30
