"""WebSocket upgrades to paths other than ``/v2/realtime`` on the lean transport: the app
has no socket there, so the answer is an HTTP 404 in the API's error shape and the
connection ends — nothing is handed over, held, or waited for on shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import socket
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from defi_realtime.entrypoints.ws_transport import RealtimeWebSocketProtocol
from tests.e2e.conftest import LiveServer, start_server
from tests.e2e.raw_http import assert_json_error, exchange, port_of

UPGRADE_ELSEWHERE = (
    b"GET /elsewhere HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\n"
    b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
)


@pytest.fixture
def lean(tmp_path: Path) -> Iterator[LiveServer]:
    with start_server(tmp_path / "data", ws=RealtimeWebSocketProtocol) as live:
        yield live


def test_a_websocket_upgrade_to_another_path_gets_a_json_404_and_the_connection_ends(
    lean: LiveServer,
) -> None:
    assert_json_error(exchange(port_of(lean), UPGRADE_ELSEWHERE), 404, "not_found")


def _live_protocols() -> int:
    """Connection protocol objects (uvicorn's and ours) alive in this process."""
    gc.collect()
    return sum(1 for thing in gc.get_objects() if isinstance(thing, asyncio.Protocol))


def test_thousands_of_upgrades_to_other_paths_leave_no_connection_or_memory_behind(
    tmp_path: Path,
) -> None:
    requests = 2_000
    with start_server(tmp_path / "data", ws=RealtimeWebSocketProtocol) as live:
        port = port_of(live)
        for _ in range(50):  # warm up: caches, the loop's and the allocator's pools
            exchange(port, UPGRADE_ELSEWHERE)
        protocols_before = _live_protocols()
        tracemalloc.start()
        try:
            before = tracemalloc.take_snapshot()
            for _ in range(requests):
                exchange(port, UPGRADE_ELSEWHERE)
            time.sleep(0.2)  # the server's side of the last connections
            gc.collect()
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
        grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
        protocols_after = _live_protocols()
        stopping = time.monotonic()
    # Leaked, each held ~15 KB and kept the server waiting for it on shutdown.
    assert protocols_after - protocols_before <= 5, (protocols_before, protocols_after)
    assert grown < 1_000 * requests, f"{grown / requests:.0f} bytes per request"
    assert time.monotonic() - stopping < 3.0


def _cli() -> list[str]:
    script = Path(sys.executable).with_name("defi-realtime")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "defi_realtime.entrypoints.cli"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_serve_exits_promptly_on_sigterm_after_upgrades_to_other_paths(tmp_path: Path) -> None:
    port = _free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DATABASE_URL", "REDIS_URL", "AMQP_URL")
    }
    env.update(DATA_DIR=str(tmp_path / "data"), PYTHONUNBUFFERED="1")
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log_file:
        server = subprocess.Popen(
            [*_cli(), "serve", "--port", str(port), "--log-level", "warning"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, log_path.read_text()
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        for _ in range(5):
            assert_json_error(exchange(port, UPGRADE_ELSEWHERE), 404, "not_found")
        stopping = time.monotonic()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pytest.fail(f"serve still running 10 s after SIGTERM:\n{log_path.read_text()}")
        assert time.monotonic() - stopping < 5.0
        # uvicorn re-raises the signal once it has shut down gracefully.
        assert server.returncode in (0, -signal.SIGTERM), log_path.read_text()
    finally:
        if server.poll() is None:
            server.kill()  # by this process object's PID
            server.wait(timeout=10)
