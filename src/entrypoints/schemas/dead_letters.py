"""``/v2/alerts/{id}/dead-letters``: a rule's notifications that were given up, and their
redrive."""

from __future__ import annotations

from typing import Literal
from uuid import UUID

from pydantic import BaseModel, Field

from .alert_history import DeliveryChannel
from .common import ANSWER

__all__ = ["DeadLetter", "DeadLetterList", "Redriven"]


class DeadLetter(BaseModel):
    """A notification given up after its last attempt (or refused at once)."""

    model_config = ANSWER
    idempotencyKey: str = Field(description="the same on every attempt, and after a redrive")
    condition: Literal["firing", "resolved"]
    channel: DeliveryChannel
    attempt: int = Field(description="the last attempt of its round")
    reason: str
    measure: float
    observedAt: float
    position: int


class DeadLetterList(BaseModel):
    model_config = ANSWER
    alertId: UUID
    deadLetters: list[DeadLetter]
    total: int


class Redriven(BaseModel):
    """The dead letters put back on the work queue (delivered again from a first attempt)."""

    model_config = ANSWER
    alertId: UUID
    redriven: list[DeadLetter]
    total: int
