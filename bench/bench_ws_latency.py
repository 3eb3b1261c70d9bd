"""Ingest -> WebSocket latency: from just before ``POST /v2/ingest`` to the update frame's
arrival at a subscribed client.

    python bench/bench_ws_latency.py [--clients 50] [--protocols 100] [--subs 3]
        [--rate 200] [--batch 10] [--duration 20] [--poll-interval 0.05] [--repeat 3]

This script is the load generator: a separate process from the server. For each repeat it

1. creates a fresh ``DATA_DIR`` (embedded SQLite store, in-process projections and fan-out),
   creates a key with ``defi-realtime keys create --name bench`` and starts
   ``defi-realtime serve --host 127.0.0.1 --port P`` as a subprocess (``POLL_INTERVAL`` small);
2. lists ``--protocols`` protocols with one initial ingest and waits until they are served;
3. opens ``--clients`` WebSocket clients (``websockets``, one asyncio task each, anonymous
   reads), each subscribed on the ``protocols`` channel to ``--subs`` protocols (client ``j``
   takes protocols ``j*subs .. j*subs+subs-1`` modulo ``--protocols``);
4. POSTs batches of ``--batch`` observations on a fixed schedule (open loop: a slow response
   does not delay the next batch; at most ``MAX_IN_FLIGHT`` POSTs in flight, the rest are
   counted as skipped) at ``--rate`` observations/s for ``--duration`` seconds. Observation
   ``n`` carries ``value = VALUE_BASE + n``, which maps the frame back to the
   ``time.perf_counter()`` taken just before its POST;
5. waits (at most ``DRAIN_SECONDS``) for the frames still expected, then reports percentiles
   of ingest->client latency over every (observation, subscribed client) frame, beside two
   references measured in the same run: the POST round trip (validated, committed and
   acknowledged) and the WebSocket ping->pong round trip of one extra, unsubscribed client.

The server is always stopped by its PID (SIGTERM, then SIGKILL) in a ``finally``. Everything
goes to 127.0.0.1 only, and counts and durations are bounded (see ``LIMITS``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from _common import (
    HOST,
    CliProcess,
    create_key,
    embedded_env,
    free_port,
    machine,
    summary,
)
from websockets.asyncio.client import ClientConnection, connect

VALUE_BASE = 1_000_000.0
MAX_IN_FLIGHT = 32
DRAIN_SECONDS = 10.0
PING_EVERY = 0.1
LIMITS = {
    "clients": (1, 500),
    "protocols": (1, 1_000),
    "subs": (1, 20),
    "rate": (1, 5_000),
    "batch": (1, 1_000),
    "duration": (1, 120),
    "repeat": (1, 5),
}


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (0 when unavailable)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)
    post_times: list[float] = field(default_factory=list)
    ping_times: list[float] = field(default_factory=list)
    expected: int = 0
    received: int = 0
    unmatched: int = 0
    observations: int = 0
    posts_failed: int = 0
    posts_skipped: int = 0
    load_seconds: float = 0.0
    server_cpu: float = 0.0


def server_env(data_dir: Path, poll_interval: float) -> dict[str, str]:
    env = embedded_env()
    env.update(
        DATA_DIR=str(data_dir),
        POLL_INTERVAL=str(poll_interval),
        REQUIRE_KEY_FOR_READS="false",
    )
    return env


def slug(index: int) -> str:
    return f"bench-{index:04d}"


async def list_protocols(client: httpx.AsyncClient, key: str, count: int) -> None:
    now = time.time()
    observations = [
        {
            "protocol": slug(i),
            "name": f"Bench {i}",
            "category": "Dexs",
            "chains": ["Ethereum"],
            "url": "https://example.invalid",
            "value": 1.0,
            "observed_at": now,
        }
        for i in range(count)
    ]
    response = await client.post(
        "/v2/ingest", json={"observations": observations}, headers={"X-API-Key": key}
    )
    response.raise_for_status()
    # Served means the node followed the log past the listing (hot projection updated).
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = await client.get(f"/v2/protocols/{slug(count - 1)}")
        if found.status_code == 200:
            return
        await asyncio.sleep(0.05)
    raise RuntimeError("the initial listing was not served within 30 s")


async def run_once(args: argparse.Namespace, port: int, server_pid: int, key: str) -> Result:
    result = Result()
    base = f"http://{HOST}:{port}"
    ws_url = f"ws://{HOST}:{port}/v2/realtime"
    sent_at: dict[int, float] = {}
    subscribers: dict[int, int] = {}  # protocol index -> subscribed clients
    stop = asyncio.Event()
    arrived = asyncio.Event()  # set on every matched frame (for the final drain)
    limits = httpx.Limits(max_connections=MAX_IN_FLIGHT, max_keepalive_connections=MAX_IN_FLIGHT)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as http:
        await list_protocols(http, key, args.protocols)

        async def subscriber(index: int, ready: asyncio.Event, ws: ClientConnection) -> None:
            ids = [(index * args.subs + t) % args.protocols for t in range(args.subs)]
            await ws.send(
                json.dumps(
                    {
                        "type": "subscribe",
                        "channel": "protocols",
                        "params": {"protocolIds": [slug(i) for i in ids]},
                    }
                )
            )
            while True:
                message = json.loads(await ws.recv())
                if message.get("type") == "subscribed":
                    break
                if message.get("type") == "error":
                    raise RuntimeError(f"subscribe failed: {message}")
            for i in set(ids):
                subscribers[i] = subscribers.get(i, 0) + 1
            ready.set()
            async for raw in ws:
                received = time.perf_counter()
                message = json.loads(raw)
                if message.get("type") != "update":
                    continue
                value = message["data"].get("value")
                if not isinstance(value, int | float) or value < VALUE_BASE:
                    continue  # the initial listing's value
                sent = sent_at.get(round(value - VALUE_BASE))
                if sent is None:
                    result.unmatched += 1
                    continue
                result.latencies.append(received - sent)
                result.received += 1
                arrived.set()

        async def pinger(ws: ClientConnection) -> None:
            while not stop.is_set():
                sent = time.perf_counter()
                await ws.send('{"type":"ping"}')
                while True:
                    message = json.loads(await ws.recv())
                    if message.get("type") == "pong":
                        break
                result.ping_times.append(time.perf_counter() - sent)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), PING_EVERY)

        async def post(observations: list[dict[str, Any]], numbers: list[int]) -> None:
            started = time.perf_counter()
            for number in numbers:
                sent_at[number] = started
            try:
                response = await http.post(
                    "/v2/ingest",
                    json={"observations": observations},
                    headers={"X-API-Key": key},
                )
            except httpx.HTTPError:
                result.posts_failed += 1
                return
            if response.status_code != 200:
                result.posts_failed += 1
                return
            result.post_times.append(time.perf_counter() - started)
            for number in numbers:
                result.expected += subscribers.get(number % args.protocols, 0)

        sockets: list[ClientConnection] = []
        tasks: list[asyncio.Task[None]] = []
        try:
            for index in range(args.clients):
                ws = await connect(ws_url, max_size=2**20, open_timeout=30)
                sockets.append(ws)
                ready = asyncio.Event()
                tasks.append(asyncio.create_task(subscriber(index, ready, ws)))
                await asyncio.wait_for(ready.wait(), 30)
            ping_ws = await connect(ws_url, open_timeout=30)
            sockets.append(ping_ws)
            tasks.append(asyncio.create_task(pinger(ping_ws)))

            interval = args.batch / args.rate
            batches = round(args.duration / interval)
            in_flight: set[asyncio.Task[None]] = set()
            cpu0 = cpu_seconds(server_pid)
            start = time.perf_counter()
            number = 0
            for tick in range(batches):
                delay = start + tick * interval - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                numbers = list(range(number, number + args.batch))
                number += args.batch
                if len(in_flight) >= MAX_IN_FLIGHT:
                    result.posts_skipped += 1
                    continue
                observed_at = time.time()
                observations = [
                    {
                        "protocol": slug(n % args.protocols),
                        "value": VALUE_BASE + n,
                        "observed_at": observed_at,
                    }
                    for n in numbers
                ]
                result.observations += len(numbers)
                task = asyncio.create_task(post(observations, numbers))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            if in_flight:
                await asyncio.wait(in_flight)
            result.load_seconds = time.perf_counter() - start
            result.server_cpu = cpu_seconds(server_pid) - cpu0
            deadline = time.monotonic() + DRAIN_SECONDS
            while result.received < result.expected and time.monotonic() < deadline:
                arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(arrived.wait(), deadline - time.monotonic())
        finally:
            stop.set()
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            for ws in sockets:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.close(), 5)
    return result


def bounded(args: argparse.Namespace) -> argparse.Namespace:
    for name, (low, high) in LIMITS.items():
        value = getattr(args, name)
        setattr(args, name, type(value)(max(low, min(high, value))))
    args.poll_interval = max(0.01, min(5.0, args.poll_interval))
    return args


def fmt_ms(value: float) -> str:
    return f"{value * 1000:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--protocols", type=int, default=100)
    parser.add_argument("--subs", type=int, default=3, help="protocols per client")
    parser.add_argument("--rate", type=int, default=200, help="observations per second")
    parser.add_argument("--batch", type=int, default=10, help="observations per POST")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load")
    parser.add_argument("--poll-interval", type=float, default=0.05, help="server POLL_INTERVAL")
    parser.add_argument("--repeat", type=int, default=3, help="fresh server per repeat")
    parser.add_argument("--port", type=int, default=0, help="0: pick a free port")
    args = bounded(parser.parse_args(argv))

    print("# bench_ws_latency")
    print(f"machine: {machine()}")
    print(
        f"load: {args.clients} clients x {args.subs} protocols (of {args.protocols}), "
        f"{args.rate} observations/s in POSTs of {args.batch} every "
        f"{args.batch / args.rate * 1000:.0f} ms for {args.duration:g} s; "
        f"POLL_INTERVAL={args.poll_interval:g}; repeats: {args.repeat}",
        flush=True,
    )
    results: list[Result] = []
    for index in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="bench-ws-") as tmp:
            data_dir = Path(tmp)
            env = server_env(data_dir, args.poll_interval)
            port = args.port or free_port()
            key = create_key(env)
            server = CliProcess(
                "server",
                ["serve", "--host", HOST, "--port", str(port), "--log-level", "warning"],
                env=env,
                log_path=data_dir / "server.log",
            )
            try:
                server.wait_healthy(port)
                result = asyncio.run(run_once(args, port, server.pid, key))
            except BaseException:
                tail = server.log_tail()
                if tail:
                    print(f"--- server log tail ---\n{tail}", file=sys.stderr)
                raise
            finally:
                server.stop()
        results.append(result)
        lat = summary(result.latencies)
        print(
            f"  run {index + 1}/{args.repeat}: frames {result.received:,}/{result.expected:,}, "
            f"p50 {fmt_ms(lat['p50'])} ms, p99 {fmt_ms(lat['p99'])} ms, "
            f"POSTs failed {result.posts_failed}, skipped {result.posts_skipped}",
            file=sys.stderr,
            flush=True,
        )

    def med(values: list[float]) -> float:
        return statistics.median(values)

    rows = [
        ("ingest -> client frame", [summary(r.latencies) for r in results]),
        ("reference: POST /v2/ingest round trip", [summary(r.post_times) for r in results]),
        ("reference: WS ping -> pong (idle client)", [summary(r.ping_times) for r in results]),
    ]
    print()
    print("| latency (ms, median of repeats) | p50 | p95 | p99 | max | samples/run |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, stats in rows:
        print(
            f"| {name} | {fmt_ms(med([s['p50'] for s in stats]))} "
            f"| {fmt_ms(med([s['p95'] for s in stats]))} "
            f"| {fmt_ms(med([s['p99'] for s in stats]))} "
            f"| {fmt_ms(med([s['max'] for s in stats]))} "
            f"| {med([s['n'] for s in stats]):,.0f} |"
        )
    lat50 = med([summary(r.latencies)["p50"] for r in results])
    post50 = med([summary(r.post_times)["p50"] for r in results])
    expected = sum(r.expected for r in results)
    received = sum(r.received for r in results)
    achieved = med([r.observations / r.load_seconds for r in results if r.load_seconds])
    server_cpu = med([r.server_cpu / r.load_seconds for r in results if r.load_seconds])
    print()
    print(
        f"frames delivered: {received:,} of {expected:,} expected "
        f"({received / expected * 100 if expected else 0:.2f}%); "
        f"unmatched {sum(r.unmatched for r in results)}; "
        f"POSTs failed {sum(r.posts_failed for r in results)}, "
        f"skipped {sum(r.posts_skipped for r in results)}; "
        f"achieved {achieved:,.0f} observations/s; server CPU {server_cpu * 100:.0f}% of one core."
    )
    print(f"ingest->client p50 / POST round-trip p50: {lat50 / post50:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
