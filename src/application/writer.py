"""The seam between the async server and the synchronous event store.

One ``IngestWriter`` thread per process owns every write. Ingest requests are queued; the
thread drains the queue into a group (up to ``max_group_items``) and saves the whole group in
one transaction (group commit), so throughput grows with load instead of paying one commit per
request. Other commands run on the same thread through ``call`` so that the aggregate cache
is only ever touched by one thread. A job whose caller was cancelled before the thread took it
is dropped unrun; once taken it can no longer be cancelled, so its result always has a
future to land in and the thread never dies of a caller that went away.
See docs/adr/0003-sync-event-store-async-server.md.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

from .app import DefiRealtime
from .ingest import IngestBatch, IngestResult
from .telemetry import NO_TELEMETRY, Telemetry

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(slots=True)
class _IngestJob:
    batch: IngestBatch
    future: Future[IngestResult]


@dataclass(slots=True)
class _CallJob:
    function: Callable[[], Any]
    future: Future[Any]


_STOP = object()


class IngestWriter:
    """Single writer thread with group commit."""

    def __init__(
        self,
        app: DefiRealtime,
        *,
        max_group_items: int = 20_000,
        on_commit: Callable[[int], None] | None = None,
        telemetry: Telemetry = NO_TELEMETRY,
    ) -> None:
        self.app = app
        self.telemetry = telemetry
        self.max_group_items = max_group_items
        self._on_commit = on_commit
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def set_on_commit(self, callback: Callable[[int], None] | None) -> None:
        """Called on the writer thread with the new head position after each commit."""
        self._on_commit = callback

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ingest-writer", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None

    def submit(self, batch: IngestBatch) -> Future[IngestResult]:
        future: Future[IngestResult] = Future()
        self._queue.put(_IngestJob(batch, future))
        return future

    async def ingest(self, batch: IngestBatch) -> IngestResult:
        return await asyncio.wrap_future(self.submit(batch))

    def call_soon(self, function: Callable[[], T]) -> Future[T]:
        future: Future[T] = Future()
        self._queue.put(_CallJob(function, future))
        return future

    async def call(self, function: Callable[[], T]) -> T:
        return await asyncio.wrap_future(self.call_soon(function))

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is _STOP:
                return
            if not job.future.set_running_or_notify_cancel():
                continue  # its caller went away before it started: nothing was done
            if isinstance(job, _CallJob):
                self._run_call(job)
                continue
            group = [job]
            items = job.batch.size
            pending_call: _CallJob | None = None
            stop = False
            # Group commit: take whatever else is already queued, without waiting.
            while items < self.max_group_items:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    stop = True
                    break
                if not more.future.set_running_or_notify_cancel():
                    continue
                if isinstance(more, _CallJob):
                    pending_call = more
                    break
                group.append(more)
                items += more.batch.size
            self._run_group(group)
            if pending_call is not None:
                self._run_call(pending_call)
            if stop:
                return

    def _run_group(self, group: list[_IngestJob]) -> None:
        started = time.perf_counter()
        try:
            results = self.app.ingest([job.batch for job in group])
        except BaseException as error:  # every caller learns that nothing was committed
            log.exception("ingest group of %d batches failed", len(group))
            for job in group:
                job.future.set_exception(error)
            return
        self.telemetry.ingest_committed(
            time.perf_counter() - started, sum(job.batch.size for job in group)
        )
        for job, result in zip(group, results, strict=True):
            job.future.set_result(result)
        self._committed(max((result.position for result in results), default=0))

    def _run_call(self, job: _CallJob) -> None:
        try:
            result = job.function()
        except BaseException as error:
            job.future.set_exception(error)
            return
        job.future.set_result(result)
        self._committed(1)

    def _committed(self, position: int) -> None:
        if position and self._on_commit is not None:
            try:
                self._on_commit(position)
            except Exception:
                log.exception("on_commit callback failed")
