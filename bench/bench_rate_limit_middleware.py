"""The rate limiter's own CPU per REST request, in process: the two middlewares
(``ThrottleAuthFailures``, ``LimitRequests``) around a trivial ASGI endpoint, limits off and
on, in the same run.

    python bench/bench_rate_limit_middleware.py [--requests 25000] [--rounds 7]

On: the budget of an anonymous caller of ``RATE_LIMIT_ANONYMOUS=60000`` (the HTTP bench's
load, ``bench_rate_limits.py``), sliding window, leased 1 % at a time
(``LeasedRateLimiter`` over the in-process ``limits`` storage: what a Redis-backed node
spends per request between two leases, without the network). Off: ``RATE_LIMITS=off``
(both middlewares pass the request through). Reported: the median over rounds of the
process CPU per request (``time.process_time``) and what the limits add; rounds alternate
off and on. No server, no socket: the figure is the middlewares' and the limiter's cost
alone, steadier on a shared machine than the HTTP bench's.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from types import SimpleNamespace
from typing import Any

from defi_realtime.adapters.limits_rate_limiter import MemoryRateLimiter
from defi_realtime.application.rate_limiting import LeasedRateLimiter, RateLimits
from defi_realtime.application.rate_limits import RateLimitPolicy
from defi_realtime.entrypoints.rate_limits import (
    LimitRequests,
    ThrottleAuthFailures,
    TrustedProxies,
)

HEADERS = [(b"host", b"127.0.0.1"), (b"accept", b"*/*"), (b"user-agent", b"bench")]


async def _endpoint(scope: Any, receive: Any, send: Any) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": b"{}"})


async def _round(requests: int, on: bool) -> float:
    """CPU microseconds per request over ``requests`` after a warm-up."""
    proxies = TrustedProxies("")
    app = ThrottleAuthFailures(LimitRequests(_endpoint, proxies), proxies)
    limits = None
    if on:
        limits = RateLimits(
            LeasedRateLimiter(MemoryRateLimiter("sliding-window"), share=0.01),
            RateLimitPolicy(anonymous_per_minute=60_000, auth_failures_per_minute=10),
        )
    holder = SimpleNamespace(state=SimpleNamespace(rate_limits=limits))

    async def receive() -> dict[str, Any]:
        return {"type": "http.request"}

    async def send(message: Any) -> None:
        pass

    def scope() -> dict[str, Any]:
        return {
            "type": "http",
            "path": "/v2/protocols",
            "client": ("127.0.0.1", 50_000),
            "app": holder,
            "headers": HEADERS,
            "user": None,
        }

    for _ in range(1_000):
        await app(scope(), receive, send)
    started = time.process_time()
    for _ in range(requests):
        await app(scope(), receive, send)
    return (time.process_time() - started) / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=25_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    # The anonymous budget is 60,000 a minute: a round stays under it.
    requests = min(args.requests, 50_000)
    off: list[float] = []
    on: list[float] = []
    for number in range(args.rounds):
        for limited in (False, True) if number % 2 == 0 else (True, False):
            (on if limited else off).append(asyncio.run(_round(requests, limited)))
    median_off, median_on = statistics.median(off), statistics.median(on)
    print(f"{requests} requests x {args.rounds} rounds, CPU per request (median):")
    print(f"  off {median_off:6.2f} us")
    print(f"  on  {median_on:6.2f} us   added {median_on - median_off:5.2f} us")


if __name__ == "__main__":
    main()
