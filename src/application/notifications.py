"""Alert notifications: from the log's alert transitions to delivered messages.

Two halves, joined by a ``NotificationQueue``:

* ``NotificationDispatcher`` follows the log like a projection (tracked position in a
  ``PositionStore``; driven by a ``ProjectionRunner`` under a ``NodeFollower``). Each
  ``alert_triggered`` / ``alert_resolved`` entry becomes one job per queued channel of the
  rule (webhook, email; WebSocket alerts already reach sockets through the realtime hub).
  Jobs are enqueued before the position is saved: a crash in between enqueues them again
  (at-least-once), and the worker drops what is already settled. Jobs carry the channel
  without its secret. With a queue that dies with its process (the in-process one), the
  dispatcher journals the jobs in the ``DeliveryLog`` before enqueueing them and, on start,
  ``resume`` enqueues every journaled job not settled yet (ADR 0011).
* ``DeliveryWorker`` makes one attempt per job it is handed, records it in the
  ``DeliveryLog`` and decides what comes next (settled, retry after a backoff, dead letter).
  It reads the channel's secret from the rule itself, at delivery.
  The queue acknowledges only after that, so the record is never behind the queue.

``DeadLetters`` lists a rule's dead letters and redrives them: back on the work queue under
the same idempotency keys, with a fresh retry budget (ADR 0037).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any
from uuid import UUID

from ..domain.alert_rule import AlertRule
from ..domain.alert_values import Channel
from .app import AlertRuleNotFound
from .delivery import (
    ALERT_ENTRY_CONDITIONS,
    QUEUED_CHANNEL_KINDS,
    AttemptStatus,
    DeadLetter,
    Decision,
    DeliveryAttempt,
    DeliveryResult,
    NotificationJob,
    ParkedJob,
    Retry,
    RetryPolicy,
    Settled,
)
from .log import LogBatch, LogEntry
from .ports import DeliveryLog, NotificationQueue, Notifier, PositionStore
from .telemetry import NO_TELEMETRY, Telemetry

log = logging.getLogger(__name__)

DISPATCHER_NAME = "notifications"
DEFAULT_MAX_AGE = 86_400.0
"""Transitions recorded longer ago than this are not notified (e.g. a dispatcher started for
the first time on a store with years of alerts): a day-old alert is noise, not news."""

RuleLoader = Callable[[UUID, str], AlertRule]


def public_channel(channel: Channel) -> dict[str, Any]:
    """A channel without its secret: jobs travel through the broker and its dead letters,
    and a webhook secret never leaves the event store (the worker reads it at delivery)."""
    return channel.model_dump(exclude_none=True, exclude={"secret"})


def jobs_for(entry: LogEntry, rule: AlertRule) -> list[NotificationJob]:
    """One job per queued channel of ``rule`` for the transition ``entry``."""
    data = entry.data
    transition_key = str(data.get("idempotency_key") or f"{entry.key}@{entry.position}")
    jobs = []
    for index, channel in enumerate(rule.channels):
        if channel.kind not in QUEUED_CHANNEL_KINDS:
            continue
        jobs.append(
            NotificationJob(
                idempotency_key=f"{transition_key}:{index}",
                rule_id=entry.key,
                owner=str(data.get("owner") or rule.owner),
                condition=ALERT_ENTRY_CONDITIONS[entry.kind],
                measure=float(data["measure"]),
                observed_at=float(data["observed_at"]),
                position=entry.position,
                channel_index=index,
                channel=public_channel(channel),
                rule_name=rule.name,
                target=rule.target.model_dump(),
                rule_condition=rule.condition.model_dump(),
                transition_key=transition_key,
                recorded_at=entry.recorded_at,
            )
        )
    return jobs


class NotificationDispatcher:
    """Follows the log; turns every alert transition into notification jobs.

    Use it as a projection: ``position`` and ``apply`` plug into a ``ProjectionRunner``.
    Rules are read fresh (``load_rule``, e.g. ``DefiRealtime.get_alert_rule``) so that the
    channels are the rule's current ones; a rule deleted meanwhile notifies nobody.

    ``journal``: where to keep the jobs until they settle when ``queue`` does not keep them
    itself across a restart (the in-process queue); None for a durable broker.
    """

    def __init__(
        self,
        load_rule: RuleLoader,
        queue: NotificationQueue,
        positions: PositionStore,
        *,
        name: str = DISPATCHER_NAME,
        max_age: float | None = DEFAULT_MAX_AGE,
        clock: Callable[[], float] = time.time,
        journal: DeliveryLog | None = None,
    ) -> None:
        self.load_rule = load_rule
        self.queue = queue
        self.positions = positions
        self.journal = journal
        self.name = name
        self.max_age = max_age
        self.clock = clock
        self.enqueued = 0

    async def position(self) -> int:
        return await self.positions.load(self.name)

    async def resume(self) -> int:
        """Enqueue again every journaled job that is not settled (call on start, before
        following the log): the queue that held them went with the previous process.
        Returns how many; 0 without a journal. The worker still drops a key that settled
        meanwhile, and the attempt numbers continue from the delivery record."""
        if self.journal is None:
            return 0
        jobs = await asyncio.to_thread(self.journal.pending)
        if jobs:
            log.info("re-enqueueing %d unsettled notification(s)", len(jobs))
            await self._enqueue(jobs)
            self.enqueued += len(jobs)
        return len(jobs)

    async def apply(self, batch: LogBatch) -> bool:
        """Enqueue the jobs of ``batch``'s alert entries, then save the position."""
        alerts = [entry for entry in batch.entries if entry.kind in ALERT_ENTRY_CONDITIONS]
        jobs: list[NotificationJob] = []
        if alerts:
            jobs = await asyncio.to_thread(self._jobs, alerts)
        if jobs:
            if self.journal is not None:
                # Durable before the queue has them: a crash after this enqueues them again
                # through ``resume``, whatever the position says.
                await asyncio.to_thread(self.journal.record_pending, jobs)
            await self._enqueue(jobs)
            self.enqueued += len(jobs)
        # After the enqueue was confirmed: a crash in between dispatches this batch again.
        await self.positions.save(self.name, batch.last)
        return bool(jobs)

    async def _enqueue(self, jobs: list[NotificationJob]) -> None:
        # Keep trying (e.g. through a broker restart) rather than move on: nothing after
        # this batch may be dispatched before it, or its position would be saved past it.
        delay = 0.2
        while True:
            try:
                await self.queue.enqueue(jobs)
                return
            except (ConnectionError, RuntimeError) as error:
                log.warning("enqueueing %d notification(s) failed (%s); retrying", len(jobs), error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _jobs(self, entries: list[LogEntry]) -> list[NotificationJob]:
        now = self.clock()
        rules: dict[str, AlertRule | None] = {}
        jobs: list[NotificationJob] = []
        for entry in entries:
            if self.max_age is not None and now - entry.recorded_at > self.max_age:
                log.warning(
                    "not notifying %s of rule %s at %d: recorded %.0fs ago",
                    entry.kind,
                    entry.key,
                    entry.position,
                    now - entry.recorded_at,
                )
                continue
            if entry.key not in rules:
                rules[entry.key] = self._rule(entry)
            rule = rules[entry.key]
            if rule is not None:
                jobs.extend(jobs_for(entry, rule))
        return jobs

    def _rule(self, entry: LogEntry) -> AlertRule | None:
        try:
            return self.load_rule(UUID(entry.key), str(entry.data.get("owner") or ""))
        except (AlertRuleNotFound, ValueError):
            log.info(
                "rule %s is gone: its %s at %d notifies nobody",
                entry.key,
                entry.kind,
                entry.position,
            )
            return None


class DeliveryWorker:
    """Makes one attempt per job, records it, and tells the queue what comes next.

    Duplicates (a job enqueued twice, a redelivery after a crash) are suppressed here: a key
    the delivery record already shows delivered or dead-lettered is acknowledged without an
    attempt. The attempt number is the record's count plus one, so an attempt interrupted
    before it was recorded is numbered again, and one recorded twice cannot happen.
    """

    def __init__(
        self,
        notifiers: Mapping[str, Notifier],
        delivery_log: DeliveryLog,
        policy: RetryPolicy,
        *,
        load_rule: RuleLoader | None = None,
        rule_ttl: float = 5.0,
        clock: Callable[[], float] = time.time,
        telemetry: Telemetry = NO_TELEMETRY,
    ) -> None:
        self.notifiers = dict(notifiers)
        self.telemetry = telemetry
        self.delivery_log = delivery_log
        self.policy = policy
        self.load_rule = load_rule
        self.rule_ttl = rule_ttl
        self.clock = clock
        self._rules: dict[str, tuple[float, AlertRule | None]] = {}

    async def handle(self, job: NotificationJob) -> Decision:
        progress = await asyncio.to_thread(self.delivery_log.progress, job.idempotency_key)
        if progress.settled:
            return Settled("duplicate")
        # Numbered from the record; the retry budget (and the backoff) counts from the
        # key's last redrive, if any: a redriven dead letter gets a fresh round.
        number = max(job.attempt + progress.redriven_after, progress.attempts + 1)
        round_attempt = number - progress.redriven_after
        job = replace(job, attempt=number)
        started = self.clock()
        channel = await self._current_channel(job)
        if channel is None:
            result = DeliveryResult(
                ok=False, error="the rule or this channel was deleted", retryable=False
            )
        else:
            result = await self._send(replace(job, channel=channel))
        status: AttemptStatus
        decision: Decision
        if result.ok:
            status, decision = "delivered", Settled()
        elif not result.retryable or round_attempt >= self.policy.max_attempts:
            reason = result.error or f"HTTP {result.http_status}"
            status = "dead_lettered"
            decision = DeadLetter(replace(job, attempt=round_attempt), reason)
        else:
            status = "failed"
            # The queue sees the round's attempt (it picks the delay queue by it).
            decision = Retry(
                replace(job, attempt=round_attempt + 1), self.policy.delay(round_attempt)
            )
        attempt = DeliveryAttempt(
            rule_id=job.rule_id,
            owner=job.owner,
            idempotency_key=job.idempotency_key,
            channel_kind=job.channel_kind,
            channel_target=job.channel_target,
            attempt=job.attempt,
            status=status,
            started_at=started,
            finished_at=self.clock(),
            condition=job.condition,
            position=job.position,
            http_status=result.http_status,
            error=result.error,
        )
        # Recorded before the queue acknowledges (the caller acks after we return).
        await asyncio.to_thread(self.delivery_log.record, attempt)
        self.telemetry.notification_attempted(job.channel_kind, status)
        if status != "delivered":
            log.info(
                "notification %s attempt %d %s: %s",
                job.idempotency_key,
                job.attempt,
                status,
                result.error or result.http_status,
            )
        return decision

    async def _current_channel(self, job: NotificationJob) -> dict[str, Any] | None:
        """The job's channel as the rule has it now (secret included), or None when the
        rule or the channel is gone. Without a rule loader: the job's own channel."""
        if self.load_rule is None:
            return dict(job.channel)
        now = time.monotonic()
        cached = self._rules.get(job.rule_id)
        if cached is None or now - cached[0] > self.rule_ttl:
            rule = await asyncio.to_thread(self._load_rule, job)
            if len(self._rules) > 10_000:
                self._rules.clear()
            cached = self._rules[job.rule_id] = (now, rule)
        rule = cached[1]
        if rule is None:
            return None
        # By index first; the rule's channels may have changed since the transition, so
        # fall back to the channel with the same kind and destination.
        candidates = list(rule.channels)
        if job.channel_index < len(candidates):
            candidates.insert(0, candidates[job.channel_index])
        for channel in candidates:
            if public_channel(channel) == dict(job.channel):
                return channel.model_dump(exclude_none=True)
        return None

    def _load_rule(self, job: NotificationJob) -> AlertRule | None:
        assert self.load_rule is not None
        try:
            return self.load_rule(UUID(job.rule_id), job.owner)
        except (AlertRuleNotFound, ValueError):
            return None

    async def _send(self, job: NotificationJob) -> DeliveryResult:
        notifier = self.notifiers.get(job.channel_kind)
        if notifier is None:
            return DeliveryResult(
                ok=False, error=f"no notifier for {job.channel_kind!r} channels", retryable=False
            )
        try:
            return await notifier.send(job)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # a notifier bug must not kill the worker
            log.exception("notifier %r failed on %s", notifier, job.idempotency_key)
            return DeliveryResult(ok=False, error=f"{type(error).__name__}: {error}")


class DeadLetters:
    """A rule's dead letters: listed, and redriven (put back on the work queue under their
    idempotency keys, with a fresh retry budget).

    A redrive records a ``redriven`` row per key in the delivery record before the queue
    takes the jobs back, so that the worker, which drops settled keys, attempts them again;
    with a ``journal`` (a queue that dies with its process) the jobs are journaled again
    too, so a redriven job survives a restart like any other."""

    def __init__(
        self,
        queue: NotificationQueue,
        delivery_log: DeliveryLog,
        *,
        journal: DeliveryLog | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.queue = queue
        self.delivery_log = delivery_log
        self.journal = journal
        self.clock = clock

    async def of_rule(self, rule_id: str, owner: str | None = None) -> list[ParkedJob]:
        """The dead letters of ``rule_id`` (and of ``owner``, when given)."""
        parked = await self.queue.dead_letters_of(rule_id)
        return [entry for entry in parked if owner is None or entry.job.owner == owner]

    async def redrive(self, rule_id: str, owner: str | None = None) -> list[NotificationJob]:
        """Redrive the dead letters of ``rule_id`` (and of ``owner``, when given)."""

        async def prepare(jobs: Sequence[NotificationJob]) -> None:
            if owner is not None and any(job.owner != owner for job in jobs):
                raise PermissionError(f"rule {rule_id} has dead letters of another owner")
            await asyncio.to_thread(self._mark, jobs)
            log.info("redriving %d dead letter(s) of rule %s", len(jobs), rule_id)

        return await self.queue.redrive(rule_id, prepare)

    def _mark(self, jobs: Sequence[NotificationJob]) -> None:
        now = self.clock()
        for job in jobs:
            progress = self.delivery_log.progress(job.idempotency_key)
            self.delivery_log.record(
                DeliveryAttempt(
                    rule_id=job.rule_id,
                    owner=job.owner,
                    idempotency_key=job.idempotency_key,
                    channel_kind=job.channel_kind,
                    channel_target=job.channel_target,
                    attempt=progress.attempts,
                    status="redriven",
                    started_at=now,
                    finished_at=now,
                    condition=job.condition,
                    position=job.position,
                )
            )
        if self.journal is not None:
            self.journal.record_pending(jobs)


def summarise(attempts: list[DeliveryAttempt]) -> dict[str, Any]:
    """Per idempotency key: the last status and the number of attempts (a redrive is no
    attempt)."""
    summary: dict[str, dict[str, Any]] = {}
    for attempt in attempts:
        entry = summary.setdefault(attempt.idempotency_key, {"attempts": 0, "status": None})
        if attempt.status != "redriven":
            entry["attempts"] += 1
        entry["status"] = attempt.status
    return summary
