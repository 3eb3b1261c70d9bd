"""Finding the real services for integration tests.

Locally a missing service skips its tests; under ``CI=true`` it fails them, so CI can never
go green without having talked to PostgreSQL, Redis and RabbitMQ.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

import pytest

POSTGRES_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
AMQP_URL = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


def _reachable(url: str, default_port: int) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection(
            (parsed.hostname or "127.0.0.1", parsed.port or default_port), timeout=2
        ):
            return True
    except OSError:
        return False


def require(name: str, url: str, default_port: int) -> str:
    """Return ``url`` if the service answers; otherwise skip (locally) or fail (CI)."""
    if _reachable(url, default_port):
        return url
    message = f"{name} is not reachable at {url}"
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(f"{message} (CI=true: service tests must not be skipped)")
    pytest.skip(message)


def postgres_url() -> str:
    return require("PostgreSQL", POSTGRES_URL, 5432)


def redis_url() -> str:
    return require("Redis", REDIS_URL, 6379)


def amqp_url() -> str:
    return require("RabbitMQ", AMQP_URL, 5672)
