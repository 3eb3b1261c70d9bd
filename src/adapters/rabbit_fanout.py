"""RabbitMQ ``EventFanout``: one topic exchange, one private queue per listening process.

Delivery guarantees, end to end:

* ``publish`` returns only after the broker confirmed every message of the batch
  (publisher confirms). A failure of any kind raises ``ConnectionError``; nothing is
  dropped silently, the caller (the relay) retries the batch from its stored position.
  A retry may duplicate messages the broker had already taken: consumers drop
  duplicates by position.
* Each process consumes from its own exclusive, auto-delete queue bound with ``#``, so
  every node sees every batch. Messages are acked only after every handler ran, and a
  single dispatcher task hands them to the handlers one at a time, so a node sees the
  batches of one publisher in publish order.
* When the connection drops, the broker deletes the exclusive queue together with what
  it still held. ``connect_robust`` re-declares the queue, its binding and the consumer
  on reconnect; batches published in between never reach this node. That is the gap
  case of the port contract: consumers notice ``batch.after`` is beyond their position
  and fill the gap from the ``EventLog``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import uuid
from collections.abc import Sequence
from typing import Any

import aio_pika
from aio_pika.abc import (
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractRobustConnection,
    ExchangeType,
)

from ..application.log import LogBatch, LogEntry
from ..application.ports import BatchHandler

__all__ = ["DEFAULT_EXCHANGE", "MAX_MESSAGE_BYTES", "RabbitEventFanout", "split_batch"]

logger = logging.getLogger(__name__)

DEFAULT_EXCHANGE = "defi-realtime.events"
MAX_MESSAGE_BYTES = 1_000_000
"""Batches whose JSON is larger than this are published as several messages."""

_JSON_SEPARATORS = (",", ":")


def _encode(payload: Any) -> bytes:
    return json.dumps(payload, separators=_JSON_SEPARATORS, ensure_ascii=False).encode()


def encode_batch(batch: LogBatch) -> bytes:
    """The message body for ``batch`` (compact UTF-8 JSON of ``LogBatch.to_json``)."""
    return _encode(batch.to_json())


def split_batch(batch: LogBatch, max_bytes: int = MAX_MESSAGE_BYTES) -> list[LogBatch]:
    """Cut ``batch`` into contiguous batches whose JSON stays under ``max_bytes``.

    The parts chain: the first starts at ``batch.after``, each next one starts at the
    previous ``last`` and the final one ends at ``batch.last``, so a consumer applying
    them in order sees no gap. An entry larger than ``max_bytes`` on its own travels
    alone in an oversized part (entries are never cut).
    """
    if len(batch.entries) <= 1 or len(encode_batch(batch)) <= max_bytes:
        return [batch]
    # The envelope around the entries: after/last never have more digits than batch.last.
    envelope = len(encode_batch(LogBatch(after=batch.last, last=batch.last)))
    parts: list[LogBatch] = []
    current: list[LogEntry] = []
    size = envelope
    after = batch.after
    for entry in batch.entries:
        entry_size = len(_encode(entry.to_json())) + 1  # + the separating comma
        if current and size + entry_size > max_bytes:
            last = current[-1].position
            parts.append(LogBatch(after=after, last=last, entries=tuple(current)))
            after, current, size = last, [], envelope
        current.append(entry)
        size += entry_size
    parts.append(LogBatch(after=after, last=batch.last, entries=tuple(current)))
    return parts


def routing_key_for(batch: LogBatch) -> str:
    """``batch.<kind of the first entry>``, or ``batch.empty`` for a range without entries."""
    return f"batch.{batch.entries[0].kind}" if batch.entries else "batch.empty"


def _default_node_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class RabbitEventFanout:
    """``EventFanout`` over a durable RabbitMQ topic exchange (aio-pika, robust connection).

    ``url`` is an AMQP URL; ``exchange`` the topic exchange shared by all nodes;
    ``node_id`` names this process in its queue name and connection name (a unique id is
    generated when omitted). Register handlers with ``listen`` before ``start``; a
    process that only publishes declares no queue.
    """

    def __init__(
        self,
        url: str,
        exchange: str = DEFAULT_EXCHANGE,
        node_id: str | None = None,
        *,
        prefetch: int = 64,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        publish_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        reconnect_interval: float = 5.0,
    ) -> None:
        self._url = url
        self._exchange_name = exchange
        self.node_id = node_id or _default_node_id()
        self.connection_name = f"defi-realtime:{exchange}:{self.node_id}"
        self._prefetch = prefetch
        self._max_message_bytes = max_message_bytes
        self._publish_timeout = publish_timeout
        self._connect_timeout = connect_timeout
        self._reconnect_interval = reconnect_interval
        self._handlers: list[BatchHandler] = []
        self._connection: AbstractRobustConnection | None = None
        self._exchange: AbstractExchange | None = None
        self._queue_name: str | None = None
        self._inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self._dispatcher: asyncio.Task[None] | None = None

    @property
    def exchange_name(self) -> str:
        return self._exchange_name

    @property
    def queue_name(self) -> str | None:
        """This node's queue while started with listeners, else ``None``."""
        return self._queue_name

    @property
    def running(self) -> bool:
        return self._connection is not None

    @property
    def connected(self) -> bool:
        """Started and connected now (false while the robust connection reconnects)."""
        return self._connection is not None and self._connection.connected.is_set()

    def listen(self, handler: BatchHandler) -> None:
        """Register a handler; must be called before ``start`` (the queue is declared then)."""
        if self._connection is not None:
            raise RuntimeError("RabbitEventFanout.listen() must be called before start()")
        self._handlers.append(handler)

    async def start(self) -> None:
        if self._connection is not None:
            return
        connection = await aio_pika.connect_robust(
            self._url,
            client_properties={"connection_name": self.connection_name},
            timeout=self._connect_timeout,
            reconnect_interval=self._reconnect_interval,
        )
        try:
            # Separate channels: publisher flow control must never hold back our acks,
            # and a channel error on one side does not close the other.
            publish_channel = await connection.channel(publisher_confirms=True)
            self._exchange = await publish_channel.declare_exchange(
                self._exchange_name, ExchangeType.TOPIC, durable=True
            )
            if self._handlers:
                await self._start_consuming(connection)
        except BaseException:
            self._exchange = None
            self._queue_name = None
            await self._cancel_dispatcher()
            await connection.close()
            raise
        self._connection = connection

    async def _start_consuming(self, connection: AbstractRobustConnection) -> None:
        channel = await connection.channel(publisher_confirms=False)
        # The prefetch bounds unacked messages, hence also our in-process inbox.
        await channel.set_qos(prefetch_count=self._prefetch)
        exchange = await channel.declare_exchange(
            self._exchange_name, ExchangeType.TOPIC, durable=True
        )
        # Not a server-named queue: a robust connection re-declares the queue by name
        # after a reconnect, and names starting with ``amq.`` (the server-generated ones)
        # may not be declared by clients. A unique client-side name does the same job.
        queue_name = f"{self._exchange_name}.node.{self.node_id}.{uuid.uuid4().hex[:8]}"
        queue = await channel.declare_queue(queue_name, exclusive=True, auto_delete=True)
        await queue.bind(exchange, routing_key="#")
        self._inbox = asyncio.Queue()
        self._dispatcher = asyncio.create_task(
            self._dispatch(self._inbox), name=f"rabbit-fanout-dispatch-{self.node_id}"
        )
        await queue.consume(self._on_message)
        self._queue_name = queue.name

    async def stop(self) -> None:
        connection = self._connection
        if connection is None:
            return
        self._connection = None
        self._exchange = None
        self._queue_name = None
        # Cancel the dispatcher first: unacked messages die with the exclusive queue, and
        # no handler runs once stop() has begun tearing down.
        await self._cancel_dispatcher()
        await connection.close()

    async def _cancel_dispatcher(self) -> None:
        task, self._dispatcher = self._dispatcher, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def publish(self, batch: LogBatch) -> None:
        """Publish ``batch`` (split when over ``max_message_bytes``) and await the confirms.

        Raises ``RuntimeError`` when not started and ``ConnectionError`` when the broker
        did not confirm (connection down or reconnecting, nack, timeout).
        """
        exchange = self._exchange
        connection = self._connection
        if exchange is None or connection is None:
            raise RuntimeError("RabbitEventFanout is not running: call start() first")
        parts = split_batch(batch, self._max_message_bytes)
        for index, part in enumerate(parts):
            message = aio_pika.Message(
                encode_batch(part),
                content_type="application/json",
                content_encoding="utf-8",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=f"{part.after}-{part.last}",
                app_id=self.node_id,
                headers={
                    "after": part.after,
                    "last": part.last,
                    "part": index + 1,
                    "parts": len(parts),
                },
            )
            # Parts go out strictly one after the other, each confirmed before the next:
            # a failure leaves a confirmed prefix, and the caller's retry of the whole
            # batch only duplicates positions that consumers drop.
            await self._publish_one(exchange, message, routing_key_for(part), part)

    async def _publish_one(
        self,
        exchange: AbstractExchange,
        message: aio_pika.Message,
        routing_key: str,
        part: LogBatch,
    ) -> None:
        try:
            # mandatory=False: an unroutable message means no node is listening right
            # now, which is fine (they catch up from the EventLog when they start).
            await exchange.publish(
                message,
                routing_key=routing_key,
                mandatory=False,
                timeout=self._publish_timeout,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Robust connections restore channels in the background but never replay a
            # failed publish: surface it so the caller retries instead of losing data.
            raise ConnectionError(
                f"batch ({part.after}, {part.last}] was not confirmed by RabbitMQ "
                f"(exchange {self._exchange_name!r}): {type(exc).__name__}: {exc}"
            ) from exc

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        # aio-pika runs every delivery callback in its own task, so awaiting the handlers
        # here would let batches overtake each other. Instead, hand messages to the single
        # dispatcher task. The tasks start in delivery order and this put happens before
        # their first suspension point, so the inbox keeps that order.
        self._inbox.put_nowait(message)

    async def _dispatch(self, inbox: asyncio.Queue[AbstractIncomingMessage]) -> None:
        while True:
            message = await inbox.get()
            try:
                batch = LogBatch.from_json(json.loads(message.body))
            except Exception:
                logger.exception("dropping undecodable fan-out message %r", message.message_id)
                await self._settle(message, ack=False)
                continue
            await self._deliver(batch, self._handlers)
            await self._settle(message, ack=True)

    @staticmethod
    async def _deliver(batch: LogBatch, handlers: Sequence[BatchHandler]) -> None:
        for handler in handlers:
            try:
                await handler(batch)
            except Exception:
                # Ack anyway: redelivering would fail the same way and block every batch
                # behind it. The consumer's position shows the gap and it is refilled
                # from the EventLog.
                logger.exception(
                    "fan-out handler %r failed on batch (%d, %d]",
                    handler,
                    batch.after,
                    batch.last,
                )

    @staticmethod
    async def _settle(message: AbstractIncomingMessage, *, ack: bool) -> None:
        try:
            if ack:
                await message.ack()
            else:
                await message.reject(requeue=False)
        except Exception as exc:
            # The channel that delivered the message is gone (reconnect): its exclusive
            # queue went with it, so there is nothing left to settle.
            logger.debug("could not settle fan-out message %r: %s", message.message_id, exc)
