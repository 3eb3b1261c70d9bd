"""Finding the real services for integration tests.

Locally a missing service skips its tests; under ``CI=true`` it fails them, so CI can never
go green without having talked to PostgreSQL, Redis and RabbitMQ.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn
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


def on_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def missing(message: str) -> NoReturn:
    """Skip the test (locally) or fail it (under ``CI=true``): something it needs is absent."""
    if on_ci():
        pytest.fail(f"{message} (CI=true: this test must not be skipped)")
    pytest.skip(message)


def require_file(path: Path) -> Path:
    """``path`` if it exists (the shared DeFiLlama captures); otherwise skip or fail."""
    if not path.exists():
        missing(f"{path} is not present (the shared DeFiLlama data)")
    return path


def require(name: str, url: str, default_port: int) -> str:
    """Return ``url`` if the service answers; otherwise skip (locally) or fail (CI)."""
    if _reachable(url, default_port):
        return url
    missing(f"{name} is not reachable at {url}")


def require_tool(name: str) -> str:
    """The path of the program ``name``; if it is not installed, skip (locally) or fail
    (CI), like a missing service."""
    path = shutil.which(name)
    if path is not None:
        return path
    missing(f"{name} is not installed (apt-get install prometheus)")


def postgres_url() -> str:
    return require("PostgreSQL", POSTGRES_URL, 5432)


def redis_url() -> str:
    return require("Redis", REDIS_URL, 6379)


def amqp_url() -> str:
    return require("RabbitMQ", AMQP_URL, 5672)


@contextlib.contextmanager
def throwaway_schema(prefix: str) -> Iterator[str]:
    """A SQLAlchemy URL of the test PostgreSQL whose only schema on ``search_path`` is a new
    one, dropped on exit (read models under test create their tables in it)."""
    from sqlalchemy import create_engine, make_url, text
    from sqlalchemy.pool import NullPool

    base = make_url(postgres_url()).set(drivername="postgresql+psycopg")
    schema = f"{prefix}_{uuid.uuid4().hex[:16]}"
    admin = create_engine(base, poolclass=NullPool)
    try:
        with admin.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
        url = base.update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()
