"""``GET /v2/alerts/{id}/dead-letters`` and ``POST /v2/alerts/{id}/dead-letters/redrive``.

Owner only, like the rule: another account's rule, a deleted rule and a malformed id are all
404. The dead letters live in the notification queue (RabbitMQ's ``dead`` queue, or the
in-process queue's list); a redrive puts them back on the work queue under the same
idempotency keys, and the delivery record shows the redrive and every new attempt
(``/history``). See docs/adr/0037-alert-rule-gaps.md.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ..application.app import AlertRuleNotFound
from ..application.delivery import ParkedJob
from ..application.notifications import DeadLetters
from .alerts_api import rule_path_id
from .auth import require_key
from .container import provide
from .errors import ApiError
from .node import Node
from .operations import Operation, OperationRoute, json_answer
from .schemas.alerts import RulePath
from .schemas.common import NoParameters
from .schemas.dead_letters import DeadLetter, DeadLetterList, Redriven

__all__ = ["DEAD_LETTERS", "REDRIVE", "dead_letter_routes"]

DEAD_LETTERS = Operation(
    "GET",
    "listAlertDeadLetters",
    "An alert rule's notifications that were given up (owner only)",
    NoParameters,
    DeadLetterList,
    access="key",
    path=RulePath,
    errors=(404,),
)
REDRIVE = Operation(
    "POST",
    "redriveAlertDeadLetters",
    "Deliver an alert rule's dead letters again, from a first attempt (owner only)",
    NoParameters,
    Redriven,
    access="key",
    path=RulePath,
    errors=(404,),
)


def _shown(parked: list[ParkedJob]) -> list[DeadLetter]:
    return [DeadLetter.model_validate(entry.to_json()) for entry in parked]


async def _owned(request: Request) -> tuple[Node, DeadLetters, Any, str]:
    key = require_key(request)
    node: Node = request.app.state.node
    rule_id = rule_path_id(request)
    try:
        await asyncio.to_thread(node.app.get_alert_rule, rule_id, key.owner)
    except AlertRuleNotFound:
        raise ApiError(404, "alert_not_found", f"alert rule {str(rule_id)!r} not found") from None
    dead_letters: DeadLetters = await provide(node.container.dead_letters)
    return node, dead_letters, rule_id, key.owner


def dead_letter_routes() -> list[OperationRoute]:
    """The routes (owner only: the caller's API key)."""

    async def list_dead_letters(request: Request, query: NoParameters) -> Response:
        _node, dead_letters, rule_id, owner = await _owned(request)
        parked = await dead_letters.of_rule(str(rule_id), owner)
        return json_answer(
            DeadLetterList(alertId=rule_id, deadLetters=_shown(parked), total=len(parked))
        )

    async def redrive(request: Request, query: NoParameters) -> Response:
        _node, dead_letters, rule_id, owner = await _owned(request)
        jobs = await dead_letters.redrive(str(rule_id), owner)
        shown = [DeadLetter.model_validate(ParkedJob(job, "redriven").to_json()) for job in jobs]
        return json_answer(Redriven(alertId=rule_id, redriven=shown, total=len(shown)))

    return [
        OperationRoute(
            "/v2/alerts/{rule_id:str}/dead-letters", DEAD_LETTERS.serve(list_dead_letters)
        ),
        OperationRoute("/v2/alerts/{rule_id:str}/dead-letters/redrive", REDRIVE.serve(redrive)),
    ]
