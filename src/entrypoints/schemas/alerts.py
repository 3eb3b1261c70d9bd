"""Alert rule requests and answers (``/v2/alerts``)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from ...domain.alert_rule import MAX_RULE_NAME
from ...domain.alert_values import Channels, Condition, Cooldown, RuleTarget

__all__ = ["AlertRuleChange", "AlertRuleCreate", "BacktestWindow"]

_BODY = ConfigDict(extra="forbid", strict=True)
RuleName = Annotated[str, Field(max_length=MAX_RULE_NAME, description="for the owner's eyes")]
DEFAULT_COOLDOWN = 3_600


class AlertRuleCreate(BaseModel):
    """``POST /v2/alerts``: a new rule."""

    model_config = _BODY
    name: RuleName = ""
    target: RuleTarget
    condition: Condition
    channels: Channels
    cooldown: Cooldown = DEFAULT_COOLDOWN


class AlertRuleChange(BaseModel):
    """``PUT /v2/alerts/{id}``: the parts to replace (at least one). ``target`` may be sent
    but must be the rule's own: a rule's target cannot change."""

    model_config = _BODY
    name: RuleName | None = None
    target: RuleTarget | None = None
    condition: Condition | None = None
    channels: Channels | None = None
    cooldown: Cooldown | None = None


Timestamp = Annotated[float | str, Field(description="unix seconds or ISO-8601 (naive means UTC)")]


class BacktestWindow(BaseModel):
    """``POST /v2/alerts/{id}/backtest``: the part of history to replay (all of it by
    default)."""

    model_config = ConfigDict(extra="forbid")
    start: Timestamp | None = None
    end: Timestamp | None = None
