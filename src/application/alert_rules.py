"""Alert rules on the read side: the rule view, how log entries fold into it, and the
values the evaluator and the application exchange.

One fold (``fold_rule``) serves every consumer of the rule lifecycle entries (the
``alert_rules`` table of the history read model, the evaluator's in-memory index), so they
cannot disagree about what a sequence of entries means.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Final

from ..domain.alert_rule import AlertRule, Firing, public_channels
from ..domain.alert_values import Condition, RuleTarget, stored_condition, stored_target
from .log import ALERT_RULE_KINDS, LogEntry

RULE_FACT_KINDS: Final[frozenset[str]] = frozenset(
    {*ALERT_RULE_KINDS, "alert_triggered", "alert_resolved"}
)
"""Entries that change an ``AlertRuleView``: the lifecycle and the transitions."""


@dataclass(frozen=True, slots=True)
class AlertRuleView:
    """An alert rule as listed to its owner (never with a webhook secret)."""

    id: str
    owner: str
    name: str
    target: RuleTarget
    condition: Condition
    channels: list[dict[str, Any]]
    cooldown: int
    state: str = "active"
    firing: Firing = "resolved"
    last_fired_at: float | None = None
    # How many transitions the rule has made (the n of its idempotency keys ``<id>:<n>``).
    transitions: int = 0
    # Log position of the rule's creation (0 when unknown, e.g. a view of the aggregate):
    # observations at or before it predate the rule and are never evaluated against it.
    created_position: int = 0
    # The last log position folded into this view.
    position: int = 0
    created_at: float = 0.0
    # When the rule's last event was recorded (lifecycle or transition), as the aggregate's
    # ``modified_on``.
    updated_at: float = 0.0

    @property
    def target_key(self) -> str:
        return self.target.key

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "target": self.target.model_dump(),
            "condition": self.condition.model_dump(),
            "channels": [dict(channel) for channel in self.channels],
            "cooldown": self.cooldown,
            "state": self.state,
            "firing": self.firing,
            "last_fired_at": self.last_fired_at,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }

    @classmethod
    def of(cls, rule: AlertRule) -> AlertRuleView:
        """The view of an aggregate (read straight from the event store)."""
        return cls(
            id=str(rule.id),
            owner=rule.owner,
            name=rule.name,
            target=rule.target,
            condition=rule.condition,
            channels=public_channels(rule.channels),
            cooldown=rule.cooldown,
            state=rule.state,
            firing=rule.firing,
            last_fired_at=rule.last_fired_at,
            transitions=rule.transitions,
            created_at=rule.created_on.timestamp(),
            updated_at=rule.modified_on.timestamp(),
        )


def fold_rule(view: AlertRuleView | None, entry: LogEntry) -> AlertRuleView | None:
    """The view after ``entry`` (one of ``RULE_FACT_KINDS``, keyed by the rule id).

    Idempotent: an entry at or before the view's position changes nothing, so a consumer
    that was seeded from a read model ahead of its own position can replay the log safely.
    Entries about a rule whose creation was never seen leave it unknown (None).
    """
    if view is not None and entry.position <= view.position:
        return view
    data = entry.data
    kind = entry.kind
    if kind == "alert_rule_created":
        return AlertRuleView(
            id=entry.key,
            owner=str(data["owner"]),
            name=str(data.get("name") or ""),
            target=stored_target(data["target"]),
            condition=stored_condition(data["condition"]),
            channels=[dict(channel) for channel in data.get("channels") or ()],
            cooldown=int(data["cooldown"]),
            state=str(data.get("state") or "active"),
            created_position=entry.position,
            position=entry.position,
            created_at=entry.recorded_at,
            updated_at=entry.recorded_at,
        )
    if view is None:
        return None
    position = entry.position
    if kind == "alert_rule_updated":
        return replace(
            view,
            name=str(data.get("name") or ""),
            condition=stored_condition(data["condition"]),
            channels=[dict(channel) for channel in data.get("channels") or ()],
            cooldown=int(data["cooldown"]),
            updated_at=entry.recorded_at,
            position=position,
        )
    if kind in ("alert_rule_paused", "alert_rule_resumed", "alert_rule_deleted"):
        return replace(
            view, state=str(data["state"]), updated_at=entry.recorded_at, position=position
        )
    if kind in ("alert_triggered", "alert_resolved"):
        count = transition_number(str(data.get("idempotency_key") or ""))
        if count is not None and count <= view.transitions:
            return replace(view, position=position)  # the view already reflects it
        if kind == "alert_triggered":
            return replace(
                view,
                firing="firing",
                last_fired_at=float(data["observed_at"]),
                transitions=count or view.transitions + 1,
                updated_at=entry.recorded_at,
                position=position,
            )
        return replace(
            view,
            firing="resolved",
            transitions=count or view.transitions + 1,
            updated_at=entry.recorded_at,
            position=position,
        )
    return view


def transition_number(idempotency_key: str) -> int | None:
    """The n of a transition's idempotency key ``<rule id>:<n>`` (None if malformed)."""
    _, _, number = idempotency_key.rpartition(":")
    return int(number) if number.isdigit() else None


@dataclass(frozen=True, slots=True)
class RuleObservation:
    """Evaluate rule ``rule_id`` against ``measure``, observed at ``observed_at`` and
    recorded at log ``position``."""

    rule_id: str
    measure: float
    observed_at: float
    position: int


@dataclass(frozen=True, slots=True)
class RuleSnapshot:
    """A rule's state right after one ``RuleObservation`` was applied to the aggregate."""

    rule_id: str
    transition: Firing | None
    state: str
    firing: Firing
    last_fired_at: float | None
    transitions: int = 0
