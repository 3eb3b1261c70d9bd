"""What alert delivery passes around: jobs, the retry policy, outcomes and the attempt record.

Plain values, no I/O: the dispatcher makes ``NotificationJob``s, a ``NotificationQueue``
carries them (serialised with ``to_json``), a ``Notifier`` turns one into a
``DeliveryResult``, the ``DeliveryWorker`` records a ``DeliveryAttempt`` and tells the queue
what to do next with a ``Decision``.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal

AttemptStatus = Literal["delivered", "failed", "dead_lettered", "redriven"]
"""What became of an attempt; ``redriven`` is no attempt but the moment a dead letter went
back to the work queue (its key may be attempted again, with a fresh retry budget)."""
ATTEMPT_STATUSES: Final[frozenset[str]] = frozenset(
    {"delivered", "failed", "dead_lettered", "redriven"}
)
Condition = Literal["firing", "resolved"]
ALERT_ENTRY_CONDITIONS: Final[Mapping[str, Condition]] = {
    "alert_triggered": "firing",
    "alert_resolved": "resolved",
}


class WebhookTargetRefused(ValueError):
    """A webhook URL this node must never call (a private or loopback address, unless
    private targets are allowed by configuration)."""


QUEUED_CHANNEL_KINDS: Final[frozenset[str]] = frozenset({"webhook", "email"})
"""Channels that need a job; ``websocket`` alerts reach sockets through the realtime hub."""


@dataclass(frozen=True, slots=True)
class NotificationJob:
    """One notification of one alert transition to one channel of its rule.

    ``idempotency_key`` is the transition's key plus ``":"`` and the channel's index in the
    rule: it names the notification across retries and duplicate enqueues. ``channel`` is the
    rule's channel as configured (``kind`` and ``url``/``secret`` or ``address``); the
    secret never leaves through ``payload``.
    """

    idempotency_key: str
    rule_id: str
    owner: str
    condition: Condition
    measure: float
    observed_at: float
    position: int
    channel_index: int
    channel: Mapping[str, Any]
    rule_name: str = ""
    target: Mapping[str, Any] = field(default_factory=dict)
    rule_condition: Mapping[str, Any] = field(default_factory=dict)
    transition_key: str = ""
    recorded_at: float = 0.0
    attempt: int = 1

    @property
    def channel_kind(self) -> str:
        return str(self.channel.get("kind", ""))

    @property
    def channel_target(self) -> str:
        """Where it goes: the webhook URL or the email address (never the secret)."""
        if self.channel_kind == "webhook":
            return str(self.channel.get("url", ""))
        if self.channel_kind == "email":
            return str(self.channel.get("address", ""))
        return ""

    def next_attempt(self) -> NotificationJob:
        return replace(self, attempt=self.attempt + 1)

    def payload(self) -> dict[str, Any]:
        """What a receiver gets: the WebSocket alert frame's fields, plus the rule."""
        return {
            "type": "alert",
            "alertId": self.rule_id,
            "name": self.rule_name,
            "condition": self.condition,
            "data": {
                "measure": self.measure,
                "idempotencyKey": self.transition_key,
                "target": dict(self.target),
                "rule": dict(self.rule_condition),
            },
            "timestamp": self.observed_at,
            "position": self.position,
            "idempotencyKey": self.idempotency_key,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "idempotency_key": self.idempotency_key,
            "rule_id": self.rule_id,
            "owner": self.owner,
            "condition": self.condition,
            "measure": self.measure,
            "observed_at": self.observed_at,
            "position": self.position,
            "channel_index": self.channel_index,
            "channel": dict(self.channel),
            "rule_name": self.rule_name,
            "target": dict(self.target),
            "rule_condition": dict(self.rule_condition),
            "transition_key": self.transition_key,
            "recorded_at": self.recorded_at,
            "attempt": self.attempt,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> NotificationJob:
        condition = raw["condition"]
        if condition not in ("firing", "resolved"):
            raise ValueError(f"unknown condition {condition!r}")
        return cls(
            idempotency_key=str(raw["idempotency_key"]),
            rule_id=str(raw["rule_id"]),
            owner=str(raw["owner"]),
            condition=condition,
            measure=float(raw["measure"]),
            observed_at=float(raw["observed_at"]),
            position=int(raw["position"]),
            channel_index=int(raw["channel_index"]),
            channel=dict(raw["channel"]),
            rule_name=str(raw.get("rule_name", "")),
            target=dict(raw.get("target") or {}),
            rule_condition=dict(raw.get("rule_condition") or {}),
            transition_key=str(raw.get("transition_key", "")),
            recorded_at=float(raw.get("recorded_at", 0.0)),
            attempt=int(raw.get("attempt", 1)),
        )


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter, then dead letter.

    The wait after failed attempt ``n`` is ``ceiling(n) * (1 - jitter * U[0, 1))`` with
    ``ceiling(n) = min(max_delay, base_delay * factor ** (n - 1))``: never more than the
    ceiling, so a broker can hold attempt ``n``'s retries in a queue whose TTL is the ceiling.
    """

    max_attempts: int = 8
    base_delay: float = 1.0
    factor: float = 2.0
    max_delay: float = 3_600.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.base_delay < 0 or self.max_delay < 0 or self.factor < 1:
            raise ValueError("delays must be non-negative and factor at least 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be between 0 and 1")

    def ceiling(self, attempt: int) -> float:
        """The longest wait after failed attempt ``attempt`` (1-based)."""
        return float(min(self.max_delay, self.base_delay * self.factor ** (attempt - 1)))

    def delay(self, attempt: int, rng: Callable[[], float] = random.random) -> float:
        """The wait after failed attempt ``attempt``, jittered."""
        return self.ceiling(attempt) * (1.0 - self.jitter * rng())

    @property
    def retry_attempts(self) -> range:
        """The failed attempts that are followed by a retry (the last one is not)."""
        return range(1, self.max_attempts)


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """A notifier's answer for one attempt. ``retryable=False``: trying again cannot help
    (refused target, channel not configured), so the job goes straight to the dead letters."""

    ok: bool
    http_status: int | None = None
    error: str | None = None
    retryable: bool = True


@dataclass(frozen=True, slots=True)
class DeliveryAttempt:
    """One recorded attempt (the ``delivery_attempts`` row)."""

    rule_id: str
    owner: str
    idempotency_key: str
    channel_kind: str
    channel_target: str
    attempt: int
    status: AttemptStatus
    started_at: float
    finished_at: float
    condition: str = ""
    position: int = 0
    http_status: int | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "idempotencyKey": self.idempotency_key,
            "channel": {"kind": self.channel_kind, "target": self.channel_target},
            "attempt": self.attempt,
            "status": self.status,
            "condition": self.condition,
            "position": self.position,
            "httpStatus": self.http_status,
            "error": self.error,
            "startedAt": self.started_at,
            "finishedAt": self.finished_at,
        }


@dataclass(frozen=True, slots=True)
class DeliveryProgress:
    """What the delivery record knows about one idempotency key."""

    attempts: int = 0
    settled: bool = False
    """Delivered, or dead-lettered and not redriven since: nothing more to do for this key."""
    redriven_after: int = 0
    """Attempts made before the key's last redrive (0: never redriven): the retry budget
    counts from there."""


def progress_of(statuses: Sequence[str]) -> DeliveryProgress:
    """A key's progress from its recorded statuses, oldest first (one rule for every
    ``DeliveryLog``)."""
    attempts = redriven_after = 0
    delivered = False
    for status in statuses:
        if status == "redriven":
            redriven_after = attempts
        else:
            attempts += 1
            delivered = delivered or status == "delivered"
    settled = delivered or (bool(statuses) and statuses[-1] == "dead_lettered")
    return DeliveryProgress(attempts=attempts, settled=settled, redriven_after=redriven_after)


@dataclass(frozen=True, slots=True)
class AlertTransition:
    """A rule's firing or resolving, as the history read model recorded it."""

    position: int
    kind: str
    """``triggered`` or ``resolved`` (the history table's words)."""
    measure: float
    observed_at: float
    idempotency_key: str | None
    recorded_at: float

    def to_json(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "kind": "fired" if self.kind in ("triggered", "firing") else "resolved",
            "measure": self.measure,
            "observedAt": self.observed_at,
            "idempotencyKey": self.idempotency_key,
            "recordedAt": self.recorded_at,
        }


# -- what the worker tells the queue ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Settled:
    """Acknowledge: delivered now, or already settled before (a duplicate)."""

    reason: str = "delivered"


@dataclass(frozen=True, slots=True)
class Retry:
    """Deliver ``job`` (the next attempt) again after ``delay`` seconds."""

    job: NotificationJob
    delay: float


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Give up: park ``job`` (its last attempt) with the dead letters."""

    job: NotificationJob
    reason: str


Decision = Settled | Retry | DeadLetter
JobHandler = Callable[[NotificationJob], Awaitable[Decision]]


@dataclass(frozen=True, slots=True)
class ParkedJob:
    """A dead letter: the job as its last attempt left it, and why it was given up."""

    job: NotificationJob
    reason: str

    def to_json(self) -> dict[str, Any]:
        job = self.job
        return {
            "idempotencyKey": job.idempotency_key,
            "condition": job.condition,
            "channel": {"kind": job.channel_kind, "target": job.channel_target},
            "attempt": job.attempt,
            "reason": self.reason,
            "measure": job.measure,
            "observedAt": job.observed_at,
            "position": job.position,
        }


PrepareRedrive = Callable[[Sequence[NotificationJob]], Awaitable[None]]
"""Called by ``NotificationQueue.redrive`` with the jobs it is about to put back, before
any of them can reach a worker."""
