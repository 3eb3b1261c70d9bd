"""Loading a Protocol aggregate: 10 events against a million, with snapshots and without.

    python bench/bench_aggregate_load.py [--events 10,1000000] [--stores sqlite,postgres]
                                         [--repeat 7] [--replay-max N] [--dsn URL]

For each store and each event count N, a fresh store (a SQLite file in a temporary
directory; a throwaway PostgreSQL schema, dropped at the end) gets ONE protocol with N events
(``Listed`` and N-1 ``MetricRecorded`` over four series, one a minute), written straight
through the recorders in batches of 10,000, with the snapshots the application takes (one
every ``SNAPSHOT_INTERVAL`` events, taken from the aggregate as it grows). Then, cache cold
each time, ``--repeat`` times:

  repository  ``app.repository.get`` (a command's or a query's read): latest snapshot + the
              events after it
  ingest      ``DefiRealtime._loaded`` (how an ingest group loads what its cache lacks)
  replay      the baseline: every stored event folded (what loading cost before snapshots;
              run once above 100,000 events, skipped above ``--replay-max``)

Medians in milliseconds, and the ratio of N events to the smallest N.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote, urlparse
from uuid import uuid4

import psycopg
from _common import machine
from eventsourcing.application import project_aggregate
from psycopg.sql import SQL, Identifier

from defi_realtime.application.app import _LATEST, SNAPSHOT_INTERVAL, DefiRealtime
from defi_realtime.domain.protocol import Protocol

T0 = 1_600_000_000.0
WRITE_BATCH = 10_000
SERIES = [("tvl", "total"), ("tvl", "Ethereum"), ("tvl", "Arbitrum"), ("fees_24h", "total")]
DEFAULT_DSN = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


@contextmanager
def sqlite_env() -> Iterator[dict[str, str]]:
    with tempfile.TemporaryDirectory() as directory:
        yield {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": f"{directory}/e.db"}


@contextmanager
def postgres_env(dsn: str) -> Iterator[dict[str, str]]:
    parsed = urlparse(dsn)
    schema = f"bench_load_{uuid4().hex[:10]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SQL("CREATE SCHEMA {}").format(Identifier(schema)))
    try:
        yield {
            "PERSISTENCE_MODULE": "defi_realtime.adapters.postgres_event_store",
            "POSTGRES_DBNAME": parsed.path.lstrip("/") or "postgres",
            "POSTGRES_HOST": parsed.hostname or "127.0.0.1",
            "POSTGRES_PORT": str(parsed.port or 5432),
            "POSTGRES_USER": unquote(parsed.username or "postgres"),
            "POSTGRES_PASSWORD": unquote(parsed.password or ""),
            "POSTGRES_SCHEMA": schema,
        }
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(Identifier(schema)))


def fill(app: DefiRealtime, events: int) -> Protocol:
    """Write one protocol with ``events`` events and its snapshots; the protocol as built."""
    assert app.snapshots is not None
    protocol = Protocol.create("big", "Big", "Dexes", ["Ethereum", "Arbitrum"])
    snapshots: list[Any] = []

    def flush() -> None:
        app.recorder.insert_events(list(map(app.mapper.to_stored_event, protocol.collect_events())))
        if snapshots:
            assert app.snapshots is not None
            app.snapshots.recorder.insert_events(list(map(app.mapper.to_stored_event, snapshots)))
            snapshots.clear()

    for i in range(events - 1):
        metric, chain = SERIES[i % len(SERIES)]
        protocol.record_metric(metric, chain, 1e6 + i, T0 + 60.0 * (i // len(SERIES)))
        if protocol.version % SNAPSHOT_INTERVAL == 0:
            snapshots.append(Protocol.Snapshot.take(protocol))
        if len(protocol.pending_events) >= WRITE_BATCH:
            flush()
    flush()
    return protocol


def timed(work: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = work()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), result


def measure(env: dict[str, str], events: int, repeat: int, replay_max: int) -> dict[str, float]:
    app = DefiRealtime(env=env)
    try:
        started = time.perf_counter()
        built = fill(app, events)
        print(f"  wrote {events:,} events in {time.perf_counter() - started:.1f} s", flush=True)
        protocol_id = built.id

        def repository() -> Any:
            return app.repository.get(protocol_id, version=_LATEST)  # never the cache

        def ingest() -> Any:
            return app._loaded([protocol_id])[protocol_id]

        def replay() -> Any:
            return project_aggregate(None, app.events.get(protocol_id))

        figures: dict[str, float] = {}
        for name, work, times in (
            ("repository", repository, repeat),
            ("ingest", ingest, repeat),
            ("replay", replay, 0 if events > replay_max else 1 if events > 100_000 else repeat),
        ):
            if not times:
                continue
            figures[name], loaded = timed(work, times)
            assert loaded.version == built.version
            assert loaded.current == built.current
            assert loaded.recent == built.recent
            assert loaded.horizon == built.horizon
        return figures
    finally:
        app.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--events", default="10,1000000")
    parser.add_argument("--stores", default="sqlite,postgres")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--replay-max", type=int, default=10**9)
    parser.add_argument("--dsn", default=DEFAULT_DSN)
    args = parser.parse_args()
    counts = [int(n) for n in args.events.split(",")]
    print(machine())
    print(f"snapshot every {SNAPSHOT_INTERVAL} events; medians of {args.repeat}, cache cold")
    for store in args.stores.split(","):
        results: dict[int, dict[str, float]] = {}
        for events in counts:
            print(f"{store}, {events:,} events:", flush=True)
            opened = sqlite_env() if store == "sqlite" else postgres_env(args.dsn)
            with opened as env:
                results[events] = measure(env, events, args.repeat, args.replay_max)
            print("  " + ", ".join(f"{k} {v:.2f} ms" for k, v in results[events].items()))
        smallest = results[min(counts)]
        for events in counts:
            ratios = ", ".join(
                f"{k} x{v / smallest[k]:.1f}" for k, v in results[events].items() if smallest.get(k)
            )
            print(f"{store}: {events:,} events / {min(counts):,}: {ratios}")


if __name__ == "__main__":
    main()
