"""Is a service usable? Bounded checks of PostgreSQL, Redis and RabbitMQ.

Two kinds: ``check_*(url, timeout)`` open a connection of their own and close it (what a
process checks before it starts: nothing else has connected yet), and the probes a
running node's readiness uses on the clients it already holds (``redis_ping``,
``fanout_connected``). Every failure is a ``ServiceUnavailable`` whose message is one line
naming the service, its host:port and the cause, e.g. ``Redis at 127.0.0.1:6390 is
unreachable: connection refused``.

Each check first opens a plain TCP connection, so "nothing listens there" or "no answer"
is told apart from what the service's own protocol answers (a missing database, a
refused login), whose client libraries would otherwise retry or wrap it.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from ..application.readiness import Probe, ServiceUnavailable

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from .rabbit_fanout import RabbitEventFanout

__all__ = [
    "address_of",
    "check_amqp",
    "check_postgres",
    "check_reachable",
    "check_redis",
    "fanout_connected",
    "redis_ping",
]

_DEFAULT_PORTS = {
    "postgres": 5432,
    "postgresql": 5432,
    "redis": 6379,
    "rediss": 6379,
    "amqp": 5672,
    "amqps": 5671,
    "http": 80,
    "https": 443,
}


_OBJECT_REPR = re.compile(r"<([\w.]+) object at 0x[0-9a-fA-F]+>")


def address_of(url: str) -> tuple[str, int]:
    """The host and port a service URL points to (the scheme's default port if none)."""
    parsed = urlparse(url)
    scheme = parsed.scheme.split("+")[0]
    try:
        port = parsed.port
    except ValueError:
        port = None
    return parsed.hostname or "127.0.0.1", port or _DEFAULT_PORTS.get(scheme, 0)


def _where(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _connect_cause(error: OSError, host: str) -> str:
    if isinstance(error, ConnectionRefusedError) or "Connect call failed" in str(error):
        return "connection refused"
    if isinstance(error, socket.gaierror):
        return f"cannot resolve host {host!r}"
    return (error.strerror or str(error) or type(error).__name__).lower()


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[-1] if lines and lines[-1].startswith("FATAL") else (lines[0] if lines else "")
    # libpq's "connection failed: ... failed: FATAL:  database "x" does not exist"
    for marker in ("FATAL:", "ERROR:"):
        if marker in text:
            text = text.rsplit(marker, 1)[1]
    # aiormq names frames by their repr: "got <Connection.Close object at 0x7f...>".
    text = _OBJECT_REPR.sub(r"\1", text)
    return " ".join(text.split())[:300] or type(error).__name__


async def _check(
    service: str, url: str, timeout: float, speak: Callable[[], Awaitable[Any]]
) -> None:
    """TCP first (unreachable?), then the service's protocol (unavailable?), both within
    ``timeout`` altogether."""
    host, port = address_of(url)
    where = _where(host, port)
    try:
        async with asyncio.timeout(timeout):
            try:
                _reader, writer = await asyncio.open_connection(host, port)
            except OSError as error:
                raise ServiceUnavailable(service, where, _connect_cause(error, host)) from None
            writer.close()
            try:
                await speak()
            except ServiceUnavailable:
                raise
            except Exception as error:
                raise ServiceUnavailable(service, where, _first_line(error), reached=True) from None
    except TimeoutError:
        raise ServiceUnavailable(service, where, f"no answer within {timeout:g} s") from None


async def check_postgres(url: str, timeout: float) -> None:
    """Connect to the database of ``url`` and run ``SELECT 1``."""
    import psycopg

    conninfo = urlparse(url)._replace(scheme="postgresql").geturl()

    async def speak() -> None:
        connection = await psycopg.AsyncConnection.connect(
            conninfo, connect_timeout=max(1, round(timeout)), autocommit=True
        )
        try:
            await connection.execute("SELECT 1")
        finally:
            await connection.close()

    await _check("PostgreSQL", url, timeout, speak)


async def check_redis(url: str, timeout: float) -> None:
    """``PING`` the Redis server of ``url``."""
    from redis.asyncio import Redis

    async def speak() -> None:
        client = Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        try:
            await client.ping()
        finally:
            await client.aclose()

    await _check("Redis", url, timeout, speak)


async def check_amqp(url: str, timeout: float) -> None:
    """Open (and close) an AMQP connection to the broker of ``url``."""
    import aio_pika

    async def speak() -> None:
        connection = await aio_pika.connect(url, timeout=timeout)
        await connection.close()

    await _check("RabbitMQ", url, timeout, speak)


async def check_reachable(service: str, url: str, timeout: float) -> None:
    """Open (and close) a TCP connection to the host and port of ``url`` (an HTTP API)."""

    async def nothing() -> None:
        return None

    await _check(service, url, timeout, nothing)


def redis_ping(client: Redis, url: str) -> Probe:
    """Readiness of the Redis a node holds a client of: ``PING`` through that client."""
    host, port = address_of(url)

    async def probe() -> str:
        try:
            await client.ping()
        except Exception as error:
            raise ServiceUnavailable("Redis", _where(host, port), _first_line(error)) from None
        return f"PONG from {_where(host, port)}"

    return probe


def fanout_connected(fanout: RabbitEventFanout, url: str) -> Probe:
    """Readiness of the RabbitMQ fan-out: its connection is up (not reconnecting)."""
    host, port = address_of(url)

    async def probe() -> str:
        if not fanout.connected:
            raise ServiceUnavailable(
                "RabbitMQ", _where(host, port), "the fan-out's connection is down (reconnecting)"
            )
        return f"connected to {_where(host, port)}"

    return probe
