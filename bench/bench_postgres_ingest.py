"""Ingest throughput into PostgreSQL: raw psycopg vs stock eventsourcing vs our fast recorder.

    python bench/bench_postgres_ingest.py [--events N] [--batch B] [--reps R] [--dsn URL]

One run measures, each as the median of R repetitions on a fresh table:

  (a) raw psycopg ``executemany`` into a plain table (no keys, no indexes): baseline
  (b) stock ``eventsourcing.postgres.PostgresApplicationRecorder``, 50 events per save
  (c) stock recorder, B events per save
  (d) ``FastPostgresApplicationRecorder``, B events per save
  (e) ``FastPostgresApplicationRecorder``, 50 events per save
  (f) ``Application.save()`` with the stock recorder, B events per save (adds mapping/JSON)
  (g) ``Application.save()`` with the fast recorder, B events per save
  (h) the whole ingest path short of HTTP: raw observation dicts, as ``POST /v2/ingest``
      bodies carry them, through ``build_batch`` (validation) and ``DefiRealtime.ingest``
      (domain commands, events, one save per 20,000 items) on the fast recorder, into one
      growing store of ``--app-events`` events (bench/bench_projections.py's data: 2,000
      protocols, 500 tokens, half-hourly rounds)

Recorder rows insert pre-built stored events (state ~200 bytes of JSON, a realistic topic,
uuid4 originators with ~10 versions each, consecutive events on different originators);
only the insert calls are timed. Everything lives in a throwaway schema, dropped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote, urlparse
from uuid import UUID, uuid4

import psycopg
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
from psycopg.sql import SQL, Identifier

from defi_realtime.adapters.postgres_event_store import FastPostgresApplicationRecorder
from defi_realtime.application.app import DefiRealtime
from defi_realtime.application.ingest import RecordMetric, RecordPrice, build_batch

DEFAULT_DSN = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
TOPIC = "defi_realtime.domain.protocol:Protocol.MetricRecorded"
SMALL_BATCH = 50
VERSIONS_PER_ORIGINATOR = 10


def make_stored_events(n: int) -> list[StoredEvent]:
    """``n`` events over ``n / 10`` originators; event ``j`` is originator ``j % A``."""
    num_originators = max(1, n // VERSIONS_PER_ORIGINATOR)
    originators = [uuid4() for _ in range(num_originators)]
    events = []
    for j in range(n):
        state = json.dumps(
            {
                "protocol": "uniswap-v3",
                "chain": "ethereum",
                "metric": "tvl_usd",
                "value": f"{1_234_567_890 + j * 7.31:.4f}",
                "block": 19_000_000 + j,
                "observed_at": "2024-05-01T12:00:00.000000+00:00",
                "timestamp": {"_type_": "datetime_iso", "_data_": "2024-05-01T12:00:01+00:00"},
            },
            separators=(",", ":"),
        ).encode()
        events.append(
            StoredEvent(
                originator_id=originators[j % num_originators],
                originator_version=j // num_originators + 1,
                topic=TOPIC,
                state=state,
            )
        )
    return events


def batches(items: Sequence[StoredEvent], size: int) -> list[Sequence[StoredEvent]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class Bench:
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        parsed = urlparse(dsn)
        self.params = {
            "dbname": parsed.path.lstrip("/") or "postgres",
            "host": parsed.hostname or "127.0.0.1",
            "port": str(parsed.port or 5432),
            "user": unquote(parsed.username or "postgres"),
            "password": unquote(parsed.password or ""),
        }
        self.schema = f"bench_ingest_{uuid4().hex[:10]}"
        self._table_seq = 0

    def new_table_name(self, prefix: str) -> str:
        self._table_seq += 1
        return f"{prefix}_{self._table_seq}"

    def admin(self, statement: SQL | Any) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(statement)

    def drop_table(self, name: str) -> None:
        self.admin(
            SQL("DROP TABLE IF EXISTS {}.{} CASCADE").format(
                Identifier(self.schema), Identifier(name)
            )
        )

    @contextmanager
    def datastore(self) -> Iterator[PostgresDatastore]:
        datastore = PostgresDatastore(
            self.params["dbname"],
            self.params["host"],
            self.params["port"],
            self.params["user"],
            self.params["password"],
            schema=self.schema,
            pool_size=1,
            max_overflow=0,
        )
        try:
            yield datastore
        finally:
            datastore.close()

    def app_env(self, fast: bool) -> dict[str, str]:
        env = {
            "PERSISTENCE_MODULE": (
                "defi_realtime.adapters.postgres_event_store" if fast else "eventsourcing.postgres"
            ),
            "POSTGRES_DBNAME": self.params["dbname"],
            "POSTGRES_HOST": self.params["host"],
            "POSTGRES_PORT": self.params["port"],
            "POSTGRES_USER": self.params["user"],
            "POSTGRES_PASSWORD": self.params["password"],
            "POSTGRES_SCHEMA": self.schema,
            "POSTGRES_POOL_SIZE": "1",
            "POSTGRES_MAX_OVERFLOW": "0",
        }
        return env

    # -- one repetition of each scenario, returning events/s ------------------------------

    def raw_executemany(self, events: Sequence[StoredEvent], batch: int) -> float:
        table = self.new_table_name("raw")
        self.admin(
            SQL(
                "CREATE TABLE {}.{} (originator_id uuid, originator_version bigint, "
                "topic text, state bytea)"
            ).format(Identifier(self.schema), Identifier(table))
        )
        insert = SQL("INSERT INTO {}.{} VALUES (%s, %s, %s, %s)").format(
            Identifier(self.schema), Identifier(table)
        )
        chunks = [
            [(e.originator_id, e.originator_version, e.topic, e.state) for e in chunk]
            for chunk in batches(events, batch)
        ]
        try:
            with psycopg.connect(self.dsn) as conn, conn.cursor() as cur:
                started = time.perf_counter()
                for rows in chunks:
                    cur.executemany(insert, rows)  # psycopg pipelines executemany
                    conn.commit()
                elapsed = time.perf_counter() - started
        finally:
            self.drop_table(table)
        return len(events) / elapsed

    def recorder(
        self,
        recorder_class: type[PostgresApplicationRecorder],
        events: Sequence[StoredEvent],
        batch: int,
    ) -> float:
        table = self.new_table_name("events")
        chunks = batches(events, batch)
        with self.datastore() as datastore:
            recorder = recorder_class(datastore, events_table_name=table)
            recorder.create_table()
            try:
                started = time.perf_counter()
                for chunk in chunks:
                    ids = recorder.insert_events(chunk)
                    if ids is None or len(ids) != len(chunk):  # cheap sanity check
                        raise AssertionError("notification ids missing")
                elapsed = time.perf_counter() - started
            finally:
                self.drop_table(table)
        return len(events) / elapsed

    def sustained(
        self, recorder_class: type[PostgresApplicationRecorder], total: int, batch: int
    ) -> tuple[float, list[float]]:
        """Insert ``total`` events into ONE growing table; return overall and per-block rates.

        Fresh-table numbers flatter every recorder (small indexes, no checkpoint yet); this
        shows what a long-running writer sees as the table and its indexes grow.
        """
        table = self.new_table_name("sustained")
        block = max(batch, total // 5)
        block_rates: list[float] = []
        elapsed = 0.0
        with self.datastore() as datastore:
            recorder = recorder_class(datastore, events_table_name=table)
            recorder.create_table()
            try:
                for _ in range(0, total, block):
                    chunks = batches(make_stored_events(block), batch)
                    started = time.perf_counter()
                    for chunk in chunks:
                        recorder.insert_events(chunk)
                    took = time.perf_counter() - started
                    elapsed += took
                    block_rates.append(block / took)
            finally:
                self.drop_table(table)
        return block * len(block_rates) / elapsed, block_rates

    def application(self, num_events: int, batch: int, *, fast: bool) -> float:
        app = BenchApp(env=self.app_env(fast))
        try:
            num_pools = max(1, batch // VERSIONS_PER_ORIGINATOR)
            elapsed = 0.0
            saved = 0
            while saved < num_events:
                # Build the next save's pending events outside the timed section.
                pools = [Pool() for _ in range(num_pools)]
                per_pool = max(1, min(batch, num_events - saved) // num_pools)
                for pool in pools:
                    for i in range(per_pool - 1):  # +1 for the created event
                        pool.record_metric("tvl_usd", f"{1_234_567.0 + i:.4f}", 19_000_000 + i)
                started = time.perf_counter()
                recordings = app.save(*pools)
                elapsed += time.perf_counter() - started
                saved += len(recordings)
        finally:
            app.close()
            self.drop_table("benchapp_events")
        return saved / elapsed

    def full_ingest(self, num_events: int) -> float:
        """Scenario (h): events/s through validation, the domain and the store."""
        from bench_projections import ITEMS_PER_SAVE, rounds

        app = DefiRealtime(env=self.app_env(fast=True))
        elapsed = 0.0
        try:
            for items in rounds():
                bodies = [_raw(item) for item in items]
                observations = [b for b in bodies if "protocol" in b]
                prices = [b for b in bodies if "token" in b]
                started = time.perf_counter()
                for i in range(0, len(observations), ITEMS_PER_SAVE):
                    batch = build_batch(observations[i : i + ITEMS_PER_SAVE])
                    [result] = app.ingest([batch])
                    if not result.committed or result.rejected:
                        raise AssertionError(f"ingest refused the data: {result}")
                app.ingest([build_batch(prices=prices)])
                elapsed += time.perf_counter() - started
                if (app.recorder.max_notification_id() or 0) >= num_events:
                    break
            recorded = app.recorder.max_notification_id() or 0
        finally:
            app.close()
            self.drop_table("defirealtime_events")
        return recorded / elapsed


def _raw(item: RecordMetric | RecordPrice) -> dict[str, Any]:
    """The JSON item a client would send for ``item``."""
    if isinstance(item, RecordPrice):
        return {
            "token": item.token,
            "price": item.price,
            "observed_at": item.observed_at,
            "confidence": item.confidence,
            "source": item.source,
        }
    raw: dict[str, Any] = {
        "protocol": item.protocol,
        "metric": item.metric,
        "chain": item.chain,
        "value": item.value,
        "observed_at": item.observed_at,
        "source": item.source,
    }
    if item.listing is not None:
        raw.update(name=item.listing.name, category=item.listing.category)
        raw.update(chains=list(item.listing.chains or ()), url=item.listing.url)
    return raw


class Pool(Aggregate):
    def __init__(self) -> None:
        self.readings: int = 0

    @event("MetricRecorded")
    def record_metric(self, metric: str, value: str, block: int) -> None:
        self.readings += 1


class BenchApp(Application[UUID]):
    name = "BenchApp"


def median_rate(run: Callable[[], float], reps: int) -> float:
    return statistics.median(run() for _ in range(reps))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=50_000, help="events per repetition")
    parser.add_argument("--batch", type=int, default=5_000, help="events per save (large)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (median reported)")
    parser.add_argument("--dsn", default=DEFAULT_DSN, help="PostgreSQL URL")
    parser.add_argument(
        "--skip-app", action="store_true", help="skip the Application.save() rows (f, g)"
    )
    parser.add_argument(
        "--app-events",
        type=int,
        default=300_000,
        help="events per repetition of the whole ingest path (h)",
    )
    parser.add_argument(
        "--sustained",
        type=int,
        default=0,
        metavar="ROWS",
        help="also insert ROWS events per recorder into one growing table (off by default)",
    )
    args = parser.parse_args(argv)
    n, big, reps = args.events, args.batch, args.reps

    bench = Bench(args.dsn)
    with psycopg.connect(bench.dsn, autocommit=True) as conn:
        server = conn.execute("SHOW server_version").fetchone()
        sync_commit = conn.execute("SHOW synchronous_commit").fetchone()
    print(
        f"PostgreSQL {server[0] if server else '?'} (synchronous_commit="
        f"{sync_commit[0] if sync_commit else '?'}), {os.cpu_count()} CPUs, "
        f"psycopg {psycopg.__version__} ({psycopg.pq.__impl__}), "
        f"{n:,} events/rep, median of {reps}"
    )
    events = make_stored_events(n)
    mean_state = statistics.mean(len(e.state) for e in events)
    print(f"stored event state: {mean_state:.0f} bytes JSON, topic {TOPIC!r}\n")

    bench.admin(SQL("CREATE SCHEMA {}").format(Identifier(bench.schema)))
    scenarios: list[tuple[str, str, Callable[[], float]]] = [
        ("a", f"raw psycopg executemany, plain table, {big}/commit",
         lambda: bench.raw_executemany(events, big)),
        ("b", f"stock PostgresApplicationRecorder, {SMALL_BATCH}/save",
         lambda: bench.recorder(PostgresApplicationRecorder, events, SMALL_BATCH)),
        ("c", f"stock PostgresApplicationRecorder, {big}/save",
         lambda: bench.recorder(PostgresApplicationRecorder, events, big)),
        ("d", f"FastPostgresApplicationRecorder, {big}/save",
         lambda: bench.recorder(FastPostgresApplicationRecorder, events, big)),
        ("e", f"FastPostgresApplicationRecorder, {SMALL_BATCH}/save",
         lambda: bench.recorder(FastPostgresApplicationRecorder, events, SMALL_BATCH)),
    ]  # fmt: skip
    if not args.skip_app:
        scenarios += [
            ("f", f"Application.save() + stock recorder, {big}/save",
             lambda: bench.application(n, big, fast=False)),
            ("g", f"Application.save() + fast recorder, {big}/save",
             lambda: bench.application(n, big, fast=True)),
            ("h", f"validation + DefiRealtime.ingest, {args.app_events:,} events",
             lambda: bench.full_ingest(args.app_events)),
        ]  # fmt: skip

    results: dict[str, float] = {}
    try:
        header = f"{'':3}{'scenario':<52}{'events/s':>10}{'vs (a)':>9}{'vs (b)':>9}"
        print(header)
        print("-" * len(header))
        for key, label, run in scenarios:
            results[key] = rate = median_rate(run, reps)
            vs_a = rate / results["a"]
            vs_b = f"{rate / results['b']:8.2f}x" if "b" in results else f"{'':9}"
            print(f"({key}) {label:<51}{rate:>10,.0f}{vs_a:8.2f}x{vs_b}", flush=True)
        print(f"\nfast vs stock at {big}/save: {results['d'] / results['c']:.2f}x")
        if args.sustained:
            print(f"\nsustained: {args.sustained:,} events into one growing table, {big}/save")
            for name, cls in [
                ("stock", PostgresApplicationRecorder),
                ("fast", FastPostgresApplicationRecorder),
            ]:
                overall, blocks = bench.sustained(cls, args.sustained, big)
                per_block = ", ".join(f"{r:,.0f}" for r in blocks)
                print(f"  {name:<6}{overall:>10,.0f} events/s overall (per block: {per_block})")
    finally:
        bench.admin(SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(Identifier(bench.schema)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
