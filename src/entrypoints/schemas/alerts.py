"""Alert rule requests and answers (``/v2/alerts``)."""

from __future__ import annotations

from typing import Annotated, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from ...domain.alert_rule import MAX_RULE_NAME, Firing
from ...domain.alert_values import Channels, Condition, Cooldown, RuleTarget
from .common import ANSWER, QUERY

__all__ = [
    "AlertRule",
    "AlertRuleChange",
    "AlertRuleCreate",
    "AlertRuleDeleted",
    "AlertRuleList",
    "Backtest",
    "BacktestEvent",
    "BacktestWindow",
    "PublicEmailChannel",
    "PublicWebhookChannel",
    "PublicWebsocketChannel",
    "RulePath",
]

_BODY = ConfigDict(extra="forbid", strict=True)
RuleName = Annotated[
    str,
    Field(
        max_length=MAX_RULE_NAME,
        description="for the owner's eyes",
        json_schema_extra={"pattern": "^[^\\x00-\\x1f\\x7f-\\x9f]*$"},
    ),
]
DEFAULT_COOLDOWN = 3_600


class RulePath(BaseModel):
    """``{rule_id}``: a malformed id, like another account's rule, is not found (404)."""

    model_config = QUERY
    rule_id: UUID


class AlertRuleCreate(BaseModel):
    """``POST /v2/alerts``: a new rule. No string in it may hold a control character (the
    domain's values refuse them: PostgreSQL text cannot hold a NUL, and a rule's strings are
    shown and logged)."""

    model_config = _BODY
    name: RuleName = ""
    target: RuleTarget
    condition: Condition
    channels: Channels
    cooldown: Cooldown = DEFAULT_COOLDOWN


class AlertRuleChange(BaseModel):
    """``PUT /v2/alerts/{id}``: the parts to replace (at least one). ``target`` may be sent
    but must be the rule's own: a rule's target cannot change."""

    model_config = ConfigDict(**_BODY, json_schema_extra={"minProperties": 1})
    name: RuleName | None = None
    target: RuleTarget | None = None
    condition: Condition | None = None
    channels: Channels | None = None
    cooldown: Cooldown | None = None


Timestamp = Annotated[
    # Strict: true is not a time (lax validation would read it as 1.0).
    Annotated[float, Field(strict=True)] | str,
    WithJsonSchema(
        {
            "anyOf": [{"type": "number"}, {"type": "string", "format": "date-time"}],
            "description": "unix seconds or ISO-8601 (naive means UTC)",
        }
    ),
]


class BacktestWindow(BaseModel):
    """``POST /v2/alerts/{id}/backtest``: the part of history to replay (all of it by
    default)."""

    model_config = ConfigDict(extra="forbid")
    start: Timestamp | None = None
    end: Timestamp | None = None


# -- answers ------------------------------------------------------------------------------


class PublicWebhookChannel(BaseModel):
    """A webhook as shown: never its secret; ``secret_set`` says whether it signs."""

    model_config = ANSWER
    kind: Literal["webhook"]
    url: str
    secret_set: bool


class PublicEmailChannel(BaseModel):
    model_config = ANSWER
    kind: Literal["email"]
    address: str


class PublicWebsocketChannel(BaseModel):
    model_config = ANSWER
    kind: Literal["websocket"]


PublicChannel = Annotated[
    PublicWebhookChannel | PublicEmailChannel | PublicWebsocketChannel,
    Field(discriminator="kind"),
]


class AlertRule(BaseModel):
    """An alert rule as its owner sees it."""

    model_config = ANSWER
    id: UUID
    name: str
    target: RuleTarget
    condition: Condition
    channels: list[PublicChannel]
    cooldown: int = Field(description="seconds (data time) between two firings")
    state: Literal["active", "paused"]
    firing: Firing
    last_fired_at: float | None = Field(description="data time of the last firing")
    created_at: float
    updated_at: float


class AlertRuleList(BaseModel):
    """The account's rules (deleted ones left out)."""

    model_config = ANSWER
    alerts: list[AlertRule]
    total: int


class AlertRuleDeleted(BaseModel):
    model_config = ANSWER
    id: UUID
    state: Literal["deleted"]


class BacktestEvent(BaseModel):
    """A transition the rule would have made."""

    model_config = ANSWER
    state: Firing
    observed_at: float
    measure: float


class Backtest(BaseModel):
    """When the rule would have fired and resolved over stored history."""

    model_config = ANSWER
    alertId: UUID
    events: list[BacktestEvent]
    points: int = Field(description="observations evaluated")
    start: float | None
    end: float | None
