"""The caller's account and keys over REST: ``GET /v2/account``, ``GET``/``POST /v2/keys``,
``POST /v2/keys/{id}/rotate``, ``DELETE /v2/keys/{id}``.

Every route needs a key (or a session token) and acts on its own account: another
account's key is 404, as an unknown one (nothing leaks). The use cases are the
application's (``application/api_keys.py``); this module parses and answers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ..application.api_keys import MAX_GRACE, AccountKeyService, KeyLimitReached, KeyNotFound
from ..application.coins import parse_duration
from ..domain.errors import DomainError, InvalidTransition
from .auth import require_key
from .errors import ApiError
from .node import Node
from .operations import Operation, OperationRoute, json_answer
from .schemas.common import NoParameters
from .schemas.keys import Account, IssuedKey, Key, KeyCreate, KeyList, KeyPath, KeyRotate
from .validation import has_body, parse_body

__all__ = ["key_routes"]

BodyReader = Callable[[Request], Awaitable[Any]]


def _service(request: Request) -> AccountKeyService:
    node: Node = request.app.state.node
    service: AccountKeyService = node.container.key_service()
    return service


def _not_found(raw: object) -> ApiError:
    return ApiError(404, "key_not_found", f"key {str(raw)[:64]!r} not found")


def _grace(raw: float | str | None) -> float | None:
    if raw is None:
        return None
    try:
        seconds = float(raw) if not isinstance(raw, str) else parse_duration(raw.strip())
    except ValueError as error:
        raise ApiError(400, "invalid_grace", f"grace {error}", {"field": "grace"}) from None
    if not 0 <= seconds <= MAX_GRACE:
        raise ApiError(
            400, "invalid_grace", f"grace is 0 to {MAX_GRACE:.0f} seconds", {"field": "grace"}
        )
    return seconds


ACCOUNT = Operation(
    "GET",
    "getAccount",
    "The caller's account: id, name, tier and its keys' metadata",
    NoParameters,
    Account,
    access="key",
)
LIST = Operation(
    "GET", "listKeys", "The keys of the caller's account", NoParameters, KeyList, access="key"
)
CREATE = Operation(
    "POST",
    "createKey",
    "A new key on the caller's account (the caller's tier and allow-list); its secret is "
    "shown once",
    NoParameters,
    IssuedKey,
    access="key",
    body=KeyCreate,
    body_required=False,
    errors=(403, 413),
)
ROTATE = Operation(
    "POST",
    "rotateKey",
    "Replace a key of the account by a new one; the old one works for the grace period",
    NoParameters,
    IssuedKey,
    access="key",
    path=KeyPath,
    body=KeyRotate,
    body_required=False,
    errors=(404, 409, 413),
)
REVOKE = Operation(
    "DELETE",
    "revokeKey",
    "Revoke a key of the account: refused at once on every node, its sockets closed",
    NoParameters,
    Key,
    access="key",
    path=KeyPath,
    errors=(404, 409),
)


def key_routes(read_json: BodyReader) -> list[OperationRoute]:
    """The routes, with the API's JSON body reader (size limits)."""

    async def body_of(request: Request) -> Any:
        return await read_json(request) if has_body(request) else {}

    async def account(request: Request, query: NoParameters) -> Response:
        return json_answer(
            Account.model_validate(await _service(request).account(require_key(request)))
        )

    async def list_keys(request: Request, query: NoParameters) -> Response:
        views = await _service(request).keys(require_key(request))
        return json_answer(KeyList(keys=[Key.model_validate(v) for v in views], total=len(views)))

    async def create(request: Request, query: NoParameters) -> Response:
        caller = require_key(request)
        body = parse_body(KeyCreate, await body_of(request), code="invalid_key")
        try:
            issued = await _service(request).create(caller, body.name)
        except KeyLimitReached as error:
            raise ApiError(403, "key_limit", str(error), {"limit": error.limit}) from None
        except DomainError as error:
            details = None if error.field is None else {"field": error.field}
            raise ApiError(400, "invalid_key", str(error), details) from None
        return json_answer(IssuedKey.model_validate(issued))

    async def rotate(request: Request, query: NoParameters) -> Response:
        caller = require_key(request)
        raw = request.path_params["key_id"]
        body = parse_body(KeyRotate, await body_of(request), code="invalid_grace")
        grace = _grace(body.grace)
        try:
            issued = await _service(request).rotate(caller, raw, grace)
        except KeyNotFound:
            raise _not_found(raw) from None
        except InvalidTransition as error:
            raise ApiError(409, "key_not_rotatable", str(error)) from None
        return json_answer(IssuedKey.model_validate(issued))

    async def revoke(request: Request, query: NoParameters) -> Response:
        caller = require_key(request)
        raw = request.path_params["key_id"]
        try:
            view = await _service(request).revoke(caller, raw)
        except KeyNotFound:
            raise _not_found(raw) from None
        except InvalidTransition as error:
            raise ApiError(409, "key_revoked", str(error)) from None
        return json_answer(Key.model_validate(view))

    return [
        OperationRoute("/v2/account", ACCOUNT.serve(account)),
        OperationRoute("/v2/keys", LIST.serve(list_keys), CREATE.serve(create)),
        OperationRoute("/v2/keys/{key_id:str}/rotate", ROTATE.serve(rotate)),
        OperationRoute("/v2/keys/{key_id:str}", REVOKE.serve(revoke)),
    ]
