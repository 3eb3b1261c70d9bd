"""``GET /v2/alerts/{id}/history``: a rule's transitions and every delivery attempt.

Owner only: another account's rule, a deleted rule and a malformed id are all 404, so the
answer never tells whether someone else's rule exists.
"""

from __future__ import annotations

import asyncio
from uuid import UUID

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..application.app import AlertRuleNotFound
from ..application.notifications import summarise
from .auth import require_key
from .errors import ApiError

__all__ = ["MAX_HISTORY", "alert_history_routes"]

MAX_HISTORY = 10_000


def _limit(request: Request) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return 1_000
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, "invalid_parameter", "limit must be an integer") from None
    if not 1 <= value <= MAX_HISTORY:
        raise ApiError(400, "invalid_parameter", f"limit must be between 1 and {MAX_HISTORY}")
    return value


def alert_history_routes() -> list[Route]:
    """The routes (owner only: the caller's API key)."""

    async def alert_history(request: Request) -> Response:
        key = require_key(request)
        node = request.app.state.node
        raw_id = request.path_params["rule_id"]
        not_found = ApiError(404, "alert_not_found", f"alert rule {raw_id!r} not found")
        try:
            rule_id = UUID(raw_id)
        except ValueError:
            raise not_found from None
        try:
            rule = await asyncio.to_thread(node.app.get_alert_rule, rule_id, key.owner)
        except AlertRuleNotFound:
            raise not_found from None
        limit = _limit(request)
        delivery_log = node.delivery_log
        transitions = await asyncio.to_thread(delivery_log.transitions, str(rule_id), limit)
        attempts = await asyncio.to_thread(delivery_log.attempts, str(rule_id), limit)
        return JSONResponse(
            {
                "alertId": str(rule_id),
                "name": rule.name,
                "state": rule.state,
                "firing": rule.firing,
                "transitions": [transition.to_json() for transition in transitions],
                "deliveries": [attempt.to_json() for attempt in attempts],
                "notifications": summarise(attempts),
            }
        )

    return [Route("/v2/alerts/{rule_id:str}/history", alert_history)]
