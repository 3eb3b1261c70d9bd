"""Fail fast: before a process opens anything, check the services it will use.

Which services a process uses follows from the settings and the role table: the event
store's PostgreSQL whenever ``DATABASE_URL`` is set; Redis where the hot projection is
written or read (``serve``, the ``projections`` worker, a rebuild of the hot projection);
RabbitMQ in every ``serve`` and ``worker`` (they start the fan-out) when ``AMQP_URL`` is
set. The checks run concurrently, each bounded by ``STARTUP_CHECK_TIMEOUT``; the first
failure (in that order) is raised as a ``ServiceUnavailable`` whose message is the one line
the CLI prints (``error: Redis at 127.0.0.1:6390 is unreachable: connection refused``).

Without these checks the client libraries retry for their own reasons: eventsourcing's
pool waits 30 s for a PostgreSQL connection, redis-py and the supervised loops retried for
a minute with a traceback each time, aio-pika ended in ``Pool is closed``.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from ..application.readiness import ServiceUnavailable
from .roles import plan
from .settings import Settings

__all__ = ["CLI", "Service", "ServiceUnavailable", "check_services", "services_for"]

CLI = "cli"
"""The process name of a CLI command (it runs no role; it uses the event store)."""


@dataclass(frozen=True, slots=True)
class Service:
    """One service a process uses, and how to check it."""

    name: str
    url: str
    check: Callable[[str, float], Awaitable[None]]
    client: str
    """The client library ``check`` imports (imported before any check's clock starts)."""


def services_for(settings: Settings, process: str, *, hot: bool = False) -> list[Service]:
    """The configured services ``process`` (``serve``, a worker name or ``cli``) uses;
    ``hot``: a CLI command that writes the hot projection (``projections rebuild``)."""
    from ..adapters.service_checks import check_amqp, check_postgres, check_redis

    services = []
    if settings.database_url is not None:
        services.append(Service("PostgreSQL", settings.database_url, check_postgres, "psycopg"))
    roles = set() if process == CLI else {placed.role.name for placed in plan(process, settings)}
    if settings.redis_url is not None and (
        hot or process == "serve" or roles & {"hot", "reconcile"}
    ):
        services.append(Service("Redis", settings.redis_url, check_redis, "redis.asyncio"))
    if settings.amqp_url is not None and process != CLI:
        services.append(Service("RabbitMQ", settings.amqp_url, check_amqp, "aio_pika"))
    return services


async def check_services(settings: Settings, process: str, *, hot: bool = False) -> None:
    """Raise ``ServiceUnavailable`` unless every service ``process`` uses answers within
    ``settings.startup_check_timeout`` (checked concurrently)."""
    await check_each(services_for(settings, process, hot=hot), settings.startup_check_timeout)


async def check_each(services: Sequence[Service], timeout: float) -> None:
    """Check ``services`` concurrently, each within ``timeout``; raise the first failure."""
    # An import blocks the event loop, for seconds on a loaded box: made inside the concurrent
    # checks, one service's import ate the others' budgets ("no answer within 2 s" from a
    # PostgreSQL that answers in milliseconds). So the clients are imported first.
    for service in services:
        importlib.import_module(service.client)
    results = await asyncio.gather(
        *(service.check(service.url, timeout) for service in services), return_exceptions=True
    )
    for result in results:
        if isinstance(result, BaseException):
            raise result


def check_services_now(settings: Settings, process: str, *, hot: bool = False) -> None:
    """``check_services`` from synchronous code (no event loop running)."""
    if services_for(settings, process, hot=hot):
        asyncio.run(check_services(settings, process, hot=hot))
