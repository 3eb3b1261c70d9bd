"""The history's raw observations as they grow: weekly partitions vs one table (ADR 0047).

    .venv/bin/python bench/bench_history_growth.py [--rows 3000000] [--step 1000000]

In PostgreSQL's database ``test`` (``BENCH_POSTGRES_URL`` to change it), in a schema of its
own dropped at the end, two copies of ``protocol_observations`` as migration 0014 makes
them (weekly range partitions of ``observed_at``) and as before it (one table). Each step
inserts ``--step`` rows into both the way the projection does (multi-row INSERTs of 1,000
rows), then times the metrics route's query (``SqlHistoryReadModel.series``: one series'
last day in hourly buckets, and its whole history in daily buckets) with PostgreSQL's JIT on
and off, and measures the disk per million rows (``pg_total_relation_size``, partitions
summed). Time is compressed: the rows of each step span 1/N of a year (2,000 series), so the
partitioned copy has the year's ~53 weeks, as a year at the seeds' rate would.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid

import psycopg
from _common import machine

URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
DAY = 86_400.0
WEEK = 7 * DAY
MONDAY = 4 * DAY
YEAR = 365 * DAY
T0 = 1_735_689_600.0  # 2025-01-01
SERIES = 2_000
BATCH = 1_000
REPEATS = 15
COLUMNS = "position, protocol, metric, chain, observed_at, value, source, recorded_at"
# The metrics route's statement (sql_history.series), one series, hourly or daily buckets.
SERIES_QUERY = """
SELECT k, value FROM (
  SELECT floor(observed_at / %(bucket)s) AS k, value, row_number() OVER (
    PARTITION BY floor(observed_at / %(bucket)s)
    ORDER BY observed_at DESC, position DESC) AS rank
  FROM {table} WHERE protocol = %(protocol)s AND metric = 'tvl' AND chain = 'total'
  AND observed_at >= %(start)s AND observed_at <= %(end)s) ranked
WHERE rank = 1 ORDER BY k DESC LIMIT 500
"""


def create(cursor: psycopg.Cursor[tuple[object, ...]], table: str, partitioned: bool) -> None:
    key = "position, observed_at" if partitioned else "position"
    cursor.execute(
        f"CREATE TABLE {table} (position bigint NOT NULL, protocol text NOT NULL,"
        " metric text NOT NULL, chain text NOT NULL, observed_at float8 NOT NULL,"
        " value float8 NOT NULL, source text NOT NULL, recorded_at float8 NOT NULL,"
        f" PRIMARY KEY ({key}))" + (" PARTITION BY RANGE (observed_at)" if partitioned else "")
    )
    cursor.execute(f"CREATE INDEX ON {table} (protocol, metric, chain, observed_at)")
    if partitioned:
        start = (T0 - MONDAY) // WEEK * WEEK + MONDAY
        while start < T0 + YEAR:
            cursor.execute(
                f"CREATE TABLE {table}_w{int(start)} PARTITION OF {table}"
                f" FOR VALUES FROM ({start!r}) TO ({start + WEEK!r})"
            )
            start += WEEK


def insert(
    connection: psycopg.Connection[tuple[object, ...]],
    table: str,
    first: int,
    rows: int,
    total: int,
) -> float:
    """Insert rows ``first .. first + rows`` (of ``total`` over the year); rows per second."""
    statement = f"INSERT INTO {table} ({COLUMNS}) VALUES " + ", ".join(
        ["(%s, %s, 'tvl', 'total', %s, %s, 'bench', %s)"] * BATCH
    )
    started = time.perf_counter()
    with connection.cursor() as cursor:
        for low in range(first, first + rows, BATCH):
            values: list[object] = []
            for position in range(low, low + BATCH):
                at = T0 + position * YEAR / total
                values += [position, f"p{position % SERIES}", at, float(position), at]
            cursor.execute(statement, values)
            connection.commit()
    return rows / (time.perf_counter() - started)


def query_ms(
    connection: psycopg.Connection[tuple[object, ...]],
    table: str,
    jit: bool,
    end: float,
    whole: bool,
) -> float:
    timings = []
    with connection.cursor() as cursor:
        cursor.execute(f"SET jit = {'on' if jit else 'off'}")
        for repeat in range(REPEATS):
            parameters = {
                "bucket": DAY if whole else 3_600.0,
                "protocol": f"p{repeat * 37 % SERIES}",
                "start": T0 if whole else end - DAY,
                "end": end,
            }
            started = time.perf_counter()
            cursor.execute(SERIES_QUERY.format(table=table), parameters)
            cursor.fetchall()
            timings.append((time.perf_counter() - started) * 1000)
        connection.rollback()
    return statistics.median(timings)


def size(cursor: psycopg.Cursor[tuple[object, ...]], table: str) -> int:
    cursor.execute(
        "SELECT coalesce((SELECT sum(pg_total_relation_size(relid))"
        " FROM pg_partition_tree(%s) WHERE isleaf), pg_total_relation_size(%s))",
        (table, table),
    )
    row = cursor.fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=3_000_000)
    parser.add_argument("--step", type=int, default=1_000_000)
    options = parser.parse_args()
    total, step = options.rows, options.step
    schema = f"bench_growth_{uuid.uuid4().hex[:8]}"
    print(machine())
    print(f"rows {total:,} in steps of {step:,}; {SERIES:,} series over a year; schema {schema}")
    tables = {"partitioned": "obs_weekly", "one table": "obs_plain"}
    with psycopg.connect(URL) as connection:
        try:
            with connection.cursor() as cursor:
                cursor.execute(f"CREATE SCHEMA {schema}")
                cursor.execute(f"SET search_path = {schema}")
                for layout, table in tables.items():
                    create(cursor, table, layout == "partitioned")
            connection.commit()
            print(
                "| rows | layout | insert rows/s | last day, hourly (ms, jit off / on) |"
                " whole year, daily (ms, jit off / on) | MB per million rows |"
            )
            print("|---|---|---|---|---|---|")
            for first in range(0, total, step):
                end = T0 + (first + step) * YEAR / total
                for layout, table in tables.items():
                    rate = insert(connection, table, first, step, total)
                    with connection.cursor() as cursor:
                        cursor.execute(f"ANALYZE {table}")
                        connection.commit()
                        megabytes = size(cursor, table) / 1e6 / ((first + step) / 1e6)
                    day = [query_ms(connection, table, jit, end, False) for jit in (False, True)]
                    year = [query_ms(connection, table, jit, end, True) for jit in (False, True)]
                    print(
                        f"| {(first + step) / 1e6:.1f}M | {layout} | {rate:,.0f} |"
                        f" {day[0]:.2f} / {day[1]:.2f} | {year[0]:.2f} / {year[1]:.2f} |"
                        f" {megabytes:.0f} |",
                        flush=True,
                    )
        finally:
            connection.rollback()
            with connection.cursor() as cursor:
                cursor.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            connection.commit()


if __name__ == "__main__":
    main()
