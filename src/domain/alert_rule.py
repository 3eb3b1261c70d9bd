"""The AlertRule aggregate: a user's condition on a protocol metric, a token price or a
chain's MEV detections, and the RuleBook that holds an owner's live rules (their quota)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from .alert_values import (
    WINDOWS,
    AnomalyCondition,
    Condition,
    InvalidRule,
    MevCondition,
    PctChangeCondition,
    RuleTarget,
    check_pairing,
    parse_channels,
    parse_condition,
    parse_cooldown,
    parse_target,
    public_channels,
    stored_channels,
    stored_condition,
    stored_target,
)
from .errors import DomainError, InvalidObservation, InvalidTransition
from .observations import check_label, check_text

__all__ = [
    "WINDOWS",
    "AlertRule",
    "Firing",
    "InvalidRule",
    "RuleBook",
    "RuleQuotaExceeded",
    "RuleState",
    "check_rule_name",
    "condition_met",
    "next_transition",
    "public_channels",
]

RuleState = Literal["active", "paused", "deleted"]
Firing = Literal["firing", "resolved"]
MAX_RULE_NAME: Final = 200
RULE_BOOK_NAMESPACE = uuid5(NAMESPACE_URL, "https://defi-realtime/rule-book/")


class RuleQuotaExceeded(DomainError):
    """The owner already has as many live rules as their tier allows."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"at most {limit} alert rules")
        self.limit = limit


def check_rule_name(name: Any) -> str:
    """A rule's display name: a string (it may be empty) of at most ``MAX_RULE_NAME``
    characters with no control character (see ``check_text``)."""
    if not isinstance(name, str) or len(name) > MAX_RULE_NAME:
        raise InvalidRule(f"name must be a string of at most {MAX_RULE_NAME} characters", "name")
    try:
        return check_text(name, field="name").strip()
    except InvalidObservation as error:
        raise InvalidRule(str(error), "name") from None


def condition_met(condition: Condition, measure: float) -> bool:
    if condition.direction == "above":
        return measure >= condition.value
    return measure <= condition.value


def next_transition(
    condition: Condition,
    firing: Firing,
    last_fired_at: float | None,
    cooldown: float,
    measure: float,
    observed_at: float,
) -> Firing | None:
    """The transition an active rule in state ``firing`` makes on ``measure``, if any.

    Fires when the condition becomes true, unless the last firing is less than ``cooldown``
    seconds (data time) before ``observed_at``; resolves when it stops being true. Pure, so
    that the aggregate, the evaluator's in-memory index and backtests share one rule.
    """
    if not math.isfinite(measure):
        return None
    met = condition_met(condition, measure)
    if met and firing == "resolved":
        if last_fired_at is not None and observed_at - last_fired_at < cooldown:
            return None
        return "firing"
    if not met and firing == "firing":
        return "resolved"
    return None


def anomaly_move(condition: Condition) -> str | None:
    """The move an ``anomaly`` condition watches (fall, rise, any); None for the others."""
    return condition.move if isinstance(condition, AnomalyCondition) else None


def is_mev(condition: Condition) -> bool:
    """Whether the condition watches MEV detections (its measure: ``mev_measure``)."""
    return isinstance(condition, MevCondition)


def window_seconds(condition: Condition) -> float | None:
    """The change window of a ``pct_change`` condition; None when the measure is the value."""
    return float(condition.seconds) if isinstance(condition, PctChangeCondition) else None


class AlertRule(Aggregate):
    """Lifecycle: created (active) -> paused <-> resumed -> deleted.

    While active it fires when its condition becomes true and resolves when it stops being
    true; it never fires again within ``cooldown`` seconds (data time) of its last firing.
    """

    # Events carry the values as plain JSON objects (``model_dump``); the aggregate holds
    # them typed (``stored_*`` rebuild them without re-validating what was accepted once).
    @event("Created")
    def __init__(
        self,
        owner: str,
        name: str,
        target: dict[str, Any],
        condition: dict[str, Any],
        channels: list[dict[str, Any]],
        cooldown: int,
    ) -> None:
        self.owner = owner
        self.name = name
        self.target: RuleTarget = stored_target(target)
        self.condition: Condition = stored_condition(condition)
        self.channels = stored_channels(channels)
        self.cooldown = cooldown
        self.state: RuleState = "active"
        self.firing: Firing = "resolved"
        self.last_fired_at: float | None = None
        self.transitions = 0
        # Log position of the observation behind the last transition (None: none yet, or
        # the transitions were observed without positions).
        self.last_position: int | None = None

    @classmethod
    def create(
        cls,
        owner: str,
        target: RuleTarget | Mapping[str, Any],
        condition: Condition | Mapping[str, Any],
        channels: Sequence[Any],
        cooldown: int = 3_600,
        name: str = "",
    ) -> AlertRule:
        """A new rule; its parts are validated (typed values, or the JSON a client sent)."""
        parsed_target, parsed_condition = parse_target(target), parse_condition(condition)
        check_pairing(parsed_target, parsed_condition)
        return cls(
            owner=check_label(owner, what="owner"),
            name=check_rule_name(name or ""),
            target=parsed_target.model_dump(),
            condition=parsed_condition.model_dump(),
            channels=[
                channel.model_dump(exclude_none=True) for channel in parse_channels(channels)
            ],
            cooldown=parse_cooldown(cooldown),
        )

    def _require_not_deleted(self) -> None:
        if self.state == "deleted":
            raise InvalidTransition("alert rule is deleted")

    def update(
        self,
        condition: Condition | Mapping[str, Any] | None = None,
        channels: Sequence[Any] | None = None,
        cooldown: int | None = None,
        name: str | None = None,
        target: RuleTarget | Mapping[str, Any] | None = None,
    ) -> bool:
        """Replace some parts; False (and nothing recorded) when nothing changes. A rule's
        target cannot change: what it watches is its identity (create a new rule)."""
        self._require_not_deleted()
        if target is not None and parse_target(target) != self.target:
            raise InvalidRule("a rule's target cannot change: create a new rule", "target")
        new_condition = self.condition if condition is None else parse_condition(condition)
        check_pairing(self.target, new_condition)
        new_channels = self.channels if channels is None else parse_channels(channels)
        new_cooldown = self.cooldown if cooldown is None else parse_cooldown(cooldown)
        new_name = self.name if name is None else check_rule_name(name)
        if (new_condition, new_channels, new_cooldown, new_name) == (
            self.condition,
            self.channels,
            self.cooldown,
            self.name,
        ):
            return False
        self._updated(
            condition=new_condition.model_dump(),
            channels=[channel.model_dump(exclude_none=True) for channel in new_channels],
            cooldown=new_cooldown,
            name=new_name,
            owner=self.owner,
        )
        return True

    # ``owner`` says whose the changed name and channels are (the event store seals them
    # with the owner's key, docs/adr/0042); ``Updated`` events recorded before it have none.
    @event("Updated")
    def _updated(
        self,
        condition: dict[str, Any],
        channels: list[dict[str, Any]],
        cooldown: int,
        name: str,
        owner: str = "",
    ) -> None:
        self.condition = stored_condition(condition)
        self.channels = stored_channels(channels)
        self.cooldown = cooldown
        self.name = name

    def pause(self) -> None:
        if self.state != "active":
            raise InvalidTransition(f"cannot pause a rule that is {self.state}")
        self._paused()

    @event("Paused")
    def _paused(self) -> None:
        self.state = "paused"

    def resume(self) -> None:
        if self.state != "paused":
            raise InvalidTransition(f"cannot resume a rule that is {self.state}")
        self._resumed()

    @event("Resumed")
    def _resumed(self) -> None:
        self.state = "active"

    def delete(self) -> None:
        self._require_not_deleted()
        self._deleted()

    @event("Deleted")
    def _deleted(self) -> None:
        self.state = "deleted"

    def observe(
        self, measure: float, observed_at: float, position: int | None = None
    ) -> Firing | None:
        """Evaluate the condition against ``measure`` (a value, or a percent change).

        ``position`` is the log position of the observation: a position at or before the
        one behind the rule's last transition was already evaluated, and is ignored, so
        an evaluator replaying the log after a crash records nothing twice.

        Returns the transition that happened, if any.
        """
        if self.state != "active":
            return None
        if (
            position is not None
            and self.last_position is not None
            and position <= self.last_position
        ):
            return None
        transition = next_transition(
            self.condition, self.firing, self.last_fired_at, self.cooldown, measure, observed_at
        )
        if transition == "firing":
            key = self.next_idempotency_key()
            self._triggered(self.owner, measure, observed_at, key, position, self.channel_kinds)
        elif transition == "resolved":
            key = self.next_idempotency_key()
            self._resolved(self.owner, measure, observed_at, key, position, self.channel_kinds)
        return transition

    @property
    def channel_kinds(self) -> list[str]:
        """The kinds of channel the rule notifies (``websocket``, ``webhook``, ``email``),
        each once, in the rule's order."""
        return list(dict.fromkeys(str(channel.kind) for channel in self.channels))

    def next_idempotency_key(self) -> str:
        return f"{self.id}:{self.transitions + 1}"

    # Triggered/Resolved name the owner, and the kinds of channel the rule notified, so
    # that the alerts stream can route them to the owner's connections (only with a
    # ``websocket`` channel) without loading the rule.
    # ``position`` and ``channel_kinds`` default to None so that events stored before they
    # existed still replay (no ``channel_kinds``: it went to the owner's sockets, as every
    # transition did then; docs/adr/0037).
    @event("Triggered")
    def _triggered(
        self,
        owner: str,
        measure: float,
        observed_at: float,
        idempotency_key: str,
        position: int | None = None,
        channel_kinds: list[str] | None = None,
    ) -> None:
        self.firing = "firing"
        self.last_fired_at = observed_at
        self.transitions += 1
        if position is not None:
            self.last_position = position

    @event("Resolved")
    def _resolved(
        self,
        owner: str,
        measure: float,
        observed_at: float,
        idempotency_key: str,
        position: int | None = None,
        channel_kinds: list[str] | None = None,
    ) -> None:
        self.firing = "resolved"
        self.transitions += 1
        if position is not None:
            self.last_position = position


class RuleBook(Aggregate):
    """An owner's live alert rules: the quota is checked here, and the book is saved in the
    same transaction as the rule it admits, so two concurrent creations cannot both take
    the last place (the second's save conflicts on the book's version and is retried)."""

    @staticmethod
    def create_id(owner: str, *_: Any, **__: Any) -> UUID:
        return uuid5(RULE_BOOK_NAMESPACE, owner)

    @staticmethod
    def id_for(owner: str) -> UUID:
        return uuid5(RULE_BOOK_NAMESPACE, owner)

    @event("Opened")
    def __init__(self, owner: str, rules: list[str]) -> None:
        self.owner = owner
        self.rules: set[str] = set(rules)

    @classmethod
    def open(cls, owner: str, existing: Sequence[str] = ()) -> RuleBook:
        """A book for ``owner``, starting from the rules they already have (an owner whose
        rules predate books)."""
        return cls(owner=owner, rules=sorted(set(existing)))

    def admit(self, rule_id: UUID | str, limit: int) -> None:
        if len(self.rules) >= limit:
            raise RuleQuotaExceeded(limit)
        self._admitted(str(rule_id))

    @event("Admitted")
    def _admitted(self, rule_id: str) -> None:
        self.rules.add(rule_id)

    def release(self, rule_id: UUID | str) -> None:
        if str(rule_id) in self.rules:
            self._released(str(rule_id))

    @event("Released")
    def _released(self, rule_id: str) -> None:
        self.rules.discard(rule_id)
