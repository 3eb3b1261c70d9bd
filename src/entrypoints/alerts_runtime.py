"""Alert evaluation in a running node.

Which processes evaluate: ``serve`` (embedded, in-process) and the ``alerts`` worker role.
With PostgreSQL, every such process competes for one advisory lock and only the holder
evaluates, so each observation is evaluated by one process; a standby takes over when the
holder dies (it rebuilds its index and resumes from the stored position).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..application.alert_rules import RuleObservation, RuleSnapshot
from ..application.alerting import AlertEvaluator
from ..application.following import NodeFollower
from .election import elected

if TYPE_CHECKING:
    from .runtime import Runtime

log = logging.getLogger(__name__)

ALERTS_LOCK_KEY = 0x64725F616C657274  # "dr_alert"
ALERT_ROLES = ("serve", "alerts")
Supervise = Callable[[str, Callable[[], Awaitable[None]]], "asyncio.Task[None]"]


async def _resolve(value: Any) -> Any:
    if isinstance(value, Awaitable):
        return await value
    return value


def evaluates_alerts(role: str) -> bool:
    """Whether a process of ``role`` runs the alert evaluator."""
    return role in ALERT_ROLES


@dataclass
class AlertService:
    """The evaluator running in this process and the follower feeding it."""

    evaluator: AlertEvaluator
    follower: NodeFollower


async def start_alerts(runtime: Runtime, supervise: Supervise) -> AlertService:
    """Start evaluating; registers the follower on the fan-out (call before its start)."""
    settings = runtime.settings
    positions = await _resolve(runtime.container.alert_positions())
    app, writer = runtime.app, runtime.writer

    async def record(observations: Sequence[RuleObservation]) -> list[RuleSnapshot]:
        # The writer thread: the only one that mutates cached aggregates (ADR 0003).
        return await writer.call(lambda: app.observe_alert_rules(observations))

    rules = runtime.alert_rules
    if rules is None:
        raise RuntimeError("the runtime has no alert rules read model")
    evaluator = AlertEvaluator(runtime.event_log, rules, runtime.history, positions, record)
    follower = NodeFollower(
        runtime.event_log,
        [evaluator.runner()],
        poll_interval=max(settings.poll_interval, 0.2),
    )
    runtime.fanout.listen(follower.on_batch)

    async def evaluate() -> None:
        try:
            await follower.run()
        finally:
            evaluator.forget()  # whoever runs next rebuilds from the stores

    runtime.tasks.append(
        supervise(
            "alert-evaluator",
            elected(
                evaluate,
                database_url=settings.database_url,
                lock_key=ALERTS_LOCK_KEY,
                what="evaluates alert rules",
            ),
        )
    )
    return AlertService(evaluator, follower)
