"""Durable subscription requests and answers (``/v2/subscriptions``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from ...domain.observations import MAX_NAME_LENGTH
from .common import ANSWER, QUERY
from .frames import Channel, Filters

__all__ = [
    "Subscription",
    "SubscriptionCreate",
    "SubscriptionDeleted",
    "SubscriptionList",
    "SubscriptionPath",
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


class Subscription(BaseModel):
    """A durable subscription as its owner sees it."""

    model_config = ANSWER
    id: UUID
    name: str
    channel: str
    params: dict[str, Any] = Field(description="the filter, as given")
    delivery: Literal["websocket"] = Field(description="how it is delivered: attach to it")
    position: int = Field(
        description="the last acknowledged log position (written a moment after the ack: "
        "see `acked`); an attach resumes after it"
    )
    created_at: float
    updated_at: float


class SubscriptionList(BaseModel):
    """The account's live subscriptions, oldest first."""

    model_config = ANSWER
    subscriptions: list[Subscription]
    total: int


class SubscriptionDeleted(BaseModel):
    model_config = ANSWER
    id: UUID
    state: Literal["closed"]
