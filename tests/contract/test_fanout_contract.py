"""One ``EventFanout`` contract, run against the in-process and the RabbitMQ adapters."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import ClassVar

import aio_pika
import pytest

from defi_realtime.adapters.memory_fanout import InProcessEventFanout
from defi_realtime.adapters.rabbit_fanout import RabbitEventFanout, encode_batch
from defi_realtime.application.log import LogBatch, LogEntry
from defi_realtime.application.ports import EventFanout
from tests.services import amqp_url

FanoutFactory = Callable[[], EventFanout]

DELIVERY_TIMEOUT = 10.0


def entry(position: int, kind: str = "metric", key: str = "aave", **data: object) -> LogEntry:
    return LogEntry(
        position=position,
        kind=kind,
        key=key,
        data=data or {"metric": "tvl", "chain": "ethereum", "value": position * 1.5},
        recorded_at=1_700_000_000.0 + position,
    )


def batches(count: int, size: int = 3, start: int = 0) -> list[LogBatch]:
    """``count`` contiguous batches of ``size`` positions each (one position left out per
    batch, as for facts that do not travel downstream)."""
    result = []
    after = start
    for _ in range(count):
        last = after + size
        entries = tuple(
            entry(p, kind="price" if p % 2 else "metric", key=f"token-{p}", price=p / 3)
            for p in range(after + 1, last)
        )
        result.append(LogBatch(after=after, last=last, entries=entries))
        after = last
    return result


class Collector:
    """A handler that records what it receives and lets a test wait for a count."""

    def __init__(self, fail_on: Callable[[LogBatch], bool] | None = None) -> None:
        self.received: list[LogBatch] = []
        self.failures = 0
        self._fail_on = fail_on
        self._changed = asyncio.Event()

    async def __call__(self, batch: LogBatch) -> None:
        self.received.append(batch)
        self._changed.set()
        if self._fail_on is not None and self._fail_on(batch):
            self.failures += 1
            raise RuntimeError(f"handler fails on ({batch.after}, {batch.last}] on purpose")

    async def wait_for(self, predicate: Callable[[list[LogBatch]], bool]) -> None:
        async def _wait() -> None:
            while not predicate(self.received):
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(_wait(), DELIVERY_TIMEOUT)

    async def wait_count(self, count: int) -> None:
        await self.wait_for(lambda received: len(received) >= count)

    async def wait_until_last(self, last: int) -> None:
        await self.wait_for(lambda received: bool(received) and received[-1].last >= last)


def assert_chained(parts: list[LogBatch], original: LogBatch) -> None:
    assert parts[0].after == original.after
    assert parts[-1].last == original.last
    for previous, following in itertools.pairwise(parts):
        assert following.after == previous.last
    assert tuple(e for part in parts for e in part.entries) == original.entries


class FanoutContract:
    """Behaviour every ``EventFanout`` adapter must have.

    Subclasses provide the ``make_fanout`` fixture: a factory of fan-outs sharing one
    transport (same exchange for RabbitMQ), stopped at teardown.
    """

    splits_big_batches: ClassVar[bool] = False

    @pytest.fixture
    def make_fanout(self) -> FanoutFactory:
        raise NotImplementedError

    async def test_every_batch_reaches_the_handler_in_order_and_round_trips(
        self, make_fanout: FanoutFactory
    ) -> None:
        fanout = make_fanout()
        collector = Collector()
        fanout.listen(collector)
        await fanout.start()
        sent = batches(40)
        sent.append(LogBatch(after=sent[-1].last, last=sent[-1].last + 5))  # no entries
        sent.append(
            LogBatch(
                after=sent[-1].last,
                last=sent[-1].last + 1,
                entries=(
                    entry(
                        sent[-1].last + 1,
                        kind="protocol_listed",
                        key="ünï-swap",
                        name="Uniswap ✓",
                        chains=["ethereum", "arbitrum"],
                        nested={"a": [1, 2.5, None, True]},
                    ),
                ),
            )
        )
        for batch in sent:
            await fanout.publish(batch)

        await collector.wait_count(len(sent))
        assert collector.received == sent

    async def test_two_listeners_both_receive_everything(self, make_fanout: FanoutFactory) -> None:
        fanout = make_fanout()
        first, second = Collector(), Collector()
        fanout.listen(first)
        fanout.listen(second)
        await fanout.start()
        sent = batches(10)
        for batch in sent:
            await fanout.publish(batch)

        await first.wait_count(len(sent))
        await second.wait_count(len(sent))
        assert first.received == sent
        assert second.received == sent

    async def test_a_failing_handler_does_not_stop_later_deliveries(
        self, make_fanout: FanoutFactory
    ) -> None:
        fanout = make_fanout()
        failing = Collector(fail_on=lambda batch: batch.after % 2 == 0)
        healthy = Collector()
        fanout.listen(failing)
        fanout.listen(healthy)
        await fanout.start()
        sent = batches(6, size=1)
        for batch in sent:
            await fanout.publish(batch)

        await failing.wait_count(len(sent))
        await healthy.wait_count(len(sent))
        assert failing.received == sent
        assert failing.failures == 3
        assert healthy.received == sent

    async def test_big_batches_arrive_as_contiguous_chained_parts(
        self, make_fanout: FanoutFactory
    ) -> None:
        fanout = make_fanout()
        collector = Collector()
        fanout.listen(collector)
        await fanout.start()
        payload = "x" * 10_000
        big = LogBatch(
            after=100,
            last=520,
            entries=tuple(entry(p, blob=payload, n=p) for p in range(101, 501)),
        )
        assert len(encode_batch(big)) > 3_000_000
        follow_up = LogBatch(after=520, last=521, entries=(entry(521),))

        await fanout.publish(big)
        await fanout.publish(follow_up)

        await collector.wait_until_last(follow_up.last)
        *parts, tail = collector.received
        assert tail == follow_up
        assert_chained(parts, big)
        if self.splits_big_batches:
            assert len(parts) > 1
            assert all(len(encode_batch(part)) <= 1_000_000 for part in parts)

    async def test_stop_is_clean_even_with_a_handler_in_progress(
        self, make_fanout: FanoutFactory
    ) -> None:
        fanout = make_fanout()
        entered = asyncio.Event()
        never = asyncio.Event()

        async def stuck(batch: LogBatch) -> None:
            entered.set()
            await never.wait()

        fanout.listen(stuck)
        await fanout.start()
        await fanout.publish(batches(1)[0])
        await asyncio.wait_for(entered.wait(), DELIVERY_TIMEOUT)

        await asyncio.wait_for(fanout.stop(), DELIVERY_TIMEOUT)
        await fanout.stop()  # idempotent
        with pytest.raises(RuntimeError, match="not running"):
            await fanout.publish(batches(1)[0])

    async def test_publish_before_start_raises(self, make_fanout: FanoutFactory) -> None:
        fanout = make_fanout()
        with pytest.raises(RuntimeError, match="not running"):
            await fanout.publish(batches(1)[0])


class TestInProcessEventFanout(FanoutContract):
    @pytest.fixture
    async def make_fanout(self) -> AsyncIterator[FanoutFactory]:
        created: list[InProcessEventFanout] = []

        def make() -> EventFanout:
            fanout = InProcessEventFanout(queue_size=4)
            created.append(fanout)
            return fanout

        yield make
        for fanout in created:
            await fanout.stop()

    async def test_a_slow_handler_applies_backpressure_without_losing_batches(self) -> None:
        fanout = InProcessEventFanout(queue_size=2)
        release = asyncio.Event()
        slow, fast = Collector(), Collector()

        async def gated(batch: LogBatch) -> None:
            await release.wait()
            await slow(batch)

        fanout.listen(gated)
        fanout.listen(fast)
        await fanout.start()
        sent = batches(8, size=1)
        try:
            publishing = asyncio.create_task(_publish_all(fanout.publish, sent))
            await fast.wait_count(2)
            await asyncio.sleep(0.05)
            assert not publishing.done()  # held back by the slow listener's full queue
            release.set()
            await asyncio.wait_for(publishing, DELIVERY_TIMEOUT)
            await slow.wait_count(len(sent))
            await fast.wait_count(len(sent))
            assert slow.received == sent
            assert fast.received == sent
        finally:
            await fanout.stop()

    async def test_a_publish_blocked_on_a_full_queue_fails_when_stopped(self) -> None:
        fanout = InProcessEventFanout(queue_size=1)
        never = asyncio.Event()

        async def stuck(batch: LogBatch) -> None:
            await never.wait()

        fanout.listen(stuck)
        await fanout.start()
        first, second, third = batches(3)
        await fanout.publish(first)  # taken by the handler
        await fanout.publish(second)  # fills the queue
        blocked = asyncio.create_task(fanout.publish(third))
        await asyncio.sleep(0.05)
        assert not blocked.done()
        await fanout.stop()
        with pytest.raises(RuntimeError, match="stopped while publishing"):
            await asyncio.wait_for(blocked, DELIVERY_TIMEOUT)


async def _publish_all(
    publish: Callable[[LogBatch], Awaitable[None]], sent: list[LogBatch]
) -> None:
    for batch in sent:
        await publish(batch)


async def _delete_exchange(url: str, exchange: str) -> None:
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        await channel.exchange_delete(exchange)
    finally:
        await connection.close()


@pytest.fixture
def rabbit_url() -> str:
    return amqp_url()


@pytest.fixture
async def exchange_name(rabbit_url: str) -> AsyncIterator[str]:
    name = f"defi-realtime.test.{uuid.uuid4().hex}"
    yield name
    await _delete_exchange(rabbit_url, name)


@pytest.fixture
async def make_rabbit(
    rabbit_url: str, exchange_name: str
) -> AsyncIterator[Callable[[], RabbitEventFanout]]:
    created: list[RabbitEventFanout] = []

    def make() -> RabbitEventFanout:
        fanout = RabbitEventFanout(rabbit_url, exchange=exchange_name)
        created.append(fanout)
        return fanout

    yield make
    for fanout in created:
        await fanout.stop()


@pytest.mark.rabbitmq
class TestRabbitEventFanout(FanoutContract):
    splits_big_batches = True

    @pytest.fixture
    def make_fanout(self, make_rabbit: Callable[[], RabbitEventFanout]) -> FanoutFactory:
        return make_rabbit

    async def test_another_node_receives_what_one_node_publishes(
        self, make_rabbit: Callable[[], RabbitEventFanout]
    ) -> None:
        publisher, other_node = make_rabbit(), make_rabbit()
        here, there = Collector(), Collector()
        publisher.listen(here)
        other_node.listen(there)
        await other_node.start()
        await publisher.start()
        assert publisher.queue_name != other_node.queue_name

        sent = batches(15)
        for batch in sent:
            await publisher.publish(batch)

        await here.wait_count(len(sent))
        await there.wait_count(len(sent))
        assert here.received == sent
        assert there.received == sent

    async def test_a_publish_only_node_declares_no_queue(
        self, make_rabbit: Callable[[], RabbitEventFanout]
    ) -> None:
        publisher, listener = make_rabbit(), make_rabbit()
        collector = Collector()
        listener.listen(collector)
        await listener.start()
        await publisher.start()
        assert publisher.queue_name is None

        sent = batches(3)
        for batch in sent:
            await publisher.publish(batch)
        await collector.wait_count(len(sent))
        assert collector.received == sent

    async def test_listen_after_start_is_refused(
        self, make_rabbit: Callable[[], RabbitEventFanout]
    ) -> None:
        fanout = make_rabbit()
        await fanout.start()
        with pytest.raises(RuntimeError, match="before start"):
            fanout.listen(Collector())
