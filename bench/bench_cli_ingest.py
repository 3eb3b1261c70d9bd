"""``defi-realtime ingest FILE`` end to end into a fresh PostgreSQL database.

    python bench/bench_cli_ingest.py [--file PATH] [--repeat 3] [--dsn URL]
                                     [--baseline-cli PATH] [--no-reimport]

Each repetition creates an empty database, runs the CLI on the real snapshot file (59,910
rows) with ``DATABASE_URL`` pointing at it, and reads back what was recorded; then imports
the same file again, which must record nothing. Timed as a user sees it: process start,
imports, reading, validation, the domain, the event store and the exit. CPU seconds are the
child's own (user + system, from ``getrusage``): on a shared machine they move much less than
wall time. PostgreSQL's own CPU (another process) is not in them.

``--baseline-cli`` runs another checkout's ``defi-realtime`` (e.g. the main branch's venv) in
the same run, interleaved, for a before/after ratio. The goal line is 20,000 observations/s
(59,910 rows in 3.0 s). Every database is dropped at the end. Skips if the file is absent.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg
from _common import cli_command, machine
from psycopg.sql import SQL, Identifier

DEFAULT_FILE = (
    Path(__file__).resolve().parents[2] / "shared/data/defillama/protocol-snapshots.jsonl.gz"
)
DEFAULT_DSN = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
GOAL_PER_SECOND = 20_000
EVENTS_TABLE = "defirealtime_events"


@dataclass(frozen=True)
class Run:
    wall: float
    cpu: float
    head: int
    topics: dict[str, int]
    reimport_wall: float | None
    reimport_head: int | None


def _database_url(dsn: str, name: str) -> str:
    return f"{dsn.rsplit('/', 1)[0]}/{name}"


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _ingest(command: Sequence[str], path: Path, url: str) -> tuple[float, float]:
    """Run ``COMMAND ingest PATH`` against ``url``: (wall s, CPU s of the child)."""
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "AMQP_URL")}
    env["DATABASE_URL"] = url
    cpu = _children_cpu()
    start = time.perf_counter()
    done = subprocess.run(
        [*command, "ingest", str(path)],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{command[0]} ingest failed:\n{done.stderr[-3000:]}")
    return wall, _children_cpu() - cpu


def _recorded(url: str) -> tuple[int, dict[str, int]]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            SQL("SELECT topic, count(*), max(notification_id) FROM {} GROUP BY topic").format(
                Identifier(EVENTS_TABLE)
            )
        ).fetchall()
    topics = {str(topic).rsplit(":", 1)[-1]: int(count) for topic, count, _ in rows}
    return max((int(head) for *_, head in rows), default=0), topics


def one_run(command: Sequence[str], path: Path, dsn: str, reimport: bool) -> Run:
    name = f"dr_bench_cli_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SQL("CREATE DATABASE {}").format(Identifier(name)))
    url = _database_url(dsn, name)
    try:
        wall, cpu = _ingest(command, path, url)
        head, topics = _recorded(url)
        again_wall = again_head = None
        if reimport:
            again_wall, _ = _ingest(command, path, url)
            again_head, _ = _recorded(url)
        return Run(wall, cpu, head, topics, again_wall, again_head)
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(Identifier(name)))


def _count_rows(path: Path) -> int:
    import gzip

    opener = gzip.open if path.read_bytes()[:2] == b"\x1f\x8b" else open
    with opener(path, "rb") as fh:
        return sum(1 for line in fh if line.strip())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--file", type=Path, default=DEFAULT_FILE, help="file to import")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (median reported)")
    parser.add_argument("--dsn", default=DEFAULT_DSN, help="PostgreSQL URL (an admin database)")
    parser.add_argument(
        "--baseline-cli",
        type=Path,
        help="another checkout's defi-realtime executable, run interleaved for a ratio",
    )
    parser.add_argument(
        "--no-reimport", action="store_true", help="skip the second (all-duplicate) import"
    )
    args = parser.parse_args(argv)
    if not args.file.exists():
        print(f"skipped: {args.file} not found")
        return 0
    rows = _count_rows(args.file)
    print(machine())
    print(f"{args.file.name}: {rows:,} rows; median of {args.repeat}; goal {GOAL_PER_SECOND:,}/s")
    commands = {"ours": cli_command()}
    if args.baseline_cli is not None:
        commands["baseline"] = [str(args.baseline_cli)]
    runs: dict[str, list[Run]] = {name: [] for name in commands}
    for _ in range(args.repeat):
        for name, command in commands.items():  # interleaved: both see the same load
            run = one_run(command, args.file, args.dsn, not args.no_reimport)
            runs[name].append(run)
            print(
                f"  {name}: {run.wall:.2f} s wall, {run.cpu:.2f} s CPU, head {run.head:,}",
                flush=True,
            )

    print(
        f"\n{'':10}{'wall s':>8}{'CPU s':>8}{'obs/s':>9}{'obs/CPU-s':>11}"
        f"{'vs goal':>9}{'events':>8}{'re-import s':>13}  recorded"
    )
    medians: dict[str, float] = {}
    for name, done in runs.items():
        wall = statistics.median(r.wall for r in done)
        cpu = statistics.median(r.cpu for r in done)
        medians[name] = wall
        again = [r.reimport_wall for r in done if r.reimport_wall is not None]
        again_text = f"{statistics.median(again):.2f}" if again else "-"
        last = done[-1]
        topics = ", ".join(f"{t} {n:,}" for t, n in sorted(last.topics.items()))
        print(
            f"{name:<10}{wall:>8.2f}{cpu:>8.2f}{rows / wall:>9,.0f}{rows / cpu:>11,.0f}"
            f"{rows / wall / GOAL_PER_SECOND:>8.2f}x{last.head:>8,}{again_text:>13}  {topics}"
        )
        heads = {r.head for r in done}
        if len(heads) != 1:
            print(f"  !! {name}: the log head differs between runs: {sorted(heads)}")
        if any(r.reimport_head not in (None, r.head) for r in done):
            print(f"  !! {name}: the second import recorded events")
    if "baseline" in medians:
        print(f"\nours vs baseline (wall): {medians['baseline'] / medians['ours']:.2f}x faster")
    print(machine())
    return 0


if __name__ == "__main__":
    sys.exit(main())
