"""The AlertRule aggregate: a user's condition on a protocol metric or a token price."""

from __future__ import annotations

import math
from typing import Any, Final, Literal, get_args

from eventsourcing.domain import Aggregate, event

from .errors import DomainError, InvalidObservation, InvalidTransition
from .observations import MAX_NAME_LENGTH, METRICS, TOTAL, check_chain, check_label, check_text
from .protocol import check_slug
from .token import check_token_id

RuleState = Literal["active", "paused", "deleted"]
Firing = Literal["firing", "resolved"]
Direction = Literal["above", "below"]
WINDOWS: Final[dict[str, int]] = {"1h": 3_600, "24h": 86_400, "7d": 604_800}
CHANNEL_KINDS: Final[frozenset[str]] = frozenset({"webhook", "email", "websocket"})
MAX_COOLDOWN: Final = 30 * 86_400


class InvalidRule(DomainError):
    """An alert rule's target, condition, channels or cooldown is not acceptable."""


def check_rule_name(name: str) -> str:
    """A rule's display name: a string (it may be empty) of at most ``MAX_NAME_LENGTH``
    characters with no control character (see ``check_text``)."""
    if not isinstance(name, str) or len(name) > MAX_NAME_LENGTH:
        raise InvalidRule(
            f"name must be a string of at most {MAX_NAME_LENGTH} characters", field="name"
        )
    try:
        return check_text(name, field="name")
    except InvalidObservation as error:
        raise InvalidRule(str(error), field="name") from None


def check_target(target: dict[str, Any]) -> dict[str, Any]:
    """Normalise a target: ``{protocol, metric, chain}`` or ``{token, metric: price}``."""
    if not isinstance(target, dict):
        raise InvalidRule("target must be an object", field="target")
    try:
        if "protocol" in target and "token" not in target:
            metric = target.get("metric", "tvl")
            if not isinstance(metric, str) or metric not in METRICS:
                raise InvalidRule(f"target.metric must be one of {sorted(METRICS)}")
            chain = target.get("chain") or TOTAL
            return {
                "protocol": check_slug(target["protocol"]),
                "metric": metric,
                "chain": check_chain(chain, what="target.chain"),
            }
        if "token" in target and "protocol" not in target:
            if target.get("metric", "price") != "price":
                raise InvalidRule("a token target's metric is 'price'")
            return {"token": check_token_id(target["token"]), "metric": "price"}
    except InvalidObservation as error:
        # A malformed slug, chain or token id is a bad rule (a 400), like any other target.
        raise InvalidRule(f"target: {error}", field="target") from None
    raise InvalidRule("target needs exactly one of 'protocol' or 'token'")


def check_condition(condition: dict[str, Any]) -> dict[str, Any]:
    """``{"kind": "threshold", "direction", "value"}`` or
    ``{"kind": "pct_change", "direction", "value" (percent), "window": 1h|24h|7d}``."""
    if not isinstance(condition, dict):
        raise InvalidRule("condition must be an object")
    kind = condition.get("kind")
    direction = condition.get("direction")
    value = condition.get("value")
    if direction not in get_args(Direction):
        raise InvalidRule("condition.direction must be 'above' or 'below'")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRule("condition.value must be a finite number")
    try:
        value = float(value)
    except OverflowError:  # an int beyond float range
        raise InvalidRule("condition.value must be a finite number") from None
    if not math.isfinite(value):
        raise InvalidRule("condition.value must be a finite number")
    if kind == "threshold":
        if value < 0:
            raise InvalidRule("a threshold value must be non-negative")
        return {"kind": kind, "direction": direction, "value": float(value)}
    if kind == "pct_change":
        window = condition.get("window")
        if not isinstance(window, str) or window not in WINDOWS:
            raise InvalidRule(f"condition.window must be one of {sorted(WINDOWS)}")
        if value < -100:
            raise InvalidRule("a percentage change cannot be below -100")
        return {"kind": kind, "direction": direction, "value": float(value), "window": window}
    raise InvalidRule("condition.kind must be 'threshold' or 'pct_change'")


def check_channels(channels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if not isinstance(channels, list) or not channels:
        raise InvalidRule("channels must be a non-empty list")
    checked = []
    for index, channel in enumerate(channels):
        kind = channel.get("kind") if isinstance(channel, dict) else None
        if not isinstance(kind, str) or kind not in CHANNEL_KINDS:
            raise InvalidRule(f"channels[{index}].kind must be one of {sorted(CHANNEL_KINDS)}")
        if kind == "webhook" and not str(channel.get("url", "")).startswith(
            ("http://", "https://")
        ):
            raise InvalidRule(f"channels[{index}].url must be an http(s) URL")
        if kind == "email" and "@" not in str(channel.get("address", "")):
            raise InvalidRule(f"channels[{index}].address must be an email address")
        for key in ("url", "address", "secret"):
            value = channel.get(key)
            if isinstance(value, str):
                try:
                    check_text(value, field=f"channels[{index}].{key}")
                except InvalidObservation as error:
                    raise InvalidRule(str(error), field="channels") from None
        checked.append(dict(channel))
    return checked


PUBLIC_CHANNEL_FIELDS: Final[tuple[str, ...]] = ("kind", "url", "address")


def public_channels(channels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Channels as they may be shown and logged: kind and destination, never the secret
    (``secret_set`` tells whether a webhook signs its deliveries)."""
    shown = []
    for channel in channels:
        public = {name: channel[name] for name in PUBLIC_CHANNEL_FIELDS if name in channel}
        if channel.get("kind") == "webhook":
            public["secret_set"] = bool(channel.get("secret"))
        shown.append(public)
    return shown


def check_cooldown(cooldown: int) -> int:
    if isinstance(cooldown, bool) or not isinstance(cooldown, int):
        raise InvalidRule("cooldown must be whole seconds")
    if not 0 <= cooldown <= MAX_COOLDOWN:
        raise InvalidRule(f"cooldown must be between 0 and {MAX_COOLDOWN} seconds")
    return cooldown


def condition_met(condition: dict[str, Any], measure: float) -> bool:
    threshold = float(condition["value"])
    if condition["direction"] == "above":
        return measure >= threshold
    return measure <= threshold


def next_transition(
    condition: dict[str, Any],
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


def target_key(target: dict[str, Any]) -> str:
    """The series a normalised target watches, named like the log entries that feed it:
    ``protocol:<slug>:<metric>:<chain>`` or ``token:<token id>``."""
    if "protocol" in target:
        return f"protocol:{target['protocol']}:{target['metric']}:{target['chain']}"
    return f"token:{target['token']}"


class AlertRule(Aggregate):
    """Lifecycle: created (active) -> paused <-> resumed -> deleted.

    While active it fires when its condition becomes true and resolves when it stops being
    true; it never fires again within ``cooldown`` seconds (data time) of its last firing.
    """

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
        self.target = target
        self.condition = condition
        self.channels = channels
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
        target: dict[str, Any],
        condition: dict[str, Any],
        channels: list[dict[str, Any]],
        cooldown: int = 3_600,
        name: str = "",
    ) -> AlertRule:
        return cls(
            owner=check_label(owner, what="owner"),
            name=check_rule_name(name or ""),
            target=check_target(target),
            condition=check_condition(condition),
            channels=check_channels(channels),
            cooldown=check_cooldown(cooldown),
        )

    def _require_not_deleted(self) -> None:
        if self.state == "deleted":
            raise InvalidTransition("alert rule is deleted")

    def update(
        self,
        condition: dict[str, Any] | None = None,
        channels: list[dict[str, Any]] | None = None,
        cooldown: int | None = None,
        name: str | None = None,
    ) -> None:
        self._require_not_deleted()
        self._updated(
            condition=check_condition(condition) if condition is not None else self.condition,
            channels=check_channels(channels) if channels is not None else self.channels,
            cooldown=check_cooldown(cooldown) if cooldown is not None else self.cooldown,
            name=check_rule_name(name) if name is not None else self.name,
        )

    @event("Updated")
    def _updated(
        self, condition: dict[str, Any], channels: list[dict[str, Any]], cooldown: int, name: str
    ) -> None:
        self.condition = condition
        self.channels = channels
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
            self._triggered(self.owner, measure, observed_at, key, position)
        elif transition == "resolved":
            key = self.next_idempotency_key()
            self._resolved(self.owner, measure, observed_at, key, position)
        return transition

    def next_idempotency_key(self) -> str:
        return f"{self.id}:{self.transitions + 1}"

    # Triggered/Resolved name the owner so that the alerts stream can route them to the
    # owner's connections without loading the rule.
    # ``position`` defaults to None so that events stored before it existed still replay.
    @event("Triggered")
    def _triggered(
        self,
        owner: str,
        measure: float,
        observed_at: float,
        idempotency_key: str,
        position: int | None = None,
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
    ) -> None:
        self.firing = "resolved"
        self.transitions += 1
        if position is not None:
            self.last_position = position
