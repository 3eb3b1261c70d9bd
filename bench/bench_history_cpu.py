"""The history projection's CPU per event, worker and PostgreSQL backend, on a new database.

    python bench/bench_history_cpu.py --template NAME [--live-batch 50] [--reps 1]
        [--admin-dsn postgresql://postgres@127.0.0.1:5432/postgres]

``--template`` is a database holding an event log and nothing of the history yet, e.g. the
real snapshot log: ``createdb T && DATABASE_URL=postgresql://.../T defi-realtime ingest
../shared/data/defillama/protocol-snapshots.jsonl.gz`` (never opened by a projection, so its
history tables are created by each run). Each run copies it (``CREATE DATABASE ... TEMPLATE``:
a new database, as a soak or a new deployment starts, with no planner statistics on the
rollups), cuts the log into batches of ``--live-batch`` beforehand, applies them one by one
as ``NodeFollower`` hands live batches over, and reports wall time, this process's CPU and
the CPU of the database's PostgreSQL backends over the applies (``/proc/PID/stat``: the
server must run on this machine), each per 1,000 events. On a box shared with other work,
wall-clock rates follow its load; the CPU per event is the figure to compare. The copy is
dropped at the end.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid

import psycopg
from bench_projections import ADMIN_DSN, LIVE_BATCH, live_batches
from psycopg.sql import SQL, Identifier

from defi_realtime.adapters.event_store_log import EventStoreLog
from defi_realtime.adapters.sql_history import SqlHistoryReadModel
from defi_realtime.application.app import DefiRealtime
from defi_realtime.entrypoints.settings import Settings

_TICKS = os.sysconf("SC_CLK_TCK")


def backend_cpu(admin: psycopg.Connection[tuple[object, ...]], database: str) -> dict[int, float]:
    """CPU seconds so far of each backend connected to ``database``."""
    found: dict[int, float] = {}
    rows = admin.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (database,))
    for (pid,) in rows:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        found[int(str(pid))] = (int(fields[11]) + int(fields[12])) / _TICKS
    return found


def run(admin_dsn: str, template: str, size: int) -> str:
    database = f"dr_bench_hcpu_{uuid.uuid4().hex[:8]}"
    admin = psycopg.connect(admin_dsn, autocommit=True)
    admin.execute(
        SQL("CREATE DATABASE {} TEMPLATE {}").format(Identifier(database), Identifier(template))
    )
    try:
        url = admin_dsn.rsplit("/", 1)[0] + "/" + database
        settings = Settings(DATABASE_URL=url)
        app = DefiRealtime(env=settings.event_store_env)
        history = SqlHistoryReadModel(settings.history_url)
        try:
            batches = live_batches(EventStoreLog(app), size)
            history.reset()
            before = backend_cpu(admin, database)
            started, cpu = time.perf_counter(), time.process_time()
            for batch in batches:
                history.apply(batch)
            wall, cpu = time.perf_counter() - started, time.process_time() - cpu
            after = backend_cpu(admin, database)
        finally:
            history.close()
            app.close()
        server = sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())
        events = batches[-1].last if batches else 0
        per = 1_000_000 / max(events, 1)  # ms per 1,000 events from seconds
        with open("/proc/loadavg") as load:
            load_average = " ".join(load.read().split()[:3])
        return (
            f"| {size:,} | {events / wall:,.0f} | {wall:.1f} | {cpu * per:,.0f} | "
            f"{server * per:,.0f} | {(cpu + server) * per:,.0f} | {load_average} |"
        )
    finally:
        admin.execute(SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(Identifier(database)))
        admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--template", required=True)
    parser.add_argument("--live-batch", type=int, default=LIVE_BATCH)
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--admin-dsn", default=ADMIN_DSN)
    args = parser.parse_args()
    print(
        "| batch | events/s | wall s | worker CPU ms / 1k events | server CPU ms / 1k events "
        "| together | load average |"
    )
    print("|---:|---:|---:|---:|---:|---:|---|")
    for _ in range(args.reps):
        print(run(args.admin_dsn, args.template, args.live_batch), flush=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
