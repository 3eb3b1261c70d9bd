"""One reconciliation run over the real DeFiLlama files, on SQLite and on PostgreSQL + Redis.

    python bench/bench_reconcile.py [--backend sqlite|postgres|both] [--reps 3]
        [--admin-dsn postgresql://postgres@127.0.0.1:5432/postgres]
        [--redis-url redis://127.0.0.1:6379/13]

For each backend: a fresh store (a temporary directory; for PostgreSQL a new database
``dr_bench_reco_<random>`` and a Redis prefix of its own, both dropped at the end), the two
real files (/work/shared/data/defillama: ~6,700 protocols' daily snapshots and 38
protocols' TVL histories) imported with ``defi-realtime ingest``, the hot projection and
the history read model caught up in this process, then, each the median of ``--reps``:

* ``log fold`` - the log read and folded with the hot projections' fold (the baseline:
  every run does it);
* ``clean run`` - ``Reconciliation.run()`` on the clean store (compares everything);
* ``repair run`` - a run after one history row and one hot key were changed by hand (it
  reports and repairs both: the history's rollups are rebuilt whole).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

from _common import embedded_env, machine

from defi_realtime.application.reconciliation import Reconciliation, _Fold
from defi_realtime.entrypoints.container import build_container, provide
from defi_realtime.entrypoints.settings import Settings

DATA = Path("/work/shared/data/defillama")
FILES = ("protocol-snapshots.jsonl.gz", "tvl-history.jsonl.gz")
CLI = str(Path(sys.executable).with_name("defi-realtime"))


def _ingest(env: dict[str, str]) -> None:
    for name in FILES:
        subprocess.run([CLI, "ingest", str(DATA / name)], env=env, check=True, capture_output=True)


async def _measure(settings: Settings, reps: int) -> dict[str, float]:
    container = build_container(settings, "serve")
    try:
        event_log = await provide(container.event_log)
        hot = await provide(container.hot_projection)
        history = await provide(container.history)
        projections = await provide(container.projections)
        head = await asyncio.to_thread(event_log.head)
        for name in ("hot", "history"):
            await projections[name].catch_up_in_steps(head)
        reconciliation = Reconciliation(event_log, hot=hot, history=history)
        figures: dict[str, list[float]] = {"log fold": [], "clean run": [], "repair run": []}
        for _ in range(reps):
            started = time.perf_counter()
            await asyncio.to_thread(_Fold(event_log).advance, head)
            figures["log fold"].append(time.perf_counter() - started)
            started = time.perf_counter()
            report = await reconciliation.run()
            figures["clean run"].append(time.perf_counter() - started)
            assert report.total_discrepancies == 0, report.discrepancies[:5]
        compared = report.compared
        for _ in range(reps):
            await _corrupt(history, hot)
            started = time.perf_counter()
            report = await reconciliation.run()
            figures["repair run"].append(time.perf_counter() - started)
            assert report.repaired.get("history"), report
            assert report.repaired.get("hot"), report
        print(f"compared: {compared}", file=sys.stderr)
        return {name: statistics.median(values) for name, values in figures.items()}
    finally:
        result = container.shutdown_resources()
        if result is not None:
            await result


async def _corrupt(history: object, hot: object) -> None:
    from dataclasses import replace

    from sqlalchemy import update

    from defi_realtime.adapters.memory_hot_projection import InMemoryHotProjection
    from defi_realtime.adapters.sql_schema import PROTOCOL_OBSERVATIONS
    from defi_realtime.application.views import ProtocolQuery

    engine = history._engine  # type: ignore[attr-defined]
    with engine.begin() as connection:
        connection.execute(
            update(PROTOCOL_OBSERVATIONS)
            .where(PROTOCOL_OBSERVATIONS.c.position == 1_000)
            .values(value=PROTOCOL_OBSERVATIONS.c.value + 1)
        )
    view = (await hot.list_protocols(ProtocolQuery(limit=1))).items[0]  # type: ignore[attr-defined]
    if isinstance(hot, InMemoryHotProjection):
        hot.state.protocol_views[view.slug] = replace(view, tvl=(view.tvl or 0) * 1.01)
    else:
        import json

        client, prefix = hot._client, hot._prefix  # type: ignore[attr-defined]
        key = f"{prefix}protocol:{view.slug}"
        stored = json.loads(await client.get(key))
        stored["name"] = stored["name"] + " (drifted)"
        await client.set(key, json.dumps(stored))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--admin-dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    args = parser.parse_args()
    rows: list[tuple[str, dict[str, float]]] = []
    if args.backend in ("sqlite", "both"):
        with tempfile.TemporaryDirectory() as directory:
            env = {**embedded_env(), "DATA_DIR": directory}
            _ingest(env)
            settings = Settings(data_dir=Path(directory))
            rows.append(("SQLite + memory", asyncio.run(_measure(settings, args.reps))))
    if args.backend in ("postgres", "both"):
        import psycopg

        name = f"dr_bench_reco_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(args.admin_dsn, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        url = urlparse(args.admin_dsn)._replace(path=f"/{name}").geturl()
        prefix = f"bench:reco:{uuid.uuid4().hex[:8]}:"
        try:
            with tempfile.TemporaryDirectory() as directory:
                env = {
                    **embedded_env(),
                    "DATA_DIR": directory,
                    "DATABASE_URL": url,
                    "REDIS_URL": args.redis_url,
                    "REDIS_PREFIX": prefix,
                }
                _ingest(env)
                settings = Settings(
                    data_dir=Path(directory),
                    DATABASE_URL=url,
                    REDIS_URL=args.redis_url,
                    REDIS_PREFIX=prefix,
                )
                rows.append(("PostgreSQL + Redis", asyncio.run(_measure(settings, args.reps))))
        finally:
            from redis import Redis

            client = Redis.from_url(args.redis_url)
            for key in client.scan_iter(match=prefix + "*"):
                client.unlink(key)
            client.close()
            with psycopg.connect(args.admin_dsn, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print(machine())
    print(f"reps: {args.reps} (medians, seconds)\n")
    print("| store | log fold | clean run | repair run |\n|---|---|---|---|")
    for label, figures in rows:
        print(
            f"| {label} | {figures['log fold']:.1f} | {figures['clean run']:.1f} | "
            f"{figures['repair run']:.1f} |"
        )


if __name__ == "__main__":
    os.environ.setdefault("LOG_LEVEL", "warning")
    main()
