"""Projection catch-up (rebuild from position 0) over a PostgreSQL event store.

    python bench/bench_projections.py [--events 200000] [--reps 3] [--page-size 2000]
        [--admin-dsn postgresql://postgres@127.0.0.1:5432/postgres]
        [--redis-url redis://127.0.0.1:6379/13] [--keep-db NAME | --db NAME]

One run:

1. creates a fresh database ``dr_bench_proj_<random>`` and fills its event store with N
   events through ``DefiRealtime.ingest`` (group commit, 20,000 items per save, the batched
   recorder ``defi_realtime.adapters.postgres_event_store`` that ``Settings`` selects).
   The data: 2,000 protocols over 12 categories and 1-3 of 16 chains each, 500 tokens;
   every half hour of data time each protocol reports total TVL, TVL per listed chain and
   24h volume, and each token a price (random walks, ~1% late observations). About
   8,500 events per round, so 1M events are ~118 rounds (~2.5 days of data time).
   The default N is 200,000 (about 3 minutes in all on 2 busy cores); the "1M events"
   figures in docs/benchmarks.md come from ``--events 1000000`` (about 15 minutes:
   generation alone takes ~2.5 minutes, ingest runs at ~7k events/s here).
2. measures, each as the median of ``--reps`` runs, from position 0 to the head:
   * ``log read`` - ``EventStoreLog.read`` page after page (the baseline: every catch-up
     below does this plus its own work, the way ``ProjectionRunner`` does);
   * ``log-mapper`` - the same through eventsourcing's mapper (``fast=False``: how
     ``EventStoreLog`` read before, the "before" of the log read);
   * ``memory`` - ``ProjectionRunner.for_hot(log, InMemoryHotProjection()).catch_up()``;
   * ``redis`` - the same with ``RedisHotProjection`` (after ``reset()``, own prefix);
   * ``history`` - ``ProjectionRunner.for_history(log, SqlHistoryReadModel(...))`` on the
     same PostgreSQL database (after ``reset()``);
   * ``redis-live`` and ``history-live`` - the live rate: the log cut beforehand into
     batches of ``--live-batch`` events (50: what one ``POST /v2/ingest`` of the soak
     records), each applied on its own as ``NodeFollower`` hands live batches over (no log
     read timed); ``history-live`` also counts SQL statements per batch.
3. prints a markdown table (events/s over ALL positions in the log, seconds, ratio to the
   log read) and drops the database and the Redis keys.

``--db NAME`` reuses an existing database (no generation, not dropped); ``--keep-db NAME``
generates into NAME and keeps it, for repeated runs. ``--only`` picks scenarios.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import random
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlparse

import psycopg
from _common import Runs, timings
from psycopg.sql import SQL, Identifier
from redis.asyncio import Redis
from sqlalchemy import event

from defi_realtime.adapters.event_store_log import EventStoreLog
from defi_realtime.adapters.memory_hot_projection import InMemoryHotProjection
from defi_realtime.adapters.redis_hot_projection import RedisHotProjection
from defi_realtime.adapters.sql_history import SqlHistoryReadModel
from defi_realtime.application.app import DefiRealtime
from defi_realtime.application.following import PAGE_SIZE, ProjectionRunner
from defi_realtime.application.ingest import IngestBatch, Listing, RecordMetric, RecordPrice
from defi_realtime.application.log import LogBatch
from defi_realtime.entrypoints.settings import Settings

ADMIN_DSN = os.environ.get("BENCH_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
SCENARIOS = ("log", "log-mapper", "memory", "redis", "history", "redis-live", "history-live")

T0 = 1_735_689_600.0  # 2025-01-01T00:00:00Z
ROUND_SECONDS = 1_800.0
PROTOCOLS = 2_000
TOKENS = 500
CATEGORIES = [f"Category {i}" for i in range(12)]
CHAINS = [f"Chain{i}" for i in range(16)]
ITEMS_PER_SAVE = 20_000
LIVE_BATCH = 50
# SQL statements executed by the history read model in the last ``history-live`` run.
STATEMENTS: list[int] = [0, 0]  # statements, batches


# --- the event store ---------------------------------------------------------------------


def database_url(admin_dsn: str, name: str) -> str:
    return urlparse(admin_dsn)._replace(path=f"/{name}").geturl()


def create_database(admin_dsn: str, name: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(SQL("CREATE DATABASE {}").format(Identifier(name)))


def drop_database(admin_dsn: str, name: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(Identifier(name)))


@contextmanager
def event_store(
    admin_dsn: str,
    events: int,
    *,
    db: str | None,
    keep: str | None,
    prefix: str = "dr_bench_proj",
) -> Iterator[tuple[str, float | None]]:
    """Yields (database URL, generation seconds or None when reused); drops it after."""
    if db is not None:
        yield database_url(admin_dsn, db), None
        return
    name = keep or f"{prefix}_{uuid.uuid4().hex[:8]}"
    create_database(admin_dsn, name)
    try:
        url = database_url(admin_dsn, name)
        yield url, generate(url, events)
    finally:
        if keep is None:
            drop_database(admin_dsn, name)


def rounds(seed: int = 7) -> Iterator[list[RecordMetric | RecordPrice]]:
    """Rounds of observations, forever; see the module docstring for the shape."""
    rng = random.Random(seed)
    protocols = []
    for i in range(PROTOCOLS):
        chains = tuple(rng.sample(CHAINS, rng.randint(1, 3)))
        listing = Listing(
            protocol=f"proto-{i:04d}",
            name=f"Protocol {i}",
            category=rng.choice(CATEGORIES),
            chains=chains,
            url=f"https://example.org/{i}",
        )
        protocols.append((listing, rng.uniform(1e5, 1e9)))
    tvl = {listing.protocol: value for listing, value in protocols}
    prices = {f"coingecko:token-{i:03d}": rng.uniform(0.01, 5_000.0) for i in range(TOKENS)}
    number = 0
    while True:
        now = T0 + number * ROUND_SECONDS
        items: list[RecordMetric | RecordPrice] = []
        for listing, _ in protocols:
            slug = listing.protocol
            tvl[slug] *= rng.uniform(0.97, 1.03)
            # ~1% of observations arrive late (an earlier data time).
            at = now - ROUND_SECONDS * 3 if rng.random() < 0.01 else now
            first = listing if number == 0 else None
            items.append(RecordMetric(slug, "tvl", "total", tvl[slug], at, "bench", first))
            assert listing.chains is not None
            for share, chain in enumerate(listing.chains, start=2):
                items.append(RecordMetric(slug, "tvl", chain, tvl[slug] / share, at, "bench"))
            items.append(RecordMetric(slug, "volume_24h", "total", tvl[slug] / 7, at, "bench"))
        for token in prices:
            prices[token] *= rng.uniform(0.98, 1.02)
            items.append(RecordPrice(token, prices[token], now, 0.99, "bench"))
        yield items
        number += 1


def generate(url: str, events: int) -> float:
    """Fill the event store with ``events`` events (the Listed events included)."""
    app = DefiRealtime(env=Settings(DATABASE_URL=url).event_store_env)
    started = time.perf_counter()
    written = 0
    pending: list[RecordMetric | RecordPrice] = []
    try:
        for items in rounds():
            pending.extend(items)
            while len(pending) >= ITEMS_PER_SAVE or (pending and written + len(pending) >= events):
                take = min(len(pending), ITEMS_PER_SAVE, events - written)
                chunk, pending = pending[:take], pending[take:]
                metrics = tuple(i for i in chunk if isinstance(i, RecordMetric))
                records = tuple(i for i in chunk if isinstance(i, RecordPrice))
                [result] = app.ingest([IngestBatch(metrics=metrics, prices=records)])
                if not result.committed or result.rejected:
                    raise RuntimeError(f"ingest refused the generated data: {result}")
                written = app.recorder.max_notification_id() or 0
                print(f"\r  generated {written:,} events", end="", file=sys.stderr, flush=True)
                if written >= events:
                    break
            if written >= events:
                break
    finally:
        app.close()
    seconds = time.perf_counter() - started
    print(f"\r  generated {written:,} events in {seconds:.1f} s", file=sys.stderr)
    return seconds


# --- the scenarios -----------------------------------------------------------------------


def read_log(log: EventStoreLog, page_size: int) -> int:
    """Read the whole log page by page; returns the position reached."""
    position = 0
    while True:
        batch = log.read(position, page_size)
        if batch.last == position:
            return position
        position = batch.last


async def catch_up(runner: ProjectionRunner, page_size: int, head: int) -> None:
    # The runner's own loop (read a page in a thread, apply it, repeat), as in production.
    runner.page_size = page_size
    reached = await runner.catch_up()
    if reached != head:
        raise AssertionError(f"caught up to {reached}, the log ends at {head}")


async def rebuild_redis(
    log: EventStoreLog, page_size: int, head: int, redis_url: str, prefix: str
) -> None:
    client = Redis.from_url(redis_url)
    try:
        projection = RedisHotProjection(client, prefix=prefix)
        await projection.reset()
        await catch_up(ProjectionRunner.for_hot(log, projection), page_size, head)
    finally:
        await client.aclose()


def live_batches(log: EventStoreLog, size: int) -> list[LogBatch]:
    """The whole log as consecutive batches of ``size`` positions, read beforehand."""
    batches, position = [], 0
    while True:
        batch = log.read(position, size)
        if batch.last == position:
            return batches
        batches.append(batch)
        position = batch.last


def run_live(
    name: str,
    log: EventStoreLog,
    history: SqlHistoryReadModel | None,
    size: int,
    redis_url: str,
    prefix: str,
) -> tuple[float, float]:
    """Apply the log batch by batch, as live batches arrive; wall and CPU seconds."""
    batches = live_batches(log, size)
    if name == "history-live":
        assert history is not None
        history.reset()
        counted = [0]

        def count(*_: object) -> None:
            counted[0] += 1

        engine = history._engine  # the bench counts the read model's statements
        event.listen(engine, "before_cursor_execute", count)
        try:
            started, cpu = time.perf_counter(), time.process_time()
            for batch in batches:
                history.apply(batch)
            took = time.perf_counter() - started, time.process_time() - cpu
        finally:
            event.remove(engine, "before_cursor_execute", count)
        STATEMENTS[:] = [counted[0], len(batches)]
        return took

    async def feed() -> tuple[float, float]:
        client = Redis.from_url(redis_url)
        try:
            projection = RedisHotProjection(client, prefix=prefix)
            await projection.reset()
            started, cpu = time.perf_counter(), time.process_time()
            for batch in batches:
                await projection.apply(batch)
            return time.perf_counter() - started, time.process_time() - cpu
        finally:
            await client.aclose()

    return asyncio.run(feed())


def run_scenario(
    name: str,
    app: DefiRealtime,
    history: SqlHistoryReadModel | None,
    page_size: int,
    head: int,
    redis_url: str,
    prefix: str,
    live_batch: int = LIVE_BATCH,
) -> tuple[float, float]:
    """Wall and CPU seconds (this process, all threads) of one run of scenario ``name``."""
    log = EventStoreLog(app)
    started, cpu = time.perf_counter(), time.process_time()
    if name == "log":
        if read_log(log, page_size) != head:
            raise AssertionError("the log read stopped short")
    elif name == "log-mapper":
        # The previous read path: every notification through eventsourcing's mapper.
        read_log(EventStoreLog(app, fast=False), page_size)
    elif name == "memory":
        runner = ProjectionRunner.for_hot(log, InMemoryHotProjection())
        asyncio.run(catch_up(runner, page_size, head))
    elif name == "redis":
        asyncio.run(rebuild_redis(log, page_size, head, redis_url, prefix))
    elif name in ("redis-live", "history-live"):
        return run_live(name, log, history, live_batch, redis_url, prefix)
    elif name == "history":
        assert history is not None
        history.reset()
        started, cpu = time.perf_counter(), time.process_time()  # not the reset
        asyncio.run(catch_up(ProjectionRunner.for_history(log, history), page_size, head))
    else:
        raise ValueError(name)
    return time.perf_counter() - started, time.process_time() - cpu


def measure(
    url: str,
    scenarios: list[str],
    reps: int,
    page_size: int,
    redis_url: str,
    live_batch: int = LIVE_BATCH,
) -> tuple[int, Runs]:
    """The log's head and the runs."""
    settings = Settings(DATABASE_URL=url)
    app = DefiRealtime(env=settings.event_store_env)
    wanted = {"history", "history-live"} & set(scenarios)
    history = SqlHistoryReadModel(settings.history_url) if wanted else None
    prefix = f"bench:proj:{uuid.uuid4().hex[:8]}:"
    head = EventStoreLog(app).head()
    seconds: Runs = {name: [] for name in scenarios}
    try:
        for rep in range(reps):
            for name in scenarios:
                took = run_scenario(
                    name, app, history, page_size, head, redis_url, prefix, live_batch
                )
                seconds[name].append(took)
                print(
                    f"  rep {rep + 1}: {name:12} {took[0]:7.2f} s, CPU {took[1]:7.2f} s",
                    file=sys.stderr,
                )
                if name == "history-live":
                    statements, batches = STATEMENTS
                    print(
                        f"    {statements:,} SQL statements for {batches:,} batches: "
                        f"{statements / batches:.1f} per batch",
                        file=sys.stderr,
                    )
    finally:
        if history is not None:
            history.reset()
            history.close()
        asyncio.run(_redis_cleanup(redis_url, prefix))
        app.close()
    return head, seconds


async def _redis_cleanup(redis_url: str, prefix: str) -> None:
    client = Redis.from_url(redis_url)
    try:
        await RedisHotProjection(client, prefix=prefix).reset()
    finally:
        await client.aclose()


# --- the report --------------------------------------------------------------------------

LABELS = {
    "log": "log read alone (`EventStoreLog.read`), baseline",
    "log-mapper": "log read alone, previous path (eventsourcing mapper)",
    "memory": "in-memory hot projection catch-up",
    "redis": "Redis hot projection catch-up",
    "history": "SQL history read model catch-up (PostgreSQL)",
    "redis-live": "Redis hot projection, live-sized batches",
    "history-live": "SQL history read model, live-sized batches (PostgreSQL)",
}


def report(events: int, runs: Runs, page_size: int) -> str:
    times = timings(runs)
    base = times["log"].wall if "log" in times else None
    lines = [
        f"N = {events:,} log positions, page size {page_size:,}, median of "
        f"{len(next(iter(runs.values())))} runs; CPU = this process, all threads",
        "",
        "| scenario | events/s | wall s (runs) | CPU s | events per CPU-s | vs log read |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, timing in times.items():
        ratio = "-" if base is None else f"{timing.wall / base:.2f}x the time"
        lines.append(
            f"| {LABELS[name]} | {events / timing.wall:,.0f} | {timing.wall:.1f} "
            f"({timing.walls}) | {timing.cpu:.1f} | {events / timing.cpu:,.0f} | {ratio} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--page-size", type=int, default=PAGE_SIZE)
    parser.add_argument("--live-batch", type=int, default=LIVE_BATCH)
    parser.add_argument("--admin-dsn", default=ADMIN_DSN)
    parser.add_argument("--redis-url", default=REDIS_URL)
    parser.add_argument("--only", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    reuse = parser.add_mutually_exclusive_group()
    reuse.add_argument("--db", help="reuse this existing database (not generated, not dropped)")
    reuse.add_argument("--keep-db", help="generate into this database and keep it")
    args = parser.parse_args()

    print(
        f"# {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
        file=sys.stderr,
    )
    with event_store(args.admin_dsn, args.events, db=args.db, keep=args.keep_db) as (url, gen):
        head, seconds = measure(
            url, args.only, args.reps, args.page_size, args.redis_url, args.live_batch
        )
    if gen is not None:
        print(f"generation: {head:,} events in {gen:.1f} s ({head / gen:,.0f} events/s)\n")
    print(report(head, seconds, args.page_size))


if __name__ == "__main__":
    main()
