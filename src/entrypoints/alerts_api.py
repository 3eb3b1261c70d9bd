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
from typing import Any, Final
from uuid import UUID

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..application.alert_backtest import BacktestUnsupported, backtest, history_points
from ..application.alert_rules import AlertRuleView
from ..application.app import AlertRuleNotFound, ProtocolNotFound
from ..application.ingest import InvalidItem, parse_timestamp
from ..application.ports import AlertRuleReadModel
from ..domain.alert_rule import (
    AlertRule,
    InvalidRule,
    check_channels,
    check_condition,
    check_cooldown,
    check_rule_name,
    check_target,
)
from ..domain.api_key import ApiKey
from ..domain.errors import InvalidTransition
from .errors import ApiError
from .runtime import Runtime

__all__ = ["alert_routes"]

KeyCheck = Callable[[Request], Awaitable[ApiKey]]
BodyReader = Callable[[Request], Awaitable[Any]]

CREATE_FIELDS: Final = frozenset({"name", "target", "condition", "channels", "cooldown"})
CHANNEL_FIELDS: Final = frozenset({"kind", "url", "secret", "address"})
MAX_NAME: Final = 200
DEFAULT_COOLDOWN: Final = 3_600
# How long a write waits for the listing to show it (read-your-writes), at most.
LISTING_WAIT: Final = 2.0


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _rules(runtime: Runtime) -> AlertRuleReadModel:
    if runtime.alert_rules is None:  # pragma: no cover - every role serving the API has one
        raise ApiError(503, "unavailable", "alert rules are not available on this node")
    return runtime.alert_rules


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(400, "invalid_rule", message, {"field": field})


def _checked(field: str, check: Callable[[Any], Any], value: Any) -> Any:
    try:
        return check(value)
    except InvalidRule as error:
        raise _invalid(field, str(error)) from None


def _name(body: dict[str, Any]) -> str:
    name = body.get("name", "")
    if not isinstance(name, str) or len(name) > MAX_NAME:
        raise _invalid("name", f"name must be a string of at most {MAX_NAME} characters")
    checked: str = _checked("name", check_rule_name, name.strip())
    return checked


def _channels(raw: Any) -> list[dict[str, Any]]:
    if isinstance(raw, list):
        for index, channel in enumerate(raw):
            if not isinstance(channel, dict):
                raise _invalid("channels", f"channels[{index}] must be an object")
            unknown = sorted(set(channel) - CHANNEL_FIELDS)
            if unknown:
                raise _invalid(
                    "channels", f"channels[{index}] has unknown field(s): {', '.join(unknown)}"
                )
            secret = channel.get("secret")
            if secret is not None and (not isinstance(secret, str) or not secret):
                raise _invalid("channels", f"channels[{index}].secret must be a non-empty string")
    checked: list[dict[str, Any]] = _checked("channels", check_channels, raw)
    return checked


def _rule_id(request: Request) -> UUID:
    raw = request.path_params["rule_id"]
    try:
        return UUID(raw)
    except ValueError:
        raise _not_found(raw) from None


def _not_found(rule_id: object) -> ApiError:
    return ApiError(404, "alert_not_found", f"alert rule {str(rule_id)!r} not found")


async def _object_body(request: Request, read_json: BodyReader, *, optional: bool) -> Any:
    if optional and not await _has_body(request):
        return {}
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_body", "the body must be a JSON object")
    return body


async def _has_body(request: Request) -> bool:
    length = request.headers.get("content-length")
    if length is not None:
        return length.strip() not in ("", "0")
    return "transfer-encoding" in request.headers


def _time(body: dict[str, Any], name: str) -> float | None:
    raw = body.get(name)
    if raw is None:
        return None
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        return float(raw)
    if isinstance(raw, str):
        try:
            return parse_timestamp(raw)
        except (InvalidItem, ValueError):
            pass
    raise ApiError(400, "invalid_body", f"{name} must be unix seconds or ISO-8601")


async def _read_your_write(runtime: Runtime) -> None:
    """Wait (bounded) until the listing has folded everything up to now."""
    head = await asyncio.to_thread(runtime.event_log.head)
    deadline = time.monotonic() + LISTING_WAIT
    while await asyncio.to_thread(_rules(runtime).position) < head:
        if time.monotonic() > deadline:
            return  # eventually consistent: the write is committed regardless
        await asyncio.sleep(0.005)


async def _fresh_rule(runtime: Runtime, rule_id: UUID, owner: str) -> AlertRule:
    try:
        return await asyncio.to_thread(runtime.app.get_alert_rule, rule_id, owner)
    except AlertRuleNotFound:
        raise _not_found(rule_id) from None


async def _write(runtime: Runtime, rule_id: UUID, command: Callable[[], None]) -> None:
    try:
        await runtime.writer.call(command)
    except AlertRuleNotFound:
        raise _not_found(rule_id) from None
    except InvalidTransition as error:
        raise ApiError(409, "invalid_transition", str(error)) from None
    except InvalidRule as error:
        raise ApiError(400, "invalid_rule", str(error)) from None


def alert_routes(require_key: KeyCheck, read_json: BodyReader) -> list[Route]:
    """The routes, with the API's own key check and JSON body reader (size limits)."""

    async def create(request: Request, key: ApiKey) -> Response:
        runtime = _runtime(request)
        body = await _object_body(request, read_json, optional=False)
        unknown = sorted(set(body) - CREATE_FIELDS)
        if unknown:
            raise ApiError(400, "invalid_body", f"unknown field(s): {', '.join(unknown)}")
        for required in ("target", "condition", "channels"):
            if required not in body:
                raise _invalid(required, f"{required} is required")
        name = _name(body)
        target = _checked("target", check_target, body["target"])
        condition = _checked("condition", check_condition, body["condition"])
        channels = _channels(body["channels"])
        cooldown = _checked("cooldown", check_cooldown, body.get("cooldown", DEFAULT_COOLDOWN))
        owned = await asyncio.to_thread(_rules(runtime).alert_rules, key.owner)
        if len(owned) >= key.limits.alert_rules:
            raise ApiError(
                403,
                "alert_rule_limit",
                f"the {key.tier} tier allows {key.limits.alert_rules} alert rules",
                {"limit": key.limits.alert_rules},
            )
        app = runtime.app
        try:
            rule_id = await runtime.writer.call(
                lambda: app.create_alert_rule(
                    key.owner, target, condition, channels, cooldown, name
                )
            )
        except ProtocolNotFound as error:
            raise ApiError(
                422,
                "unknown_target",
                f"protocol {error.slug!r} is not listed",
                {"field": "target.protocol"},
            ) from None
        except InvalidRule as error:
            raise ApiError(400, "invalid_rule", str(error)) from None
        await _read_your_write(runtime)
        rule = await _fresh_rule(runtime, rule_id, key.owner)
        return JSONResponse(AlertRuleView.of(rule).to_json())

    async def collection(request: Request) -> Response:
        key = await require_key(request)
        if request.method == "POST":
            return await create(request, key)
        views = await asyncio.to_thread(_rules(_runtime(request)).alert_rules, key.owner)
        return JSONResponse({"alerts": [view.to_json() for view in views], "total": len(views)})

    async def update(request: Request, key: ApiKey, rule_id: UUID) -> Response:
        runtime = _runtime(request)
        body = await _object_body(request, read_json, optional=False)
        unknown = sorted(set(body) - CREATE_FIELDS)
        if unknown:
            raise ApiError(400, "invalid_body", f"unknown field(s): {', '.join(unknown)}")
        changes: dict[str, Any] = {}
        if "name" in body:
            changes["name"] = _name(body)
        if "condition" in body:
            changes["condition"] = _checked("condition", check_condition, body["condition"])
        if "channels" in body:
            changes["channels"] = _channels(body["channels"])
        if "cooldown" in body:
            changes["cooldown"] = _checked("cooldown", check_cooldown, body["cooldown"])
        current = await _fresh_rule(runtime, rule_id, key.owner)
        if "target" in body:
            target = _checked("target", check_target, body["target"])
            if target != current.target:
                raise _invalid("target", "a rule's target cannot change: create a new rule")
        if not changes:
            if "target" not in body:
                raise ApiError(
                    400, "invalid_body", f"nothing to change: send {sorted(CREATE_FIELDS)}"
                )
            return JSONResponse(AlertRuleView.of(current).to_json())  # the same target
        app = runtime.app
        await _write(runtime, rule_id, lambda: app.update_alert_rule(rule_id, key.owner, **changes))
        await _read_your_write(runtime)
        rule = await _fresh_rule(runtime, rule_id, key.owner)
        return JSONResponse(AlertRuleView.of(rule).to_json())

    async def item(request: Request) -> Response:
        key = await require_key(request)
        rule_id = _rule_id(request)
        runtime = _runtime(request)
        if request.method == "PUT":
            return await update(request, key, rule_id)
        if request.method == "DELETE":
            app = runtime.app
            await _write(runtime, rule_id, lambda: app.delete_alert_rule(rule_id, key.owner))
            await _read_your_write(runtime)
            return JSONResponse({"id": str(rule_id), "state": "deleted"})
        rule = await _fresh_rule(runtime, rule_id, key.owner)
        return JSONResponse(AlertRuleView.of(rule).to_json())

    def lifecycle(command: str) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            key = await require_key(request)
            rule_id = _rule_id(request)
            runtime = _runtime(request)
            app = runtime.app
            if command == "pause":
                await _write(runtime, rule_id, lambda: app.pause_alert_rule(rule_id, key.owner))
            else:
                await _write(runtime, rule_id, lambda: app.resume_alert_rule(rule_id, key.owner))
            await _read_your_write(runtime)
            rule = await _fresh_rule(runtime, rule_id, key.owner)
            return JSONResponse(AlertRuleView.of(rule).to_json())

        return endpoint

    async def run_backtest(request: Request) -> Response:
        key = await require_key(request)
        rule_id = _rule_id(request)
        runtime = _runtime(request)
        body = await _object_body(request, read_json, optional=True)
        unknown = sorted(set(body) - {"start", "end"})
        if unknown:
            raise ApiError(400, "invalid_body", f"unknown field(s): {', '.join(unknown)}")
        start, end = _time(body, "start"), _time(body, "end")
        if start is not None and end is not None and start > end:
            raise ApiError(400, "invalid_body", "start must not be after end")
        rule = await _fresh_rule(runtime, rule_id, key.owner)
        target, condition, cooldown = dict(rule.target), dict(rule.condition), rule.cooldown
        try:
            points = await asyncio.to_thread(
                history_points, runtime.history, target, condition, start=start, end=end
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
