"""Following the event log: relay to the fan-out, keep projections up to date.

The event store is the source of truth; the fan-out only makes things fast. Every follower
tracks a position, applies batches exactly once (by position), and when a live batch leaves
a gap, or nothing arrives for a while, reads what it missed from the log itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .log import LogBatch, LogGapError
from .ports import EventFanout, EventLog, HistoryReadModel, HotProjection, PositionStore

log = logging.getLogger(__name__)

PAGE_SIZE = 2_000


class Relay:
    """Publishes the event log to the fan-out, at-least-once, from a tracked position."""

    def __init__(
        self,
        event_log: EventLog,
        fanout: EventFanout,
        positions: PositionStore,
        *,
        name: str = "relay",
        page_size: int = 5_000,
        poll_interval: float = 0.5,
        start_at_head: bool = True,
    ) -> None:
        self.event_log = event_log
        self.fanout = fanout
        self.positions = positions
        self.name = name
        self.page_size = page_size
        self.poll_interval = poll_interval
        self.start_at_head = start_at_head
        self._wakeup = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.position = 0
        self.running = False  # False while waiting to be elected (metrics skip it then)

    def wake(self) -> None:
        """Thread-safe: new events were committed."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wakeup.set)

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            self.running = False

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        position = await self.positions.load(self.name)
        if position == 0 and self.start_at_head:
            # Consumers catch up from the log on their own when they start; the fan-out
            # only has to carry what happens from now on.
            position = await asyncio.to_thread(self.event_log.head)
            # Remember where we started: a relay restarted before its first publish must
            # resume here, not jump to a later head past events it never published.
            await self.positions.save(self.name, position)
        self.position = position
        self.running = True
        while True:
            batch = await asyncio.to_thread(self.event_log.read, self.position, self.page_size)
            if batch.last > self.position:
                await self.fanout.publish(batch)
                # Saved after the broker confirmed: a crash in between republishes
                # (at-least-once); consumers drop what they already have by position.
                await self.positions.save(self.name, batch.last)
                self.position = batch.last
                continue
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_interval):
                    await self._wakeup.wait()


@dataclass(frozen=True, slots=True)
class Stall:
    """Why a projection is not moving: it failed to apply what follows ``position``."""

    position: int
    error: str
    since: float  # unix time of the first failure of this streak
    failures: int

    def to_json(self) -> dict[str, object]:
        return {
            "position": self.position,
            "error": self.error,
            "since": self.since,
            "failures": self.failures,
        }


class ProjectionRunner:
    """Keeps one projection caught up: from the log on start, then from live batches.

    A batch it cannot apply leaves it where it was, and says so: ``stall`` holds the error
    until a batch applies again (``/health`` and the metrics report it), so no value can
    stop a projection silently.
    """

    def __init__(
        self,
        name: str,
        event_log: EventLog,
        position: Callable[[], Awaitable[int]],
        apply: Callable[[LogBatch], Awaitable[bool]],
        *,
        page_size: int = PAGE_SIZE,
    ) -> None:
        self.name = name
        self.event_log = event_log
        self._position = position
        self._apply = apply
        self.page_size = page_size
        self._lock = asyncio.Lock()
        self.position = 0
        self.stall: Stall | None = None
        self.failures = 0  # batches that failed to apply since start (a counter)

    @classmethod
    def for_hot(
        cls, event_log: EventLog, hot: HotProjection, name: str = "hot"
    ) -> ProjectionRunner:
        return cls(name, event_log, hot.position, hot.apply)

    @classmethod
    def for_history(cls, event_log: EventLog, history: HistoryReadModel) -> ProjectionRunner:
        async def position() -> int:
            return await asyncio.to_thread(history.position)

        async def apply(batch: LogBatch) -> bool:
            return await asyncio.to_thread(history.apply, batch)

        return cls("history", event_log, position, apply)

    async def catch_up(self, until: int | None = None) -> int:
        """Apply everything in the log (up to ``until``, if given); returns the position."""
        async with self._lock:
            self.position = await self._position()
            await self._catch_up_locked(until)
            return self.position

    async def catch_up_in_steps(
        self, until: int, *, step: int = 20_000, progress: Callable[[int], None] | None = None
    ) -> int:
        """``catch_up`` to ``until`` in steps of ``step`` positions, calling ``progress`` with
        the position after each (a rebuild's progress bar); returns the position."""
        position = await self._position()
        if progress is not None:
            progress(position)
        while position < until:
            reached = await self.catch_up(until=min(until, position + step))
            if progress is not None:
                progress(reached)
            if reached == position:
                break  # the log ends before ``until``
            position = reached
        return position

    async def _catch_up_locked(self, until: int | None) -> None:
        while until is None or self.position < until:
            batch = await asyncio.to_thread(self.event_log.read, self.position, self.page_size)
            if batch.last == self.position:
                return
            await self._apply_watched(batch)
            self.position = batch.last

    async def advance(self, batch: LogBatch) -> None:
        """Bring the projection up to ``batch.last``, using the batch when it fits."""
        async with self._lock:
            if batch.last <= self.position:
                return
            if batch.after > self.position:
                # Behind: the position may have moved (another process shares this
                # projection), else read the gap from the log.
                self.position = await self._position()
                await self._catch_up_locked(until=batch.after)
            if self.position >= batch.last:
                return
            try:
                await self._apply_watched(batch.since(self.position))
            except LogGapError:
                # The projection lost state behind our back (e.g. Redis flushed): rebuild
                # from its own position.
                self.position = await self._position()
                await self._catch_up_locked(until=batch.last)
                return
            self.position = batch.last

    async def _apply_watched(self, batch: LogBatch) -> None:
        try:
            await self._apply(batch)
        except LogGapError:
            raise  # not a failure: the caller reads the gap from the log
        except Exception as error:
            self.failures += 1
            previous = self.stall
            self.stall = Stall(
                position=self.position,
                error=f"{type(error).__name__}: {error}"[:500],
                since=previous.since if previous is not None else time.time(),
                failures=(previous.failures if previous is not None else 0) + 1,
            )
            raise
        self.stall = None


class NodeFollower:
    """One per serving process: takes live batches from the fan-out, brings the projections
    up to date, then hands the batch to the realtime hub. Polls the log when quiet."""

    def __init__(
        self,
        event_log: EventLog,
        runners: list[ProjectionRunner],
        deliver: Callable[[LogBatch], Awaitable[None]] | None = None,
        *,
        on_ready: Callable[[int], Awaitable[None]] | None = None,
        late_runners: list[ProjectionRunner] | None = None,
        poll_interval: float = 1.0,
        queue_size: int = 1_000,
    ) -> None:
        self.event_log = event_log
        self.runners = runners
        self.deliver = deliver
        self.on_ready = on_ready
        # Advanced after delivery: projections clients do not wait for (e.g. history).
        self.late_runners = late_runners or []
        self.poll_interval = poll_interval
        self._queue: asyncio.Queue[LogBatch] = asyncio.Queue(maxsize=queue_size)
        # A queued batch that did not follow on from the one before it (``_coalesce``).
        self._held: LogBatch | None = None
        self.position = 0
        self.running = False
        self.ready = asyncio.Event()

    async def on_batch(self, batch: LogBatch) -> None:
        """The fan-out handler. While not running (e.g. waiting to be elected) batches are
        dropped: ``run`` catches up from the log first."""
        if self.running:
            await self._queue.put(batch)

    async def run(self) -> None:
        self.running = True
        try:
            await self._run()
        finally:
            self.running = False
            self._held = None
            while not self._queue.empty():
                self._queue.get_nowait()

    async def _run(self) -> None:
        for runner in [*self.runners, *self.late_runners]:
            await self._catch_up(runner)
        self.position = await asyncio.to_thread(self.event_log.head)
        for runner in [*self.runners, *self.late_runners]:
            await self._catch_up(runner)
        if self.on_ready is not None:
            await self.on_ready(self.position)
        self.ready.set()
        while True:
            if self._held is not None:
                batch, self._held = self._held, None
            else:
                try:
                    async with asyncio.timeout(self.poll_interval):
                        batch = await self._queue.get()
                except TimeoutError:
                    batch = await asyncio.to_thread(self.event_log.read, self.position, PAGE_SIZE)
                    if batch.last == self.position:
                        await self._retry_stalled()
                        continue
            await self._handle(self._coalesce(batch))

    def _coalesce(self, batch: LogBatch) -> LogBatch:
        """``batch`` joined with the batches queued behind it that follow on from it, up to
        ``PAGE_SIZE`` entries: a follower that fell behind applies its backlog in pages
        (one transaction, one rollup write per page) instead of live batch by live batch,
        which is what lets it catch up. A batch that leaves a gap is held for the next turn.
        """
        parts = [batch.entries]
        after, last, count = batch.after, batch.last, len(batch.entries)
        while count < PAGE_SIZE and not self._queue.empty():
            following = self._queue.get_nowait()
            if following.after > last:
                self._held = following
                break
            if following.last <= last:
                continue  # a duplicate delivery
            part = following.since(last)
            parts.append(part.entries)
            last, count = part.last, count + len(part.entries)
        if len(parts) == 1:
            return batch
        return LogBatch(after, last, tuple(itertools.chain.from_iterable(parts)))

    async def _catch_up(self, runner: ProjectionRunner, until: int | None = None) -> None:
        """Catch ``runner`` up; a failure leaves it stalled (reported, retried when quiet)
        instead of stopping the other projections and the hub."""
        stalled = runner.stall is not None
        try:
            await runner.catch_up(until)
        except Exception:
            if not stalled:  # once per streak, not at every retry
                log.exception("projection %s cannot apply the log; retrying", runner.name)

    async def _retry_stalled(self) -> None:
        for runner in [*self.runners, *self.late_runners]:
            if runner.position < self.position:
                await self._catch_up(runner, until=self.position)

    async def _handle(self, batch: LogBatch) -> None:
        if batch.last <= self.position:
            return  # duplicate delivery
        if batch.after > self.position:
            # Missed something (a lost or reordered message): read the gap from the log.
            gap = await asyncio.to_thread(
                self.event_log.read, self.position, batch.after - self.position
            )
            if gap.last > self.position:
                await self._handle(gap)
            if batch.after > self.position:
                self.position = batch.after
        part = batch.since(self.position)
        # The projections are independent stores (each its own position): they advance
        # side by side, so one waiting on its database does not hold the others up.
        await asyncio.gather(*(self._advance(runner, part) for runner in self.runners))
        if self.deliver is not None:
            try:
                await self.deliver(part)
            except Exception:
                log.exception("delivery of batch (%d, %d] failed", part.after, part.last)
        await asyncio.gather(*(self._advance(runner, part) for runner in self.late_runners))
        self.position = part.last

    async def _advance(self, runner: ProjectionRunner, batch: LogBatch) -> None:
        stalled = runner.stall is not None
        try:
            await runner.advance(batch)
        except Exception:
            if not stalled:
                log.exception("projection %s failed to advance", runner.name)
