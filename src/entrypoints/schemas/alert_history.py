"""``GET /v2/alerts/{id}/history``: a rule's transitions and every delivery attempt."""

from __future__ import annotations

from typing import Annotated, Final, Literal
from uuid import UUID

from pydantic import BaseModel, Field

from ...application.delivery import AttemptStatus
from ...domain.alert_rule import Firing
from .common import ANSWER, QUERY

__all__ = [
    "MAX_HISTORY",
    "AlertHistory",
    "AlertTransition",
    "DeliveryAttempt",
    "DeliveryChannel",
    "HistoryQuery",
    "NotificationSummary",
]

MAX_HISTORY: Final = 10_000


class HistoryQuery(BaseModel):
    model_config = QUERY
    limit: Annotated[int, Field(ge=1, le=MAX_HISTORY, description="rows of each list, at most")] = (
        1_000
    )


class AlertTransition(BaseModel):
    """The rule fired or resolved, as the history read model recorded it."""

    model_config = ANSWER
    position: int
    kind: Literal["fired", "resolved"]
    measure: float
    observedAt: float
    idempotencyKey: str | None
    recordedAt: float


class DeliveryChannel(BaseModel):
    model_config = ANSWER
    kind: str
    target: str


class DeliveryAttempt(BaseModel):
    """One attempt to deliver a notification on one channel."""

    model_config = ANSWER
    idempotencyKey: str
    channel: DeliveryChannel
    attempt: int
    status: AttemptStatus
    condition: str = Field(description="firing or resolved")
    position: int
    httpStatus: int | None
    error: str | None
    startedAt: float
    finishedAt: float


class NotificationSummary(BaseModel):
    """Per idempotency key: how many attempts, and the last one's status."""

    model_config = ANSWER
    attempts: int
    status: AttemptStatus | None


class AlertHistory(BaseModel):
    model_config = ANSWER
    alertId: UUID
    name: str
    state: Literal["active", "paused"]
    firing: Firing
    transitions: list[AlertTransition]
    deliveries: list[DeliveryAttempt]
    notifications: dict[str, NotificationSummary]
