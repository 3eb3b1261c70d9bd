"""End-to-end fixtures: the real server (uvicorn + the Starlette app) on a free port.

Each test gets its own server over its own ``DATA_DIR`` (embedded defaults: SQLite event
store and history in ``tmp_path``, in-process projections and fan-out), started in a
background thread and always shut down, with bounded waits on both sides.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import sys
import threading
import time
import traceback
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette

from defi_realtime.application.app import DefiRealtime
from defi_realtime.entrypoints.api import create_app
from defi_realtime.entrypoints.http_transport import head_guarded_http
from defi_realtime.entrypoints.settings import Settings
from defi_realtime.entrypoints.ws_transport import RealtimeWebSocketProtocol

T = TypeVar("T")

START_TIMEOUT = 15.0
STOP_TIMEOUT = 15.0
# How long a test waits for an asynchronous projection to show an ingest.
SETTLE_TIMEOUT = 5.0


class _ErrorRecords(logging.Handler):
    """Collects ERROR records logged while the server runs: a background task that crashed
    and was only logged is a failure, not a pass."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class LiveServer:
    base_url: str
    ws_url: str
    api_key: str
    data_dir: Path
    settings: Settings
    app: Starlette

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.api_key}


def issue_key(settings: Settings, name: str = "test") -> str:
    """An API key made through the application object, before the server starts."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = DefiRealtime(env=settings.event_store_env)
    try:
        return app.issue_api_key(name=name)
    finally:
        app.close()


def _where_it_waits(server: uvicorn.Server, thread: threading.Thread) -> str:
    """The server thread's stack and its event loop's tasks, for a server that does not
    stop (read from another thread: a diagnosis, not a guarantee)."""
    frame = sys._current_frames().get(thread.ident or 0)
    lines = traceback.format_stack(frame) if frame is not None else ["(no frame)\n"]
    loops = {listener.get_loop() for listener in getattr(server, "servers", [])}
    for loop in loops:
        for task in list(asyncio.all_tasks(loop)):
            lines.append(f"task {task.get_name()}: \n{_await_chain(task.get_coro())}")
    return "".join(lines)


def _await_chain(coro: Any) -> str:
    """Where a suspended coroutine waits: the last few coroutines of its chain of awaits."""
    frames: list[str] = []
    for _ in range(50):
        frame = getattr(coro, "cr_frame", None)
        if frame is None:
            break
        frames.append(traceback.format_stack(frame)[-1])
        coro = getattr(coro, "cr_await", None)
    return "".join(frames[-3:]) or "(no frame)\n"


@contextlib.contextmanager
def start_server(
    data_dir: Path,
    api_key: str | None = None,
    *,
    ws: Any = RealtimeWebSocketProtocol,
    expected_errors: str | None = None,
    start_timeout: float = START_TIMEOUT,
    port: int = 0,
    **overrides: Any,
) -> Iterator[LiveServer]:
    """Run the app under uvicorn in a background thread until the block exits."""
    # ``ws``: the lean transport class (what `defi-realtime serve` runs by default) or one
    # of uvicorn's WebSocket implementations ("auto": the ASGI endpoint);
    # ``port``: 0 for a free one; a restarted server takes its predecessor's so that
    # clients find it again;
    # ``overrides``: more Settings fields (e.g. ws_queue_size).
    settings = Settings(**{"data_dir": data_dir, "poll_interval": 0.05, **overrides})
    if api_key is None:
        api_key = issue_key(settings)
    app = create_app(settings)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_level="warning",
        lifespan="on",
        http=head_guarded_http(settings.http_header_timeout),  # as `defi-realtime serve`
        ws_max_size=1024 * 1024,  # as `defi-realtime serve`
        ws=ws,
        ws_per_message_deflate=False,
        proxy_headers=False,  # as `defi-realtime serve`: TRUSTED_PROXIES decides
        timeout_graceful_shutdown=5,
    )
    uv_server = uvicorn.Server(config)
    errors = _ErrorRecords()
    watched = [logging.getLogger(), logging.getLogger("uvicorn")]
    for logger in watched:
        logger.addHandler(errors)
    thread = threading.Thread(
        target=uv_server.run, kwargs={"sockets": [sock]}, name="e2e-uvicorn", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + start_timeout
        while not uv_server.started:
            if not thread.is_alive():
                pytest.fail("the server thread exited during startup")
            if time.monotonic() > deadline:
                pytest.fail(f"the server did not start within {start_timeout}s")
            time.sleep(0.01)
        yield LiveServer(
            base_url=f"http://127.0.0.1:{port}",
            ws_url=f"ws://127.0.0.1:{port}/v2/realtime",
            api_key=api_key,
            data_dir=settings.data_dir,
            settings=settings,
            app=app,
        )
    finally:
        uv_server.should_exit = True
        thread.join(STOP_TIMEOUT)
        sock.close()
        for logger in watched:
            logger.removeHandler(errors)
    assert not thread.is_alive(), (
        f"the server did not stop within {STOP_TIMEOUT}s; where it waits:\n"
        + _where_it_waits(uv_server, thread)
    )
    formatter = logging.Formatter("%(name)s: %(message)s")
    # ``expected_errors``: a regular expression for the errors a test provokes on purpose.
    unexpected = [
        record
        for record in errors.records
        if expected_errors is None or not re.search(expected_errors, formatter.format(record))
    ]
    logged = "\n".join(formatter.format(record) for record in unexpected)
    assert not unexpected, f"the server logged errors:\n{logged}"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Modules that set ``BACKENDS = ("embedded", "production")`` run every test that uses
    ``server`` on both: embedded adapters, and PostgreSQL + Redis + RabbitMQ."""
    backends = getattr(metafunc.module, "BACKENDS", None)
    if backends and "server" in metafunc.fixturenames:
        metafunc.parametrize("backend", backends)


@pytest.fixture
def backend() -> str:
    return "embedded"


@contextlib.contextmanager
def production_settings() -> Iterator[dict[str, Any]]:
    """Settings overrides for a private deployment on the real services: a fresh database,
    a Redis key prefix and an exchange of its own, all removed afterwards."""
    import asyncio
    import uuid

    import aio_pika
    import psycopg
    import redis

    from tests.services import amqp_url, postgres_url, redis_url

    admin_url, cache_url, broker_url = postgres_url(), redis_url(), amqp_url()
    name = f"dr_e2e_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    base = admin_url.rsplit("/", 1)[0]
    overrides = {
        "database_url": f"{base}/{name}",
        "redis_url": cache_url,
        "redis_prefix": f"{name}:",
        "amqp_url": broker_url,
        "amqp_exchange": name,
    }
    try:
        yield overrides
    finally:
        with psycopg.connect(admin_url, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        client = redis.Redis.from_url(cache_url)
        try:
            keys = list(client.scan_iter(match=f"{name}:*", count=1000))
            if keys:
                client.delete(*keys)
        finally:
            client.close()

        async def delete_exchange() -> None:
            connection = await aio_pika.connect(broker_url)
            async with connection:
                channel = await connection.channel()
                await channel.exchange_delete(name)

        asyncio.run(delete_exchange())


@pytest.fixture
def server(tmp_path: Path, backend: str) -> Iterator[LiveServer]:
    """A fresh server over an empty store for one test (embedded, or on the real services)."""
    if backend == "production":
        with (
            production_settings() as overrides,
            start_server(tmp_path / "data", **overrides) as live,
        ):
            yield live
        return
    with start_server(tmp_path / "data") as live:
        yield live


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One server for a module's tests that each leave the store as they found it."""
    with start_server(tmp_path_factory.mktemp("shared") / "data") as live:
        yield live


@pytest.fixture
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=10.0) as client:
        yield client


def wait_for(
    fetch: Callable[[], T], done: Callable[[T], bool], timeout: float = SETTLE_TIMEOUT
) -> T:
    """Poll ``fetch`` until ``done`` holds (projections are asynchronous); bounded."""
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s; last value: {value!r}")
        time.sleep(0.01)


def log_head(client: httpx.Client) -> int:
    """The event store's head position: it moves if and only if something was recorded."""
    response = client.get("/health")
    assert response.status_code == 200
    head: int = response.json()["log_head"]
    return head


def settle(client: httpx.Client, timeout: float = SETTLE_TIMEOUT) -> dict[str, Any]:
    """Wait until the node's projections have followed the log to its head."""
    health: dict[str, Any] = wait_for(
        lambda: client.get("/health").json(),
        lambda h: h["node_position"] == h["hot_position"] == h["history_position"] == h["log_head"],
        timeout,
    )
    return health


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The one error shape, with the exact status and code."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert set(error) == {"code", "message", "details"}, error
    assert error["code"] == code, error
    assert isinstance(error["message"], str)
    assert error["message"]
    return error


def obs(
    protocol: str,
    value: float,
    observed_at: float,
    *,
    chain: str = "total",
    metric: str = "tvl",
    **listing: Any,
) -> dict[str, Any]:
    """One observation item of an ingest body."""
    item: dict[str, Any] = {
        "protocol": protocol,
        "metric": metric,
        "chain": chain,
        "value": value,
        "observed_at": observed_at,
    }
    item.update(listing)
    return item


@pytest.fixture
async def ahttp(server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10.0) as client:
        yield client


@pytest.fixture
def shared_http(shared_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=shared_server.base_url, timeout=10.0) as client:
        yield client


@pytest.fixture
async def shared_ahttp(shared_server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=shared_server.base_url, timeout=10.0) as client:
        yield client
