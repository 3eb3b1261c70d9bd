"""One ``NotificationQueue`` contract, run against the in-process and the RabbitMQ adapters.

The queue carries out the handler's decisions: ``Settled`` acknowledges, ``Retry`` delivers
the next attempt after its delay, ``DeadLetter`` parks the job for good; a handler that
raises gets the same job again later.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from typing import Any

import aio_pika
import pytest

from defi_realtime.adapters.memory_notification_queue import InProcessNotificationQueue
from defi_realtime.adapters.rabbit_notification_queue import RabbitNotificationQueue
from defi_realtime.application.delivery import (
    DeadLetter,
    Decision,
    NotificationJob,
    Retry,
    RetryPolicy,
    Settled,
)
from tests.services import amqp_url

POLICY = RetryPolicy(max_attempts=3, base_delay=0.2, factor=2.0, max_delay=2.0, jitter=0.0)
TIMEOUT = 10.0


def job(key: str = "rule:1:0", attempt: int = 1, rule_id: str = "rule") -> NotificationJob:
    return NotificationJob(
        idempotency_key=key,
        rule_id=rule_id,
        owner="alice",
        condition="firing",
        measure=1.0,
        observed_at=1_700_000_000.0,
        position=7,
        channel_index=0,
        channel={"kind": "webhook", "url": "https://example.com/hook"},
        attempt=attempt,
    )


class Handler:
    """Answers each job with ``decide(job)`` and records what it saw, with arrival times."""

    def __init__(self, decide: Callable[[NotificationJob], Decision]) -> None:
        self.decide = decide
        self.seen: list[tuple[float, NotificationJob]] = []
        self._changed = asyncio.Event()

    async def __call__(self, job: NotificationJob) -> Decision:
        self.seen.append((time.monotonic(), job))
        self._changed.set()
        return self.decide(job)

    async def wait_for(self, count: int, timeout: float = TIMEOUT) -> None:
        async with asyncio.timeout(timeout):
            while len(self.seen) < count:
                self._changed.clear()
                await self._changed.wait()


class NotificationQueueContract:
    """Subclasses provide ``make`` (a fresh queue) and ``dead_letters`` (parked job keys)."""

    @pytest.fixture
    def make(self) -> Any:
        raise NotImplementedError

    async def dead_letters(self, queue: Any) -> list[str]:
        raise NotImplementedError

    async def test_a_settled_job_is_delivered_once(self, make: Any) -> None:
        handler = Handler(lambda _job: Settled())
        queue = await make(handler)
        await queue.enqueue([job("a:1:0"), job("b:1:0")])
        await handler.wait_for(2)
        await asyncio.sleep(0.5)
        assert sorted(seen.idempotency_key for _, seen in handler.seen) == ["a:1:0", "b:1:0"]

    async def test_a_retry_comes_back_after_its_delay_with_the_next_attempt(
        self, make: Any
    ) -> None:
        def decide(seen: NotificationJob) -> Decision:
            if seen.attempt < 3:
                return Retry(seen.next_attempt(), POLICY.delay(seen.attempt))
            return Settled()

        handler = Handler(decide)
        queue = await make(handler)
        await queue.enqueue([job()])
        await handler.wait_for(3)
        times = [at for at, _ in handler.seen]
        assert [seen.attempt for _, seen in handler.seen] == [1, 2, 3]
        assert times[1] - times[0] >= POLICY.ceiling(1) * 0.9
        assert times[2] - times[1] >= POLICY.ceiling(2) * 0.9

    async def test_a_dead_letter_is_parked_and_not_delivered_again(self, make: Any) -> None:
        handler = Handler(lambda seen: DeadLetter(seen, "HTTP 410"))
        queue = await make(handler)
        await queue.enqueue([job("dead:1:0")])
        await handler.wait_for(1)
        deadline = time.monotonic() + TIMEOUT
        while not (parked := await self.dead_letters(queue)):
            assert time.monotonic() < deadline, "no dead letter"
            await asyncio.sleep(0.05)
        assert parked == ["dead:1:0"]
        await asyncio.sleep(0.5)
        assert len(handler.seen) == 1

    async def test_dead_letters_are_listed_per_rule_and_redriven(self, make: Any) -> None:
        """A rule's dead letters, and only its, go back to the work queue as first attempts
        under the same keys, after ``prepare`` saw them; the others stay parked."""
        redriven: set[str] = set()

        def decide(seen: NotificationJob) -> Decision:
            if seen.idempotency_key in redriven:
                return Settled()
            return DeadLetter(replace(seen, attempt=3), "HTTP 503")

        handler = Handler(decide)
        queue = await make(handler)
        await queue.enqueue([job("r1:1:0", rule_id="r1"), job("r2:1:0", rule_id="r2")])
        await handler.wait_for(2)
        deadline = time.monotonic() + TIMEOUT
        while len(await self.dead_letters(queue)) < 2:
            assert time.monotonic() < deadline, "no dead letters"
            await asyncio.sleep(0.05)
        [parked] = await queue.dead_letters_of("r1")
        assert (parked.job.idempotency_key, parked.job.attempt) == ("r1:1:0", 3)
        assert parked.reason == "HTTP 503"
        assert await queue.dead_letters_of("nobody") == []

        prepared: list[list[NotificationJob]] = []

        async def prepare(jobs: Sequence[NotificationJob]) -> None:
            prepared.append(list(jobs))
            redriven.update(j.idempotency_key for j in jobs)

        jobs = await queue.redrive("r1", prepare)
        assert [(j.idempotency_key, j.attempt) for j in jobs] == [("r1:1:0", 1)]
        assert prepared == [jobs]
        await handler.wait_for(3)
        [(_, again)] = handler.seen[2:]
        assert (again.idempotency_key, again.attempt) == ("r1:1:0", 1)
        assert await queue.dead_letters_of("r1") == []
        assert [p.job.idempotency_key for p in await queue.dead_letters_of("r2")] == ["r2:1:0"]
        assert await self.dead_letters(queue) == ["r2:1:0"]
        assert await queue.redrive("r1", prepare) == []
        assert len(prepared) == 1  # nothing to redrive: not asked

    async def test_a_failed_redrive_leaves_the_dead_letters_parked(self, make: Any) -> None:
        handler = Handler(lambda seen: DeadLetter(seen, "HTTP 410"))
        queue = await make(handler)
        await queue.enqueue([job("r1:1:0", rule_id="r1")])
        await handler.wait_for(1)
        deadline = time.monotonic() + TIMEOUT
        while not await self.dead_letters(queue):
            assert time.monotonic() < deadline, "no dead letter"
            await asyncio.sleep(0.05)

        async def refuse(jobs: Sequence[NotificationJob]) -> None:
            raise ConnectionError("the delivery record is down")

        with pytest.raises(ConnectionError):
            await queue.redrive("r1", refuse)
        assert [p.job.idempotency_key for p in await queue.dead_letters_of("r1")] == ["r1:1:0"]
        await asyncio.sleep(0.2)
        assert len(handler.seen) == 1

    async def test_a_failing_handler_gets_the_job_again(self, make: Any) -> None:
        calls = 0

        def decide(seen: NotificationJob) -> Decision:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("the delivery record is down")
            return Settled()

        handler = Handler(decide)
        queue = await make(handler)
        await queue.enqueue([job()])
        await handler.wait_for(2)
        assert [seen.attempt for _, seen in handler.seen] == [1, 1]

    async def test_consume_must_come_before_start(self, make: Any) -> None:
        queue = await make(Handler(lambda _job: Settled()))
        with pytest.raises(RuntimeError, match="before start"):
            queue.consume(Handler(lambda _job: Settled()))


class TestInProcessNotificationQueue(NotificationQueueContract):
    @pytest.fixture
    async def make(self) -> AsyncIterator[Any]:
        queues: list[InProcessNotificationQueue] = []

        async def make(handler: Handler) -> InProcessNotificationQueue:
            queue = InProcessNotificationQueue(concurrency=2, handler_error_delay=0.05)
            queue.consume(handler)
            await queue.start()
            queues.append(queue)
            return queue

        yield make
        for queue in queues:
            await queue.stop()

    async def dead_letters(self, queue: Any) -> list[str]:
        return [parked.idempotency_key for parked, _reason in queue.dead_letters]


@pytest.mark.rabbitmq
class TestRabbitNotificationQueue(NotificationQueueContract):
    @pytest.fixture
    async def make(self) -> AsyncIterator[Any]:
        url = amqp_url()
        queues: list[RabbitNotificationQueue] = []

        async def make(handler: Handler) -> RabbitNotificationQueue:
            name = f"defi-realtime.contract.{uuid.uuid4().hex[:12]}"
            queue = RabbitNotificationQueue(url, POLICY, name, handler_error_delay=0.05)
            queue.consume(handler)
            await queue.start()
            queues.append(queue)
            return queue

        yield make
        connection = await aio_pika.connect(url, timeout=10)
        try:
            channel = await connection.channel()
            for queue in queues:
                await queue.stop()
                for name in queue.queue_names:
                    await channel.queue_delete(name)
                await channel.exchange_delete(queue.name)
        finally:
            await connection.close()

    async def dead_letters(self, queue: Any) -> list[str]:
        connection = await aio_pika.connect(amqp_url(), timeout=10)
        try:
            channel = await connection.channel()
            dead = await channel.declare_queue(queue.dead_letter_queue, passive=True)
            keys = []
            # Left unacked: closing the connection puts them back.
            while (message := await dead.get(fail=False)) is not None and len(keys) < 100:
                keys.append(json.loads(message.body)["idempotency_key"])
            return keys
        finally:
            await connection.close()
