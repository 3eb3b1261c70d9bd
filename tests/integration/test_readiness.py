"""``/health/ready`` of a ``serve`` node on PostgreSQL, Redis and RabbitMQ.

Real processes (``cluster.py``). A dependency "goes down" through a TCP relay this test
starts between the node and the real service and then closes (nothing else is stopped):
the node's next readiness check fails and names it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import httpx
import pytest

from tests.integration.cluster import free_port, stack, wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.rabbitmq]

T0 = 1_765_000_000.0


class TcpRelay:
    """Forwards connections from a loopback port to ``target``; ``close`` ends the
    listener and every connection open through it (the service seems gone)."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def open(self) -> None:
        self._server = await asyncio.start_server(
            self._connected, "127.0.0.1", self.port, reuse_address=True
        )

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, upstream_writer))
        await asyncio.gather(
            self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer)
        )

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65_536):
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.transport.abort()
            self._writers.discard(writer)


@contextlib.asynccontextmanager
async def relay_to(url: str) -> AsyncIterator[tuple[TcpRelay, str]]:
    """A relay in front of the service of ``url``, and ``url`` pointed at it."""
    parsed = urlparse(url)
    relay = TcpRelay(parsed.hostname or "127.0.0.1", parsed.port or 0)
    await relay.open()
    netloc = parsed.netloc.rsplit(":", 1)[0] + f":{relay.port}"
    try:
        yield relay, urlunparse(parsed._replace(netloc=netloc))
    finally:
        await relay.close()


async def get_ready(url: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=url, timeout=5.0) as client:
        return await client.get("/health/ready")


async def test_ready_on_the_real_services(tmp_path: Path) -> None:
    async with stack(tmp_path / "stack") as deployment:
        node = await deployment.serve("api")
        response = await wait_until(
            lambda: get_ready(node.base_url),
            lambda r: r.status_code == 200,
            30.0,
            "ready",
        )
        body = response.json()
        assert body["status"] == "ready"
        checks = body["checks"]
        for name in ("event_store", "history_db", "redis", "rabbitmq"):
            assert checks[name]["status"] == "pass", (name, checks[name])
            assert checks[name]["duration_ms"] < 1_000
        assert any(name.startswith("projection:") for name in checks)
        async with httpx.AsyncClient(base_url=node.base_url) as client:
            assert (await client.get("/health/live")).status_code == 200


async def test_redis_down_makes_the_node_not_ready_and_back(tmp_path: Path) -> None:
    async with (
        stack(tmp_path / "stack") as deployment,
        relay_to(deployment.redis_url) as (relay, redis_url),
    ):
        node = await deployment.serve("api", REDIS_URL=redis_url)
        await wait_until(
            lambda: get_ready(node.base_url), lambda r: r.status_code == 200, 30.0, "ready"
        )
        await relay.close()
        down = await get_ready(node.base_url)
        assert down.status_code == 503
        body = down.json()
        assert body["status"] == "not_ready"
        redis = body["checks"]["redis"]
        assert redis["status"] == "fail"
        assert f"127.0.0.1:{relay.port}" in redis["reason"]
        assert body["checks"]["event_store"]["status"] == "pass"
        assert body["checks"]["rabbitmq"]["status"] == "pass"
        # Liveness does not depend on Redis.
        async with httpx.AsyncClient(base_url=node.base_url) as client:
            assert (await client.get("/health/live")).status_code == 200

        await relay.open()  # the same port again: the node's client reconnects
        await wait_until(
            lambda: get_ready(node.base_url), lambda r: r.status_code == 200, 30.0, "again"
        )


async def test_broker_down_makes_the_node_not_ready(tmp_path: Path) -> None:
    async with (
        stack(tmp_path / "stack") as deployment,
        relay_to(deployment.amqp_url) as (relay, amqp_url),
    ):
        node = await deployment.serve("api", AMQP_URL=amqp_url)
        await wait_until(
            lambda: get_ready(node.base_url), lambda r: r.status_code == 200, 30.0, "ready"
        )
        await relay.close()
        down = await wait_until(
            lambda: get_ready(node.base_url),
            lambda r: r.status_code == 503,
            10.0,
            "not ready",
        )
        rabbitmq = down.json()["checks"]["rabbitmq"]
        assert rabbitmq["status"] == "fail"
        assert f"RabbitMQ at 127.0.0.1:{relay.port}" in rabbitmq["reason"]
        assert down.json()["checks"]["redis"]["status"] == "pass"
