"""A service that does not answer ends every command and role in one line, within 5 s.

The real ``defi-realtime`` command in a subprocess, with a service URL pointing at a
loopback port nothing listens on (bound to find a free one, then closed): exit status 69
(EX_UNAVAILABLE) and one stderr line naming the service, its host:port and the cause.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

CLI = str(Path(sys.executable).with_name("defi-realtime"))
DEADLINE = 5.0
EX_UNAVAILABLE = 69


@pytest.fixture
def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections (the kernel's backlog) and never says a word."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


def run(tmp_path: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess[str], float]:
    base = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DATABASE_URL", "REDIS_URL", "AMQP_URL", "LOG_FORMAT", "LOG_LEVEL"}
    }
    base.update({"DATA_DIR": str(tmp_path / "data"), "NO_COLOR": "1", "TERM": "dumb"})
    base.update(env)
    started = time.monotonic()
    result = subprocess.run(
        [CLI, *args], env=base, capture_output=True, text=True, timeout=30, check=False
    )
    return result, time.monotonic() - started


def assert_one_line(
    result: subprocess.CompletedProcess[str], elapsed: float, expected: str
) -> None:
    lines = result.stderr.splitlines()
    assert result.returncode == EX_UNAVAILABLE, (result.returncode, result.stderr[-3000:])
    assert lines == [expected], result.stderr[-3000:]
    assert elapsed < DEADLINE, elapsed


def observations(tmp_path: Path) -> Path:
    path = tmp_path / "obs.jsonl"
    item = {"protocol": "aave-v3", "metric": "tvl", "chain": "total", "value": 1.0}
    path.write_text(json.dumps({**item, "observed_at": 1_765_000_000}) + "\n")
    return path


COMMANDS = {
    "serve": ("serve", "--port", "0"),
    "worker relay": ("worker", "relay"),
    "worker projections": ("worker", "projections"),
    "worker alerts": ("worker", "alerts"),
    "worker notifications": ("worker", "notifications"),
    "keys create": ("keys", "create", "--name", "x"),
    "keys revoke": ("keys", "revoke", "drt_nope"),
    "projections rebuild": ("projections", "rebuild"),
    "alerts backtest": ("alerts", "backtest", "--protocol", "aave-v3", "--value", "1"),
}


@pytest.mark.parametrize("command", [*COMMANDS, "ingest"])
def test_postgresql_down(tmp_path: Path, closed_port: int, command: str) -> None:
    args = ("ingest", str(observations(tmp_path))) if command == "ingest" else COMMANDS[command]
    url = f"postgresql://postgres@127.0.0.1:{closed_port}/test"
    result, elapsed = run(tmp_path, *args, DATABASE_URL=url)
    assert_one_line(
        result,
        elapsed,
        f"error: PostgreSQL at 127.0.0.1:{closed_port} is unreachable: connection refused",
    )


@pytest.mark.parametrize("command", ["serve", "worker projections", "projections rebuild"])
def test_redis_down(tmp_path: Path, closed_port: int, command: str) -> None:
    result, elapsed = run(
        tmp_path, *COMMANDS[command], REDIS_URL=f"redis://127.0.0.1:{closed_port}/0"
    )
    assert_one_line(
        result,
        elapsed,
        f"error: Redis at 127.0.0.1:{closed_port} is unreachable: connection refused",
    )


@pytest.mark.parametrize(
    "command", ["serve", "worker relay", "worker projections", "worker alerts"]
)
def test_rabbitmq_down(tmp_path: Path, closed_port: int, command: str) -> None:
    url = f"amqp://guest:guest@127.0.0.1:{closed_port}/"
    result, elapsed = run(tmp_path, *COMMANDS[command], AMQP_URL=url)
    assert_one_line(
        result,
        elapsed,
        f"error: RabbitMQ at 127.0.0.1:{closed_port} is unreachable: connection refused",
    )


def test_a_service_that_never_answers_is_given_up_on_in_time(
    tmp_path: Path, silent_port: int
) -> None:
    url = f"postgresql://postgres@127.0.0.1:{silent_port}/test"
    result, elapsed = run(tmp_path, "keys", "create", "--name", "x", DATABASE_URL=url)
    assert_one_line(
        result,
        elapsed,
        f"error: PostgreSQL at 127.0.0.1:{silent_port} is unreachable: no answer within 2 s",
    )


def test_a_command_that_does_not_use_a_service_does_not_check_it(
    tmp_path: Path, closed_port: int
) -> None:
    # keys only touch the event store (embedded here): a Redis that is down is not theirs.
    result, _ = run(
        tmp_path, "keys", "create", "--name", "x", REDIS_URL=f"redis://127.0.0.1:{closed_port}/0"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("drt_")


def test_collect_refuses_an_invalid_url_at_once(tmp_path: Path) -> None:
    result, elapsed = run(tmp_path, "collect", "--url", "not-a-url", "--once")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: --url must be an http(s) URL with a host, got 'not-a-url'"
    ]
    assert elapsed < DEADLINE


def test_collect_upstream_down(tmp_path: Path, closed_port: int) -> None:
    url = f"http://127.0.0.1:{closed_port}"
    result, elapsed = run(tmp_path, "collect", "--url", url, "--coins", "", "--once")
    assert_one_line(
        result,
        elapsed,
        f"error: upstream API at 127.0.0.1:{closed_port} is unreachable: connection refused",
    )


def test_collect_database_down(tmp_path: Path, closed_port: int, silent_port: int) -> None:
    # The upstream accepts connections; the event store does not.
    result, elapsed = run(
        tmp_path,
        "collect",
        "--url",
        f"http://127.0.0.1:{silent_port}",
        "--coins",
        "",
        "--once",
        DATABASE_URL=f"postgresql://postgres@127.0.0.1:{closed_port}/test",
    )
    assert_one_line(
        result,
        elapsed,
        f"error: PostgreSQL at 127.0.0.1:{closed_port} is unreachable: connection refused",
    )
