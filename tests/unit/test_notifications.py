"""Alert delivery's application half on fakes: jobs from transitions, the worker's decisions,
the retry policy, the in-process queue."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from defi_realtime.adapters.memory_notification_queue import InProcessNotificationQueue
from defi_realtime.application.app import AlertRuleNotFound
from defi_realtime.application.delivery import (
    AlertTransition,
    DeadLetter,
    DeliveryAttempt,
    DeliveryProgress,
    DeliveryResult,
    NotificationJob,
    Retry,
    RetryPolicy,
    Settled,
)
from defi_realtime.application.log import LogBatch, LogEntry
from defi_realtime.application.notifications import (
    DeliveryWorker,
    NotificationDispatcher,
    jobs_for,
)
from defi_realtime.domain.alert_rule import AlertRule

NOW = 1_700_000_000.0
CHANNELS = [
    {"kind": "websocket"},
    {"kind": "webhook", "url": "https://hooks.example/a", "secret": "s3cret"},
    {"kind": "email", "address": "ops@example.com"},
]


def make_rule(channels: list[dict[str, Any]] | None = None) -> AlertRule:
    return AlertRule.create(
        owner="alice",
        target={"token": "coingecko:ethereum"},
        condition={"kind": "threshold", "direction": "below", "value": 100.0},
        channels=channels or CHANNELS,
        cooldown=0,
        name="eth low",
    )


def entry(rule: AlertRule, position: int, kind: str = "alert_triggered") -> LogEntry:
    return LogEntry(
        position=position,
        kind=kind,
        key=str(rule.id),
        data={
            "owner": rule.owner,
            "measure": 90.0,
            "observed_at": NOW,
            "idempotency_key": f"{rule.id}:1",
        },
        recorded_at=NOW,
    )


class FakePositions:
    def __init__(self) -> None:
        self.saved: dict[str, int] = {}

    async def load(self, name: str) -> int:
        return self.saved.get(name, 0)

    async def save(self, name: str, position: int) -> None:
        self.saved[name] = position


@dataclass
class FakeQueue:
    jobs: list[NotificationJob] = field(default_factory=list)
    failures: int = 0

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def consume(self, handler: Any) -> None: ...

    async def enqueue(self, jobs: Sequence[NotificationJob]) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("broker down")
        self.jobs.extend(jobs)


class FakeDeliveryLog:
    def __init__(self) -> None:
        self.rows: list[DeliveryAttempt] = []
        self.journal: dict[str, NotificationJob] = {}

    def record(self, attempt: DeliveryAttempt) -> None:
        self.rows.append(attempt)
        if attempt.status in ("delivered", "dead_lettered"):
            self.journal.pop(attempt.idempotency_key, None)

    def record_pending(self, jobs: Sequence[NotificationJob]) -> None:
        for job in jobs:
            if not self.progress(job.idempotency_key).settled:
                self.journal.setdefault(job.idempotency_key, job)

    def pending(self) -> list[NotificationJob]:
        return list(self.journal.values())

    def progress(self, idempotency_key: str) -> DeliveryProgress:
        mine = [row for row in self.rows if row.idempotency_key == idempotency_key]
        return DeliveryProgress(
            attempts=len(mine),
            settled=any(row.status in ("delivered", "dead_lettered") for row in mine),
        )

    def attempts(self, rule_id: str, limit: int = 1_000) -> list[DeliveryAttempt]:
        return [row for row in self.rows if row.rule_id == rule_id][:limit]

    def transitions(self, rule_id: str, limit: int = 1_000) -> list[AlertTransition]:
        return []

    def close(self) -> None: ...


class FakeNotifier:
    def __init__(self, *results: DeliveryResult) -> None:
        self.results = list(results)
        self.sent: list[NotificationJob] = []

    async def send(self, job: NotificationJob) -> DeliveryResult:
        self.sent.append(job)
        return self.results.pop(0) if len(self.results) > 1 else self.results[0]


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not reached within {timeout}s")
        await asyncio.sleep(0.01)


OK = DeliveryResult(ok=True, http_status=200)
FAIL = DeliveryResult(ok=False, http_status=500, error="HTTP 500")


# -- jobs ---------------------------------------------------------------------------------


def test_one_job_per_queued_channel_keyed_by_transition_and_index() -> None:
    rule = make_rule()
    jobs = jobs_for(entry(rule, 7), rule)
    assert [job.idempotency_key for job in jobs] == [f"{rule.id}:1:1", f"{rule.id}:1:2"]
    assert [job.channel_kind for job in jobs] == ["webhook", "email"]
    assert all(job.condition == "firing" and job.position == 7 for job in jobs)
    # The secret stays in the event store; the payload carries no channel at all.
    assert "secret" not in jobs[0].channel
    assert "s3cret" not in str(jobs[0].to_json())
    assert jobs[0].payload()["alertId"] == str(rule.id)
    assert NotificationJob.from_json(jobs[0].to_json()) == jobs[0]


async def test_dispatcher_enqueues_then_saves_its_position() -> None:
    rule = make_rule()
    queue = FakeQueue(failures=1)  # the first enqueue fails: retried, not skipped
    positions = FakePositions()

    def load(rule_id: uuid.UUID, owner: str) -> AlertRule:
        assert (rule_id, owner) == (rule.id, "alice")
        return rule

    dispatcher = NotificationDispatcher(load, queue, positions, clock=lambda: NOW)
    metric = LogEntry(8, "metric", "aave", {"metric": "tvl", "value": 1.0}, NOW)
    resolved = entry(rule, 9, "alert_resolved")
    await dispatcher.apply(LogBatch(after=6, last=10, entries=(entry(rule, 7), metric, resolved)))
    assert [job.condition for job in queue.jobs] == ["firing", "firing", "resolved", "resolved"]
    assert positions.saved == {"notifications": 10}


async def test_dispatcher_skips_deleted_rules_and_stale_transitions() -> None:
    rule = make_rule()
    queue = FakeQueue()

    def gone(rule_id: uuid.UUID, owner: str) -> AlertRule:
        raise AlertRuleNotFound(rule_id)

    dispatcher = NotificationDispatcher(gone, queue, FakePositions(), clock=lambda: NOW)
    await dispatcher.apply(LogBatch(after=0, last=1, entries=(entry(rule, 1),)))
    stale = NotificationDispatcher(lambda *_: rule, queue, FakePositions(), clock=lambda: NOW * 2)
    await stale.apply(LogBatch(after=0, last=1, entries=(entry(rule, 1),)))
    assert queue.jobs == []


async def test_dispatcher_with_a_journal_resumes_the_unsettled_jobs() -> None:
    rule = make_rule()
    journal = FakeDeliveryLog()
    lost = FakeQueue()
    first = NotificationDispatcher(
        lambda *_: rule, lost, FakePositions(), clock=lambda: NOW, journal=journal
    )
    await first.apply(LogBatch(after=0, last=1, entries=(entry(rule, 1),)))
    webhook, mail = lost.jobs
    assert journal.pending() == [webhook, mail]
    # The webhook was delivered, then the process stopped with the email still queued.
    await DeliveryWorker({"webhook": FakeNotifier(OK)}, journal, RetryPolicy()).handle(webhook)
    queue = FakeQueue()
    restarted = NotificationDispatcher(
        lambda *_: rule, queue, FakePositions(), clock=lambda: NOW, journal=journal
    )
    assert await restarted.resume() == 1
    assert queue.jobs == [mail]
    # Without a journal (a durable broker) there is nothing to resume.
    assert await NotificationDispatcher(lambda *_: rule, queue, FakePositions()).resume() == 0


# -- the worker -------------------------------------------------------------------------------


def webhook_job(rule: AlertRule) -> NotificationJob:
    return jobs_for(entry(rule, 1), rule)[0]


async def test_worker_retries_with_backoff_then_dead_letters() -> None:
    rule = make_rule()
    log = FakeDeliveryLog()
    notifier = FakeNotifier(FAIL)
    policy = RetryPolicy(max_attempts=3, base_delay=1.0, factor=2.0, jitter=0.5)
    worker = DeliveryWorker({"webhook": notifier}, log, policy, load_rule=lambda *_: rule)
    job = webhook_job(rule)
    first = await worker.handle(job)
    assert isinstance(first, Retry)
    assert first.job.attempt == 2
    assert 0.5 <= first.delay <= 1.0
    second = await worker.handle(first.job)
    assert isinstance(second, Retry)
    assert 1.0 <= second.delay <= 2.0
    third = await worker.handle(second.job)
    assert isinstance(third, DeadLetter)
    assert [row.status for row in log.rows] == ["failed", "failed", "dead_lettered"]
    assert [row.attempt for row in log.rows] == [1, 2, 3]
    # The notifier got the secret, read from the rule at delivery.
    assert notifier.sent[0].channel["secret"] == "s3cret"
    # Settled: a duplicate of the job is acknowledged without an attempt.
    assert await worker.handle(job) == Settled("duplicate")
    assert len(notifier.sent) == 3


async def test_worker_numbers_attempts_from_the_record() -> None:
    rule = make_rule()
    log = FakeDeliveryLog()
    worker = DeliveryWorker({"webhook": FakeNotifier(FAIL)}, log, RetryPolicy())
    job = webhook_job(rule)
    await worker.handle(job)
    await worker.handle(job)  # a redelivery of attempt 1 after a crash
    assert [row.attempt for row in log.rows] == [1, 2]


async def test_permanent_failures_and_deleted_rules_dead_letter_at_once() -> None:
    rule = make_rule()
    log = FakeDeliveryLog()
    refused = DeliveryResult(ok=False, error="refused", retryable=False)
    worker = DeliveryWorker({"webhook": FakeNotifier(refused)}, log, RetryPolicy())
    assert isinstance(await worker.handle(webhook_job(rule)), DeadLetter)

    def gone(rule_id: uuid.UUID, owner: str) -> AlertRule:
        raise AlertRuleNotFound(rule_id)

    notifier = FakeNotifier(OK)
    deleted = DeliveryWorker(
        {"webhook": notifier}, FakeDeliveryLog(), RetryPolicy(), load_rule=gone
    )
    assert isinstance(await deleted.handle(webhook_job(rule)), DeadLetter)
    assert notifier.sent == []


def test_retry_policy_stays_under_its_ceiling() -> None:
    policy = RetryPolicy(max_attempts=5, base_delay=0.5, factor=3.0, max_delay=10.0, jitter=1.0)
    assert [policy.ceiling(n) for n in policy.retry_attempts] == [0.5, 1.5, 4.5, 10.0]
    for n in policy.retry_attempts:
        assert policy.delay(n, rng=lambda: 0.0) == policy.ceiling(n)
        assert 0.0 <= policy.delay(n) <= policy.ceiling(n)
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)


async def test_in_process_queue_retries_and_dead_letters() -> None:
    rule = make_rule()
    log = FakeDeliveryLog()
    notifier = FakeNotifier(FAIL, FAIL, OK)
    policy = RetryPolicy(max_attempts=5, base_delay=0.01, jitter=0.5)
    queue = InProcessNotificationQueue(concurrency=2)
    queue.consume(DeliveryWorker({"webhook": notifier}, log, policy).handle)
    await queue.start()
    try:
        await queue.enqueue([webhook_job(rule)])
        await eventually(
            lambda: bool(log.rows) and log.rows[-1].status == "delivered" and not queue.pending
        )
        assert [row.status for row in log.rows] == ["failed", "failed", "delivered"]
        always = DeliveryWorker({"webhook": FakeNotifier(FAIL)}, FakeDeliveryLog(), policy)
        dead_queue = InProcessNotificationQueue()
        dead_queue.consume(always.handle)
        await dead_queue.start()
        try:
            await dead_queue.enqueue([webhook_job(rule)])
            await eventually(lambda: bool(dead_queue.dead_letters))
            job, reason = dead_queue.dead_letters[0]
            assert (job.attempt, reason) == (5, "HTTP 500")
        finally:
            await dead_queue.stop()
    finally:
        await queue.stop()


async def test_in_process_queue_holds_one_copy_per_key() -> None:
    rule = make_rule()
    log = FakeDeliveryLog()
    notifier = FakeNotifier(FAIL, OK)
    policy = RetryPolicy(base_delay=0.2, jitter=0.0)
    queue = InProcessNotificationQueue(concurrency=2)
    queue.consume(DeliveryWorker({"webhook": notifier}, log, policy).handle)
    await queue.start()
    try:
        job = webhook_job(rule)
        await queue.enqueue([job, job])
        await eventually(lambda: len(log.rows) == 1)
        await queue.enqueue([job])  # e.g. resumed from the journal while it waits to retry
        await eventually(lambda: bool(log.rows) and log.rows[-1].status == "delivered")
        await asyncio.sleep(0.3)
        assert [row.status for row in log.rows] == ["failed", "delivered"]
        assert len(notifier.sent) == 2
        assert queue.pending == 0
    finally:
        await queue.stop()
