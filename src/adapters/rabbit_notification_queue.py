"""RabbitMQ ``NotificationQueue``: a durable work queue, per-attempt delay queues, a DLQ.

Topology (``name`` defaults to ``defi-realtime.notifications``), all durable::

    exchange  <name>                  direct
    queue     <name>.work             <- "work"; rejects dead-letter to "dead"
    queue     <name>.retry.<n>.<ms>ms <- "retry.<n>.<ms>ms"  (n = 1 .. max_attempts - 1)
                                         x-message-ttl = <ms>, dead-letters to "work"
    queue     <name>.dead             <- "dead"

* A job is published to ``work`` (persistent, publisher confirms). A consumer hands it to
  the handler and acks only after the handler returned, i.e. after the attempt was
  recorded. A worker that dies mid-delivery never acked: the broker redelivers the job.
* Failed attempt ``n`` is retried by publishing the next attempt to attempt ``n``'s delay
  queue with a per-message ``expiration`` (the jittered backoff), then acking. Nobody
  consumes a delay queue: the broker dead-letters expired messages back to ``work``. The
  queue's TTL is the policy's ceiling for ``n`` and every jittered delay is at or below it,
  and one queue per attempt keeps similar delays together, so a message waiting at the
  head (RabbitMQ only expires the head) holds the others back by at most the jitter.
  The TTL is part of the name: changing the backoff settings declares new queues instead
  of failing on the old ones' arguments.
* After the last attempt (or a permanent failure) the job is published to ``dead`` with
  the reason in its headers, then acked. Publish-then-ack means a crash in between
  duplicates rather than loses; the worker drops duplicates by idempotency key.
* Dead letters are read and redriven by scanning ``dead`` on a channel of its own
  (``basic.get`` without ack, up to ``MAX_SCAN`` messages): a rule's messages are listed, or
  republished to ``work`` (confirmed) and then acked; every other message goes back to the
  queue, in its place, when the channel closes unacked. A message being scanned is invisible
  to another scan meanwhile (two owners redriving at once each see their own).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from typing import Any

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
    ExchangeType,
)

from ..application.delivery import (
    DeadLetter,
    Decision,
    JobHandler,
    NotificationJob,
    ParkedJob,
    PrepareRedrive,
    Retry,
    RetryPolicy,
)

__all__ = ["DEFAULT_NOTIFICATIONS_NAME", "RabbitNotificationQueue"]

logger = logging.getLogger(__name__)

DEFAULT_NOTIFICATIONS_NAME = "defi-realtime.notifications"
WORK = "work"
DEAD = "dead"
MAX_SCAN = 10_000
"""Dead letters looked at per listing or redrive (the oldest)."""
HANDLER_ERROR_DELAY = 1.0
"""A handler that raised (e.g. its database is down) has its job requeued after this long,
without counting an attempt."""


def _encode(job: NotificationJob) -> bytes:
    return json.dumps(job.to_json(), separators=(",", ":"), ensure_ascii=False).encode()


def _decode(message: AbstractIncomingMessage) -> NotificationJob | None:
    try:
        return NotificationJob.from_json(json.loads(message.body))
    except Exception:  # an undecodable dead letter is nobody's: left where it is
        return None


def _reason(message: AbstractIncomingMessage) -> str:
    reason = (message.headers or {}).get("x-reason")
    if isinstance(reason, bytes):
        return reason.decode(errors="replace")
    return "" if reason is None else str(reason)


class RabbitNotificationQueue:
    """``NotificationQueue`` over RabbitMQ (aio-pika, robust connection, manual acks).

    ``policy`` sizes the delay queues (its ceilings); the delays themselves come with each
    ``Retry`` decision. ``prefetch`` bounds the jobs a consumer handles at once.
    """

    def __init__(
        self,
        url: str,
        policy: RetryPolicy,
        name: str = DEFAULT_NOTIFICATIONS_NAME,
        *,
        prefetch: int = 16,
        publish_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        reconnect_interval: float = 2.0,
        connection_name: str | None = None,
        handler_error_delay: float = HANDLER_ERROR_DELAY,
    ) -> None:
        self.handler_error_delay = handler_error_delay
        self._url = url
        self.policy = policy
        self.name = name
        self._prefetch = prefetch
        self._publish_timeout = publish_timeout
        self._connect_timeout = connect_timeout
        self._reconnect_interval = reconnect_interval
        self._connection_name = connection_name or f"defi-realtime:{name}"
        self._handler: JobHandler | None = None
        self._connection: AbstractRobustConnection | None = None
        self._exchange: AbstractExchange | None = None
        self._starting = asyncio.Lock()

    # -- names ----------------------------------------------------------------------------

    @property
    def work_queue(self) -> str:
        return f"{self.name}.work"

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.name}.dead"

    def retry_routing_key(self, attempt: int) -> str:
        ttl = self._ttl_ms(attempt)
        return f"retry.{attempt}.{ttl}ms"

    def retry_queue(self, attempt: int) -> str:
        return f"{self.name}.{self.retry_routing_key(attempt)}"

    @property
    def queue_names(self) -> list[str]:
        """Every queue this topology declares (for operators and test clean-up)."""
        retries = [self.retry_queue(n) for n in self.policy.retry_attempts]
        return [self.work_queue, *retries, self.dead_letter_queue]

    def _ttl_ms(self, attempt: int) -> int:
        # At least 1 ms: a TTL of 0 expires messages only when a consumer could take them
        # at once, which a delay queue never has.
        return max(1, round(self.policy.ceiling(attempt) * 1_000))

    # -- lifecycle ------------------------------------------------------------------------

    def consume(self, handler: JobHandler) -> None:
        if self._connection is not None:
            raise RuntimeError("RabbitNotificationQueue.consume() must be called before start()")
        self._handler = handler

    async def start(self) -> None:
        if self._connection is not None:
            return
        connection = await aio_pika.connect_robust(
            self._url,
            client_properties={"connection_name": self._connection_name},
            timeout=self._connect_timeout,
            reconnect_interval=self._reconnect_interval,
        )
        try:
            channel = await connection.channel(publisher_confirms=True)
            self._exchange = await self._declare(channel)
            if self._handler is not None:
                consume_channel = await connection.channel(publisher_confirms=False)
                await consume_channel.set_qos(prefetch_count=self._prefetch)
                # Declared (idempotently) on this channel too: a robust channel restores the
                # queues it declared, and their consumers, after a reconnect.
                queue = await self._declare_work(consume_channel)
                await queue.consume(self._on_message, no_ack=False)
        except BaseException:
            self._exchange = None
            await connection.close()
            raise
        self._connection = connection

    async def _declare(self, channel: AbstractChannel) -> AbstractExchange:
        exchange = await channel.declare_exchange(self.name, ExchangeType.DIRECT, durable=True)
        await self._declare_work(channel)
        dead = await channel.declare_queue(self.dead_letter_queue, durable=True)
        await dead.bind(exchange, routing_key=DEAD)
        for attempt in self.policy.retry_attempts:
            retry = await channel.declare_queue(
                self.retry_queue(attempt),
                durable=True,
                arguments={
                    "x-message-ttl": self._ttl_ms(attempt),
                    "x-dead-letter-exchange": self.name,
                    "x-dead-letter-routing-key": WORK,
                },
            )
            await retry.bind(exchange, routing_key=self.retry_routing_key(attempt))
        return exchange

    async def _declare_work(self, channel: AbstractChannel) -> AbstractQueue:
        exchange = await channel.declare_exchange(self.name, ExchangeType.DIRECT, durable=True)
        work = await channel.declare_queue(
            self.work_queue,
            durable=True,
            arguments={"x-dead-letter-exchange": self.name, "x-dead-letter-routing-key": DEAD},
        )
        await work.bind(exchange, routing_key=WORK)
        return work

    async def stop(self) -> None:
        connection, self._connection = self._connection, None
        self._exchange = None
        if connection is not None:
            # Jobs being handled are not acked: the broker gives them to another worker.
            await connection.close()

    # -- publishing -----------------------------------------------------------------------

    async def enqueue(self, jobs: Sequence[NotificationJob]) -> None:
        """Publish each job to the work queue and wait for the broker's confirms."""
        await asyncio.gather(*(self._publish(job, WORK) for job in jobs))

    async def _publish(
        self,
        job: NotificationJob,
        routing_key: str,
        *,
        expiration: float | None = None,
        headers: dict[str, Any] | None = None,
    ) -> None:
        exchange = self._exchange
        if exchange is None:
            raise RuntimeError("RabbitNotificationQueue is not running: call start() first")
        message = aio_pika.Message(
            _encode(job),
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=f"{job.idempotency_key}#{job.attempt}",
            expiration=expiration,
            headers={"attempt": job.attempt, **(headers or {})},
        )
        try:
            # mandatory: a job nobody's queue takes must fail loudly, not vanish.
            await exchange.publish(
                message, routing_key=routing_key, mandatory=True, timeout=self._publish_timeout
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise ConnectionError(
                f"notification {job.idempotency_key} was not confirmed by RabbitMQ "
                f"({self.name!r}, {routing_key!r}): {type(exc).__name__}: {exc}"
            ) from exc

    # -- dead letters ---------------------------------------------------------------------

    async def dead_letters_of(self, rule_id: str) -> list[ParkedJob]:
        async with self._dead_letters() as scanned:
            return [
                ParkedJob(job, _reason(message))
                for message, job in scanned
                if job is not None and job.rule_id == rule_id
            ]

    async def redrive(self, rule_id: str, prepare: PrepareRedrive) -> list[NotificationJob]:
        async with self._dead_letters() as scanned:
            chosen = [
                (message, replace(job, attempt=1))
                for message, job in scanned
                if job is not None and job.rule_id == rule_id
            ]
            jobs = [job for _message, job in chosen]
            if not jobs:
                return []
            await prepare(jobs)
            # Confirmed on ``work`` before the dead letter is acked: a crash in between
            # leaves both, and the worker drops the second copy (settled by the first).
            await self.enqueue(jobs)
            for message, _job in chosen:
                await message.ack()
            return jobs

    @contextlib.asynccontextmanager
    async def _dead_letters(
        self,
    ) -> AsyncIterator[list[tuple[AbstractIncomingMessage, NotificationJob | None]]]:
        """The dead letters (oldest first, at most ``MAX_SCAN``), held unacked on a channel
        of their own: what the block does not ack goes back to the queue when it closes."""
        async with self._starting:
            if self._connection is None:
                await self.start()  # e.g. an API node that does not deliver (one connection)
        connection = self._connection
        assert connection is not None
        channel = await connection.channel(publisher_confirms=False)
        try:
            dead = await channel.declare_queue(self.dead_letter_queue, durable=True)
            scanned: list[tuple[AbstractIncomingMessage, NotificationJob | None]] = []
            while len(scanned) < MAX_SCAN:
                message = await dead.get(no_ack=False, fail=False, timeout=self._publish_timeout)
                if message is None:
                    break
                scanned.append((message, _decode(message)))
            yield scanned
        finally:
            await channel.close()

    # -- consuming ------------------------------------------------------------------------

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        handler = self._handler
        assert handler is not None
        try:
            job = NotificationJob.from_json(json.loads(message.body))
        except Exception:
            logger.exception("undecodable notification %r: dead-lettered", message.message_id)
            await message.reject(requeue=False)  # the work queue's DLX: the DLQ
            return
        try:
            decision = await handler(job)
            await self._carry_out(decision)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("notification %s failed; requeued", job.idempotency_key)
            await asyncio.sleep(self.handler_error_delay)
            await self._settle(message, requeue=True)
            return
        await self._settle(message, requeue=None)

    async def _carry_out(self, decision: Decision) -> None:
        if isinstance(decision, Retry):
            attempt = decision.job.attempt - 1  # the failed one picks the delay queue
            await self._publish(
                decision.job,
                self.retry_routing_key(min(max(attempt, 1), self.policy.max_attempts - 1)),
                expiration=max(decision.delay, 0.001),
            )
        elif isinstance(decision, DeadLetter):
            await self._publish(decision.job, DEAD, headers={"x-reason": decision.reason[:1_000]})

    @staticmethod
    async def _settle(message: AbstractIncomingMessage, *, requeue: bool | None) -> None:
        try:
            if requeue is None:
                await message.ack()
            else:
                await message.nack(requeue=requeue)
        except Exception as exc:
            # The channel that delivered it is gone: the broker requeued it already.
            logger.warning("could not settle notification %r: %s", message.message_id, exc)
