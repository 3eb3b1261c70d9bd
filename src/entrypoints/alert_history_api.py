"""``GET /v2/alerts/{id}/history``: a rule's transitions and every delivery attempt.

Owner only: another account's rule, a deleted rule and a malformed id are all 404, so the
answer never tells whether someone else's rule exists.
"""

from __future__ import annotations

import asyncio

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from ..application.app import AlertRuleNotFound
from ..application.notifications import summarise
from .auth import require_key
from .errors import ApiError
from .operations import Operation, OperationRoute, json_answer
from .schemas.alert_history import AlertHistory, HistoryQuery
from .schemas.alerts import RulePath

__all__ = ["HISTORY", "alert_history_routes"]

HISTORY = Operation(
    "GET",
    "getAlertHistory",
    "An alert rule's transitions and every delivery attempt (owner only)",
    HistoryQuery,
    AlertHistory,
    access="key",
    path=RulePath,
    errors=(404,),
)


def alert_history_routes() -> list[OperationRoute]:
    """The routes (owner only: the caller's API key)."""

    async def alert_history(request: Request, query: HistoryQuery) -> Response:
        key = require_key(request)
        node = request.app.state.node
        raw_id = request.path_params["rule_id"]
        not_found = ApiError(404, "alert_not_found", f"alert rule {raw_id!r} not found")
        try:
            rule_id = RulePath.model_validate({"rule_id": raw_id}).rule_id
        except ValidationError:
            raise not_found from None
        try:
            rule = await asyncio.to_thread(node.app.get_alert_rule, rule_id, key.owner)
        except AlertRuleNotFound:
            raise not_found from None
        delivery_log = node.delivery_log
        transitions = await asyncio.to_thread(delivery_log.transitions, str(rule_id), query.limit)
        attempts = await asyncio.to_thread(delivery_log.attempts, str(rule_id), query.limit)
        return json_answer(
            AlertHistory.model_validate(
                {
                    "alertId": rule_id,
                    "name": rule.name,
                    "state": rule.state,
                    "firing": rule.firing,
                    "transitions": [transition.to_json() for transition in transitions],
                    "deliveries": [attempt.to_json() for attempt in attempts],
                    "notifications": summarise(attempts),
                }
            )
        )

    return [OperationRoute("/v2/alerts/{rule_id:str}/history", HISTORY.serve(alert_history))]
