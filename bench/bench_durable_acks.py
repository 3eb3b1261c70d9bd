"""Acknowledging a durable subscription's updates: one write per ack against the hub's
batches (``SUBSCRIPTION_ACK_INTERVAL``), in the same run.

    python bench/bench_durable_acks.py [--acks 2000] [--subscriptions 10] [--rounds 5]
        [--interval 0.5] [--database postgresql://postgres@127.0.0.1:5432/test]

A client that acknowledges every update of a fast stream: ``--acks`` acknowledgements spread
over ``--subscriptions`` durable subscriptions, arriving as fast as the event loop takes them
(a turn of the loop between two). Baseline: each one written at once, as a naive server
would (``Subscription.advance`` on the writer thread, one transaction each). Batched: through
the hub's ``Acknowledgements`` (the real code path), written every ``--interval`` seconds.
Reported, medians over rounds: wall time until every acknowledgement is stored, events
written, and the writer thread's busy time (what the acks take from ingest, which shares it).
The event store is SQLite in a temporary directory, or PostgreSQL with ``--database`` (a
database of its own, dropped at the end).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from _common import machine

from defi_realtime.application.app import DefiRealtime
from defi_realtime.application.durable_subscriptions import DurableSubscriptions
from defi_realtime.application.realtime.durable import Acknowledgements
from defi_realtime.application.realtime.outbox import Connection
from defi_realtime.application.writer import IngestWriter

T = TypeVar("T")


@contextmanager
def event_store(database: str | None) -> Iterator[DefiRealtime]:
    if database is None:
        with tempfile.TemporaryDirectory() as directory:
            app = DefiRealtime(
                env={
                    "PERSISTENCE_MODULE": "eventsourcing.sqlite",
                    "SQLITE_DBNAME": str(Path(directory) / "events.db"),
                }
            )
            try:
                yield app
            finally:
                app.close()
        return
    import psycopg

    name = f"dr_bench_acks_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = psycopg.conninfo.conninfo_to_dict(database)
    app = DefiRealtime(
        env={
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": name,
            "POSTGRES_HOST": str(url.get("host", "127.0.0.1")),
            "POSTGRES_PORT": str(url.get("port", 5432)),
            "POSTGRES_USER": str(url.get("user", "postgres")),
            "POSTGRES_PASSWORD": str(url.get("password", "")),
        }
    )
    try:
        yield app
    finally:
        app.close()
        with psycopg.connect(database, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class TimedWriter:
    """The writer thread's ``call``, timing what it runs there."""

    def __init__(self, writer: IngestWriter) -> None:
        self.writer = writer
        self.busy = 0.0

    async def call(self, function: Callable[[], T]) -> T:
        def timed() -> T:
            start = time.perf_counter()
            try:
                return function()
            finally:
                self.busy += time.perf_counter() - start

        return await self.writer.call(timed)


def advanced(app: DefiRealtime) -> int:
    notifications = app.recorder.select_notifications(start=None, limit=10_000_000)
    return sum(n.topic.endswith("Subscription.Advanced") for n in notifications)


async def one_round(app: DefiRealtime, acks: int, count: int, interval: float) -> dict[str, Any]:
    writer = IngestWriter(app)
    writer.start()
    try:
        timed = TimedWriter(writer)
        store = DurableSubscriptions(app, timed.call)
        ids = [(await store.create("bench", "protocols")).id for _ in range(count)]
        connection = Connection("bench", close=lambda *_: None, write=lambda _items: None)
        results: dict[str, Any] = {}

        # Baseline: every ack written at once.
        before, timed.busy = advanced(app), 0.0
        start = time.perf_counter()
        for n in range(1, acks + 1):
            await store.advance({ids[n % count]: ("bench", n)})
            await asyncio.sleep(0)
        results["each"] = (time.perf_counter() - start, advanced(app) - before, timed.busy)

        # Batched: the hub's acknowledgements, after the positions written above.
        buffer = Acknowledgements(store, interval=interval)
        before, timed.busy = advanced(app), 0.0
        start = time.perf_counter()
        for n in range(acks + 1, 2 * acks + 1):
            buffer.record(ids[n % count], "bench", n, connection)
            await asyncio.sleep(0)
        await buffer.aclose()  # what is left: written now
        results["batched"] = (time.perf_counter() - start, advanced(app) - before, timed.busy)
        return results
    finally:
        writer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--acks", type=int, default=2_000)
    parser.add_argument("--subscriptions", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--database", default=None)
    args = parser.parse_args()
    print(machine())
    print(
        f"{args.acks} acks over {args.subscriptions} subscriptions, interval {args.interval} s, "
        f"{'PostgreSQL' if args.database else 'SQLite'}, {args.rounds} rounds (medians)"
    )
    rounds = []
    for _ in range(args.rounds):
        with event_store(args.database) as app:
            rounds.append(asyncio.run(one_round(app, args.acks, args.subscriptions, args.interval)))
    print("| acks written | wall s | events | writer busy s | writer busy vs each |")
    print("|---|---:|---:|---:|---:|")
    each_busy = statistics.median(r["each"][2] for r in rounds)
    for name in ("each", "batched"):
        wall = statistics.median(r[name][0] for r in rounds)
        events = statistics.median(r[name][1] for r in rounds)
        busy = statistics.median(r[name][2] for r in rounds)
        print(f"| {name} | {wall:.3f} | {events:.0f} | {busy:.3f} | {busy / each_busy:.3f}x |")


if __name__ == "__main__":
    main()
