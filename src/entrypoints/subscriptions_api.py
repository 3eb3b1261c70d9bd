"""Durable subscriptions over REST: ``/v2/subscriptions`` (create, list) and
``/v2/subscriptions/{id}`` (get, delete).

Every route needs an API key, and a key only ever sees its owner's subscriptions: another
owner's, a deleted one and a malformed id are all 404. A client re-attaches to one over the
WebSocket (``{"type":"attach","subscription":id}``, docs/subscriptions.md).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ..application.app import SubscriptionNotFound
from ..application.durable_subscriptions import DurableSubscriptions, SubscriptionView
from ..domain.errors import DomainError
from ..domain.subscription import SubscriptionNameTaken, SubscriptionQuotaExceeded
from .auth import require_key
from .errors import ApiError
from .node import Node
from .operations import Operation, OperationRoute, json_answer
from .schemas.common import NoParameters
from .schemas.subscriptions import (
    Subscription,
    SubscriptionCreate,
    SubscriptionDeleted,
    SubscriptionList,
    SubscriptionPath,
)
from .validation import parse_body

__all__ = ["subscription_routes"]

BodyReader = Callable[[Request], Awaitable[Any]]


def _node(request: Request) -> Node:
    node: Node = request.app.state.node
    return node


def _subscriptions(request: Request) -> DurableSubscriptions:
    return _node(request).subscriptions


def _not_found(raw: object) -> ApiError:
    return ApiError(404, "subscription_not_found", f"subscription {str(raw)[:64]!r} not found")


def _answer(view: SubscriptionView) -> Response:
    return json_answer(Subscription.model_validate(view))


CREATE = Operation(
    "POST",
    "createSubscription",
    "Create a durable subscription owned by the key's account (attached over the WebSocket, "
    "or delivered to a signed webhook)",
    NoParameters,
    Subscription,
    access="key",
    body=SubscriptionCreate,
    errors=(403, 409, 413),
)
LIST = Operation(
    "GET",
    "listSubscriptions",
    "The key's account's durable subscriptions",
    NoParameters,
    SubscriptionList,
    access="key",
)
GET = Operation(
    "GET",
    "getSubscription",
    "One of the account's durable subscriptions, with its acknowledged position",
    NoParameters,
    Subscription,
    access="key",
    path=SubscriptionPath,
    errors=(404,),
)
DELETE = Operation(
    "DELETE",
    "deleteSubscription",
    "Delete (close) a durable subscription: attached clients are told and it sends nothing more",
    NoParameters,
    SubscriptionDeleted,
    access="key",
    path=SubscriptionPath,
    errors=(404,),
)


def subscription_routes(read_json: BodyReader) -> list[OperationRoute]:
    """The routes, with the API's JSON body reader (size limits)."""

    async def create(request: Request, query: NoParameters) -> Response:
        key = require_key(request)
        body = parse_body(SubscriptionCreate, await read_json(request), code="invalid_subscription")
        params = None if body.params is None else body.params.model_dump(by_alias=True)
        webhook = None if body.webhook is None else body.webhook.model_dump(exclude_none=True)
        try:
            view = await _subscriptions(request).create(
                key.owner,
                body.channel,
                params,
                name=body.name,
                position=body.position,
                webhook=webhook,
            )
        except SubscriptionNameTaken as error:
            raise ApiError(
                409,
                "subscription_exists",
                str(error),
                {"field": "name", "id": error.existing},
            ) from None
        except SubscriptionQuotaExceeded as error:
            raise ApiError(
                403,
                "subscription_limit",
                f"an account holds at most {error.limit} subscriptions",
                {"limit": error.limit},
            ) from None
        except DomainError as error:  # InvalidSubscription, or a name the domain refuses
            details = None if error.field is None else {"field": error.field}
            raise ApiError(400, "invalid_subscription", str(error), details) from None
        return _answer(view)

    async def list_subscriptions(request: Request, query: NoParameters) -> Response:
        key = require_key(request)
        views = await _subscriptions(request).list(key.owner)
        return json_answer(
            SubscriptionList(
                subscriptions=[Subscription.model_validate(view) for view in views],
                total=len(views),
            )
        )

    async def get(request: Request, query: NoParameters) -> Response:
        key = require_key(request)
        raw = request.path_params["subscription_id"]
        try:
            return _answer(await _subscriptions(request).get(key.owner, raw))
        except SubscriptionNotFound:
            raise _not_found(raw) from None

    async def delete(request: Request, query: NoParameters) -> Response:
        key = require_key(request)
        raw = request.path_params["subscription_id"]
        node = _node(request)
        try:
            await node.subscriptions.close(key.owner, raw)
            view_id = SubscriptionPath.model_validate({"subscription_id": raw}).subscription_id
        except SubscriptionNotFound:
            raise _not_found(raw) from None
        # Clients attached to it on this node stop now; on other nodes at their next ack.
        node.hub.durable_closed(str(view_id))
        return json_answer(SubscriptionDeleted(id=view_id, state="closed"))

    return [
        OperationRoute("/v2/subscriptions", LIST.serve(list_subscriptions), CREATE.serve(create)),
        OperationRoute(
            "/v2/subscriptions/{subscription_id:str}", GET.serve(get), DELETE.serve(delete)
        ),
    ]
