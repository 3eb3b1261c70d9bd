"""Ingest throughput into the embedded SQLite event store: our group-commit path vs the
one-save-per-observation eventsourcing path, plus the end-to-end ``defi-realtime ingest`` CLI.

    python bench/bench_ingest.py [--file PATH] [--repeat 3] [--baseline-items 10000]

Every run uses a FRESH SQLite store (``eventsourcing.sqlite``) in a temporary directory, and
reports the median of ``--repeat`` runs:

  ours      ``read_items`` -> ``import_items`` -> ``IngestWriter`` (group commit), exactly what
            ``defi-realtime ingest FILE`` does, in-process, over the whole file.
            events = notification log head after the run; items = items read from the file
            (observations + listings + unreadable rows).
  baseline  eventsourcing's textbook path, one save (one commit) per observation: for each of
            the first ``--baseline-items`` observations of the file, ``parse_observation``,
            ``repository.get`` the protocol (or ``Protocol.create`` it), ``record_metric``,
            ``app.save(protocol)``. Run twice: with a stock ``eventsourcing.Application``
            (default settings: no aggregate cache, every get replays the protocol's events)
            and with ``DefiRealtime``'s own settings (aggregate cache on), which isolates the
            effect of group commit alone.
  cli       ``defi-realtime ingest FILE`` as a subprocess with ``DATA_DIR`` set to a fresh
            temporary directory: interpreter start, imports, progress-bar line count, import.

Wall-clock rates are quoted; CPU seconds (all threads of the process) are printed beside them
because the machine is shared and noisy. ``--inline`` adds a diagnostic row: the same path with
the writer called on the reading thread (no ``IngestWriter`` thread).

The data file is read-only and never copied. When it is absent the benchmark says so and exits
with status 0.
"""

from __future__ import annotations

import argparse
import itertools
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

from _common import cli_command, embedded_env, machine
from eventsourcing.application import AggregateNotFoundError, Application

from defi_realtime.adapters.defillama_files import detect_format, estimate_items, read_items
from defi_realtime.application.app import DefiRealtime
from defi_realtime.application.importing import SlugRegistry, import_items
from defi_realtime.application.ingest import IngestBatch, IngestResult, parse_observation
from defi_realtime.application.writer import IngestWriter
from defi_realtime.domain.protocol import Protocol
from defi_realtime.entrypoints.settings import Settings

DEFAULT_FILE = (
    Path(__file__).resolve().parents[2] / "shared/data/defillama/protocol-snapshots.jsonl.gz"
)
MAX_REPEAT = 10
MAX_BASELINE_ITEMS = 60_000
CLI_TIMEOUT = 900.0


@dataclass
class Run:
    wall: float
    cpu: float
    events: int
    items: int
    commits: int | None = None


def fresh_env(data_dir: Path) -> dict[str, str]:
    """The event-store environment the CLI builds for ``DATA_DIR=data_dir`` (embedded)."""
    settings = Settings(DATA_DIR=data_dir, DATABASE_URL=None)
    env = settings.event_store_env
    assert env["PERSISTENCE_MODULE"] == "eventsourcing.sqlite", env
    return env


def head_of(app: Application[UUID]) -> int:
    return app.recorder.max_notification_id() or 0


# --------------------------------------------------------------------------- our path


def run_ours(path: Path, workdir: Path, *, inline: bool = False) -> Run:
    """The CLI's import, in-process: detect, read, import_items -> IngestWriter."""
    app = DefiRealtime(env=fresh_env(workdir))
    commits = 0
    ingest = app.ingest

    def counted_ingest(batches: Any, **kwargs: Any) -> list[IngestResult]:
        nonlocal commits
        commits += 1
        return ingest(batches, **kwargs)

    app.ingest = counted_ingest  # type: ignore[method-assign]
    writer = IngestWriter(app)
    submit: Callable[[IngestBatch], Future[IngestResult]]
    if inline:

        def submit(batch: IngestBatch) -> Future[IngestResult]:
            future: Future[IngestResult] = Future()
            future.set_result(app.ingest([batch])[0])
            return future

    else:
        writer.start()
        submit = writer.submit
    items = 0

    def counting(source: Iterator[Any]) -> Iterator[tuple[str, Any, str | None]]:
        nonlocal items
        for item in source:
            items += 1
            yield item.kind, item.item, item.error

    try:
        wall0, cpu0 = time.perf_counter(), time.process_time()
        fmt = detect_format(path)
        import_items(
            counting(read_items(path, fmt=fmt)),
            submit,
            resolve_slugs=fmt != "observations-jsonl",
        )
        writer.stop()  # drains the queue: everything is committed when it returns
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        return Run(wall, cpu, head_of(app), items, commits)
    finally:
        writer.stop()
        app.close()


# --------------------------------------------------------------------------- baseline


class StockApplication(Application[UUID]):
    """eventsourcing's Application with its default settings (no aggregate cache)."""

    name = "BaselineStock"


def observation_prefix(path: Path, count: int) -> list[Mapping[str, Any]]:
    """The first ``count`` observation items of the file, slug collisions resolved as
    ``import_items`` does (read once, outside the timed region)."""
    registry = SlugRegistry()
    observations = (item.item for item in read_items(path) if item.kind == "observation")
    return [registry.resolve(item) for item in itertools.islice(observations, count)]


def run_baseline(observations: list[Mapping[str, Any]], workdir: Path, *, cached: bool) -> Run:
    """One ``save()`` -- one transaction, one commit -- per observation."""
    env = fresh_env(workdir)
    app: Application[UUID] = DefiRealtime(env=env) if cached else StockApplication(env=env)
    commits = 0
    try:
        wall0, cpu0 = time.perf_counter(), time.process_time()
        for raw in observations:
            try:
                metric = parse_observation(raw)
            except ValueError:
                continue  # rejected (e.g. a negative TVL), as ingest would
            try:
                protocol = app.repository.get(Protocol.id_for(metric.protocol))
            except AggregateNotFoundError:
                listing = metric.listing
                assert listing is not None
                assert listing.name
                protocol = Protocol.create(
                    slug=metric.protocol,
                    name=listing.name,
                    category=listing.category or "",
                    chains=list(listing.chains or ()),
                    url=listing.url or "",
                )
            assert isinstance(protocol, Protocol)
            protocol.record_metric(
                metric.metric, metric.chain, metric.value, metric.observed_at, metric.source
            )
            app.save(protocol)
            commits += 1
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        return Run(wall, cpu, head_of(app), len(observations), commits)
    finally:
        app.close()


# --------------------------------------------------------------------------- CLI


def run_cli(path: Path, workdir: Path) -> Run:
    env = embedded_env()
    env["DATA_DIR"] = str(workdir)
    env["COLUMNS"] = "100"
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall0 = time.perf_counter()
    done = subprocess.run(
        [*cli_command(), "ingest", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )
    wall = time.perf_counter() - wall0
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (children.ru_utime - children0.ru_utime) + (children.ru_stime - children0.ru_stime)
    if done.returncode != 0:
        raise RuntimeError(f"CLI ingest failed ({done.returncode}):\n{done.stderr[-4000:]}")
    connection = sqlite3.connect(f"file:{workdir / 'events.sqlite'}?mode=ro", uri=True)
    try:
        (events,) = connection.execute("SELECT MAX(rowid) FROM stored_events").fetchone()
    finally:
        connection.close()
    return Run(wall, cpu, int(events or 0), 0)


# --------------------------------------------------------------------------- reporting


def median(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}" if len(values) > 1 else "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--file", type=Path, default=DEFAULT_FILE, help="snapshot JSONL(.gz)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per row (median quoted)")
    parser.add_argument(
        "--baseline-items",
        type=int,
        default=10_000,
        help="observations in the one-save-per-observation baseline (a prefix of the file)",
    )
    parser.add_argument("--no-cli", action="store_true", help="skip the CLI subprocess row")
    parser.add_argument("--inline", action="store_true", help="add the no-writer-thread row")
    args = parser.parse_args(argv)
    repeat = max(1, min(args.repeat, MAX_REPEAT))
    baseline_items = max(1, min(args.baseline_items, MAX_BASELINE_ITEMS))

    path: Path = args.file
    if not path.is_file():
        print(f"SKIPPED: data file {path} is absent (pass --file PATH)")
        return 0

    print(f"# bench_ingest: {path.name}")
    print(f"machine: {machine()}")
    print(f"repeats: {repeat} (median quoted); baseline prefix: {baseline_items:,} observations")
    print(flush=True)

    rows: dict[str, list[Run]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        root = Path(tmp)
        counter = itertools.count()

        def workdir() -> Path:
            directory = root / f"run-{next(counter)}"
            directory.mkdir()
            return directory

        observations = observation_prefix(path, baseline_items)
        plan: list[tuple[str, Callable[[], Run]]] = [
            ("ours", lambda: run_ours(path, workdir())),
            ("baseline-stock", lambda: run_baseline(observations, workdir(), cached=False)),
            ("baseline-cached", lambda: run_baseline(observations, workdir(), cached=True)),
        ]
        if args.inline:
            plan.append(("ours-inline", lambda: run_ours(path, workdir(), inline=True)))
        if not args.no_cli:
            plan.append(("cli", lambda: run_cli(path, workdir())))
        # Interleave the rows so that a burst of noise does not land on one of them only.
        for index in range(repeat):
            for name, run in plan:
                result = run()
                rows.setdefault(name, []).append(result)
                print(
                    f"  run {index + 1}/{repeat} {name:16s} wall {result.wall:7.2f}s "
                    f"cpu {result.cpu:7.2f}s events {result.events:,}",
                    file=sys.stderr,
                    flush=True,
                )
        line_count_wall = time.perf_counter()
        estimate_items(path)
        line_count_wall = time.perf_counter() - line_count_wall

    prefix = f"first {baseline_items:,} observations"
    labels = {
        "ours": "ours: import_items + IngestWriter (group commit), whole file",
        "ours-inline": "ours, writer inline on the reading thread (diagnostic)",
        "baseline-stock": f"baseline: stock Application, 1 save/observation, {prefix}",
        "baseline-cached": f"baseline: DefiRealtime settings (cache), 1 save/obs., {prefix}",
    }

    def rate(runs: list[Run], attr: str, per: str = "wall") -> float:
        return median([getattr(r, attr) / getattr(r, per) for r in runs])

    base = rows["baseline-stock"]
    base_eps = rate(base, "events")
    base_cpu_eps = rate(base, "events", "cpu")
    base_ips = rate(base, "items")
    cached_eps = rate(rows["baseline-cached"], "events")
    print(
        "| path | events | items | commits | wall s, median (range) | CPU s | events/s "
        "| items/s | events per CPU-s | vs stock baseline: events/s (per CPU-s) "
        "| vs cached baseline: events/s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in ("ours", "ours-inline", "baseline-stock", "baseline-cached"):
        runs = rows.get(name)
        if not runs:
            continue
        eps, ips, cpu_eps = rate(runs, "events"), rate(runs, "items"), rate(runs, "events", "cpu")
        walls = [r.wall for r in runs]
        print(
            f"| {labels[name]} | {runs[0].events:,} | {runs[0].items:,} | {runs[0].commits:,} "
            f"| {median(walls):.2f} ({spread(walls)}) | {median([r.cpu for r in runs]):.2f} "
            f"| {eps:,.0f} | {ips:,.0f} | {cpu_eps:,.0f} "
            f"| {eps / base_eps:.1f}x ({cpu_eps / base_cpu_eps:.1f}x) | {eps / cached_eps:.1f}x |"
        )
    if "cli" in rows:
        runs = rows["cli"]
        walls = [r.wall for r in runs]
        ours_head = rows["ours"][0].events
        print(
            f"| `defi-realtime ingest` (subprocess, end to end) | {runs[0].events:,} | "
            f"{rows['ours'][0].items:,} | - | {median(walls):.2f} ({spread(walls)}) "
            f"| {median([r.cpu for r in runs]):.2f} "
            f"| {median([r.events / r.wall for r in runs]):,.0f} "
            f"| {median([rows['ours'][0].items / r.wall for r in runs]):,.0f} "
            f"| {rate(runs, 'events', 'cpu'):,.0f} "
            f"| {rate(runs, 'events') / base_eps:.1f}x "
            f"({rate(runs, 'events', 'cpu') / base_cpu_eps:.1f}x) "
            f"| {rate(runs, 'events') / cached_eps:.1f}x |"
        )
        if runs[0].events != ours_head:
            print(f"\nWARNING: CLI log head {runs[0].events:,} != in-process head {ours_head:,}")
    print()
    print(
        f"items/s vs baseline (stock): "
        f"{rate(rows['ours'], 'items') / base_ips:.1f}x; "
        f"the CLI's progress-bar line count (estimate_items) took {line_count_wall:.2f}s."
    )
    ours_cpu = median([r.cpu for r in rows["ours"]])
    ours_wall = median([r.wall for r in rows["ours"]])
    print(
        f"CPU s = user + system time of all the process's threads; ours: CPU/wall = "
        f"{ours_cpu / ours_wall:.2f} (well below 1.0 means the process waited for a CPU or "
        "for I/O)."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
