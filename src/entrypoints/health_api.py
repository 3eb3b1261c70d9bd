"""``GET /health/live`` and ``GET /health/ready``: liveness and readiness for orchestrators.

Liveness answers from the event loop and checks nothing else: restarting a process does
not repair a database that is down. Readiness runs the node's checks (the event store, the
history database, Redis and RabbitMQ when configured, each projection's lag and stall;
``application/readiness.py``, built in the container), concurrently and each bounded by
``READY_TIMEOUT``: 200 when all pass, 503 with the reason of each failing one.
``GET /health`` keeps its own answer (positions, and 503 only for a stalled projection).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from ..application.readiness import Readiness as ReadinessChecks
from .container import provide
from .node import Node
from .operations import Operation, OperationRoute, json_answer
from .schemas.common import NoParameters
from .schemas.health import Liveness, Readiness, ReadinessCheck

__all__ = ["LIVENESS", "READINESS", "health_routes"]

LIVENESS = Operation(
    "GET",
    "getLiveness",
    "Liveness: the process's event loop answers",
    NoParameters,
    Liveness,
    description="Checks no dependency: for restarting a wedged process, not for routing.",
)

READINESS = Operation(
    "GET",
    "getReadiness",
    "Readiness: every dependency answers and the projections keep up",
    NoParameters,
    Readiness,
    also=((503, Readiness),),
    description="Each check (event_store, history_db, redis and rabbitmq when configured, "
    "projection:NAME for each projection this node runs) is bounded by READY_TIMEOUT and "
    "all run concurrently. 200 when all pass; 503 with the reason of each failing one. A "
    "projection fails when it is stalled or more than READY_MAX_LAG positions behind.",
)

_CHECKS_KEY = "readiness_checks"


async def live(request: Request, query: NoParameters) -> Response:
    return json_answer(Liveness(status="alive"))


async def _checks(request: Request) -> ReadinessChecks:
    checks: ReadinessChecks | None = getattr(request.app.state, _CHECKS_KEY, None)
    if checks is None:
        node: Node = request.app.state.node
        checks = await provide(lambda: node.container.readiness(followers=lambda: node.followers))
        setattr(request.app.state, _CHECKS_KEY, checks)
    return checks


async def ready(request: Request, query: NoParameters) -> Response:
    report = await (await _checks(request)).check()
    answer = Readiness(
        status="ready" if report.ready else "not_ready",
        checks={
            check.name: ReadinessCheck(
                status="pass" if check.ok else "fail",
                reason=check.reason,
                detail=check.detail,
                lag=check.lag,
                duration_ms=check.duration_ms,
            )
            for check in report.checks
        },
    )
    return json_answer(answer, 200 if report.ready else 503)


def health_routes() -> list[OperationRoute]:
    """The routes of this module, for the app's route list."""
    return [
        OperationRoute("/health/live", LIVENESS.serve(live)),
        OperationRoute("/health/ready", READINESS.serve(ready)),
    ]
