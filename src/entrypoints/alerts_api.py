"""Alert rules over REST: ``/v2/alerts`` (create, list), ``/v2/alerts/{id}`` (get, replace
parts, delete), ``/pause``, ``/resume`` and ``/backtest``.

Every route needs an API key, and a key only ever sees its account's rules: another
account's rule, a deleted one and a malformed id are all 404. Writes go through the writer
thread (docs/adr/0003); the listing is the ``alert_rules`` read model (docs/adr/0008), and
a write answers once that model has caught up with it, so a client reads its own writes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar
from uuid import UUID

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..application.alert_backtest import BacktestUnsupported, backtest, history_points
from ..application.alert_rules import AlertRuleView
from ..application.app import AlertRuleNotFound, ProtocolNotFound
from ..application.ingest import InvalidItem, parse_timestamp
from ..application.ports import AlertRuleReadModel
from ..domain.alert_rule import AlertRule, InvalidRule, RuleQuotaExceeded
from ..domain.api_key import ApiKey
from ..domain.errors import InvalidTransition
from .auth import require_key
from .errors import ApiError
from .node import Node
from .schemas.alerts import AlertRuleChange, AlertRuleCreate, BacktestWindow
from .schemas.validation import parse_body

__all__ = ["alert_routes"]

T = TypeVar("T")
BodyReader = Callable[[Request], Awaitable[Any]]

# How long a write waits for the listing to show it (read-your-writes), at most.
LISTING_WAIT: Final = 2.0


def _node(request: Request) -> Node:
    node: Node = request.app.state.node
    return node


def _rules(node: Node) -> AlertRuleReadModel:
    # The history read model folds the rules too (its ``alert_rules`` table, ADR 0008).
    return node.history


def _rule_id(request: Request) -> UUID:
    raw = request.path_params["rule_id"]
    try:
        return UUID(raw)
    except ValueError:
        raise _not_found(raw) from None


def _not_found(rule_id: object) -> ApiError:
    return ApiError(404, "alert_not_found", f"alert rule {str(rule_id)!r} not found")


async def _has_body(request: Request) -> bool:
    length = request.headers.get("content-length")
    if length is not None:
        return length.strip() not in ("", "0")
    return "transfer-encoding" in request.headers


def _time(raw: float | str | None, name: str) -> float | None:
    if raw is None or isinstance(raw, float | int):
        return raw
    try:
        return parse_timestamp(raw)
    except (InvalidItem, ValueError):
        raise ApiError(400, "invalid_body", f"{name} must be unix seconds or ISO-8601") from None


async def _read_your_write(node: Node) -> None:
    """Wait (bounded) until the listing has folded everything up to now."""
    head = await asyncio.to_thread(node.event_log.head)
    deadline = time.monotonic() + LISTING_WAIT
    while await asyncio.to_thread(_rules(node).position) < head:
        if time.monotonic() > deadline:
            return  # eventually consistent: the write is committed regardless
        await asyncio.sleep(0.005)


async def _fresh_rule(node: Node, rule_id: UUID, owner: str) -> AlertRule:
    try:
        return await asyncio.to_thread(node.app.get_alert_rule, rule_id, owner)
    except AlertRuleNotFound:
        raise _not_found(rule_id) from None


async def _write(node: Node, rule_id: UUID | None, command: Callable[[], T]) -> T:
    """Run a command on the writer thread; the domain's refusals become 4xx answers."""
    try:
        return await node.writer.call(command)
    except AlertRuleNotFound:
        raise _not_found(rule_id) from None
    except InvalidTransition as error:
        raise ApiError(409, "invalid_transition", str(error)) from None
    except ProtocolNotFound as error:
        raise ApiError(
            422,
            "unknown_target",
            f"protocol {error.slug!r} is not listed",
            {"field": "target.protocol"},
        ) from None
    except RuleQuotaExceeded as error:
        raise ApiError(
            403,
            "alert_rule_limit",
            f"this API key's tier allows {error.limit} alert rules",
            {"limit": error.limit},
        ) from None
    except InvalidRule as error:
        details = None if error.field is None else {"field": error.field}
        raise ApiError(400, "invalid_rule", str(error), details) from None


async def _answer(node: Node, rule_id: UUID, owner: str) -> Response:
    await _read_your_write(node)
    rule = await _fresh_rule(node, rule_id, owner)
    return JSONResponse(AlertRuleView.of(rule).to_json())


def alert_routes(read_json: BodyReader) -> list[Route]:
    """The routes, with the API's JSON body reader (size limits)."""

    async def create(request: Request, key: ApiKey) -> Response:
        node = _node(request)
        rule = parse_body(AlertRuleCreate, await read_json(request), code="invalid_rule")
        app, rules = node.app, _rules(node)

        def existing() -> list[str]:  # an owner's first book starts from their rules
            return [view.id for view in rules.alert_rules(key.owner)]

        rule_id = await _write(
            node,
            None,
            lambda: app.create_alert_rule(
                key.owner,
                rule.target,
                rule.condition,
                rule.channels,
                rule.cooldown,
                rule.name,
                limit=key.limits.alert_rules,
                existing=existing,
            ),
        )
        return await _answer(node, rule_id, key.owner)

    async def collection(request: Request) -> Response:
        key = require_key(request)
        if request.method == "POST":
            return await create(request, key)
        views = await asyncio.to_thread(_rules(_node(request)).alert_rules, key.owner)
        return JSONResponse({"alerts": [view.to_json() for view in views], "total": len(views)})

    async def update(request: Request, key: ApiKey, rule_id: UUID) -> Response:
        node = _node(request)
        change = parse_body(AlertRuleChange, await read_json(request), code="invalid_rule")
        changes = change.model_dump(exclude_unset=True)
        if not changes:
            raise ApiError(
                400,
                "invalid_body",
                f"nothing to change: send some of {sorted(AlertRuleChange.model_fields)}",
            )
        typed = {name: getattr(change, name) for name in changes}
        app = node.app
        await _write(node, rule_id, lambda: app.update_alert_rule(rule_id, key.owner, **typed))
        return await _answer(node, rule_id, key.owner)

    async def item(request: Request) -> Response:
        key = require_key(request)
        rule_id = _rule_id(request)
        node = _node(request)
        if request.method == "PUT":
            return await update(request, key, rule_id)
        if request.method == "DELETE":
            app = node.app
            await _write(node, rule_id, lambda: app.delete_alert_rule(rule_id, key.owner))
            await _read_your_write(node)
            return JSONResponse({"id": str(rule_id), "state": "deleted"})
        rule = await _fresh_rule(node, rule_id, key.owner)
        return JSONResponse(AlertRuleView.of(rule).to_json())

    def lifecycle(command: str) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            key = require_key(request)
            rule_id = _rule_id(request)
            node = _node(request)
            app = node.app
            if command == "pause":
                await _write(node, rule_id, lambda: app.pause_alert_rule(rule_id, key.owner))
            else:
                await _write(node, rule_id, lambda: app.resume_alert_rule(rule_id, key.owner))
            return await _answer(node, rule_id, key.owner)

        return endpoint

    async def run_backtest(request: Request) -> Response:
        key = require_key(request)
        rule_id = _rule_id(request)
        node = _node(request)
        raw = await read_json(request) if await _has_body(request) else {}
        window = parse_body(BacktestWindow, raw)
        start, end = _time(window.start, "start"), _time(window.end, "end")
        if start is not None and end is not None and start > end:
            raise ApiError(400, "invalid_body", "start must not be after end")
        rule = await _fresh_rule(node, rule_id, key.owner)
        target, condition, cooldown = rule.target, rule.condition, rule.cooldown
        try:
            points = await asyncio.to_thread(
                history_points, node.history, target, condition, start=start, end=end
            )
        except BacktestUnsupported as error:
            raise ApiError(422, "backtest_unsupported", str(error)) from None
        result = await asyncio.to_thread(
            lambda: backtest(target, condition, points, cooldown=cooldown, start=start, end=end)
        )
        return JSONResponse({"alertId": str(rule_id), **result.to_json()})

    return [
        Route("/v2/alerts", collection, methods=["GET", "POST"]),
        Route("/v2/alerts/{rule_id:str}", item, methods=["GET", "PUT", "DELETE"]),
        Route("/v2/alerts/{rule_id:str}/pause", lifecycle("pause"), methods=["POST"]),
        Route("/v2/alerts/{rule_id:str}/resume", lifecycle("resume"), methods=["POST"]),
        Route("/v2/alerts/{rule_id:str}/backtest", run_backtest, methods=["POST"]),
    ]
