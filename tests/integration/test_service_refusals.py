"""A service that answers but refuses to work (no such database, a refused login, no such
virtual host) ends a command in one line too, with the service's own reason."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import pytest

from tests.services import amqp_url, postgres_url

CLI = str(Path(sys.executable).with_name("defi-realtime"))
EX_UNAVAILABLE = 69


def run(tmp_path: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess[str], float]:
    base = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DATABASE_URL", "REDIS_URL", "AMQP_URL"}
    }
    base.update({"DATA_DIR": str(tmp_path / "data"), **env})
    started = time.monotonic()
    result = subprocess.run(
        [CLI, *args], env=base, capture_output=True, text=True, timeout=30, check=False
    )
    return result, time.monotonic() - started


def where(url: str, default_port: int) -> str:
    parsed = urlparse(url)
    return f"{parsed.hostname}:{parsed.port or default_port}"


@pytest.mark.postgres
def test_a_missing_database(tmp_path: Path) -> None:
    url = urlunparse(urlparse(postgres_url())._replace(path="/dr_no_such_database"))
    result, elapsed = run(tmp_path, "keys", "create", "--name", "x", DATABASE_URL=url)
    assert result.returncode == EX_UNAVAILABLE, result.stderr
    assert result.stderr.splitlines() == [
        f"error: PostgreSQL at {where(url, 5432)} is unavailable: "
        'database "dr_no_such_database" does not exist'
    ]
    assert elapsed < 5.0


@pytest.mark.rabbitmq
def test_a_refused_login_and_a_missing_virtual_host(tmp_path: Path) -> None:
    parsed = urlparse(amqp_url())
    wrong_password = urlunparse(
        parsed._replace(netloc=f"guest:wrong@{parsed.hostname}:{parsed.port or 5672}")
    )
    result, elapsed = run(tmp_path, "worker", "relay", AMQP_URL=wrong_password)
    assert result.returncode == EX_UNAVAILABLE, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(
        f"error: RabbitMQ at {where(wrong_password, 5672)} is unavailable: ACCESS_REFUSED"
    )
    assert "wrong" not in line  # the password is not repeated
    assert elapsed < 5.0

    no_vhost = urlunparse(parsed._replace(path="/dr-no-such-vhost"))
    result, _ = run(tmp_path, "worker", "relay", AMQP_URL=no_vhost)
    assert result.returncode == EX_UNAVAILABLE, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: RabbitMQ at {where(no_vhost, 5672)} is unavailable: ")
    assert "object at 0x" not in line
