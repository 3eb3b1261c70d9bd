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
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, TypeVar
from uuid import UUID

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from ..application.alert_backtest import BacktestUnsupported, backtest, history_points
from ..application.alert_channels import check_webhook_targets
from ..application.alert_rules import AlertRuleView
from ..application.app import AlertRuleNotFound, ProtocolNotFound, TokenNotFound
from ..application.ports import AlertRuleReadModel
from ..domain.alert_rule import AlertRule as RuleAggregate
from ..domain.alert_rule import InvalidRule, RuleQuotaExceeded
from ..domain.errors import InvalidTransition
from .auth import require_key
from .errors import ApiError
from .node import Node
from .operations import Operation, OperationRoute, json_answer
from .schemas.alerts import (
    AlertRule,
    AlertRuleChange,
    AlertRuleCreate,
    AlertRuleDeleted,
    AlertRuleList,
    Backtest,
    BacktestEvent,
    BacktestWindow,
    RulePath,
)
from .schemas.common import NoParameters, date_time
from .validation import has_body, parse_body

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


def rule_path_id(request: Request) -> UUID:
    """The ``{rule_id}`` of a rule's route; a malformed one is a 404 (like another
    account's rule)."""
    raw = request.path_params["rule_id"]
    try:
        return RulePath.model_validate({"rule_id": raw}).rule_id
    except ValidationError:
        raise _not_found(raw) from None


def _not_found(rule_id: object) -> ApiError:
    return ApiError(404, "alert_not_found", f"alert rule {str(rule_id)!r} not found")


def _time(raw: float | str | None, name: str) -> float | None:
    if raw is None or isinstance(raw, float | int):
        return raw
    try:
        return date_time(raw)
    except ValueError:
        raise ApiError(400, "invalid_body", f"{name} must be unix seconds or ISO-8601") from None


async def _read_your_write(node: Node) -> None:
    """Wait (bounded) until the listing has folded everything up to now."""
    head = await asyncio.to_thread(node.event_log.head)
    deadline = time.monotonic() + LISTING_WAIT
    while await asyncio.to_thread(_rules(node).position) < head:
        if time.monotonic() > deadline:
            return  # eventually consistent: the write is committed regardless
        await asyncio.sleep(0.005)


async def _fresh_rule(node: Node, rule_id: UUID, owner: str) -> RuleAggregate:
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
    except TokenNotFound as error:
        raise ApiError(
            422,
            "unknown_target",
            f"token {error.token_id!r} has no recorded price",
            {"field": "target.token"},
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


async def _check_channels(node: Node, channels: Sequence[Any] | None) -> None:
    """Refuse (400) a webhook this node may never call, before anything is written."""
    try:
        await check_webhook_targets(node.container.webhook_guard(), channels)
    except InvalidRule as error:
        raise ApiError(400, "invalid_rule", str(error), {"field": error.field}) from None


async def _answer(node: Node, rule_id: UUID, owner: str) -> Response:
    await _read_your_write(node)
    return _rule_answer(await _fresh_rule(node, rule_id, owner))


def _rule_answer(rule: RuleAggregate) -> Response:
    return json_answer(AlertRule.model_validate(AlertRuleView.of(rule)))


_ERRORS_OF_A_RULE = (404, 409)

CREATE = Operation(
    "POST",
    "createAlertRule",
    "Create an alert rule owned by the key's account",
    NoParameters,
    AlertRule,
    access="key",
    body=AlertRuleCreate,
    errors=(403, 413, 422),
)
LIST = Operation(
    "GET",
    "listAlertRules",
    "The key's account's alert rules",
    NoParameters,
    AlertRuleList,
    access="key",
)
GET = Operation(
    "GET",
    "getAlertRule",
    "One of the account's alert rules",
    NoParameters,
    AlertRule,
    access="key",
    path=RulePath,
    errors=(404,),
)
UPDATE = Operation(
    "PUT",
    "updateAlertRule",
    "Change a rule's name, condition, channels or cooldown",
    NoParameters,
    AlertRule,
    access="key",
    path=RulePath,
    body=AlertRuleChange,
    errors=(*_ERRORS_OF_A_RULE, 413),
)
DELETE = Operation(
    "DELETE",
    "deleteAlertRule",
    "Delete a rule (it stops being evaluated)",
    NoParameters,
    AlertRuleDeleted,
    access="key",
    path=RulePath,
    errors=_ERRORS_OF_A_RULE,
)
PAUSE = Operation(
    "POST",
    "pauseAlertRule",
    "Pause a rule: it does not fire until resumed",
    NoParameters,
    AlertRule,
    access="key",
    path=RulePath,
    errors=_ERRORS_OF_A_RULE,
)
RESUME = Operation(
    "POST",
    "resumeAlertRule",
    "Resume a paused rule",
    NoParameters,
    AlertRule,
    access="key",
    path=RulePath,
    errors=_ERRORS_OF_A_RULE,
)
BACKTEST = Operation(
    "POST",
    "backtestAlertRule",
    "When the rule would have fired and resolved over stored history",
    NoParameters,
    Backtest,
    access="key",
    path=RulePath,
    body=BacktestWindow,
    body_required=False,
    errors=(404, 413, 422),
)


def alert_routes(read_json: BodyReader) -> list[OperationRoute]:
    """The routes, with the API's JSON body reader (size limits)."""

    async def create(request: Request, query: NoParameters) -> Response:
        key = require_key(request)
        node = _node(request)
        rule = parse_body(AlertRuleCreate, await read_json(request), code="invalid_rule")
        await _check_channels(node, rule.channels)
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

    async def list_rules(request: Request, query: NoParameters) -> Response:
        key = require_key(request)
        views = await asyncio.to_thread(_rules(_node(request)).alert_rules, key.owner)
        return json_answer(
            AlertRuleList(
                alerts=[AlertRule.model_validate(view) for view in views], total=len(views)
            )
        )

    async def get(request: Request, query: NoParameters) -> Response:
        key, rule_id = require_key(request), rule_path_id(request)
        return _rule_answer(await _fresh_rule(_node(request), rule_id, key.owner))

    async def update(request: Request, query: NoParameters) -> Response:
        key, rule_id = require_key(request), rule_path_id(request)
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
        await _check_channels(node, typed.get("channels"))
        app = node.app
        await _write(node, rule_id, lambda: app.update_alert_rule(rule_id, key.owner, **typed))
        return await _answer(node, rule_id, key.owner)

    async def delete(request: Request, query: NoParameters) -> Response:
        key, rule_id = require_key(request), rule_path_id(request)
        node = _node(request)
        app = node.app
        await _write(node, rule_id, lambda: app.delete_alert_rule(rule_id, key.owner))
        await _read_your_write(node)
        return json_answer(AlertRuleDeleted(id=rule_id, state="deleted"))

    async def pause(request: Request, query: NoParameters) -> Response:
        key, rule_id = require_key(request), rule_path_id(request)
        node = _node(request)
        app = node.app
        await _write(node, rule_id, lambda: app.pause_alert_rule(rule_id, key.owner))
        return await _answer(node, rule_id, key.owner)

    async def resume(request: Request, query: NoParameters) -> Response:
        key, rule_id = require_key(request), rule_path_id(request)
        node = _node(request)
        app = node.app
        await _write(node, rule_id, lambda: app.resume_alert_rule(rule_id, key.owner))
        return await _answer(node, rule_id, key.owner)

    async def run_backtest(request: Request, query: NoParameters) -> Response:
        key, rule_id = require_key(request), rule_path_id(request)
        node = _node(request)
        raw = await read_json(request) if has_body(request) else {}
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
        return json_answer(
            Backtest(
                alertId=rule_id,
                events=[BacktestEvent.model_validate(event) for event in result.events],
                points=result.points,
                start=result.start,
                end=result.end,
            )
        )

    return [
        OperationRoute("/v2/alerts", LIST.serve(list_rules), CREATE.serve(create)),
        OperationRoute(
            "/v2/alerts/{rule_id:str}", GET.serve(get), UPDATE.serve(update), DELETE.serve(delete)
        ),
        OperationRoute("/v2/alerts/{rule_id:str}/pause", PAUSE.serve(pause)),
        OperationRoute("/v2/alerts/{rule_id:str}/resume", RESUME.serve(resume)),
        OperationRoute("/v2/alerts/{rule_id:str}/backtest", BACKTEST.serve(run_backtest)),
    ]
