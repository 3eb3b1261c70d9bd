"""``NotificationQueue`` in process (the embedded default): an asyncio queue and timers.

The queue itself keeps nothing across a restart: jobs waiting or being retried when it stops
are gone from it. The dispatcher journals every job it enqueues here in the delivery log and
enqueues the unsettled ones again on start (ADR 0011). Given that ``journal``, the queue
lists and redrives its dead letters from it, so they survive a restart too (ADR 0037). For
one node without a broker; production uses ``RabbitNotificationQueue``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import replace

from ..application.delivery import (
    DeadLetter,
    JobHandler,
    NotificationJob,
    ParkedJob,
    PrepareRedrive,
    Retry,
)
from ..application.ports import DeliveryLog

__all__ = ["InProcessNotificationQueue"]

logger = logging.getLogger(__name__)

HANDLER_ERROR_DELAY = 1.0
"""A handler that raised (e.g. the delivery record's database is down) gets the job again
after this long, without counting an attempt."""


class InProcessNotificationQueue:
    """``concurrency`` worker tasks take jobs from an ``asyncio.Queue``; retries wait in
    ``loop.call_later`` timers; dead letters are kept in ``dead_letters`` (newest last,
    at most ``max_dead_letters``).

    A job whose idempotency key the queue already holds (waiting, retrying or being
    handled) is not enqueued again: the journal's jobs re-enqueued on start and a batch
    dispatched again can overlap, and two copies in flight could both be delivered."""

    def __init__(
        self,
        *,
        concurrency: int = 8,
        max_dead_letters: int = 10_000,
        handler_error_delay: float = HANDLER_ERROR_DELAY,
        journal: DeliveryLog | None = None,
    ) -> None:
        self.concurrency = concurrency
        # Where the dispatcher journals this queue's jobs: the durable copy of its dead
        # letters (None: only ``dead_letters``, in memory).
        self.journal = journal
        self.handler_error_delay = handler_error_delay
        self.max_dead_letters = max_dead_letters
        self.dead_letters: list[tuple[NotificationJob, str]] = []
        self._handler: JobHandler | None = None
        self._ready: asyncio.Queue[NotificationJob] = asyncio.Queue()
        self._timers: set[asyncio.TimerHandle] = set()
        self._workers: list[asyncio.Task[None]] = []
        self._in_flight = 0
        self._held: set[str] = set()

    @property
    def pending(self) -> int:
        """Jobs waiting, being retried later, or being handled."""
        return self._ready.qsize() + len(self._timers) + self._in_flight

    def consume(self, handler: JobHandler) -> None:
        if self._workers:
            raise RuntimeError("InProcessNotificationQueue.consume() must be called before start()")
        self._handler = handler

    async def start(self) -> None:
        if self._workers or self._handler is None:
            return
        self._workers = [
            asyncio.create_task(self._work(self._handler), name=f"notification-worker-{n}")
            for n in range(self.concurrency)
        ]

    async def stop(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        workers, self._workers = self._workers, []
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        # Forget the jobs (the journal has them), so that they can be enqueued again.
        self._ready = asyncio.Queue()
        self._held.clear()

    async def enqueue(self, jobs: Sequence[NotificationJob]) -> None:
        for job in jobs:
            if job.idempotency_key in self._held:
                continue
            self._held.add(job.idempotency_key)
            self._ready.put_nowait(job)

    async def dead_letters_of(self, rule_id: str) -> list[ParkedJob]:
        if self.journal is not None:
            return await asyncio.to_thread(self.journal.parked, rule_id)
        return [
            ParkedJob(job, reason) for job, reason in self.dead_letters if job.rule_id == rule_id
        ]

    async def redrive(self, rule_id: str, prepare: PrepareRedrive) -> list[NotificationJob]:
        parked = await self.dead_letters_of(rule_id)
        jobs = [replace(entry.job, attempt=1) for entry in parked]
        if not jobs:
            return []
        await prepare(jobs)
        keys = {job.idempotency_key for job in jobs}
        self.dead_letters[:] = [
            entry for entry in self.dead_letters if entry[0].idempotency_key not in keys
        ]
        await self.enqueue(jobs)
        return jobs

    def _later(self, delay: float, job: NotificationJob) -> None:
        loop = asyncio.get_running_loop()
        timer: asyncio.TimerHandle | None = None

        def fire() -> None:
            if timer is not None:
                self._timers.discard(timer)
            self._ready.put_nowait(job)

        timer = loop.call_later(max(0.0, delay), fire)
        self._timers.add(timer)

    async def _work(self, handler: JobHandler) -> None:
        while True:
            job = await self._ready.get()
            self._in_flight += 1
            try:
                decision = await handler(job)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("notification handler failed on %s", job.idempotency_key)
                self._later(self.handler_error_delay, job)
                continue
            finally:
                self._in_flight -= 1
            if isinstance(decision, Retry):
                self._later(decision.delay, decision.job)
                continue
            self._held.discard(job.idempotency_key)
            if isinstance(decision, DeadLetter):
                self.dead_letters.append((decision.job, decision.reason))
                with contextlib.suppress(IndexError):
                    while len(self.dead_letters) > self.max_dead_letters:
                        self.dead_letters.pop(0)
