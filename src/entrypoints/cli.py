"""The ``defi-realtime`` command line."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import importlib.metadata
import logging
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any, Final
from urllib.parse import urlparse

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import Progress, TaskID
from rich.table import Table

from ..adapters.defillama_files import Format, UnknownFormatError, detect_format, estimate_items
from ..application.importing import ImportTotals, import_items, import_prepared
from .accounts_cli import accounts_cli, keys_cli
from .alerts_cli import alerts_cli
from .audit_cli import audit_command
from .configuration import effective, reference
from .console import err, progress_bar
from .container import opened, opened_async, provide
from .first_run import SAMPLE_FILES, SAMPLE_SOURCE
from .logs import configure_logging, logging_config
from .reading import FileReader, ReadError
from .roles import WORKERS, describe
from .settings import Settings
from .smart_money_cli import smart_money_cli
from .startup import ServiceUnavailable, check_services_now

# prometheus_client's multiprocess directory (read by ``adapters/prometheus_metrics``).
MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"

cli = typer.Typer(
    name="defi-realtime",
    help="Real-time DeFi analytics engine: server, workers, ingest and admin tools.",
    no_args_is_help=True,
    add_completion=False,
)
projections_cli = typer.Typer(help="Projections (read models).", no_args_is_help=True)
cli.add_typer(keys_cli, name="keys")
cli.add_typer(accounts_cli, name="accounts")
cli.add_typer(projections_cli, name="projections")
cli.add_typer(alerts_cli, name="alerts")
cli.add_typer(smart_money_cli, name="smart-money")
cli.command("audit")(audit_command)


def _settings() -> Settings:
    return Settings()


# sysexits.h's EX_UNAVAILABLE: a service the command needs does not answer.
EXIT_UNAVAILABLE: Final = 69


def _print_version(value: bool) -> None:
    if value:
        print(f"defi-realtime {importlib.metadata.version('defi-realtime')}")
        raise typer.Exit()


@cli.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """Real-time DeFi analytics engine: server, workers, ingest and admin tools."""


@cli.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="Bind address (default HOST or 127.0.0.1)")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port (default PORT or 8000)")] = None,
    log_level: Annotated[
        str | None, typer.Option(help="log level (default LOG_LEVEL or info)")
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            help="Worker processes sharing the port; each follows the event log itself "
            "(see docs/websocket.md, 'Several processes')",
            min=1,
        ),
    ] = 1,
    sample: Annotated[
        bool,
        typer.Option(
            "--sample",
            help="When the event store is empty, first load the packaged sample of real "
            "DeFiLlama data (December 2025); `make run` does",
        ),
    ] = False,
) -> None:
    """Run the API + WebSocket server with in-process workers."""
    settings = _settings()
    # Before the server's imports (~1 s): a service that is down is said at once.
    check_services_now(settings, "serve")
    import uvicorn

    from .api import create_app
    from .http_transport import head_guarded_http
    from .ws_transport import RealtimeWebSocketProtocol

    if host is not None:
        settings.host = host
    if port is not None:
        settings.port = port
    level = (log_level or settings.log_level).lower()
    # One format for our loggers and uvicorn's (its access and error lines too).
    log_config = logging_config(level, settings.log_format)
    store = "PostgreSQL" if settings.database_url else f"SQLite files in {settings.data_dir}"
    # A log line (JSON with LOG_FORMAT=json), what an operator greps for.
    logging.getLogger(__name__).info("event store and read models: %s", store)
    if sample:
        _load_sample_if_empty(settings)
    # WS_TRANSPORT=lean (default): uvicorn hands /v2/realtime sockets to our asyncio
    # protocol; asgi: uvicorn's own WebSocket stack and the Starlette endpoint. Either way
    # without permessage-deflate (~50% more CPU and ~34 KB more per connection).
    ws: Any = RealtimeWebSocketProtocol if settings.ws_transport == "lean" else "auto"
    metrics_dir: str | None = None
    if workers > 1 or os.environ.get(MULTIPROC_ENV):
        # Metrics of all workers through whichever answers /metrics: prometheus_client's
        # multiprocess mode over a directory of this invocation only (ADR 0025).
        metrics_dir = _fresh_metrics_dir()
    if workers > 1:
        # The stores are made once, here, before the workers start: N processes creating a
        # fresh SQLite store at once race for its first lock ("database is locked" while
        # one switches it to WAL), and a worker that fails to start stops them all.
        _prepare_stores(settings)
        # Each worker process builds its own app (and node) from the environment.
        app: Any = "defi_realtime.entrypoints.api:create_app"
        os.environ["HOST"], os.environ["PORT"] = settings.host, str(settings.port)
    else:
        app = create_app(settings)
    # uvicorn's httptools protocol with a deadline and limits on request heads, refusals in
    # the API's JSON error shape (entrypoints/http_transport.py).
    http: Any = head_guarded_http(settings.http_header_timeout)
    if metrics_dir is not None:
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        uvicorn.run(
            app,
            factory=workers > 1,
            workers=workers if workers > 1 else None,
            host=settings.host,
            port=settings.port,
            log_level=level,
            log_config=log_config,
            http=http,
            ws=ws,
            ws_max_size=settings.ws_max_message,
            ws_per_message_deflate=False,
            # The client address is TRUSTED_PROXIES' business (entrypoints/client_address.py),
            # for both WebSocket transports alike: uvicorn's own rewrite would trust
            # 127.0.0.1 by default, so a local caller could name any address.
            proxy_headers=False,
            backlog=4096,
        )
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _prepare_stores(settings: Settings) -> None:
    """Create (or migrate) the event store, the read models' schema and the positions'
    tables, then close them."""
    with opened(settings) as container:
        container.event_log().head()
        container.history()
        container.delivery_log()
        container.follower_positions()


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    # uvicorn re-raises the SIGTERM it handled once it has shut down: leave through the
    # ``finally`` that removes this invocation's metrics directory, not by the signal.
    raise SystemExit(128 + signum)


def _fresh_metrics_dir() -> str:
    """A new, empty PROMETHEUS_MULTIPROC_DIR for this ``serve`` (inside the one the
    environment names, if any): files of an earlier run must not add to this one's."""
    parent = os.environ.get(MULTIPROC_ENV) or None
    if parent is not None:
        Path(parent).mkdir(parents=True, exist_ok=True)
    directory = tempfile.mkdtemp(prefix="defi-realtime-metrics-", dir=parent)
    os.environ[MULTIPROC_ENV] = directory
    return directory


@cli.command()
def worker(
    role: Annotated[str, typer.Argument(help=" | ".join(WORKERS))],
    metrics_port: Annotated[
        int | None,
        typer.Option(help="Serve Prometheus /metrics on HOST:this port (default: none)"),
    ] = None,
) -> None:
    """Run one background role (for scale-out beside `serve` nodes); `defi-realtime roles`
    shows what each runs."""
    if role not in WORKERS:
        err.print(f"[red]unknown role {role!r}: expected one of {', '.join(WORKERS)}[/red]")
        raise typer.Exit(2)
    settings = _settings()
    # Before the node's imports (~1 s); ``running`` checks again (for library users).
    check_services_now(settings, role)
    from .node import running
    from .observability import worker_metrics

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        async with running(settings, role) as node, contextlib.AsyncExitStack() as stack:
            if metrics_port is not None:
                await stack.enter_async_context(
                    worker_metrics(node, settings.host, metrics_port, settings.metrics_interval)
                )
            logging.getLogger(__name__).info("worker %s running", role)
            await stop.wait()

    asyncio.run(main())


@cli.command("config")
def config_command(
    as_reference: Annotated[
        bool,
        typer.Option("--reference", help="Print every variable as the Markdown table of the docs"),
    ] = False,
) -> None:
    """Show the configuration this process reads (environment, then `.env`), secrets
    masked; `--reference` lists every variable with its default."""
    if as_reference:
        print(reference(), end="")
        return
    table = Table(title="configuration (environment, then .env)")
    for column in ("variable", "value", "from"):
        table.add_column(column)
    for row in effective(_settings()):
        table.add_row(*row)
    Console().print(table)


@cli.command("roles")
def roles_command(
    process: Annotated[
        str, typer.Argument(help=f"serve or a worker: {' | '.join(WORKERS)}")
    ] = "serve",
) -> None:
    """Show what a process runs with the current settings (the role table, applied)."""
    if process != "serve" and process not in WORKERS:
        err.print(f"[red]unknown process {process!r}: serve or {', '.join(WORKERS)}[/red]")
        raise typer.Exit(2)
    rows = describe(process, _settings())
    table = Table(title=f"{process}: roles with these settings")
    for column in rows[0] if rows else ("role",):
        table.add_column(column)
    for row in rows:
        table.add_row(*row.values())
    Console().print(table)


@cli.command()
def ingest(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    source: Annotated[str | None, typer.Option(help="source label for the observations")] = None,
) -> None:
    """Import a file: DeFiLlama /protocols or /protocol/{slug} JSON, observation JSONL, or the
    (gzipped) snapshot and TVL-history JSONL files."""
    try:
        fmt = detect_format(file)
    except UnknownFormatError as error:
        err.print(f"[red]cannot import {file}: {error}[/red]")
        raise typer.Exit(2) from None
    _print_totals(_import_file(_settings(), file, fmt, source))


def _import_file(settings: Settings, file: Path, fmt: Format, source: str | None) -> ImportTotals:
    """``file`` through the writer, with a progress bar (``ingest``, the first-run sample)."""
    # Full collections made rare, as in the nodes (GC_THRESHOLDS, ADR 0012): the aggregate
    # cache grows to every protocol of the file and was rescanned again and again (~10 % of
    # an import's CPU, docs/benchmarks.md). The process's own setting comes back at the end.
    collector = gc.get_threshold()
    gc.set_threshold(*settings.collector_thresholds)
    # The reading process is forked first, while this process has no thread or connection;
    # counting the items and opening the store overlap with its first chunk.
    with (
        FileReader(file, fmt, source) as reader,
        opened(settings) as container,
        contextlib.ExitStack() as restore,
    ):
        restore.callback(gc.set_threshold, *collector)
        total = estimate_items(file, fmt=fmt)
        writer = container.writer()
        with progress_bar() as progress:
            task = progress.add_task(f"ingest {file.name} ({fmt})", total=total)
            try:
                totals = import_prepared(
                    reader, writer.submit, progress=lambda n: progress.advance(task, n)
                )
            except ReadError as error:
                err.print(f"[red]{error}[/red]")
                raise typer.Exit(1) from None
        totals.renamed_slugs = reader.renamed
    return totals


def _load_sample_if_empty(settings: Settings) -> None:
    """The first-run sample (``serve --sample``): loaded only into an empty event store, so
    a restart, or a store that already holds data, is left as it is."""
    with opened(settings) as container:
        head = container.event_log().head()
    log = logging.getLogger(__name__)
    if head:
        log.info("the event store holds %s events: the sample is not loaded", f"{head:,}")
        return
    accepted = 0
    for file in SAMPLE_FILES:
        totals = _import_file(settings, file, detect_format(file), SAMPLE_SOURCE)
        accepted += totals.accepted
    log.info(
        "first run: loaded %s observations of real DeFiLlama data (December 2025, shipped in "
        "the package; figures by DeFiLlama, defillama.com)",
        f"{accepted:,}",
    )


def _completed(progress: Progress, task: TaskID, position: int) -> None:
    progress.update(task, completed=position)


def _print_totals(totals: ImportTotals) -> None:
    table = Table(title="ingest summary", show_header=False)
    table.add_row("accepted", f"{totals.accepted:,}")
    table.add_row("duplicates", f"{totals.duplicates:,}")
    table.add_row("rejected", f"{totals.rejected:,}")
    if totals.renamed_slugs:
        table.add_row("colliding slugs renamed", f"{totals.renamed_slugs:,}")
    table.add_row("log position", f"{totals.position:,}")
    err.print(table)
    for reason, count in sorted(totals.reasons.items(), key=lambda kv: -kv[1])[:10]:
        err.print(f"  rejected {count:,} x {reason}")


# The largest coins by market cap, as DeFiLlama names them: what `collect` prices by default.
DEFAULT_COINS: Final = (
    "coingecko:bitcoin",
    "coingecko:ethereum",
    "coingecko:tether",
    "coingecko:binancecoin",
    "coingecko:solana",
    "coingecko:usd-coin",
    "coingecko:ripple",
    "coingecko:dogecoin",
    "coingecko:tron",
    "coingecko:cardano",
)


@cli.command()
def collect(
    url: Annotated[str, typer.Option(help="base URL of a DeFiLlama-compatible API")] = (
        "https://api.llama.fi"
    ),
    coins_url: Annotated[
        str, typer.Option(help="base URL of its coins API (DeFiLlama's is coins.llama.fi)")
    ] = "https://coins.llama.fi",
    coins: Annotated[
        str,
        typer.Option(help="comma-separated coin ids to price each poll; empty: none"),
    ] = ",".join(DEFAULT_COINS),
    interval: Annotated[float, typer.Option(help="seconds between polls")] = 300.0,
    once: Annotated[bool, typer.Option(help="poll once and exit")] = False,
    polls: Annotated[int | None, typer.Option(help="stop after this many polls")] = None,
) -> None:
    """Poll a DeFiLlama-compatible API's /protocols and coin prices; ingest what changed."""
    from ..adapters.defillama_http import DefiLlamaHttpSource

    limit = 1 if once else polls
    wanted = [coin.strip() for coin in coins.split(",") if coin.strip()]
    for option, value in (("--url", url), ("--coins-url", coins_url)):
        if not _http_url(value):
            err.print(f"error: {option} must be an http(s) URL with a host, got {value!r}")
            raise typer.Exit(2)

    async def main() -> None:
        from ..adapters.service_checks import check_reachable

        settings = _settings()
        # The upstream too: a poller that cannot reach it says so at once.
        await check_reachable("upstream API", url, settings.startup_check_timeout)
        if wanted:
            await check_reachable("upstream coins API", coins_url, settings.startup_check_timeout)
        async with opened_async(settings) as container:
            writer = await provide(container.writer)
            source = DefiLlamaHttpSource(url, coins_url=coins_url)
            done = 0
            try:
                while limit is None or done < limit:
                    with err.status(f"polling {url}/protocols and {len(wanted)} coin prices"):
                        _observed_at, items = await source.fetch_protocols()
                        items += await source.fetch_prices(wanted)
                    with progress_bar() as progress:
                        task = progress.add_task("ingest poll", total=len(items))
                        totals = await asyncio.to_thread(
                            import_items,
                            ((item.kind, item.item, item.error) for item in items),
                            writer.submit,
                            progress=functools.partial(progress.advance, task),
                        )
                    _print_totals(totals)
                    done += 1
                    if limit is None or done < limit:
                        await asyncio.sleep(interval)
            finally:
                await source.aclose()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())


def _http_url(value: str) -> bool:
    parsed = urlparse(value)
    try:
        parsed.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        return False
    return parsed.scheme in ("http", "https") and bool(parsed.hostname)


REBUILD_PAGE = 10_000


@projections_cli.command("rebuild")
def projections_rebuild(
    which: Annotated[
        str,
        typer.Argument(help="hot (current values, rankings), history, or all (hot first)"),
    ] = "all",
) -> None:
    """Rebuild the hot projection and/or the history read model from the event store."""
    if which not in ("hot", "history", "all"):
        err.print(f"[red]unknown projection {which!r}: choose hot, history or all[/red]")
        raise typer.Exit(2)

    async def main() -> None:
        async with opened_async(_settings(), hot=which != "history") as container:
            event_log = await provide(container.event_log)
            projections = await provide(container.projections)
            head = await asyncio.to_thread(event_log.head)
            runners = []
            if which in ("hot", "all"):
                await (await provide(container.hot_projection)).reset()
                hot = projections["hot"]
                # Larger pages than live catch-up: each protocol's state is read, folded
                # and written once per page, so a rebuild does ~15 % less work per event
                # (bench/bench_projections.py --page-size); a page's script holds Redis for
                # tens of milliseconds, acceptable while rebuilding.
                hot.page_size = REBUILD_PAGE
                runners.append(hot)
            if which in ("history", "all"):
                await asyncio.to_thread((await provide(container.history)).reset)
                runners.append(projections["history"])
            with progress_bar() as progress:
                for runner in runners:
                    task = progress.add_task(f"rebuild {runner.name}", total=head)
                    await runner.catch_up_in_steps(
                        head, progress=functools.partial(_completed, progress, task)
                    )
                    progress.update(task, completed=head)

    asyncio.run(main())


@cli.command()
def reconcile(
    repair: Annotated[
        bool, typer.Option("--repair/--no-repair", help="re-apply drifted keys from the log")
    ] = True,
) -> None:
    """Compare the read models with the event log once (and an upstream API with
    RECONCILE_UPSTREAM_URL), repair drift, record the run. Exit 0: the read models agree
    with the log; 1: some did not (repaired unless --no-repair); upstream differences are
    reported only (docs/reconciliation.md)."""

    async def main() -> int:
        async with opened_async(_settings(), hot=True) as container:
            reconciliation = await provide(container.reconciliation)
            report = await reconciliation.run(repair=repair)
        table = Table("store", "position", "compared", "discrepancies", "repaired", "skipped")
        for store in ("hot", "history", "upstream"):
            if store in report.compared:
                table.add_row(
                    store,
                    str(report.positions.get(store, "-")),
                    str(report.compared[store]),
                    str(report.discrepancy_counts.get(store, 0)),
                    str(report.repaired.get(store, 0)),
                    str(report.skipped.get(store, 0)),
                )
        Console().print(table)
        for found in report.discrepancies[:RECONCILE_SHOWN]:
            Console().print(
                f"{found.store} {found.key} {found.field}: expected {found.expected!r}, "
                f"found {found.found!r}",
                markup=False,
            )
        ours = sum(report.discrepancy_counts.get(store, 0) for store in ("hot", "history"))
        return 1 if ours else 0

    raise typer.Exit(asyncio.run(main()))


# Discrepancies `reconcile` prints (the run's record keeps up to 100 per store).
RECONCILE_SHOWN: Final = 20


def main() -> None:
    """The console script: a service that does not answer, or a setting that is not valid,
    ends the command with one line on stderr (no traceback)."""
    try:
        # Every command logs in LOG_FORMAT at LOG_LEVEL (entrypoints/logs.py).
        settings = _settings()
        configure_logging(settings.log_level, settings.log_format)
        cli()
    except ServiceUnavailable as error:
        sys.stderr.write(f"error: {error}\n")
        sys.exit(EXIT_UNAVAILABLE)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in problem['loc'])}: {problem['msg']}"
            for problem in error.errors()
        )
        sys.stderr.write(f"error: invalid settings: {problems}\n")
        sys.exit(2)


if __name__ == "__main__":
    main()
