"""Which services a process checks at start (entrypoints/startup.py): those it uses."""

from __future__ import annotations

import asyncio
import importlib
import sys
from pathlib import Path

import pytest

from defi_realtime.entrypoints.settings import Settings
from defi_realtime.entrypoints.startup import CLI, Service, check_each, services_for

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


def test_a_slow_client_import_does_not_eat_another_checks_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Importing a client library blocks the event loop (seconds on a loaded box). Made inside
    one of the concurrent checks, it used to time out the others: a PostgreSQL answering in
    milliseconds was reported as "no answer within 2 s"."""
    (tmp_path / "slow_client_library.py").write_text("import time\ntime.sleep(1.5)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "slow_client_library", raising=False)

    async def answers_at_once(url: str, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            await asyncio.sleep(0.05)

    async def imports_its_client(url: str, timeout: float) -> None:
        importlib.import_module("slow_client_library")

    services = [
        Service("Fast", "fast://127.0.0.1", answers_at_once, "json"),
        Service("Slow", "slow://127.0.0.1", imports_its_client, "slow_client_library"),
    ]
    asyncio.run(check_each(services, timeout=1.0))  # raised TimeoutError before
