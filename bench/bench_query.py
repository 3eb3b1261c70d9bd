"""The query side at scale: four analyst questions over years of daily TVL in PostgreSQL,
answered by our read model and by DuckDB over the same raw points, in the same run.

    python bench/bench_query.py [--protocols N] [--days 1461] [--repeat 20] [--dsn URL]
        [--keep-db NAME | --db NAME]

The generator scales the real data to ``--days`` daily points for every protocol of the
latest capture (``--protocols`` the largest N; all, ~6,700, by default: ~10M points): each
protocol gets the shape of one of the 38 real daily histories (cycled), scaled so that its
last point is its TVL in the capture. The points go into a fresh PostgreSQL database's
history read model with COPY (as if the history projection had applied them), with the
protocols' listings. The same rows go into an in-memory DuckDB table.

The questions, timed ``--repeat`` times each (p50 and p99 in ms):

(a) TVL by chain now (from the history read model, and (a') as the API answers "now": from
the in-memory hot projection);  (b) TVL by category per week over the last year;
(c) the top 10 of every category as of a date (a year before the end);
(d) the ``asOf`` list of all protocols (that date), sorted by TVL.

Ours are the functions the API calls (``POST /v2/query``, ``/v2/protocols?asOf=``) on the
history read model, without HTTP. The goal (issue 11) is p99 < 100 ms for each, and faster
than DuckDB. Skips if the shared data is absent; the database is dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import gzip
import io
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import psycopg
from _common import machine, summary
from psycopg.sql import SQL, Identifier

from defi_realtime.adapters.memory_hot_projection import InMemoryHotProjection
from defi_realtime.adapters.sql_history import SqlHistoryReadModel
from defi_realtime.application.aggregate import (
    AggregateQuery,
    aggregate,
    bucket_starts,
    buckets_of,
)
from defi_realtime.application.chain_tvl import DAY
from defi_realtime.application.log import LogBatch, LogEntry
from defi_realtime.application.time_travel import Cut, page_of_views, protocols_at
from defi_realtime.application.views import ALL_PROTOCOLS, ProtocolQuery
from defi_realtime.domain.chains import canonical_chain
from defi_realtime.domain.protocol import slugify
from defi_realtime.entrypoints.settings import Settings

DATA = Path(__file__).resolve().parents[2] / "shared/data/defillama"
DEFAULT_DSN = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
GOAL_MS = 100.0


def _latest_capture() -> list[dict[str, Any]]:
    with gzip.open(DATA / "protocol-snapshots.jsonl.gz", "rt") as lines:
        rows = [json.loads(line) for line in lines]
    last = max(row["captured_at"] for row in rows)
    seen: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row["captured_at"] == last and row["tvl"] is not None and row["tvl"] > 0:
            seen.setdefault(slugify(row["name"]), row)
    return sorted(seen.values(), key=lambda row: -row["tvl"])


def _shapes() -> list[list[float]]:
    """The real daily histories, each normalised to end at 1.0."""
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    with gzip.open(DATA / "tvl-history.jsonl.gz", "rt") as lines:
        for line in lines:
            row = json.loads(line)
            series[row["protocol"]].append((row["date"], float(row["tvl"])))
    shapes = []
    for points in series.values():
        values = [value for _, value in sorted(points)]
        if values[-1] > 0:
            shapes.append([value / values[-1] for value in values])
    return shapes


def generate(url: str, protocols: list[dict[str, Any]], days: int) -> tuple[int, int]:
    """The history read model of ``url`` filled: (points, the last day)."""
    shapes = _shapes()
    end_day = int(datetime.fromisoformat(protocols[0]["captured_at"]).timestamp() // DAY)
    model = SqlHistoryReadModel(url.replace("postgresql://", "postgresql+psycopg://"))
    model.close()
    position = 0
    with psycopg.connect(url) as connection:
        with connection.cursor() as cursor:
            for row in protocols:
                position += 1
                chains = list(dict.fromkeys(canonical_chain(c) for c in row["chains"]))
                cursor.execute(
                    "INSERT INTO protocols (slug, name, category, chains, url, position)"
                    " VALUES (%s, %s, %s, %s, %s, %s)",
                    (
                        slugify(row["name"]),
                        row["name"],
                        row["category"] or "",
                        json.dumps(chains),
                        row["url"] or "",
                        position,
                    ),
                )
            copy = (
                "COPY protocol_observations (position, protocol, metric, chain, observed_at,"
                " value, source, recorded_at) FROM STDIN"
            )
            with cursor.copy(copy) as sink:
                buffer = io.StringIO()
                for index, row in enumerate(protocols):
                    shape = shapes[index % len(shapes)]
                    slug = slugify(row["name"])
                    for offset in range(days):
                        day = end_day - days + 1 + offset
                        # The shape's last `days` points, its first value before it began.
                        at = len(shape) - days + offset
                        value = row["tvl"] * shape[max(at, 0)]
                        position += 1
                        stamp = day * DAY + 43_200  # noon UTC
                        buffer.write(
                            f"{position}\t{slug}\ttvl\ttotal\t{stamp}\t{value!r}\tbench\t{stamp}\n"
                        )
                    if buffer.tell() > 8_000_000:
                        sink.write(buffer.getvalue())
                        buffer = io.StringIO()
                sink.write(buffer.getvalue())
            cursor.execute("UPDATE projection_tracking SET position = %s", (position,))
        connection.commit()
        connection.execute("ANALYZE")
    return position - len(protocols), end_day


def _timed(work: Callable[[], object], repeat: int) -> list[float]:
    work()  # warm: caches, plans
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        times.append((time.perf_counter() - started) * 1_000)
    return sorted(times)


def hot_now(url: str) -> Callable[[], object]:
    """(a) as ``POST /v2/query`` answers it without ``asOf``: the in-memory hot projection's
    views, aggregated. The projection is folded from the listings and every series' last 9
    days of points (what it keeps: the latest values and 8 days of TVL; older points change
    none of its views)."""
    entries: list[LogEntry] = []
    with psycopg.connect(url) as connection:
        for slug, name, category, chains, link in connection.execute(
            "SELECT slug, name, category, chains, url FROM protocols ORDER BY position"
        ):
            chains = chains if isinstance(chains, list) else json.loads(chains)
            data = {"name": name, "category": category, "chains": chains, "url": link}
            entries.append(LogEntry(len(entries) + 1, "protocol_listed", slug, data, 0.0))
        (newest,) = connection.execute(
            "SELECT max(observed_at) FROM protocol_observations"
        ).fetchone() or (0.0,)
        for slug, metric, chain, observed_at, value in connection.execute(
            "SELECT protocol, metric, chain, observed_at, value FROM protocol_observations"
            " WHERE observed_at >= %s ORDER BY position",
            (newest - 9 * DAY,),
        ):
            data = {"metric": metric, "chain": chain, "value": value, "observed_at": observed_at}
            entries.append(LogEntry(len(entries) + 1, "metric", slug, data, observed_at))
    hot = InMemoryHotProjection()
    asyncio.run(hot.apply(LogBatch(after=0, last=len(entries), entries=tuple(entries))))
    query = AggregateQuery(group_by="chain")

    async def answer() -> object:
        page = await hot.list_protocols(ProtocolQuery(limit=ALL_PROTOCOLS))
        return aggregate(page.items, query)

    loop = asyncio.new_event_loop()
    return lambda: loop.run_until_complete(answer())


def ours(url: str, end_day: int) -> dict[str, Callable[[], object]]:
    # Collections as a node makes them (GC_THRESHOLDS, ADR 0012).
    gc.set_threshold(*Settings().collector_thresholds)
    history = SqlHistoryReadModel(url.replace("postgresql://", "postgresql+psycopg://"))
    end = (end_day + 1) * DAY - 1
    as_of = end - 365 * DAY

    def weekly() -> object:
        starts = bucket_starts("1w", end - 365 * DAY, end)
        return buckets_of(history, AggregateQuery(group_by="category"), starts, end, Cut())

    return {
        "a: TVL by chain now": lambda: aggregate(
            protocols_at(history, Cut()), AggregateQuery(group_by="chain")
        ),
        "a': the same, the API's way (hot)": hot_now(url),
        "b: category TVL per week, 1 year": weekly,
        "c: top 10 per category as of": lambda: aggregate(
            protocols_at(history, Cut(as_of=as_of)),
            AggregateQuery(group_by="category", top=10, top_per_group=True),
        ),
        "d: asOf list of all protocols": lambda: page_of_views(
            protocols_at(history, Cut(as_of=as_of)), ProtocolQuery(limit=ALL_PROTOCOLS)
        ),
    }


def duck(url: str, end_day: int, scratch: Path) -> dict[str, Callable[[], object]]:
    """The same raw points and listings in an in-memory DuckDB (copied out of PostgreSQL
    as CSV, read with DuckDB's own reader)."""
    points, listings = scratch / "obs.csv", scratch / "protocols.csv"
    with psycopg.connect(url) as connection, connection.cursor() as cursor:
        for path, query in (
            (points, "SELECT protocol, observed_at, value, position FROM protocol_observations"),
            (
                listings,
                "SELECT slug, category, CASE WHEN json_array_length(chains::json) = 1"
                " THEN chains::json->>0 END AS chain FROM protocols",
            ),
        ):
            with (
                path.open("wb") as out,
                cursor.copy(f"COPY ({query}) TO STDOUT WITH (FORMAT csv, HEADER true)") as source,
            ):
                for block in source:
                    out.write(block)
    db = duckdb.connect()
    db.execute(f"CREATE TABLE obs AS SELECT * FROM read_csv('{points}', header = true)")
    db.execute(
        f"CREATE TABLE protocols AS SELECT * FROM read_csv('{listings}', header = true,"
        " all_varchar = true)"
    )
    end = (end_day + 1) * DAY - 1
    as_of = end - 365 * DAY
    latest = """
        SELECT protocol, arg_max(value, (observed_at, position)) AS value FROM obs
        WHERE observed_at <= {t} GROUP BY protocol"""
    return {
        "a: TVL by chain now": lambda: db.execute(
            f"SELECT p.chain, sum(l.value) FROM ({latest.format(t=end)}) l JOIN protocols p"
            " ON p.slug = l.protocol WHERE p.chain IS NOT NULL GROUP BY p.chain"
        ).fetchall(),
        "b: category TVL per week, 1 year": lambda: db.execute(
            f"""SELECT week, category, sum(value) FROM (
                  SELECT protocol, floor(observed_at / {7 * DAY}) AS week,
                         arg_max(value, (observed_at, position)) AS value
                  FROM obs WHERE observed_at > {end - 365 * DAY} GROUP BY protocol, week
                ) w JOIN protocols p ON p.slug = w.protocol GROUP BY week, category"""
        ).fetchall(),
        "c: top 10 per category as of": lambda: db.execute(
            f"""SELECT * FROM (
                  SELECT p.category, l.protocol, l.value, row_number() OVER (
                    PARTITION BY p.category ORDER BY l.value DESC) AS rank
                  FROM ({latest.format(t=as_of)}) l JOIN protocols p ON p.slug = l.protocol
                ) WHERE rank <= 10"""
        ).fetchall(),
        "d: asOf list of all protocols": lambda: db.execute(
            f"SELECT * FROM ({latest.format(t=as_of)}) ORDER BY value DESC"
        ).fetchall(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--protocols", type=int, default=None)
    parser.add_argument("--days", type=int, default=1_461)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--dsn", default=DEFAULT_DSN)
    parser.add_argument("--keep-db", help="generate into this database and keep it")
    parser.add_argument("--db", help="reuse this database (made with --keep-db)")
    args = parser.parse_args(argv)
    if not (DATA / "protocol-snapshots.jsonl.gz").exists():
        print(f"skipped: {DATA} is absent")
        return 0
    protocols = [] if args.db else _latest_capture()[: args.protocols]
    name = args.db or args.keep_db or f"dr_query_{uuid.uuid4().hex[:10]}"
    scratch = Path(tempfile.mkdtemp(prefix="bench_query_"))
    admin = args.dsn
    url = f"{admin.rsplit('/', 1)[0]}/{name}"
    if not args.db:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(SQL("CREATE DATABASE {}").format(Identifier(name)))
    try:
        if args.db:
            with psycopg.connect(url) as connection:
                (last,) = connection.execute(
                    "SELECT max(observed_at) FROM protocol_observations"
                ).fetchone() or (0.0,)
            end_day = int(last // DAY)
            print(f"reusing database {name}")
        else:
            started = time.perf_counter()
            points, end_day = generate(url, protocols, args.days)
            print(
                f"{points:,} points of {len(protocols):,} protocols over {args.days} days into "
                f"PostgreSQL in {time.perf_counter() - started:.0f} s"
            )
            started = time.perf_counter()
            SqlHistoryReadModel(url.replace("postgresql://", "postgresql+psycopg://")).close()
            filled = time.perf_counter() - started
            print(f"rollups filled from them (as the projection would) in {filled:.0f} s")
            with psycopg.connect(url, autocommit=True) as connection:
                # What autovacuum does after a bulk load, without waiting for it.
                connection.execute("VACUUM ANALYZE")
        print(machine())
        answers = {"ours": ours(url, end_day), "duckdb": duck(url, end_day, scratch)}
        print(
            f"\n{'question':36s} {'who':7s} {'p50 ms':>9s} {'p99 ms':>9s}  goal p99 < {GOAL_MS:.0f}"
        )
        for question in answers["ours"]:
            for who, works in answers.items():
                if question not in works:
                    continue
                times = summary(_timed(works[question], args.repeat))
                print(f"{question:36s} {who:7s} {times['p50']:9.1f} {times['p99']:9.1f}")
        print(machine())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if not (args.db or args.keep_db):
            with psycopg.connect(admin, autocommit=True) as connection:
                connection.execute(
                    SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(Identifier(name))
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
