"""Soak: an hour of 1,000 observations/s over the real ~6,700 protocols, 10,000 clients held.

    python bench/bench_soak.py [--minutes 60] [--clients 10000] [--procs 4] [--rate 1000]
        [--data-speed X] [--chain-share 0.1] [--interval 30] [--out var/soak.csv]
        [--plot var/soak.png] [--backend production|embedded] [--worker ROLE ...]
        [--postgres URL] [--redis URL] [--amqp URL]

What runs, all on 127.0.0.1 (every process this script starts is stopped by its PID in a
``finally``, also on Ctrl-C or SIGTERM; the run is bounded by ``--minutes`` plus set-up):

* ``defi-realtime serve`` as in production, as far as one box allows: ``DATABASE_URL`` on a
  fresh PostgreSQL database this script creates and drops, ``REDIS_URL`` with a key prefix
  of its own (its keys deleted at the end), ``AMQP_URL`` with an exchange and notification
  queues of their own (deleted at the end), ``RATE_LIMITS=off`` (the clients are anonymous
  and would hit ``WS_ANONYMOUS_SOCKETS``; the limiter has its own benchmark).
  With ``serve`` alone, it runs every role (relay, hot + history projections, alerts, the
  live fold and hub); ``--worker ROLE`` (repeatable) moves roles into ``defi-realtime
  worker ROLE`` processes, as the compose file does (their RSS and CPU: own columns).
  Reconciliation (ADR 0035) runs ``RECONCILE_INTERVAL`` (1 h) after its node starts and
  folds the whole log: in ``serve`` it lands in the last minute of an hour's run (CPU,
  memory and latency with it); ``--worker reconcile`` runs it where the compose file does.
  ``--backend embedded``: the embedded stores instead (SQLite files in a temporary
  ``DATA_DIR``, hot state and fan-out in process; no Redis figures, ``store_mb`` is the
  files' size).
* Every protocol of the latest capture of ``../shared/data/defillama/protocol-snapshots
  .jsonl.gz`` (~6,690; null TVLs listed at a nominal 1,000 USD) is listed by one ingest.
* ``--clients`` WebSocket clients in ``--procs`` processes (``bench/ws_loadgen.py``), each
  subscribed to 5 of the 200 largest protocols, as ``bench_ws_scale.py``'s latency soak.
* ``POST /v2/ingest`` every 50 ms, ``--rate`` observations/s in all, spread over every
  protocol (total TVL; ``--chain-share`` of them the TVL of one of its first 3 chains),
  each value its protocol's TVL times a slow random walk.
* **The data clock.** ``observed_at`` is ``DATA0 + (wall - WALL0) * --data-speed``. The hot
  state keeps exact 7-day windows (ADR 0044), so with ``observed_at`` = wall time it grows
  for 7 days of data time and an hour's soak could never be flat. At 1,008x, 7 data days
  pass in the first 10 wall minutes and the rest of the run is at steady state; what the
  soak then shows is whether anything *else* grows (caches, aggregates, sockets, queues,
  audit, Redis keys). The default speed puts 7 data days in the first sixth of any run
  (1,008x for an hour, 12,096x for ``--minutes 5``). The windows then hold fewer points
  than at the real density (the same observations spread over more data time);
  ``bench_hot_state_memory.py`` gives the steady-state size at real density. ``DATA0`` is
  far enough back that ``observed_at`` never passes the wall clock. ``--data-speed 1`` is
  real time. Latency is measured on the wall clock all the same: the load generators map
  each update's ``timestamp`` back to the wall time its POST started.

Every ``--interval`` seconds one CSV row (``--out``): server RSS (the ``serve`` process and
its descendants, ``/proc``), its CPU (cores over the interval) and open file descriptors,
Redis ``used_memory`` (the whole instance, shared with others) and the memory and count of
this run's own keys, the PostgreSQL database's size (``store_mb``), the interval's latency
(p50, p99, max) and updates received, observations sent, the lag of the live state and of
the slowest projection (``/health``: events recorded but not yet applied), the load
generators' CPU, full garbage collections so far and their total pause (the server's
``/metrics``: ``dr_gc_pause_seconds``), and the machine's load.

At the end a summary on stdout (JSON): growth of RSS and of Redis over the last 5/6 of the
run (the last 50 of 60 minutes), p99 per block (5 minutes, or a fifth of a shorter run),
first vs last; and a plot of RSS, Redis memory and p99 over time (``--plot``, PNG or SVG by
its suffix; matplotlib, in the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import datetime as dt
import gzip
import json
import math
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
from _common import HOST, cli_command, cpu_pressure, create_key, embedded_env, free_port
from bench_ws_scale import (
    SNAPSHOTS,
    Child,
    LoadGens,
    percentiles,
    process,
    raise_fd_limit,
    slugify,
    wait_http,
    write_greetings,
)

LIMITS = {
    "minutes": (1, 120),
    "clients": (1, 12_000),
    "procs": (1, 8),
    "rate": (1, 5_000),
    "interval": (5, 300),
}
NOMINAL_TVL = 1_000.0  # USD, for protocols the capture lists with a null TVL
# Per-chain observations go to a protocol's first chains only: every (protocol, chain)
# series then exists within minutes. Over all of a protocol's chains (some list 100+),
# new series, keys and rankings would keep appearing for the whole hour and hide a leak.
CHAINS_PER_PROTOCOL = 3
BATCH_SECONDS = 0.05
IN_FLIGHT = 4  # ingest requests at once, at most
OBSERVED_AT_FROM = 946_684_800  # 2000-01-01: ingest refuses anything older
WARM_DATA_SECONDS = 7 * 86_400  # the longest window the hot state keeps (ADR 0044)
MB = 1024 * 1024
TICK = os.sysconf("SC_CLK_TCK")
# The server's collector pauses (prometheus_metrics.GarbageCollectorPauses): full ones.
PROJECTION_LAG = re.compile(r'^dr_projection_lag\{projection="([^"]+)"\}\s+(\S+)', re.M)
GC_FULL = re.compile(r'^dr_gc_pause_seconds_(count|sum)\{generation="2"\}\s+(\S+)', re.M)


def log(message: str) -> None:
    print(f"{dt.datetime.now(dt.UTC):%H:%M:%S} {message}", file=sys.stderr, flush=True)


# --- the protocols -----------------------------------------------------------------------


@dataclass(frozen=True)
class Listed:
    slug: str
    name: str
    category: str
    tvl: float
    chains: tuple[str, ...]


def latest_protocols() -> list[Listed]:
    """Every protocol of the latest capture, largest TVL first (a null TVL: ``NOMINAL_TVL``)."""
    if not SNAPSHOTS.exists():
        raise SystemExit(f"{SNAPSHOTS} is missing: the soak runs over the real protocols")
    rows: dict[str, list[dict[str, Any]]] = {}
    with gzip.open(SNAPSHOTS, "rt") as file:
        for line in file:
            row = json.loads(line)
            rows.setdefault(row["captured_at"], []).append(row)
    latest = max(rows, key=lambda at: dt.datetime.fromisoformat(at))
    listed: dict[str, Listed] = {}
    for row in rows[latest]:
        slug = slugify(row["name"])
        tvl = row.get("tvl")
        value = float(tvl) if isinstance(tvl, int | float) and tvl > 0 else NOMINAL_TVL
        chains = tuple(c for c in row.get("chains") or () if isinstance(c, str) and c)
        chains = chains[:CHAINS_PER_PROTOCOL]
        listed.setdefault(  # two names may share a slug (the data's README): first wins
            slug, Listed(slug, row["name"][:100], row.get("category") or "Unknown", value, chains)
        )
    return sorted(listed.values(), key=lambda p: -p.tvl)


# --- the data clock and the ingest driver ------------------------------------------------


@dataclass(frozen=True)
class DataClock:
    """``observed_at`` = ``data0 + (wall - wall0) * speed``."""

    wall0: float
    data0: float
    speed: float

    @classmethod
    def for_run(cls, seconds: float, speed: float) -> DataClock:
        """Starting far enough back that a run of ``seconds`` (and 15 minutes' slack for
        connecting the clients and for late batches) never observes past the wall clock."""
        wall0 = time.time()
        data0 = wall0 - speed * (seconds + 900) - 60
        if data0 < OBSERVED_AT_FROM:
            raise SystemExit(f"--data-speed {speed:g} reaches back before 2000: ingest refuses")
        return cls(wall0, data0, speed)

    def data(self, wall: float) -> float:
        return self.data0 + (wall - self.wall0) * self.speed

    def option(self) -> str:
        return f"{self.wall0!r},{self.data0!r},{self.speed!r}"


@dataclass
class IngestTally:
    sent: int = 0
    late_batches: int = 0
    failed_batches: int = 0
    last_error: str = ""


@dataclass
class Ingest:
    """``rate`` observations/s in a batch every 50 ms, open loop, on a thread of its own."""

    port: int
    key: str
    protocols: list[Listed]
    rate: int
    clock: DataClock
    chain_share: float
    stop: threading.Event = field(default_factory=threading.Event)
    tally: IngestTally = field(default_factory=IngestTally)
    lock: threading.Lock = field(default_factory=threading.Lock)
    error: BaseException | None = None
    failures_in_a_row: int = 0

    def take(self) -> IngestTally:
        """The counts since the last take."""
        with self.lock:
            taken, self.tally = self.tally, IngestTally()
        return taken

    def run(self, seconds: float) -> None:
        try:
            self._run(seconds)
        except BaseException as error:  # reported by the main thread
            self.error = error

    def _run(self, seconds: float) -> None:
        """A batch falls due every 50 ms and goes out on one of ``IN_FLIGHT`` connections, so
        one slow answer does not hold back the next batch (late: none was free when due)."""
        per_batch = max(1, round(self.rate * BATCH_SECONDS))
        walk = [1.0] * len(self.protocols)
        rng = random.Random(15)
        free = threading.Semaphore(IN_FLIGHT)
        start = time.monotonic()
        counter = 0
        with (
            httpx.Client(
                base_url=f"http://{HOST}:{self.port}",
                headers={"X-API-Key": self.key},
                timeout=30,
                limits=httpx.Limits(max_connections=IN_FLIGHT),
            ) as client,
            ThreadPoolExecutor(IN_FLIGHT, thread_name_prefix="ingest") as pool,
        ):
            tick = 0
            while not self.stop.is_set() and time.monotonic() - start < seconds:
                if self.failures_in_a_row >= 100:
                    raise RuntimeError(f"100 ingest batches in a row failed: {self.tally}")
                due = start + tick * BATCH_SECONDS
                self.stop.wait(max(0.0, due - time.monotonic()))
                tick += 1
                free.acquire()
                late = time.monotonic() - due > BATCH_SECONDS
                observed_at = self.clock.data(time.time())
                items = []
                for _ in range(per_batch):
                    counter += 1
                    index = (counter * 7919) % len(self.protocols)
                    protocol = self.protocols[index]
                    walk[index] = min(2.0, max(0.5, walk[index] * (1 + rng.gauss(0, 0.002))))
                    value = protocol.tvl * walk[index]
                    chain = "total"
                    if protocol.chains and rng.random() < self.chain_share:
                        chain = protocol.chains[counter % len(protocol.chains)]
                        value /= len(protocol.chains)
                    items.append(
                        {
                            "protocol": protocol.slug,
                            "metric": "tvl",
                            "chain": chain,
                            "value": value,
                            "observed_at": observed_at,
                        }
                    )
                pool.submit(self._post, client, items, late, free)

    def _post(
        self,
        client: httpx.Client,
        items: list[dict[str, Any]],
        late: bool,
        free: threading.Semaphore,
    ) -> None:
        try:
            response = client.post("/v2/ingest", json={"observations": items})
            ok = response.status_code < 300
            error = "" if ok else f"{response.status_code} {response.text[:300]}"
        except httpx.HTTPError as exc:
            ok, error = False, repr(exc)
        finally:
            free.release()
        with self.lock:
            self.tally.late_batches += late
            if ok:
                self.tally.sent += len(items)
                self.failures_in_a_row = 0
            else:
                self.tally.failed_batches += 1
                self.tally.last_error = error
                self.failures_in_a_row += 1


# --- what is measured --------------------------------------------------------------------


def process_tree(root: int) -> list[int]:
    """``root`` and its descendants that are alive, from ``/proc``."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    tree, queue = [], [root]
    while queue:
        pid = queue.pop()
        tree.append(pid)
        queue.extend(children.get(pid, ()))
    return tree


@dataclass(frozen=True)
class ProcessFigures:
    rss_bytes: int
    cpu_seconds: float
    fds: int
    processes: int


def process_figures(root: int) -> ProcessFigures:
    rss = fds = count = 0
    cpu = 0.0
    for pid in process_tree(root):
        with contextlib.suppress(OSError, IndexError, ValueError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1]) * 1024
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / TICK
            fds += len(os.listdir(f"/proc/{pid}/fd"))
            count += 1
    return ProcessFigures(rss, cpu, fds, count)


class Services:
    """A database, a Redis key prefix and AMQP names of this run's own; removed by ``close``."""

    def __init__(self, postgres: str, redis_url: str, amqp: str) -> None:
        import psycopg
        import redis

        self.name = f"dr_soak_{uuid.uuid4().hex[:10]}"
        self.admin_url, self.redis_url, self.amqp_url = postgres, redis_url, amqp
        self.prefix = f"{self.name}:"
        self.notifications = f"{self.name}.notifications"
        with psycopg.connect(postgres, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{self.name}"')
        self.database_url = f"{postgres.rsplit('/', 1)[0]}/{self.name}"
        self.redis = redis.Redis.from_url(redis_url)
        self.pg = psycopg.connect(self.database_url, autocommit=True)

    def env(self) -> dict[str, str]:
        return {
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "REDIS_PREFIX": self.prefix,
            "AMQP_URL": self.amqp_url,
            "AMQP_EXCHANGE": self.name,
            "AMQP_NOTIFICATIONS": self.notifications,
        }

    def redis_figures(self) -> dict[str, float]:
        """The instance's ``used_memory``; this run's keys and their ``MEMORY USAGE``."""
        used = int(self.redis.info("memory")["used_memory"])
        keys = list(self.redis.scan_iter(match=f"{self.prefix}*", count=5_000))
        ours = 0
        for start in range(0, len(keys), 2_000):
            pipe = self.redis.pipeline(transaction=False)
            for key in keys[start : start + 2_000]:
                pipe.memory_usage(key)
            ours += sum(size or 0 for size in pipe.execute())
        return {"redis_used_mb": used / MB, "redis_ours_mb": ours / MB, "redis_keys": len(keys)}

    def database_mb(self) -> float:
        row = self.pg.execute("SELECT pg_database_size(current_database())").fetchone()
        return float(row[0]) / MB if row else math.nan

    def close(self) -> None:
        """Drop the database, delete the keys, the exchange and the notification topology."""
        import psycopg

        with contextlib.suppress(Exception):
            self.pg.close()
        with psycopg.connect(self.admin_url, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        try:
            for start_keys in _chunks(self.redis.scan_iter(match=f"{self.prefix}*", count=5_000)):
                self.redis.unlink(*start_keys)
        finally:
            self.redis.close()
        asyncio.run(self._delete_amqp())

    async def _delete_amqp(self) -> None:
        import aio_pika

        from defi_realtime.adapters.rabbit_notification_queue import RabbitNotificationQueue
        from defi_realtime.application.delivery import RetryPolicy
        from defi_realtime.entrypoints.settings import Settings

        # The queues the server declared: their names hold the retry policy's delays.
        settings = Settings(_env_file=None)
        policy = RetryPolicy(
            max_attempts=settings.notify_max_attempts,
            base_delay=settings.notify_backoff_base,
            max_delay=settings.notify_backoff_max,
            jitter=settings.notify_jitter,
        )
        queues = RabbitNotificationQueue(self.amqp_url, policy, self.notifications).queue_names
        connection = await aio_pika.connect(self.amqp_url)
        async with connection:
            channel = await connection.channel()
            for queue in queues:
                await channel.queue_delete(queue)
            await channel.exchange_delete(self.notifications)
            await channel.exchange_delete(self.name)


def _chunks(keys: Iterator[bytes], size: int = 1_000) -> Iterator[list[bytes]]:
    chunk: list[bytes] = []
    for key in keys:
        chunk.append(key)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def wait_logged(child: Child, text: str, timeout: float = 120) -> None:
    """Wait until ``child`` wrote ``text`` to its stderr."""
    deadline = time.monotonic() + timeout
    while text not in child.stderr_tail(1_000_000):
        child.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"{child.name}: no {text!r} in {timeout:g} s")
        time.sleep(0.2)


def directory_mb(folder: Path) -> float:
    """The size of the embedded store's files (``--backend embedded``)."""
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / MB


def full_collections(port: int) -> tuple[float, float]:
    """Full (generation 2) collections so far and their total pause in ms, from the server's
    ``/metrics``; NaN when it does not answer."""
    with contextlib.suppress(httpx.HTTPError):
        found = dict(GC_FULL.findall(httpx.get(f"http://{HOST}:{port}/metrics", timeout=5).text))
        return float(found.get("count", 0)), float(found.get("sum", 0)) * 1_000
    return math.nan, math.nan


def follower_lags(port: int, worker_ports: list[int]) -> tuple[float, float, str]:
    """Events recorded but not yet applied by the node's live state (what clients are sent
    from; ``/health``), and by its slowest projection (which, and how far behind): from
    ``/health`` when ``serve`` runs them all, else from the workers' ``dr_projection_lag``
    (serve's ``/health`` then shows 0 for the roles it does not hold). A server that falls
    behind shows here before its memory does."""
    live, lags = math.nan, {}
    with contextlib.suppress(httpx.HTTPError, KeyError, TypeError, ValueError):
        health = httpx.get(f"http://{HOST}:{port}/health", timeout=5).json()
        live = float(health["log_head"] - health["node_position"])
        if not worker_ports:
            lags = {name: float(p["lag"] or 0) for name, p in health["projections"].items()}
    for worker in worker_ports:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            text = httpx.get(f"http://{HOST}:{worker}/metrics", timeout=5).text
            for name, lag in PROJECTION_LAG.findall(text):
                lags[name] = max(lags.get(name, 0.0), float(lag))
    if not lags:
        return live, math.nan, ""
    slowest = max(lags, key=lambda name: lags[name])
    return live, lags[slowest], slowest


# --- the run -----------------------------------------------------------------------------

COLUMNS = (
    "t_s",
    "utc",
    "data_utc",
    "server_rss_mb",
    "server_procs",
    "server_cpu",
    "server_fds",
    "workers_rss_mb",
    "workers_cpu",
    "redis_used_mb",
    "redis_ours_mb",
    "redis_keys",
    "store_mb",
    "observations",
    "obs_per_s",
    "late_batches",
    "failed_batches",
    "updates",
    "p50_ms",
    "p99_ms",
    "max_ms",
    "open_sockets",
    "live_lag",
    "projection_lag",
    "slowest_projection",
    "loadgen_cpu",
    "gc_full",
    "gc_full_ms",
    "load1",
    "cpu_pressure",
)


class Stop(Exception):
    """SIGTERM: end the run as Ctrl-C does (every ``finally`` runs)."""


def on_sigterm(_signum: int, _frame: FrameType | None) -> None:
    raise Stop


def list_protocols(port: int, key: str, protocols: list[Listed], at: float) -> None:
    """List every protocol with its TVL at data time ``at``, in partial ingests of 1,000."""
    listing = [
        {
            "protocol": p.slug,
            "metric": "tvl",
            "chain": "total",
            "value": p.tvl,
            "observed_at": at,
            "name": p.name,
            "category": p.category,
        }
        for p in protocols
    ]
    with httpx.Client(
        base_url=f"http://{HOST}:{port}", headers={"X-API-Key": key}, timeout=120
    ) as client:
        for i in range(0, len(listing), 1_000):
            client.post(
                "/v2/ingest", json={"observations": listing[i : i + 1_000], "partial": True}
            ).raise_for_status()


def soak(args: argparse.Namespace) -> dict[str, Any]:
    protocols = latest_protocols()
    seconds = args.minutes * 60
    log(f"{len(protocols)} protocols; {args.clients} clients; {args.rate} obs/s; {seconds} s")
    rows: list[dict[str, Any]] = []
    blocks: list[dict[int, int]] = []
    block_seconds = max(float(args.interval), min(300.0, seconds / 5))
    with contextlib.ExitStack() as stack:
        folder = Path(tempfile.mkdtemp(prefix="bench-soak-"))
        stack.callback(shutil.rmtree, folder, ignore_errors=True)
        env = {**embedded_env(), "DATA_DIR": str(folder / "data"), "RATE_LIMITS": "off"}
        services: Services | None = None
        if args.backend == "production":
            services = Services(args.postgres, args.redis, args.amqp)
            stack.callback(services.close)
            env.update(services.env())
            log(f"database, Redis prefix and exchange: {services.name}")
        key = create_key(env)
        workers: list[Child] = []
        worker_ports: list[int] = []  # their /metrics: the lags of the projections they run
        for role in args.worker:  # first: they take their roles' elections before serve
            worker_ports.append(free_port())
            command = [*cli_command(), "worker", role, "--metrics-port", str(worker_ports[-1])]
            workers.append(stack.enter_context(process(command, {**env, "LOG_LEVEL": "info"})))
            wait_logged(workers[-1], f"worker {role} running")
        port = free_port()
        server: Child = stack.enter_context(
            process([*cli_command(), "serve", "--port", str(port), "--log-level", "warning"], env)
        )
        wait_http(port, server, timeout=180)
        clock = DataClock.for_run(seconds, args.data_speed)
        list_protocols(port, key, protocols, clock.data0 - 1)
        greetings = folder / "subscriptions.json"
        write_greetings(greetings, args.clients, [{"slug": p.slug} for p in protocols[:200]])
        gens = LoadGens(
            port,
            args.clients,
            args.procs,
            ["--data-clock", clock.option()],
            greetings,
            seconds=seconds + 900,  # connecting, the run, the last report
        )
        stack.callback(gens.stop)
        connected = gens.wait_ready(timeout=300)
        log(f"{connected} clients connected; soak starts")
        ingest = Ingest(port, key, protocols, args.rate, clock, args.chain_share)
        thread = threading.Thread(target=ingest.run, args=(seconds + 5,), daemon=True)
        stack.callback(thread.join, 30)
        stack.callback(ingest.stop.set)
        out = stack.enter_context(Path(args.out).open("w", newline=""))
        writer = csv.DictWriter(out, COLUMNS)
        writer.writeheader()
        gens.command("reset")
        start = time.monotonic()
        thread.start()
        before = process_figures(server.pid)
        workers_cpu_before = sum(process_figures(w.pid).cpu_seconds for w in workers)
        gens_cpu_before = gens.cpu_seconds()
        previous = start
        block: dict[int, int] = {}
        block_end = start + block_seconds
        for n in range(1, math.ceil(seconds / args.interval) + 1):
            due = start + min(seconds, n * args.interval)
            while (left := due - time.monotonic()) > 0:
                time.sleep(min(left, 1.0))
                if ingest.error is not None:
                    raise RuntimeError("the ingest driver failed") from ingest.error
                for child in (server, *workers):
                    child.check_alive()
            report = gens.report()
            gens.command("reset")
            now = time.monotonic()
            tally = ingest.take()
            figures = process_figures(server.pid)
            workers_now = [process_figures(w.pid) for w in workers]
            gens_cpu = gens.cpu_seconds()
            latency = percentiles(report["histogram"])
            gc_full, gc_full_ms = full_collections(port)
            live_lag, projection_lag, slowest = follower_lags(port, worker_ports)
            if services is not None:
                redis_figures, store_mb = services.redis_figures(), services.database_mb()
            else:
                redis_figures = dict.fromkeys(("redis_used_mb", "redis_ours_mb", "redis_keys"), 0.0)
                store_mb = directory_mb(folder / "data")
            data_now = clock.data(time.time())
            row = {
                "t_s": round(now - start, 1),
                "utc": f"{dt.datetime.now(dt.UTC):%H:%M:%S}",
                "data_utc": f"{dt.datetime.fromtimestamp(data_now, dt.UTC):%m-%d %H:%M}",
                "server_rss_mb": round(figures.rss_bytes / MB, 1),
                "server_procs": figures.processes,
                "server_cpu": round(
                    (figures.cpu_seconds - before.cpu_seconds) / (now - previous), 2
                ),
                "server_fds": figures.fds,
                "workers_rss_mb": round(sum(w.rss_bytes for w in workers_now) / MB, 1),
                "workers_cpu": round(
                    (sum(w.cpu_seconds for w in workers_now) - workers_cpu_before)
                    / (now - previous),
                    2,
                ),
                **{k: round(v, 1) for k, v in redis_figures.items()},
                "store_mb": round(store_mb, 1),
                "observations": tally.sent,
                "obs_per_s": round(tally.sent / (now - previous)),
                "late_batches": tally.late_batches,
                "failed_batches": tally.failed_batches,
                "updates": report["updates"],
                "p50_ms": latency["p50"],
                "p99_ms": latency["p99"],
                "max_ms": latency["max"],
                "open_sockets": report["open"],
                "live_lag": live_lag,
                "projection_lag": projection_lag,
                "slowest_projection": slowest,
                "loadgen_cpu": round((gens_cpu - gens_cpu_before) / (now - previous), 2),
                "gc_full": gc_full,
                "gc_full_ms": round(gc_full_ms, 1),
                "load1": round(os.getloadavg()[0], 2),
                "cpu_pressure": cpu_pressure().rsplit(" ", 1)[-1],
            }
            if tally.failed_batches:
                log(f"ingest: {tally.failed_batches} batches failed; last: {tally.last_error}")
            writer.writerow(row)
            out.flush()
            rows.append(row)
            log(" ".join(f"{k}={row[k]}" for k in COLUMNS[3:] if k not in ("server_procs",)))
            for bucket, count in report["histogram"].items():
                block[bucket] = block.get(bucket, 0) + count
            if now >= block_end - 1 or n * args.interval >= seconds:
                blocks.append(block)
                block, block_end = {}, block_end + block_seconds
            before, previous, gens_cpu_before = figures, now, gens_cpu
            workers_cpu_before = sum(w.cpu_seconds for w in workers_now)
    summary = summarize(rows, blocks, block_seconds, args, len(protocols), connected)
    if args.plot:
        plot(rows, Path(args.plot), summary)
    return summary


def summarize(
    rows: list[dict[str, Any]],
    blocks: list[dict[int, int]],
    block_seconds: float,
    args: argparse.Namespace,
    protocols: int,
    connected: int,
) -> dict[str, Any]:
    """Growth over the last 5/6 of the run, p99 per block, first vs last."""
    total = rows[-1]["t_s"]
    tail = [r for r in rows if r["t_s"] >= total / 6] or rows
    first, last = tail[0], rows[-1]

    def growth(column: str) -> dict[str, float]:
        values = [r[column] for r in tail]
        return {
            "from": first[column],
            "to": last[column],
            "growth": round(last[column] - first[column], 1),
            "max_minus_min": round(max(values) - min(values), 1),
        }

    p99s = [percentiles(block)["p99"] for block in blocks]
    return {
        "command": " ".join(sys.argv),
        "protocols": protocols,
        "clients_connected": connected,
        "open_sockets_at_end": last["open_sockets"],
        "backend": args.backend,
        "data_speed": args.data_speed,
        "observations_per_s": round(sum(r["observations"] for r in rows) / total),
        "failed_batches": sum(r["failed_batches"] for r in rows),
        "tail_from_s": first["t_s"],
        "server_rss_mb": growth("server_rss_mb"),
        "workers_rss_mb": growth("workers_rss_mb"),
        "redis_used_mb": growth("redis_used_mb"),
        "redis_ours_mb": growth("redis_ours_mb"),
        "redis_keys": growth("redis_keys"),
        "server_fds": growth("server_fds"),
        "live_lag": growth("live_lag"),
        "projection_lag": growth("projection_lag"),
        "store_mb": growth("store_mb"),
        "block_minutes": round(block_seconds / 60, 2),
        "p99_ms_per_block": p99s,
        "p99_ms_first_vs_last_block": [p99s[0], p99s[-1]] if p99s else [],
        "server_cpu_median": sorted(r["server_cpu"] for r in rows)[len(rows) // 2],
        "gc_full_collections": last["gc_full"],
        "gc_full_pause_ms_total": last["gc_full_ms"],
    }


def plot(rows: list[dict[str, Any]], path: Path, summary: dict[str, Any]) -> None:
    """RSS, Redis memory and p99 against minutes, one panel each (PNG or SVG by suffix)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    minutes = [r["t_s"] / 60 for r in rows]
    figure, (rss, redis, p99) = pyplot.subplots(3, 1, sharex=True, figsize=(9, 8))
    rss.plot(minutes, [r["server_rss_mb"] for r in rows], color="tab:blue", label="serve")
    if any(r["workers_rss_mb"] for r in rows):
        rss.plot(minutes, [r["workers_rss_mb"] for r in rows], color="tab:green", label="workers")
        rss.legend(loc="upper left")
    rss.set_ylabel("RSS (MB)")
    redis.plot(minutes, [r["redis_used_mb"] for r in rows], label="used_memory (instance)")
    redis.plot(minutes, [r["redis_ours_mb"] for r in rows], label="this run's keys")
    redis.set_ylabel("Redis (MB)")
    redis.legend(loc="upper left")
    p99.plot(minutes, [r["p99_ms"] for r in rows], color="tab:red", label="p99")
    p99.plot(minutes, [r["p50_ms"] for r in rows], color="tab:gray", label="p50")
    p99.set_ylabel("ingest → client (ms)")
    p99.set_xlabel("minutes")
    p99.legend(loc="upper left")
    for axis in (rss, redis, p99):
        axis.axvline(summary["tail_from_s"] / 60, color="black", linewidth=0.6, linestyle=":")
        axis.grid(alpha=0.3)
    figure.suptitle(
        f"soak: {summary['observations_per_s']} obs/s over {summary['protocols']} protocols, "
        f"{summary['clients_connected']} clients, data clock x{summary['data_speed']:g}"
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    pyplot.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=int, default=60)
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--procs", type=int, default=4, help="load-generator processes")
    parser.add_argument("--rate", type=int, default=1_000, help="observations/s")
    parser.add_argument(
        "--data-speed",
        type=float,
        default=None,
        help="observed_at runs this many times faster than the wall clock (1: real time); "
        "default: 7 data days in the first sixth of the run (1,008 for 60 minutes)",
    )
    parser.add_argument(
        "--chain-share", type=float, default=0.1, help="share of per-chain observations"
    )
    parser.add_argument("--interval", type=int, default=30, help="seconds between samples")
    parser.add_argument("--out", default="var/soak.csv", help="CSV of the samples")
    parser.add_argument("--plot", default="var/soak.png", help="PNG or SVG; empty: none")
    parser.add_argument(
        "--postgres",
        default=os.environ.get(
            "SOAK_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        help="an admin connection: the run's database is created and dropped through it",
    )
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument(
        "--worker",
        action="append",
        default=[],
        choices=("relay", "projections", "alerts", "notifications", "reconcile"),
        help="also run `defi-realtime worker ROLE` (repeat), started before serve so that it "
        "holds its role, as in the compose file; production backend only",
    )
    parser.add_argument(
        "--backend",
        choices=("production", "embedded"),
        default="production",
        help="production: PostgreSQL, Redis, RabbitMQ; embedded: SQLite files and in-process "
        "hot state and fan-out (as the 8-minute soak in docs/benchmarks.md)",
    )
    parser.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672/")
    args = parser.parse_args()
    for name, (low, high) in LIMITS.items():
        if not low <= getattr(args, name) <= high:
            parser.error(f"--{name} must be within {low}..{high}")
    if args.worker and args.backend != "production":
        parser.error("--worker needs --backend production")
    if args.data_speed is None:
        args.data_speed = WARM_DATA_SECONDS / (args.minutes * 60 / 6)
    if not 1 <= args.data_speed <= 100_000 or not 0 <= args.chain_share <= 1:
        parser.error("--data-speed must be within 1..100000, --chain-share within 0..1")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    raise_fd_limit()
    signal.signal(signal.SIGTERM, on_sigterm)
    print(json.dumps(soak(args), indent=2))


if __name__ == "__main__":
    main()
