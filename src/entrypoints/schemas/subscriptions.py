"""Durable subscription requests and answers (``/v2/subscriptions``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from ...domain.observations import MAX_NAME_LENGTH
from ...domain.subscription import MAX_WEBHOOK_SECRET_LENGTH, MAX_WEBHOOK_URL_LENGTH
from .common import ANSWER, QUERY
from .frames import Channel, Filters

__all__ = [
    "Subscription",
    "SubscriptionCreate",
    "SubscriptionDeleted",
    "SubscriptionList",
    "SubscriptionPath",
    "SubscriptionWebhook",
]

SubscriptionName = Annotated[
    str,
    Field(
        max_length=MAX_NAME_LENGTH,
        description="unique among the owner's live subscriptions (empty: unnamed); a "
        "second subscription of the same name is refused with 409 and the first one's id",
        json_schema_extra={"pattern": "^[^\\x00-\\x1f\\x7f-\\x9f]*$"},
    ),
]


class SubscriptionPath(BaseModel):
    """``{subscription_id}``: a malformed id, like another account's subscription, is not
    found (404)."""

    model_config = QUERY
    subscription_id: UUID


class SubscriptionWebhook(BaseModel):
    """Deliver by POSTing batches of updates to ``url`` (docs/subscriptions.md, "Webhook
    delivery") instead of a client attaching."""

    model_config = ConfigDict(extra="forbid", strict=True)
    url: str = Field(
        max_length=MAX_WEBHOOK_URL_LENGTH,
        pattern="^https?://",
        description="an http(s) URL; a private or loopback address is refused (400) unless "
        "ALLOW_PRIVATE_WEBHOOKS is set",
    )
    secret: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_WEBHOOK_SECRET_LENGTH,
        description="signs every POST (`X-Signature`: HMAC-SHA256 of `timestamp.body`)",
    )


class PublicSubscriptionWebhook(BaseModel):
    """A subscription's webhook as shown: never its secret."""

    model_config = ANSWER
    url: str
    secret_set: bool


class SubscriptionCreate(BaseModel):
    """``POST /v2/subscriptions``: a durable subscription (channel + filter, as a WebSocket
    ``subscribe`` frame's) that a client re-attaches to with ``{"type":"attach"}``."""

    model_config = ConfigDict(extra="forbid", strict=True)
    name: SubscriptionName = ""
    channel: Channel
    params: Filters | None = Field(None, description="absent or null: no filter")
    position: Annotated[StrictInt, Field(ge=0)] | None = Field(
        None,
        description="start after this log position (replayed on the first attach); default: "
        "the log's head now",
    )
    webhook: SubscriptionWebhook | None = Field(
        None, description="absent or null: a client attaches to it over the WebSocket"
    )


class Subscription(BaseModel):
    """A durable subscription as its owner sees it."""

    model_config = ANSWER
    id: UUID
    name: str
    channel: str
    params: dict[str, Any] = Field(description="the filter, as given")
    delivery: Literal["websocket", "webhook"] = Field(
        description="how it is delivered: a client attaches to it, or its webhook is POSTed"
    )
    position: int = Field(
        description="websocket: the last acknowledged log position (written a moment after "
        "the ack: see `acked`), an attach resumes after it; webhook: the last position its "
        "webhook answered with a 2xx"
    )
    created_at: float
    updated_at: float
    webhook: PublicSubscriptionWebhook | None = Field(
        None, description="where a webhook subscription is POSTed"
    )


class SubscriptionList(BaseModel):
    """The account's live subscriptions, oldest first."""

    model_config = ANSWER
    subscriptions: list[Subscription]
    total: int


class SubscriptionDeleted(BaseModel):
    model_config = ANSWER
    id: UUID
    state: Literal["closed"]
