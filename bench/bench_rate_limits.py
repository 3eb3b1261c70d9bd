"""The rate limiter's cost on REST: throughput and p99 with limits off and on (moving
window, sliding window counter), all Redis-backed, in the same run.

    python bench/bench_rate_limits.py [--requests 2000] [--concurrency 16] [--rounds 5]
        [--path /v2/protocols?limit=10] [--redis redis://127.0.0.1:6379/15] [--empty]

Four ``defi-realtime serve`` processes over REDIS_URL (each its own key prefix and
DATA_DIR, loaded with the packaged real-data sample, ~6,690 protocols, unless ``--empty``;
the hot projection is in Redis for all three): ``RATE_LIMITS=off``, and on with
``RATE_LIMIT_STRATEGY=moving-window`` and ``sliding-window`` (budgets leased in blocks of
1 %, ``RATE_LIMIT_LEASE``), and moving-window with every hit a round trip (``exact``,
``RATE_LIMIT_LEASE=0``: what a budget under 200 a minute, e.g. the free tier's, always
costs). Anonymous callers with
``RATE_LIMIT_ANONYMOUS=60000`` (an enterprise key's budget: nothing is refused, every
request spends it). The load generator is this process: ``--concurrency`` keep-alive
HTTP/1.1 connections on 127.0.0.1 (raw asyncio streams, to leave the CPUs to the server),
``--requests`` per server per round; rounds alternate the servers' order. Reported: the
median over rounds of each server's CPU per request (from /proc: the steadiest figure on a
shared machine, and what throughput is bound by when the CPUs are the limit), throughput
and p50/p99 latency, and the ratios against ``off`` from the same rounds. The servers'
Redis keys are deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import _common
from _common import (
    HOST,
    CliProcess,
    embedded_env,
    free_port,
    machine,
    percentile,
    send_requests,
)

CONFIGS = {
    "off": {"RATE_LIMITS": "off"},
    "moving-window": {"RATE_LIMITS": "on", "RATE_LIMIT_STRATEGY": "moving-window"},
    "sliding-window": {"RATE_LIMITS": "on", "RATE_LIMIT_STRATEGY": "sliding-window"},
    "moving-window, exact": {
        "RATE_LIMITS": "on",
        "RATE_LIMIT_STRATEGY": "moving-window",
        "RATE_LIMIT_LEASE": "0",
    },
}


async def load(
    port: int, path: str, requests: int, concurrency: int
) -> tuple[float, list[float], dict[int, int]]:
    """``requests`` GETs of ``path`` over ``concurrency`` connections: (requests/s,
    latencies in seconds, count by status)."""
    request = f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    share = requests // concurrency
    started = time.perf_counter()
    await asyncio.gather(
        *(send_requests(port, [request] * share, latencies, statuses) for _ in range(concurrency))
    )
    elapsed = time.perf_counter() - started
    return len(latencies) / elapsed, latencies, statuses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--path", default="/v2/protocols?limit=10")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--empty", action="store_true", help="serve an empty store")
    args = parser.parse_args()

    run_id = uuid.uuid4().hex[:8]
    servers: dict[str, tuple[CliProcess, int]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-limits-") as tmp:
        try:
            # Loading the sample takes a while on a busy machine: one server at a time.
            _common.STARTUP_SECONDS = 600.0
            for name, extra in CONFIGS.items():
                port = free_port()
                env = {
                    **embedded_env(),
                    "DATA_DIR": str(Path(tmp) / name),
                    "REDIS_URL": args.redis,
                    "REDIS_PREFIX": f"bench_limits_{run_id}_{name.replace(', ', '_')}:",
                    "RATE_LIMIT_ANONYMOUS": "60000",
                    "LOG_LEVEL": "warning",
                    **extra,
                }
                process = CliProcess(
                    name,
                    ["serve", "--port", str(port), *([] if args.empty else ["--sample"])],
                    env=env,
                    log_path=Path(tmp) / f"{name}.log",
                )
                servers[name] = (process, port)
                process.wait_healthy(port)
            asyncio.run(_rounds(servers, args))
        finally:
            for process, _ in servers.values():
                process.stop()
            _delete_keys(args.redis, f"bench_limits_{run_id}_*")


async def _rounds(servers: dict[str, tuple[CliProcess, int]], args: argparse.Namespace) -> None:
    print(machine())
    print(
        f"{'an empty store' if args.empty else 'the packaged sample'}: "
        f"GET {args.path}, {args.requests} requests per server per round over "
        f"{args.concurrency} connections, {args.rounds} rounds (after a warm-up round)"
    )
    names = list(servers)
    cpu_us: dict[str, list[float]] = {name: [] for name in names}
    throughput: dict[str, list[float]] = {name: [] for name in names}
    p50: dict[str, list[float]] = {name: [] for name in names}
    p99: dict[str, list[float]] = {name: [] for name in names}
    for round_number in range(args.rounds + 1):
        order = names if round_number % 2 else list(reversed(names))
        for name in order:
            process, port = servers[name]
            cpu_before = _cpu_seconds(process.pid)
            rate, latencies, statuses = await load(port, args.path, args.requests, args.concurrency)
            cpu_used = _cpu_seconds(process.pid) - cpu_before
            if set(statuses) != {200}:
                raise RuntimeError(f"{name}: answers other than 200: {statuses}")
            if round_number == 0:
                continue  # warm-up
            ordered = sorted(latencies)
            cpu_us[name].append(cpu_used / len(latencies) * 1e6)
            throughput[name].append(rate)
            p50[name].append(percentile(ordered, 50) * 1000)
            p99[name].append(percentile(ordered, 99) * 1000)
    base_cpu = statistics.median(cpu_us["off"])
    base_rate = statistics.median(throughput["off"])
    base_p99 = statistics.median(p99["off"])
    print()
    print(
        "| limits | server CPU µs/request | vs off | requests/s (median) | vs off | p50 ms "
        "| p99 ms | p99 added ms | rounds' requests/s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for name in names:
        rate = statistics.median(throughput[name])
        tail = statistics.median(p99[name])
        cpu = statistics.median(cpu_us[name])
        print(
            f"| {name} | {cpu:,.0f} | {cpu / base_cpu - 1:+.1%} | "
            f"{rate:,.0f} | {rate / base_rate - 1:+.1%} | "
            f"{statistics.median(p50[name]):.2f} | {tail:.2f} | {tail - base_p99:+.2f} | "
            + ", ".join(f"{value:,.0f}" for value in throughput[name])
            + " |"
        )


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux ``/proc``): the server's
    cost per request, steadier than its throughput on a busy machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _delete_keys(url: str, pattern: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=pattern, count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


if __name__ == "__main__":
    main()
