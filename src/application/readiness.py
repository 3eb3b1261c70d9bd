"""Readiness: can this node serve now? One bounded check per dependency and projection.

A ``Readiness`` holds the probes of the services a node uses (each an awaitable that
raises when its service cannot be used) and a way to find the node's followers. ``check``
runs every probe concurrently, each under the same short timeout, so an answer never
waits on the slowest dependency for longer than that; then it compares each running
projection's position with the log head (lag, stall). Liveness is not here: a process whose
event loop answers an HTTP request is alive.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

from .following import NodeFollower

__all__ = ["CheckOutcome", "Probe", "Readiness", "ReadinessReport", "ServiceUnavailable"]

Probe = Callable[[], Awaitable[str | None]]
"""Checks one dependency: returns what it saw (or ``None``), raises when it is unusable."""

EVENT_STORE = "event_store"


class ServiceUnavailable(Exception):
    """A service a process needs cannot be used: which one, where, and why."""

    def __init__(self, service: str, address: str, cause: str, *, reached: bool = False) -> None:
        self.service = service
        self.address = address
        self.cause = cause
        # ``reached``: the connection opened but the service refused to work (a missing
        # database, a wrong password), as opposed to nothing answering at that address.
        self.reached = reached
        verb = "is unavailable" if reached else "is unreachable"
        super().__init__(f"{service} at {address} {verb}: {cause}")


@dataclass(frozen=True, slots=True)
class CheckOutcome:
    """One check: passed (with what it saw) or failed (with the reason)."""

    name: str
    ok: bool
    reason: str | None = None
    detail: str | None = None
    lag: int | None = None
    duration_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class ReadinessReport:
    checks: tuple[CheckOutcome, ...]

    @property
    def ready(self) -> bool:
        return all(check.ok for check in self.checks)


class Readiness:
    """The readiness checks of one node.

    ``head`` reads the event store's head (the event-store check, and the reference for
    lags); ``probes`` check the other dependencies by name; ``followers`` gives the
    followers the node runs now. A follower that is not running (a standby waiting for
    its election, or between restarts) is reported, not failed: it owes no position.
    """

    def __init__(
        self,
        head: Callable[[], Awaitable[int]],
        probes: Mapping[str, Probe],
        followers: Callable[[], Iterable[NodeFollower]],
        *,
        max_lag: int,
        timeout: float,
    ) -> None:
        self._head = head
        self._probes = dict(probes)
        self._followers = followers
        self.max_lag = max_lag
        self.timeout = timeout

    async def check(self) -> ReadinessReport:
        """Every check, run concurrently, each bounded by ``timeout``."""
        reading_head = asyncio.ensure_future(self._read_head())
        outcomes = await asyncio.gather(
            *(self._probe(name, probe) for name, probe in self._probes.items())
        )
        store, head = await reading_head
        return ReadinessReport((store, *outcomes, *self._projections(head)))

    async def _bounded(self, probe: Callable[[], Awaitable[object]]) -> tuple[object, float]:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                value = await probe()
        except TimeoutError:
            raise _Failed(f"no answer within {self.timeout:g} s", started) from None
        except Exception as error:
            raise _Failed(_reason(error), started) from None
        return value, _ms(started)

    async def _read_head(self) -> tuple[CheckOutcome, int | None]:
        try:
            head, elapsed = await self._bounded(self._head)
        except _Failed as failed:
            outcome = CheckOutcome(EVENT_STORE, False, reason=failed.reason, duration_ms=failed.ms)
            return outcome, None
        assert isinstance(head, int)
        return CheckOutcome(EVENT_STORE, True, detail=f"log head {head}", duration_ms=elapsed), head

    async def _probe(self, name: str, probe: Probe) -> CheckOutcome:
        try:
            seen, elapsed = await self._bounded(probe)
        except _Failed as failed:
            return CheckOutcome(name, False, reason=failed.reason, duration_ms=failed.ms)
        detail = None if seen is None else str(seen)
        return CheckOutcome(name, True, detail=detail, duration_ms=elapsed)

    def _projections(self, head: int | None) -> list[CheckOutcome]:
        outcomes = []
        for follower in self._followers():
            for runner in [*follower.runners, *follower.late_runners]:
                name = f"projection:{runner.name}"
                if not follower.running:
                    outcomes.append(CheckOutcome(name, True, detail="standby (not running here)"))
                    continue
                if head is None:
                    outcomes.append(
                        CheckOutcome(name, False, reason="lag unknown: the event store failed")
                    )
                    continue
                lag = max(head - runner.position, 0)
                problems = []
                if runner.stall is not None:
                    problems.append(
                        f"stalled at position {runner.stall.position} after "
                        f"{runner.stall.failures} failures: {runner.stall.error}"
                    )
                if lag > self.max_lag:
                    problems.append(f"lag {lag} > {self.max_lag} (position {runner.position})")
                outcomes.append(
                    CheckOutcome(
                        name,
                        not problems,
                        reason="; ".join(problems) or None,
                        detail=None if problems else f"position {runner.position}",
                        lag=lag,
                    )
                )
        return outcomes


class _Failed(Exception):
    def __init__(self, reason: str, started: float) -> None:
        super().__init__(reason)
        self.reason = reason
        self.ms = _ms(started)


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


def _reason(error: BaseException) -> str:
    """A one-line reason: the message's first line, or the exception's type."""
    text = str(error).strip().splitlines()
    first = text[0].strip() if text else ""
    return (first or type(error).__name__)[:300]
