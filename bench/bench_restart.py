"""Restart-to-ready of ``defi-realtime serve`` over a large log: cold (no checkpoint, the
whole log folded: how every start went before ADR 0046) and warm (checkpoints loaded, the
tail replayed).

    python bench/bench_restart.py --store sqlite|postgres [--events 10000000] [--tail 5000]
        [--admin-dsn postgresql://postgres@127.0.0.1:5432/postgres] [--keep PATH_OR_DB]

One run:

1. fills a fresh event store (a temporary DATA_DIR's SQLite file, or a new PostgreSQL
   database ``dr_bench_restart_<random>``) with N events written in bulk through the
   application's recorder (``insert_events``, 20,000 a call; the JSON states are built as
   the domain stores them, so the node reads them as it reads its own). The shape: 6,700
   protocols (the real set's size) over 12 categories and 1-3 of 16 chains each, 500
   tokens; every 15 minutes of data time each protocol reports its total TVL, a third of
   them a TVL per chain, a quarter volume and fees, each token a price (random walks). About
   12,500 events a round: 10M events are ~800 rounds (8.3 days, the hot window).
2. marks the node's SQL followers as caught up (the history tracking row, the alert
   evaluator's, the dispatcher's and the anomaly follower's positions at the head), as a node
   that ran before finds them: their restart costs a read of their position, and projecting
   10M rows into the history model is not what is measured here.
3. starts ``serve`` cold (no checkpoint directory) and times the first 200 of
   ``/health/ready`` (every running projection within READY_MAX_LAG of the head); stops it
   with SIGTERM (the clean shutdown writes the checkpoints; timed too);
4. appends ``--tail`` events (what the rest of the cluster logged meanwhile), starts it warm
   and times readiness again; stops it;
5. prints a markdown table and the checkpoint sizes, then drops the database / directory.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
from _common import cli_command, embedded_env, free_port, machine
from bench_projections import CATEGORIES, CHAINS, T0, create_database, database_url, drop_database
from eventsourcing.persistence import StoredEvent
from sqlalchemy import update

from defi_realtime.adapters.position_stores import SqlPositionStore
from defi_realtime.adapters.sql_history import SqlHistoryReadModel
from defi_realtime.adapters.sql_schema import PROJECTION_TRACKING, write_transaction
from defi_realtime.application.alerting import DEFAULT_NAME as ALERTS
from defi_realtime.application.anomaly_follower import DEFAULT_NAME as ANOMALIES
from defi_realtime.application.app import DefiRealtime
from defi_realtime.application.notifications import DISPATCHER_NAME
from defi_realtime.domain.protocol import Protocol
from defi_realtime.domain.token import Token
from defi_realtime.entrypoints.settings import Settings

ADMIN_DSN = os.environ.get("BENCH_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
ROUND_SECONDS = 900.0
PROTOCOLS = 6_700
TOKENS = 500
PER_INSERT = 20_000
READY_TIMEOUT = 1_800.0

_PROTOCOL = "defi_realtime.domain.protocol:Protocol"
_TOKEN = "defi_realtime.domain.token:Token"


class Generator:
    """The events of the log, round after round, as stored events (see the docstring)."""

    def __init__(self, seed: int = 7) -> None:
        rng = self.rng = random.Random(seed)
        self.protocols = []
        for i in range(PROTOCOLS):
            slug = f"proto-{i:04d}"
            chains = rng.sample(CHAINS, rng.randint(1, 3))
            self.protocols.append(
                (slug, Protocol.create_id(slug), chains, rng.random(), rng.uniform(1e5, 1e9))
            )
        self.tokens = [
            (token, Token.create_id(token), rng.uniform(0.01, 5_000.0))
            for token in (f"coingecko:token-{i:03d}" for i in range(TOKENS))
        ]
        # Each aggregate's last version, by its index (protocols, then tokens): hashing
        # UUIDs per event was most of the generator's time.
        self.versions = [0] * (PROTOCOLS + TOKENS)
        self.tvl = {slug: tvl for slug, _, _, _, tvl in self.protocols}
        self.prices = {token: price for token, _, price in self.tokens}
        self.round = 0

    def _event(self, index: int, originator: uuid.UUID, topic: str, state: str) -> StoredEvent:
        version = self.versions[index] = self.versions[index] + 1
        return StoredEvent(originator, version, topic, state.encode())

    def _metric(
        self,
        index: int,
        originator: uuid.UUID,
        when: str,
        slug: str,
        metric: str,
        chain: str,
        value: float,
        at: float,
    ) -> StoredEvent:
        return self._event(
            index,
            originator,
            f"{_PROTOCOL}.MetricRecorded",
            f'{{"timestamp":{when},"slug":"{slug}","metric":"{metric}","chain":"{chain}",'
            f'"value":{value!r},"observed_at":{at!r},"source":"bench"}}',
        )

    def events(self) -> Iterator[StoredEvent]:
        stamp = '{"_type_":"datetime_iso","_data_":"%s"}'
        for index, (slug, originator, chains, _, _) in enumerate(self.protocols):
            chain_list = ",".join(f'"{chain}"' for chain in chains)
            yield self._event(
                index,
                originator,
                f"{_PROTOCOL}.Listed",
                f'{{"timestamp":{stamp % "2025-01-01T00:00:00+00:00"},'
                f'"originator_topic":"{_PROTOCOL}","slug":"{slug}","name":"Protocol {slug}",'
                f'"category":"{CATEGORIES[sum(map(ord, slug)) % 12]}","chains":[{chain_list}],'
                f'"url":"","observed_at":{T0},"oracles":[]}}',
            )
        for index, (token, originator, _) in enumerate(self.tokens, start=PROTOCOLS):
            yield self._event(
                index,
                originator,
                f"{_TOKEN}.Registered",
                f'{{"timestamp":{stamp % "2025-01-01T00:00:00+00:00"},'
                f'"originator_topic":"{_TOKEN}","token_id":"{token}"}}',
            )
        rng = self.rng
        while True:
            at = T0 + self.round * ROUND_SECONDS
            when = stamp % dt.datetime.fromtimestamp(at, dt.UTC).isoformat()
            for index, (slug, originator, chains, share, _) in enumerate(self.protocols):
                tvl = self.tvl[slug] = self.tvl[slug] * rng.uniform(0.98, 1.02)

                yield self._metric(index, originator, when, slug, "tvl", "total", tvl, at)
                if share < 0.34:
                    for chain in chains:
                        yield self._metric(
                            index, originator, when, slug, "tvl", chain, tvl / len(chains), at
                        )
                if share > 0.75:
                    yield self._metric(
                        index, originator, when, slug, "volume_24h", "total", tvl * 0.1, at
                    )
                    yield self._metric(
                        index, originator, when, slug, "fees_24h", "total", tvl * 0.001, at
                    )
            for index, (token, originator, _) in enumerate(self.tokens, start=PROTOCOLS):
                price = self.prices[token] = self.prices[token] * rng.uniform(0.99, 1.01)
                yield self._event(
                    index,
                    originator,
                    f"{_TOKEN}.PriceRecorded",
                    f'{{"timestamp":{when},"token_id":"{token}","price":{price!r},'
                    f'"observed_at":{at!r},"confidence":null,"source":"bench"}}',
                )
            self.round += 1


def write(settings: Settings, events: Iterator[StoredEvent], count: int) -> float:
    """Write the next ``count`` events through the recorder; seconds it took."""
    app = DefiRealtime(env=settings.event_store_env)
    started = time.perf_counter()
    try:
        chunk: list[StoredEvent] = []
        for written, event in enumerate(events, start=1):
            chunk.append(event)
            if len(chunk) == PER_INSERT or written == count:
                app.recorder.insert_events(chunk)
                chunk = []
                print(f"  {written:,} events", end="\r", flush=True)
            if written == count:
                break
    finally:
        app.close()
    print()
    return time.perf_counter() - started


def mark_caught_up(settings: Settings) -> int:
    """Put the node's SQL followers at the log's head (see the docstring); the head."""
    app = DefiRealtime(env=settings.event_store_env)
    try:
        head = app.recorder.max_notification_id() or 0
    finally:
        app.close()
    history = SqlHistoryReadModel(settings.history_url)
    try:
        with write_transaction(history._engine) as connection:
            connection.execute(update(PROJECTION_TRACKING).values(position=head))
    finally:
        history.close()
    positions = SqlPositionStore(settings.history_url)
    try:
        for name in (ALERTS, DISPATCHER_NAME, ANOMALIES):
            positions.save_sync(name, head)
    finally:
        positions.close()
    return head


def start_to_ready(
    env: dict[str, str], log_path: Path, ready_timeout: float = READY_TIMEOUT
) -> tuple[float, float, str]:
    """Start ``serve``, time the first 200 of /health/ready, stop it (SIGTERM); returns
    (seconds to ready, seconds to stop, the log's last lines)."""
    port = free_port()
    started = time.perf_counter()
    with log_path.open("ab") as log_file:
        server = subprocess.Popen(
            [*cli_command(), "serve", "--port", str(port), "--log-level", "info"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=2.0) as client:
            while True:
                if server.poll() is not None:
                    raise RuntimeError(f"serve exited:\n{log_path.read_text()[-3000:]}")
                with contextlib.suppress(httpx.TransportError):
                    if client.get("/health/ready").status_code == 200:
                        break
                if time.perf_counter() - started > ready_timeout:
                    raise RuntimeError("serve not ready in time")
                time.sleep(0.05)
        ready = time.perf_counter() - started
        stopping = time.perf_counter()
        server.send_signal(signal.SIGTERM)  # by this process object's PID
        server.wait(timeout=300)
        stopped = time.perf_counter() - stopping
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=30)
    return ready, stopped, log_path.read_text()[-2000:]


@contextlib.contextmanager
def stores(kind: str, admin_dsn: str, keep: str | None) -> Iterator[Settings]:
    """Settings over a fresh store: a DATA_DIR, and with ``postgres`` a new database;
    both removed after (unless ``keep``)."""
    if keep and kind == "sqlite":
        data_dir = Path(keep)
    else:
        data_dir = Path(tempfile.mkdtemp(prefix="dr_restart_"))
    database = None
    try:
        if kind == "postgres":
            database = keep or f"dr_bench_restart_{uuid.uuid4().hex[:8]}"
            create_database(admin_dsn, database)
            yield Settings(data_dir=data_dir, database_url=database_url(admin_dsn, database))
        else:
            yield Settings(data_dir=data_dir)
    finally:
        if database is not None and keep is None:
            drop_database(admin_dsn, database)
        if keep is None:
            shutil.rmtree(data_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=("sqlite", "postgres"), required=True)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--tail", type=int, default=5_000)
    parser.add_argument("--admin-dsn", default=ADMIN_DSN)
    parser.add_argument(
        "--ready-timeout",
        type=float,
        default=READY_TIMEOUT,
        help="seconds a start may take to be ready (the cold fold of 10M events is long)",
    )
    parser.add_argument("--keep", default=None, help="keep the DATA_DIR / database (debugging)")
    args = parser.parse_args()
    print(machine())
    with stores(args.store, args.admin_dsn, args.keep) as settings:
        events = Generator().events()
        fill_seconds = write(settings, events, args.events)
        print(
            f"filled {args.events:,} events in {fill_seconds:.1f} s "
            f"({args.events / fill_seconds:,.0f}/s)"
        )
        head = mark_caught_up(settings)
        env = embedded_env()
        env.update(DATA_DIR=str(settings.data_dir), PYTHONUNBUFFERED="1", LOG_FORMAT="text")
        if settings.database_url is not None:
            env["DATABASE_URL"] = settings.database_url
        log_path = settings.data_dir / "serve.log"
        shutil.rmtree(settings.data_dir / "checkpoints", ignore_errors=True)
        cold, cold_stop, _ = start_to_ready(env, log_path, args.ready_timeout)
        sizes = {
            path.name: path.stat().st_size
            for path in sorted((settings.data_dir / "checkpoints").glob("*.ckpt"))
        }
        tail_seconds = write(settings, events, args.tail) if args.tail else 0.0
        warm, warm_stop, last_lines = start_to_ready(env, log_path, args.ready_timeout)
        print()
        print(
            f"| {args.store}: {head:,} events (+{args.tail:,} tail before the warm start) "
            "| to ready s | SIGTERM to exit s |"
        )
        print("|---|---:|---:|")
        print(f"| cold: no checkpoint, the whole log folded | {cold:.1f} | {cold_stop:.1f} |")
        print(f"| warm: checkpoints loaded, the tail replayed | {warm:.1f} | {warm_stop:.1f} |")
        print(f"ratio cold/warm: {cold / warm:.1f}x; tail appended in {tail_seconds:.1f} s")
        print(
            "checkpoints written at the cold run's shutdown:",
            ", ".join(f"{name} {size / 1e6:.1f} MB" for name, size in sizes.items()),
        )
        restored = [line for line in log_path.read_text().splitlines() if "restored" in line]
        print("\n".join(restored[-2:]))
        if not sizes:
            print(last_lines)


if __name__ == "__main__":
    main()
