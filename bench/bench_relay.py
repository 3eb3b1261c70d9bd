"""Relay throughput: the PostgreSQL event log published into RabbitMQ, with confirms.

    python bench/bench_relay.py [--events 200000] [--reps 3] [--baseline-messages 5000]
        [--admin-dsn postgresql://postgres@127.0.0.1:5432/postgres]
        [--amqp-url amqp://guest:guest@127.0.0.1:5672/] [--keep-db NAME | --db NAME]

One run:

1. creates a fresh database ``dr_bench_relay_<random>`` holding N events, generated the
   way bench/bench_projections.py does (``DefiRealtime.ingest``, batched recorder);
2. measures, each as the median of ``--reps`` runs on a fresh exchange:
   * ``relay`` - ``Relay`` (src/application/following.py) from position 0
     (``start_at_head=False``, its default page of 5,000 positions per message) publishing
     to ``RabbitEventFanout`` (publisher confirms, persistent messages, a durable topic
     exchange), saving its position in ``SqlPositionStore`` on the same PostgreSQL
     after every confirmed batch. A second ``RabbitEventFanout``, in its own process (as a
     serving node would be), listens on its own queue and checks that the batches cover
     every position 1..N contiguously and carry every entry of the log; the clock runs
     from the relay's start until the listener reports the last position;
   * ``log read`` - ``EventStoreLog.read`` alone over the same positions, pages of 5,000
     (what the relay cannot go faster than);
   * ``baseline`` - plain aio-pika, one message per event (the event's JSON), publisher
     confirms awaited one by one, for ``--baseline-messages`` events (bounded: at this
     rate N would take minutes); and the same with every confirm awaited at once.
3. prints a markdown table and drops the database and the exchanges.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import sys
import time
import uuid
from dataclasses import dataclass, field

import aio_pika
from _common import Runs, timings
from aio_pika import ExchangeType
from bench_projections import ADMIN_DSN, event_store

from defi_realtime.adapters.event_store_log import EventStoreLog
from defi_realtime.adapters.position_stores import SqlPositionStore
from defi_realtime.adapters.rabbit_fanout import RabbitEventFanout
from defi_realtime.application.app import DefiRealtime
from defi_realtime.application.following import Relay
from defi_realtime.application.log import LogBatch
from defi_realtime.entrypoints.settings import Settings

AMQP_URL = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
RELAY_PAGE = 5_000


@dataclass
class Coverage:
    """What the listening node saw: positions must arrive contiguous, entries complete."""

    head: int
    position: int = 0
    entries: int = 0
    messages: int = 0
    problems: list[str] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    async def on_batch(self, batch: LogBatch) -> None:
        self.messages += 1
        if batch.last <= self.position:
            return  # a duplicate: allowed (at-least-once), dropped by position
        if batch.after > self.position:
            self.problems.append(f"gap: at {self.position}, batch starts after {batch.after}")
        fresh = batch.since(self.position)
        self.entries += len(fresh.entries)
        self.position = batch.last
        if self.position >= self.head:
            self.done.set()


async def listen(amqp_url: str, exchange: str, head: int) -> None:
    """The listening node (``--listen``): "ready" once consuming, then one JSON report."""
    coverage = Coverage(head=head)
    listener = RabbitEventFanout(amqp_url, exchange, node_id="bench-listener")
    listener.listen(coverage.on_batch)
    await listener.start()
    try:
        print("ready", flush=True)
        await coverage.done.wait()
    finally:
        await listener.stop()
    report = {
        "position": coverage.position,
        "entries": coverage.entries,
        "messages": coverage.messages,
        "problems": coverage.problems[:5],
    }
    print(json.dumps(report), flush=True)


async def relay_once(url: str, amqp_url: str, head: int, entries: int) -> tuple[float, float, int]:
    """Wall seconds until the listener holds every position, the relay process's CPU
    seconds meanwhile, and the number of messages the listener received."""
    exchange = f"dr-bench-relay-{uuid.uuid4().hex[:8]}"
    settings = Settings(DATABASE_URL=url)
    app = DefiRealtime(env=settings.event_store_env)
    positions = SqlPositionStore(settings.history_url, table="bench_relay_positions")
    publisher = RabbitEventFanout(amqp_url, exchange, node_id="bench-relay")
    relay = Relay(EventStoreLog(app), publisher, positions, start_at_head=False)
    listener = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--listen",
        exchange,
        str(head),
        "--amqp-url",
        amqp_url,
        stdout=asyncio.subprocess.PIPE,
    )
    assert listener.stdout is not None
    task: asyncio.Task[None] | None = None
    try:
        assert (await listener.stdout.readline()).strip() == b"ready"
        await positions.save(relay.name, 0)
        await publisher.start()
        started, cpu = time.perf_counter(), time.process_time()
        task = asyncio.create_task(relay.run())
        done = asyncio.create_task(listener.stdout.readline())
        await asyncio.wait([task, done], return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # the relay failed: raise its error
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        report = json.loads(done.result())
    finally:
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if listener.returncode is None:
            listener.kill()
        await listener.wait()
        await publisher.stop()
        await _delete_exchanges(amqp_url, exchange)
        positions.close()
        app.close()
    assert not report["problems"], report["problems"]
    assert report["position"] == head, (report["position"], head)
    assert report["entries"] == entries, (report["entries"], entries)
    return seconds, cpu, int(report["messages"])


def read_log(url: str) -> tuple[float, float, int, int]:
    """Wall and CPU seconds to read the whole log in relay pages; its head and entries."""
    app = DefiRealtime(env=Settings(DATABASE_URL=url).event_store_env)
    try:
        log = EventStoreLog(app)
        started, cpu = time.perf_counter(), time.process_time()
        position = entries = 0
        while True:
            batch = log.read(position, RELAY_PAGE)
            if batch.last == position:
                break
            position = batch.last
            entries += len(batch.entries)
        return time.perf_counter() - started, time.process_time() - cpu, position, entries
    finally:
        app.close()


async def baseline(url: str, amqp_url: str, count: int, *, concurrent: bool) -> tuple[float, float]:
    """Wall and CPU seconds to publish ``count`` events, one persistent message each, with
    confirms."""
    app = DefiRealtime(env=Settings(DATABASE_URL=url).event_store_env)
    try:
        entries = EventStoreLog(app).read(0, count).entries
    finally:
        app.close()
    bodies = [json.dumps(e.to_json(), separators=(",", ":")).encode() for e in entries]
    name = f"dr-bench-baseline-{uuid.uuid4().hex[:8]}"
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.declare_exchange(name, ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(exchange, routing_key="#")

        def message(body: bytes) -> aio_pika.Message:
            return aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)

        started, cpu = time.perf_counter(), time.process_time()
        if concurrent:
            await asyncio.gather(*(exchange.publish(message(b), "event") for b in bodies))
        else:
            for body in bodies:
                await exchange.publish(message(body), "event")
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        await queue.delete(if_unused=False, if_empty=False)
        await exchange.delete()
    finally:
        await connection.close()
    return seconds, cpu


async def _delete_exchanges(amqp_url: str, *names: str) -> None:
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        for name in names:
            await channel.exchange_delete(name)
    finally:
        await connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--baseline-messages", type=int, default=5_000)
    parser.add_argument("--admin-dsn", default=ADMIN_DSN)
    parser.add_argument("--amqp-url", default=AMQP_URL)
    reuse = parser.add_mutually_exclusive_group()
    reuse.add_argument("--db", help="reuse this existing database (not generated, not dropped)")
    reuse.add_argument("--keep-db", help="generate into this database and keep it")
    parser.add_argument("--listen", nargs=2, metavar=("EXCHANGE", "HEAD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.listen:
        asyncio.run(listen(args.amqp_url, args.listen[0], int(args.listen[1])))
        return

    print(
        f"# {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
        file=sys.stderr,
    )
    runs: Runs = {"relay": [], "log": [], "baseline": [], "baseline_concurrent": []}
    with event_store(
        args.admin_dsn, args.events, db=args.db, keep=args.keep_db, prefix="dr_bench_relay"
    ) as (url, generated):
        _, _, head, entries = read_log(url)
        messages = 0
        for rep in range(args.reps):
            wall, cpu, messages = asyncio.run(relay_once(url, args.amqp_url, head, entries))
            runs["relay"].append((wall, cpu))
            runs["log"].append(read_log(url)[:2])
            for name, concurrent in (("baseline", False), ("baseline_concurrent", True)):
                count = args.baseline_messages
                wall, cpu = asyncio.run(baseline(url, args.amqp_url, count, concurrent=concurrent))
                # Extrapolated to N: the time N events would take at this rate.
                runs[name].append((wall * head / count, cpu * head / count))
            print(
                f"  rep {rep + 1}: relay {runs['relay'][-1][0]:.2f} s, log read "
                f"{runs['log'][-1][0]:.2f} s, baseline {head / runs['baseline'][-1][0]:,.0f} "
                "events/s",
                file=sys.stderr,
            )
    if generated is not None:
        print(f"generation: {head:,} events in {generated:.1f} s\n")
    print(report(head, entries, messages, runs, args.baseline_messages))


def report(head: int, entries: int, messages: int, runs: Runs, baseline_count: int) -> str:
    times = timings(runs)
    labels = {
        "relay": f"`Relay` -> `RabbitEventFanout`, {RELAY_PAGE:,} positions per message, "
        f"confirms; listener verified every position ({messages} messages)",
        "log": f"log read alone (`EventStoreLog.read`, pages of {RELAY_PAGE:,})",
        "baseline": "baseline: aio-pika, 1 message per event, each confirm awaited "
        f"({baseline_count:,} events, extrapolated to N)",
        "baseline_concurrent": "baseline: aio-pika, 1 message per event, confirms awaited "
        f"together ({baseline_count:,} events, extrapolated to N)",
    }
    lines = [
        f"N = {head:,} log positions ({entries:,} entries), median of "
        f"{len(runs['relay'])} runs; CPU = the publishing process (the listener runs apart)",
        "",
        "| scenario | events/s | wall s for N (runs) | CPU s | time vs relay |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, timing in times.items():
        lines.append(
            f"| {labels[name]} | {head / timing.wall:,.0f} | {timing.wall:.1f} ({timing.walls}) "
            f"| {timing.cpu:.1f} | {timing.wall / times['relay'].wall:.2f}x |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
