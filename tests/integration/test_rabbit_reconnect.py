"""``RabbitEventFanout`` across connection loss.

Two ways to lose the connection:

* broker side: ``rabbitmqctl close_connection`` (needs ``rabbitmqctl`` for the broker under
  test; set ``RABBITMQCTL`` to e.g. ``docker exec rabbitmq rabbitmqctl`` when it runs in a
  container). The robust connection reconnects at once, so this checks recovery.
* a TCP proxy in front of the broker that the test cuts and restores: a real outage of
  known length, during which every publish must raise rather than drop.

After either, publishing works again (the caller retries) and the node's queue, binding
and consumer are back, so batches published after recovery arrive in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlparse, urlunparse

import aio_pika
import pytest

from defi_realtime.adapters.rabbit_fanout import RabbitEventFanout
from defi_realtime.application.log import LogBatch, LogEntry
from tests.services import amqp_url, missing

pytestmark = pytest.mark.rabbitmq

RECOVERY_BUDGET = 20.0
"""Seconds a test may spend retrying until publish and consume work again."""


# --------------------------------------------------------------------------- helpers


def batch_stream(start: int = 0) -> Iterator[LogBatch]:
    after = start
    while True:
        last = after + 2
        entries = (
            LogEntry(
                position=after + 1,
                kind="price",
                key="eth",
                data={"price": float(after), "observed_at": 1.0, "confidence": 0.9},
                recorded_at=2.0,
            ),
        )
        yield LogBatch(after=after, last=last, entries=entries)
        after = last


class Received:
    def __init__(self) -> None:
        self.batches: list[LogBatch] = []
        self._changed = asyncio.Event()

    async def __call__(self, batch: LogBatch) -> None:
        self.batches.append(batch)
        self._changed.set()

    async def wait_for_last(self, last: int, timeout: float) -> bool:
        async def _wait() -> None:
            while not any(batch.last >= last for batch in self.batches):
                self._changed.clear()
                await self._changed.wait()

        try:
            await asyncio.wait_for(_wait(), timeout)
        except TimeoutError:
            return False
        return True

    def assert_in_publish_order(self) -> None:
        lasts = [batch.last for batch in self.batches]
        assert lasts == sorted(set(lasts)), "batches were reordered or duplicated"


async def recover(fanout: RabbitEventFanout, received: Received, stream: Iterator[LogBatch]) -> int:
    """Publish fresh batches (retrying failures) until one comes back through the consumer.

    Returns how many publishes raised. A batch that the broker confirmed before this
    node's queue was re-declared is unroutable and legitimately missing here (consumers
    fill such gaps from the event log), so success means "a confirmed batch arrived"."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + RECOVERY_BUDGET
    failures = 0
    while loop.time() < deadline:
        batch = next(stream)
        try:
            await fanout.publish(batch)
        except ConnectionError:
            failures += 1
        else:
            if await received.wait_for_last(batch.last, timeout=1.0):
                return failures
        await asyncio.sleep(0.2)
    pytest.fail(f"no publish/consume round trip within {RECOVERY_BUDGET}s after the cut")


async def assert_flows_in_order(
    fanout: RabbitEventFanout, received: Received, stream: Iterator[LogBatch]
) -> None:
    """After recovery nothing confirmed is lost and order holds."""
    tail = [next(stream) for _ in range(5)]
    for batch in tail:
        await fanout.publish(batch)
    assert await received.wait_for_last(tail[-1].last, timeout=10.0)
    assert received.batches[-len(tail) :] == tail
    received.assert_in_publish_order()


@pytest.fixture
def rabbit_url() -> str:
    return amqp_url()


@pytest.fixture
async def exchange_name(rabbit_url: str) -> AsyncIterator[str]:
    name = f"defi-realtime.test.{uuid.uuid4().hex}"
    yield name
    connection = await aio_pika.connect(rabbit_url)
    try:
        channel = await connection.channel()
        await channel.exchange_delete(name)
    finally:
        await connection.close()


# ------------------------------------------------------------------ broker-side close


def rabbitmqctl_command() -> list[str]:
    configured = os.environ.get("RABBITMQCTL")
    if configured:
        return shlex.split(configured)
    found = shutil.which("rabbitmqctl")
    if found is None:
        missing("rabbitmqctl is not available (set RABBITMQCTL to reach the broker)")
    return [found]


async def rabbitmqctl(*args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        *rabbitmqctl_command(),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    if process.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {args} failed: {stderr.decode(errors='replace')}")
    return stdout.decode()


async def connection_pid(connection_name: str) -> str:
    """The broker's pid (what ``close_connection`` takes) of the connection with that name."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:
        # The default (tab-separated) output: the JSON formatter renders pids in Elixir
        # syntax (#PID<...>), which close_connection does not accept.
        listing = await rabbitmqctl(
            "list_connections", "pid", "client_properties", "-q", "--no-table-headers"
        )
        marker = f'{{"connection_name","{connection_name}"}}'
        for line in listing.splitlines():
            pid, _, properties = line.partition("\t")
            if marker in properties:
                return pid.strip()
        if loop.time() > deadline:
            pytest.fail(f"connection {connection_name!r} not listed by rabbitmqctl")
        await asyncio.sleep(0.3)


async def test_recovers_after_the_broker_closes_the_connection(
    rabbit_url: str, exchange_name: str
) -> None:
    rabbitmqctl_command()
    fanout = RabbitEventFanout(
        rabbit_url, exchange=exchange_name, reconnect_interval=0.5, publish_timeout=3.0
    )
    received = Received()
    fanout.listen(received)
    stream = batch_stream()
    await fanout.start()
    try:
        first = next(stream)
        await fanout.publish(first)
        assert await received.wait_for_last(first.last, timeout=10.0)
        pid = await connection_pid(fanout.connection_name)

        await rabbitmqctl("close_connection", pid, "contract test: broker-side close")

        await recover(fanout, received, stream)
        assert await connection_pid(fanout.connection_name) != pid
        await assert_flows_in_order(fanout, received, stream)
    finally:
        await fanout.stop()


# ------------------------------------------------------------------- outage via proxy


class TcpProxy:
    """Forwards 127.0.0.1:<port> to the broker; ``cut`` drops everything, ``start`` resumes."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._sessions: set[asyncio.Task[None]] = set()
        self._transports: set[asyncio.WriteTransport] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._session, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        # abort(): an abrupt drop, as when a network path disappears. The sessions then
        # end on their own (cancelling them would make asyncio log the cancelled task).
        for transport in list(self._transports):
            transport.abort()
        if self._sessions:
            await asyncio.wait(list(self._sessions), timeout=5)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(task)
        self._transports.add(writer.transport)
        upstream_writer: asyncio.StreamWriter | None = None
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._upstream)
            self._transports.add(upstream_writer.transport)
            await asyncio.gather(
                self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer)
            )
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._sessions.discard(task)
            for stream in (writer, upstream_writer):
                if stream is not None:
                    self._transports.discard(stream.transport)
                    stream.transport.abort()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.transport.abort()


@pytest.fixture
async def proxy(rabbit_url: str) -> AsyncIterator[TcpProxy]:
    parsed = urlparse(rabbit_url)
    proxy = TcpProxy(parsed.hostname or "127.0.0.1", parsed.port or 5672)
    await proxy.start()
    yield proxy
    await proxy.cut()


def via(proxy: TcpProxy, url: str) -> str:
    parsed = urlparse(url)
    credentials = parsed.netloc.rpartition("@")[0]
    netloc = f"{credentials}@127.0.0.1:{proxy.port}" if credentials else f"127.0.0.1:{proxy.port}"
    return urlunparse(parsed._replace(netloc=netloc))


async def test_publish_raises_during_an_outage_and_works_again_after(
    rabbit_url: str, exchange_name: str, proxy: TcpProxy
) -> None:
    fanout = RabbitEventFanout(
        via(proxy, rabbit_url),
        exchange=exchange_name,
        reconnect_interval=0.3,
        publish_timeout=2.0,
    )
    received = Received()
    fanout.listen(received)
    stream = batch_stream()
    await fanout.start()
    try:
        first = next(stream)
        await fanout.publish(first)
        assert await received.wait_for_last(first.last, timeout=10.0)

        await proxy.cut()
        # The broker is unreachable for as long as the proxy is down: every attempt must
        # fail loudly (the relay keeps its position and retries), none may "succeed".
        for _ in range(3):
            with pytest.raises(ConnectionError):
                await fanout.publish(next(stream))
            await asyncio.sleep(0.3)

        await proxy.start()
        await recover(fanout, received, stream)
        await assert_flows_in_order(fanout, received, stream)
    finally:
        await fanout.stop()
        with contextlib.suppress(Exception):
            await proxy.cut()
