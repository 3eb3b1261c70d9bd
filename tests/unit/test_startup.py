"""Which services a process checks at start (entrypoints/startup.py): those it uses."""

from __future__ import annotations

import pytest

from defi_realtime.entrypoints.settings import Settings
from defi_realtime.entrypoints.startup import CLI, services_for

ALL = Settings(
    DATABASE_URL="postgresql://postgres@127.0.0.1:5432/x",
    REDIS_URL="redis://127.0.0.1:6379/0",
    AMQP_URL="amqp://guest:guest@127.0.0.1:5672/",
)


@pytest.mark.parametrize(
    ("process", "hot", "expected"),
    [
        ("serve", False, ["PostgreSQL", "Redis", "RabbitMQ"]),
        ("projections", False, ["PostgreSQL", "Redis", "RabbitMQ"]),
        ("relay", False, ["PostgreSQL", "RabbitMQ"]),
        ("alerts", False, ["PostgreSQL", "RabbitMQ"]),
        ("notifications", False, ["PostgreSQL", "RabbitMQ"]),
        (CLI, False, ["PostgreSQL"]),
        (CLI, True, ["PostgreSQL", "Redis"]),
    ],
)
def test_each_process_checks_what_it_uses(process: str, hot: bool, expected: list[str]) -> None:
    assert [service.name for service in services_for(ALL, process, hot=hot)] == expected


def test_embedded_checks_nothing() -> None:
    assert services_for(Settings(), "serve") == []
    assert services_for(Settings(), CLI, hot=True) == []
