"""NodeFollower applies a backlog of live batches in pages (ADR 0055): batches queued behind
each other are joined, a gap is read from the log, duplicates are dropped, and every
position reaches the projection and the hub exactly once, in order."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from defi_realtime.application.following import PAGE_SIZE, NodeFollower, ProjectionRunner, Relay
from defi_realtime.application.log import LogBatch, LogEntry


def entry(position: int) -> LogEntry:
    return LogEntry(position, "metric", f"p{position % 7}", {"value": position}, 0.0)


class ListLog:
    """An event log held in a list (positions 1..size), empty until ``open`` (the follower
    starts at an empty head and then gets the queued live batches)."""

    def __init__(self, size: int) -> None:
        self.entries = [entry(p) for p in range(1, size + 1)]
        self.visible = 0
        self.reads: list[tuple[int, int]] = []

    def head(self) -> int:
        return self.visible

    def read(self, after: int, limit: int) -> LogBatch:
        self.reads.append((after, limit))
        found = tuple(self.entries[after : min(after + limit, self.visible)])
        return LogBatch(after, found[-1].position if found else after, found)

    async def open(self, position: int) -> None:
        self.visible = len(self.entries)

    def batch(self, after: int, last: int) -> LogBatch:
        return LogBatch(after, last, tuple(self.entries[after:last]))


async def follow(log: ListLog, queued: list[LogBatch]) -> tuple[list[LogBatch], list[LogBatch]]:
    applied: list[LogBatch] = []
    delivered: list[LogBatch] = []
    position = [0]

    async def stored() -> int:
        return position[0]

    async def apply(part: LogBatch) -> bool:
        assert part.after == position[0], "applied out of order"
        applied.append(part)
        position[0] = part.last
        return True

    async def deliver(part: LogBatch) -> None:
        delivered.append(part)

    runner = ProjectionRunner("p", log, stored, apply)  # type: ignore[arg-type]
    follower = NodeFollower(
        log,  # type: ignore[arg-type]
        [runner],
        deliver,
        on_ready=log.open,
        poll_interval=0.05,
    )
    follower.running = True  # so that on_batch queues (as it does once elected)
    for part in queued:
        await follower.on_batch(part)
    task = asyncio.create_task(follower._run())
    try:
        for _ in range(300):
            if follower.position >= len(log.entries):
                break
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
    return applied, delivered


def positions(batches: list[LogBatch]) -> list[int]:
    return [e.position for part in batches for e in part.entries]


def test_a_backlog_of_small_batches_is_applied_as_one_page() -> None:
    log = ListLog(60)
    applied, delivered = asyncio.run(follow(log, [log.batch(i, i + 10) for i in range(0, 60, 10)]))
    assert [(b.after, b.last) for b in applied] == [(0, 60)]
    assert positions(applied) == list(range(1, 61))
    assert positions(delivered) == list(range(1, 61))


def test_pages_stop_at_the_page_size() -> None:
    size, count = 100, PAGE_SIZE // 100 + 3
    log = ListLog(size * count)
    applied, _ = asyncio.run(
        follow(log, [log.batch(size * i, size * (i + 1)) for i in range(count)])
    )
    assert [b.last - b.after for b in applied] == [PAGE_SIZE, size * count - PAGE_SIZE]
    assert positions(applied) == list(range(1, size * count + 1))


def test_duplicates_are_dropped_and_a_gap_is_read_from_the_log() -> None:
    log = ListLog(50)
    queued = [
        log.batch(0, 10),
        log.batch(5, 10),  # a duplicate delivery
        log.batch(5, 20),  # overlapping
        log.batch(30, 40),  # 20..30 never arrived
        log.batch(40, 50),
    ]
    applied, delivered = asyncio.run(follow(log, queued))
    assert positions(applied) == list(range(1, 51))
    assert positions(delivered) == list(range(1, 51))
    assert [(b.after, b.last) for b in applied] == [(0, 20), (20, 30), (30, 50)]
    assert (20, 10) in log.reads  # the gap, read from the log


def test_the_projections_advance_side_by_side() -> None:
    """Each projection's apply waits for the other's to start: one after the other, the
    follower would never get past the first batch."""
    log = ListLog(10)
    started = {"a": asyncio.Event(), "b": asyncio.Event()}
    applied: list[tuple[str, int]] = []

    def runner(name: str, other: str) -> ProjectionRunner:
        position = [0]

        async def stored() -> int:
            return position[0]

        async def apply(part: LogBatch) -> bool:
            started[name].set()
            await asyncio.wait_for(started[other].wait(), 2.0)
            applied.append((name, part.last))
            position[0] = part.last
            return True

        return ProjectionRunner(name, log, stored, apply)  # type: ignore[arg-type]

    async def run() -> None:
        follower = NodeFollower(log, [runner("a", "b"), runner("b", "a")], on_ready=log.open)  # type: ignore[arg-type]
        follower.running = True
        await follower.on_batch(log.batch(0, 10))
        task = asyncio.create_task(follower._run())
        try:
            for _ in range(300):
                if follower.position >= 10:
                    break
                await asyncio.sleep(0.01)
        finally:
            task.cancel()

    asyncio.run(run())
    assert sorted(applied) == [("a", 10), ("b", 10)]


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(300):
        if condition():
            return
        await asyncio.sleep(0.01)


async def stops_when_cancelled(task: asyncio.Task[None]) -> bool:
    """Cancel ``task`` in the caller's turn of the loop: whether it stopped within 2 s."""
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=2.0)
    if not done:
        task.cancel()  # a second time, so that the test itself ends
        await asyncio.wait({task}, timeout=2.0)
    return bool(done) and task.cancelled()


def test_a_follower_cancelled_as_a_batch_arrives_stops() -> None:
    """Shutting down cancels the follower; a batch may arrive in the same turn of the loop.
    The cancellation must win: a wait that returned the batch instead (``asyncio.wait_for``
    on Python 3.11 does) leaves the follower running, and the node never stops."""
    log = ListLog(20)

    async def run() -> bool:
        follower = NodeFollower(log, [], on_ready=log.open, poll_interval=5.0)  # type: ignore[arg-type]
        follower.running = True
        task = asyncio.create_task(follower._run())
        await until(follower.ready.is_set)
        await asyncio.sleep(0.05)  # waiting on its queue now
        await follower.on_batch(log.batch(20, 20))  # the getter is woken in this turn...
        return await stops_when_cancelled(task)  # ...and the follower cancelled in it

    assert asyncio.run(run()), "the follower went on after it was cancelled"


def test_a_relay_cancelled_as_it_is_woken_stops() -> None:
    """The relay's wait for new events, cancelled in the turn a commit wakes it."""
    log = ListLog(0)

    class Positions:
        async def load(self, name: str) -> int:
            return 0

        async def save(self, name: str, position: int) -> None:
            pass

    async def run() -> bool:
        relay = Relay(log, None, Positions(), poll_interval=5.0)  # type: ignore[arg-type]
        task = asyncio.create_task(relay.run())
        await until(lambda: relay.running)
        await asyncio.sleep(0.05)  # waiting to be woken now
        relay._wakeup.set()  # the waiter is woken in this turn...
        return await stops_when_cancelled(task)  # ...and the relay cancelled in it

    assert asyncio.run(run()), "the relay went on after it was cancelled"
