"""In-process ``EventFanout``: one event loop, no broker (embedded mode and tests)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from ..application.log import LogBatch
from ..application.ports import BatchHandler

__all__ = ["InProcessEventFanout"]

logger = logging.getLogger(__name__)


@dataclass(eq=False, slots=True)
class _Listener:
    handler: BatchHandler
    queue: asyncio.Queue[LogBatch]
    task: asyncio.Task[None] | None = field(default=None)


class InProcessEventFanout:
    """Delivers every published batch to every registered handler, in publish order.

    Each listener has its own bounded queue drained by its own consumer task, so a slow
    handler only delays itself: ``publish`` waits for room in the full queue (in-process
    backpressure) instead of buffering without bound or dropping. A handler that raises is
    logged and skipped for that batch; its consumer keeps going with the next one.

    ``stop()`` cancels the consumers; batches still queued are discarded (consumers recover
    them from the ``EventLog`` by position, like any other gap).
    """

    def __init__(self, queue_size: int = 1024) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self._queue_size = queue_size
        self._listeners: list[_Listener] = []
        self._running = False

    @property
    def running(self) -> bool:
        return self._running

    def listen(self, handler: BatchHandler) -> None:
        """Register ``handler`` for every batch published from now on."""
        listener = _Listener(handler=handler, queue=asyncio.Queue(maxsize=self._queue_size))
        self._listeners.append(listener)
        if self._running:
            self._spawn(listener)

    async def start(self) -> None:
        if self._running:
            return
        self._running = True
        for listener in self._listeners:
            self._spawn(listener)

    async def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        tasks = [listener.task for listener in self._listeners if listener.task is not None]
        for task in tasks:
            task.cancel()
        # return_exceptions: the consumers' CancelledError become results, while a
        # cancellation of ``stop`` itself still propagates.
        await asyncio.gather(*tasks, return_exceptions=True)
        for listener in self._listeners:
            listener.task = None
            old = listener.queue
            # Fresh queue: anything left over belongs to the stopped run and must not be
            # replayed by a later ``start()``.
            listener.queue = asyncio.Queue(maxsize=self._queue_size)
            # Emptying the old queue wakes publishers blocked on a full queue; they see
            # the swap and raise instead of reporting a delivery that will never happen.
            while not old.empty():
                old.get_nowait()
                old.task_done()

    async def publish(self, batch: LogBatch) -> None:
        """Enqueue ``batch`` for every listener; waits while a listener's queue is full."""
        if not self._running:
            raise RuntimeError("InProcessEventFanout is not running: call start() first")
        for listener in list(self._listeners):
            queue = listener.queue
            await queue.put(batch)
            if not self._running or listener.queue is not queue:
                raise RuntimeError("InProcessEventFanout stopped while publishing")

    async def join(self) -> None:
        """Wait until every listener has handled everything published so far (tests)."""
        for listener in list(self._listeners):
            await listener.queue.join()

    def _spawn(self, listener: _Listener) -> None:
        listener.task = asyncio.create_task(
            self._consume(listener), name=f"fanout-listener-{id(listener):x}"
        )

    @staticmethod
    async def _consume(listener: _Listener) -> None:
        queue = listener.queue
        while True:
            batch = await queue.get()
            try:
                await listener.handler(batch)
            except Exception:
                # At-least-once is the publisher's promise, not a retry loop here: a
                # handler that fails on a batch would fail again and block everything
                # behind it. Consumers notice the missing positions and refill them
                # from the EventLog.
                logger.exception(
                    "fan-out handler %r failed on batch (%d, %d]",
                    listener.handler,
                    batch.after,
                    batch.last,
                )
            finally:
                queue.task_done()
