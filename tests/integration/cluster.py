"""Running real ``defi-realtime`` processes against PostgreSQL, Redis and RabbitMQ.

A ``Stack`` is one throwaway deployment: its own PostgreSQL database (``dr_it_<random>``),
its own Redis key prefix (in the test Redis database), its own RabbitMQ exchange, and the
processes started for it. Every process is recorded by PID and only ever signalled by that
PID; ``Stack.close`` stops them (SIGTERM, then SIGKILL after a bounded wait) and deletes the
database, the keys and the exchange.

Each process gets ``PGAPPNAME=<name>``: libpq puts it in ``pg_stat_activity``, so
``lock_holder`` can tell which process holds the relay / projections advisory lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse, urlunparse

import aio_pika
import httpx
import psycopg
from psycopg import sql
from redis.asyncio import Redis

from defi_realtime.adapters.event_store_log import EventStoreLog
from defi_realtime.application.app import DefiRealtime
from defi_realtime.application.log import LogBatch, LogEntry
from defi_realtime.entrypoints.roles import PROJECTIONS_LOCK, RELAY_LOCK
from defi_realtime.entrypoints.settings import Settings
from tests.services import amqp_url, missing, postgres_url, redis_url

PROJECTIONS_LOCK_KEY = PROJECTIONS_LOCK.key
RELAY_LOCK_KEY = RELAY_LOCK.key

__all__ = [
    "PROJECTIONS_LOCK_KEY",
    "RELAY_LOCK_KEY",
    "Process",
    "Stack",
    "connection_pids",
    "fold_current",
    "free_port",
    "lock_holder",
    "rabbitmqctl",
    "read_log",
    "stack",
    "wait_until",
]

T = TypeVar("T")

CLI = (sys.executable, "-m", "defi_realtime.entrypoints.cli")
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
COMMAND_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def wait_until(
    fetch: Callable[[], Any], done: Callable[[Any], bool], timeout: float, what: str
) -> Any:
    """Poll ``fetch`` (sync or async) until ``done(value)``; bounded."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = fetch()
        if asyncio.iscoroutine(value):
            value = await value
        if done(value):
            return value
        if loop.time() > deadline:
            raise AssertionError(f"{what}: not reached within {timeout}s (last: {value!r})")
        await asyncio.sleep(0.05)


@dataclass
class Process:
    """One subprocess, known by its PID, with its output in a log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    port: int | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v2/realtime"

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill9(self) -> None:
        """SIGKILL by PID (no clean-up runs in the process) and reap it."""
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
        self.popen.wait(timeout=STOP_TIMEOUT)

    def stop(self) -> None:
        """SIGTERM by PID, SIGKILL if it does not exit in time."""
        if not self.alive():
            return
        os.kill(self.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.kill(self.pid, signal.SIGKILL)
            self.popen.wait(timeout=STOP_TIMEOUT)

    def output(self, tail: int = 4_000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""


def _with_database(url: str, database: str) -> str:
    return urlunparse(urlparse(url)._replace(path=f"/{database}"))


@dataclass
class Stack:
    """One deployment's services and processes (see the module docstring)."""

    database: str
    database_url: str
    admin_url: str
    redis_url: str
    redis_prefix: str
    amqp_url: str
    exchange: str
    work_dir: Path
    processes: list[Process] = field(default_factory=list)
    _apps: list[DefiRealtime] = field(default_factory=list)

    # --- environment ---------------------------------------------------------------------

    def env(self, name: str, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "DATABASE_URL": self.database_url,
                "REDIS_URL": self.redis_url,
                "REDIS_PREFIX": self.redis_prefix,
                "AMQP_URL": self.amqp_url,
                "AMQP_EXCHANGE": self.exchange,
                "DATA_DIR": str(self.work_dir / "data"),
                "POLL_INTERVAL": "0.1",
                "NODE_ID": name,
                "PGAPPNAME": name,
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(extra)
        return env

    @property
    def settings(self) -> Settings:
        return Settings(
            DATABASE_URL=self.database_url,
            REDIS_URL=self.redis_url,
            REDIS_PREFIX=self.redis_prefix,
            AMQP_URL=self.amqp_url,
            AMQP_EXCHANGE=self.exchange,
            DATA_DIR=self.work_dir / "data",
        )

    # --- processes -----------------------------------------------------------------------

    def spawn(self, name: str, *args: str, port: int | None = None, **env: str) -> Process:
        """``env``: variables over the deployment's (e.g. another ``REDIS_URL``)."""
        log_path = self.work_dir / f"{name}.{len(self.processes)}.log"
        with log_path.open("wb") as log_file:
            popen = subprocess.Popen(
                [*CLI, *args],
                env=self.env(name, **env),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=self.work_dir,
            )
        process = Process(name=name, popen=popen, log_path=log_path, port=port)
        self.processes.append(process)
        return process

    async def serve(self, name: str, **env: str) -> Process:
        """A ``serve`` node on a free port, once ``/health`` answers."""
        port = free_port()
        process = self.spawn(
            name, "serve", "--port", str(port), "--log-level", "warning", port=port, **env
        )
        await self.wait_healthy(process)
        return process

    async def wait_healthy(self, process: Process, timeout: float = START_TIMEOUT) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with httpx.AsyncClient(base_url=process.base_url, timeout=2.0) as client:
            while True:
                if not process.alive():
                    raise AssertionError(f"{process.name} exited:\n{process.output()}")
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get("/health")).status_code == 200:
                        return
                if loop.time() > deadline:
                    raise AssertionError(f"{process.name} not healthy:\n{process.output()}")
                await asyncio.sleep(0.1)

    def worker(self, name: str, role: str) -> Process:
        return self.spawn(name, "worker", role)

    async def run(self, name: str, *args: str, timeout: float = COMMAND_TIMEOUT) -> str:
        """Run a CLI command to completion; returns its stdout, fails on a non-zero exit."""
        process = await asyncio.create_subprocess_exec(
            *CLI,
            *args,
            env=self.env(name),
            stdin=subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=self.work_dir,
        )
        try:
            stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
        except TimeoutError:
            process.kill()  # by this process object's PID
            await process.wait()
            raise
        if process.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} exited {process.returncode}:\n{stderr.decode()[-4000:]}"
            )
        return stdout.decode()

    async def create_key(self) -> str:
        return (await self.run("keys", "keys", "create", "--name", "it")).strip()

    def dump_logs(self) -> str:
        return "\n".join(
            f"----- {p.name} (pid {p.pid}, rc {p.popen.returncode})\n{p.output()}"
            for p in self.processes
        )

    # --- reading the deployment's state --------------------------------------------------

    def app(self) -> DefiRealtime:
        """An application object on this deployment's event store (closed by ``close``)."""
        app = DefiRealtime(env=self.settings.event_store_env)
        self._apps.append(app)
        return app

    def query(self, statement: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.database_url, autocommit=True, connect_timeout=5) as conn:
            return list(conn.execute(statement, params).fetchall())

    def relay_position(self) -> int:
        try:
            rows = self.query("SELECT position FROM log_follower_positions WHERE name = 'relay'")
        except psycopg.errors.UndefinedTable:
            return 0
        return int(rows[0][0]) if rows else 0

    def history_position(self) -> int:
        try:
            rows = self.query("SELECT position FROM projection_tracking WHERE name = 'history'")
        except psycopg.errors.UndefinedTable:
            return 0
        return int(rows[0][0]) if rows else 0

    def redis(self) -> Redis:
        return Redis.from_url(self.redis_url)

    async def hot_position(self) -> int:
        client = self.redis()
        try:
            raw = await client.get(f"{self.redis_prefix}position")
        finally:
            await client.aclose()
        return 0 if raw is None else int(raw)

    async def delete_redis_keys(self) -> int:
        client = self.redis()
        deleted = 0
        try:
            keys = [key async for key in client.scan_iter(match=f"{self.redis_prefix}*")]
            for start in range(0, len(keys), 500):
                deleted += await client.delete(*keys[start : start + 500])
        finally:
            await client.aclose()
        return deleted

    # --- clean-up ------------------------------------------------------------------------

    async def close(self) -> None:
        errors: list[BaseException] = []
        for process in reversed(self.processes):
            try:
                await asyncio.to_thread(process.stop)
            except BaseException as error:  # keep cleaning up
                errors.append(error)
        for app in self._apps:
            with contextlib.suppress(Exception):
                app.close()
        for step in (self._drop_database, self.delete_redis_keys, self._delete_exchange):
            try:
                result = step()
                if asyncio.iscoroutine(result):
                    await result
            except Exception as error:
                errors.append(error)
        if errors:
            raise errors[0]

    async def _drop_database(self) -> None:
        def drop() -> None:
            with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=5) as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(self.database)
                    )
                )

        await asyncio.to_thread(drop)

    async def _delete_exchange(self) -> None:
        connection = await aio_pika.connect(self.amqp_url, timeout=10)
        try:
            channel = await connection.channel()
            await channel.exchange_delete(self.exchange)
        finally:
            await connection.close()


def _create_stack(work_dir: Path) -> Stack:
    server_url = postgres_url()
    redis = redis_url()
    amqp = amqp_url()
    token = uuid.uuid4().hex[:12]
    database = f"dr_it_{token}"
    admin_url = _with_database(server_url, "postgres")
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    work_dir.mkdir(parents=True, exist_ok=True)
    return Stack(
        database=database,
        database_url=_with_database(server_url, database),
        admin_url=admin_url,
        redis_url=redis,
        redis_prefix=f"dr_it:{token}:",
        amqp_url=amqp,
        exchange=f"defi-realtime.it.{token}",
        work_dir=work_dir,
    )


@contextlib.asynccontextmanager
async def stack(work_dir: Path) -> AsyncIterator[Stack]:
    """A fresh deployment (skips locally / fails under CI when a service is missing)."""
    deployment = await asyncio.to_thread(_create_stack, work_dir)
    try:
        yield deployment
    except BaseException:
        print(deployment.dump_logs())  # shown by pytest for the failed test
        raise
    finally:
        await deployment.close()


def lock_holder(deployment: Stack, key: int) -> str | None:
    """``PGAPPNAME`` of the process holding the advisory lock ``key`` in this database."""
    rows = deployment.query(
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = %s AND l.objid = %s "
        "AND l.objsubid = 1 AND l.database = "
        "(SELECT oid FROM pg_database WHERE datname = current_database())",
        key >> 32,
        key & 0xFFFFFFFF,
    )
    return str(rows[0][0]) if rows else None


def read_log(app: DefiRealtime, after: int = 0, page: int = 5_000) -> tuple[int, list[LogEntry]]:
    """Every entry of the event log after ``after``: (the last position, entries)."""
    event_log = EventStoreLog(app)
    entries: list[LogEntry] = []
    position = after
    while True:
        batch: LogBatch = event_log.read(position, page)
        if batch.last == position:
            return position, entries
        entries.extend(batch.entries)
        position = batch.last


def fold_current(entries: Iterable[LogEntry]) -> dict[str, dict[tuple[str, str], float]]:
    """The current value of every (metric, chain) of every protocol, computed plainly:
    the value observed at the latest ``observed_at``; on a tie, the later log position."""
    best: dict[str, dict[tuple[str, str], tuple[float, int, float]]] = {}
    for entry in entries:
        if entry.kind != "metric":
            continue
        data: Mapping[str, Any] = entry.data
        key = (str(data["metric"]), str(data["chain"]))
        candidate = (float(data["observed_at"]), entry.position, float(data["value"]))
        current = best.setdefault(entry.key, {})
        if key not in current or candidate[:2] > current[key][:2]:
            current[key] = candidate
    return {
        slug: {key: value for key, (_, _, value) in readings.items()}
        for slug, readings in best.items()
    }


# --- RabbitMQ's side of a connection --------------------------------------------------


def rabbitmqctl_command() -> list[str]:
    """``rabbitmqctl`` (or ``$RABBITMQCTL``, e.g. ``docker exec rabbitmq rabbitmqctl``)."""
    configured = os.environ.get("RABBITMQCTL")
    if configured:
        return shlex.split(configured)
    found = shutil.which("rabbitmqctl")
    if found is None:
        missing("rabbitmqctl is not available (set RABBITMQCTL to reach the broker)")
    return [found]


async def rabbitmqctl(*args: str, timeout: float = 30.0) -> str:
    process = await asyncio.create_subprocess_exec(
        *rabbitmqctl_command(),
        *args,
        stdin=subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()  # by this process object's PID
        await process.wait()
        raise
    if process.returncode != 0:
        raise AssertionError(f"rabbitmqctl {args} failed: {stderr.decode(errors='replace')}")
    return stdout.decode()


async def connection_pids(connection_name: str) -> list[str]:
    """Broker pids (what ``close_connection`` takes) of connections with that name."""
    # Tab-separated output: the JSON formatter prints pids in Elixir syntax (#PID<...>),
    # which close_connection does not accept.
    listing = await rabbitmqctl(
        "list_connections", "pid", "client_properties", "-q", "--no-table-headers"
    )
    marker = f'{{"connection_name","{connection_name}"}}'
    return [line.partition("\t")[0].strip() for line in listing.splitlines() if marker in line]
