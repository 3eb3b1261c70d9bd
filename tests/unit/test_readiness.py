"""Readiness checks (application/readiness.py) on fakes: bounded, concurrent, reasons."""

from __future__ import annotations

import asyncio
import time

from defi_realtime.application.following import NodeFollower, ProjectionRunner, Stall
from defi_realtime.application.log import LogBatch
from defi_realtime.application.readiness import Readiness, ServiceUnavailable


class FakeLog:
    """An event log that is never read here (the runners' positions are set directly)."""

    def head(self) -> int:
        return 0

    def read(self, after: int, limit: int) -> LogBatch:
        return LogBatch(after=after, last=after)


def runner(name: str, position: int) -> ProjectionRunner:
    async def stored() -> int:
        return position

    async def apply(batch: LogBatch) -> bool:
        return True

    projection = ProjectionRunner(name, FakeLog(), stored, apply)  # type: ignore[arg-type]
    projection.position = position
    return projection


def follower(*runners: ProjectionRunner, running: bool = True) -> NodeFollower:
    node = NodeFollower(FakeLog(), list(runners))  # type: ignore[arg-type]
    node.running = running
    return node


def readiness(
    *followers: NodeFollower, head: int = 100, max_lag: int = 10, timeout: float = 0.5, **probes
) -> Readiness:
    async def read_head() -> int:
        return head

    return Readiness(read_head, probes, lambda: followers, max_lag=max_lag, timeout=timeout)


async def test_all_pass() -> None:
    async def pong() -> str:
        return "PONG"

    report = await readiness(follower(runner("hot", 95)), redis=pong).check()
    assert report.ready
    by_name = {check.name: check for check in report.checks}
    assert by_name["event_store"].detail == "log head 100"
    assert by_name["redis"].detail == "PONG"
    assert by_name["projection:hot"].lag == 5


async def test_checks_are_bounded_and_concurrent() -> None:
    async def hangs() -> None:
        await asyncio.sleep(30)

    started = time.monotonic()
    report = await readiness(a=hangs, b=hangs, c=hangs, timeout=0.3).check()
    assert time.monotonic() - started < 1.0  # three hung probes, one timeout
    assert not report.ready
    failing = {check.name: check.reason for check in report.checks if not check.ok}
    assert failing == dict.fromkeys("abc", "no answer within 0.3 s")


async def test_a_failing_service_gives_its_reason() -> None:
    async def refused() -> None:
        raise ServiceUnavailable("Redis", "127.0.0.1:6390", "connection refused")

    report = await readiness(redis=refused).check()
    (redis,) = [check for check in report.checks if check.name == "redis"]
    assert not redis.ok
    assert redis.reason == "Redis at 127.0.0.1:6390 is unreachable: connection refused"


async def test_lag_and_stall_fail_standby_passes() -> None:
    behind = runner("history", 50)
    stalled = runner("hot", 100)
    stalled.stall = Stall(position=100, error="ValueError: no", since=0.0, failures=3)
    standby = runner("projector-hot", 0)
    report = await readiness(
        follower(behind, stalled), follower(standby, running=False), head=100, max_lag=10
    ).check()
    by_name = {check.name: check for check in report.checks}
    assert not report.ready
    assert by_name["projection:history"].reason == "lag 50 > 10 (position 50)"
    assert by_name["projection:hot"].reason == (
        "stalled at position 100 after 3 failures: ValueError: no"
    )
    assert by_name["projection:projector-hot"].ok
    assert by_name["projection:projector-hot"].detail == "standby (not running here)"


async def test_an_event_store_that_fails_leaves_lag_unknown() -> None:
    async def broken() -> int:
        raise OSError("disk I/O error\nmore detail")

    checks = Readiness(broken, {}, lambda: [follower(runner("hot", 1))], max_lag=10, timeout=0.5)
    report = await checks.check()
    by_name = {check.name: check for check in report.checks}
    assert by_name["event_store"].reason == "disk I/O error"
    assert by_name["projection:hot"].reason == "lag unknown: the event store failed"
