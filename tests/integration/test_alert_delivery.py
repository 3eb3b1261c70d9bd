"""Alert delivery against the real services: PostgreSQL (event store, delivery record),
RabbitMQ (work queue, delay queues, dead letters), a real HTTP receiver and a real SMTP
server (aiosmtpd).

Triggers are recorded through the domain (``rule.observe`` + ``app.save``) so that these
tests exercise delivery alone; the dispatcher reads them from the event log like in
production. Every deployment gets its own database and queue names, deleted afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import hashlib
import hmac
import itertools
import json
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import pytest
from aiosmtpd.controller import Controller

from defi_realtime.adapters.event_store_log import EventStoreLog
from defi_realtime.adapters.memory_notification_queue import InProcessNotificationQueue
from defi_realtime.adapters.position_stores import SqlPositionStore
from defi_realtime.adapters.rabbit_notification_queue import RabbitNotificationQueue
from defi_realtime.adapters.smtp_email_notifier import SmtpEmailNotifier
from defi_realtime.adapters.sql_delivery_log import SqlDeliveryLog
from defi_realtime.adapters.webhook_notifier import (
    SsrfRefused,
    WebhookNotifier,
    check_public_address,
)
from defi_realtime.application.app import DefiRealtime
from defi_realtime.application.delivery import (
    AttemptStatus,
    DeliveryAttempt,
    NotificationJob,
    RetryPolicy,
)
from defi_realtime.application.following import ProjectionRunner
from defi_realtime.application.ingest import build_batch
from defi_realtime.application.notifications import (
    DeadLetters,
    DeliveryWorker,
    NotificationDispatcher,
)
from defi_realtime.application.ports import NotificationQueue, Notifier
from defi_realtime.entrypoints.settings import Settings
from tests.integration.cluster import Stack, free_port, stack, wait_until
from tests.webhook_receiver import WebhookReceiver

TOKEN = "coingecko:ethereum"
SECRET = "whsec_test_secret"
T0 = 1_700_000_000.0
FAST = RetryPolicy(max_attempts=4, base_delay=0.05, factor=2.0, max_delay=1.0, jitter=0.2)
DELIVERY_TIMEOUT = 15.0

pytestmark = pytest.mark.timeout(120)


# -- helpers ----------------------------------------------------------------------------------


def create_rule(app: DefiRealtime, channels: list[dict[str, Any]], owner: str = "alice") -> str:
    # A token is known once it has a price (above the threshold: no firing).
    app.ingest([build_batch(prices=[{"token": TOKEN, "price": 150.0, "observed_at": T0 - 60}])])
    rule_id = app.create_alert_rule(
        owner=owner,
        target={"token": TOKEN},
        condition={"kind": "threshold", "direction": "below", "value": 100.0},
        channels=channels,
        cooldown=0,
        name="eth below 100",
    )
    return str(rule_id)


def fire(app: DefiRealtime, rule_id: str, measure: float = 90.0, owner: str = "alice") -> None:
    """Record a transition the way the evaluator does: observe, then save."""
    rule = app.get_alert_rule(uuid.UUID(rule_id), owner)
    assert rule.observe(measure, T0 + rule.transitions) is not None
    app.save(rule)


def statuses(rows: list[DeliveryAttempt]) -> list[str]:
    return [row.status for row in rows]


async def wait_attempts(
    log: SqlDeliveryLog, rule_id: str, last_status: str, timeout: float = DELIVERY_TIMEOUT
) -> list[DeliveryAttempt]:
    rows: list[DeliveryAttempt] = await wait_until(
        lambda: log.attempts(rule_id),
        lambda rows: bool(rows) and rows[-1].status == last_status,
        timeout,
        f"a {last_status} attempt",
    )
    return rows


@pytest.fixture
async def deployment(tmp_path: Path) -> AsyncIterator[Stack]:
    async with stack(tmp_path) as deployed:
        yield deployed


@pytest.fixture
def receiver_factory() -> Iterator[list[WebhookReceiver]]:
    receivers: list[WebhookReceiver] = []
    yield receivers
    for receiver in receivers:
        receiver.close()


@pytest.fixture
async def topologies(deployment: Stack) -> AsyncIterator[list[RabbitNotificationQueue]]:
    """Queues declared by a test, deleted afterwards (by name, with their exchange)."""
    declared: list[RabbitNotificationQueue] = []
    yield declared
    connection = await aio_pika.connect(deployment.amqp_url, timeout=10)
    try:
        channel = await connection.channel()
        for queue in declared:
            for name in queue.queue_names:
                await channel.queue_delete(name)
            await channel.exchange_delete(queue.name)
    finally:
        await connection.close()


@dataclass
class Delivery:
    """One deployment's dispatcher and worker, in this process."""

    app: DefiRealtime
    queue: RabbitNotificationQueue
    log: SqlDeliveryLog
    runner: ProjectionRunner

    async def dispatch(self) -> None:
        """Follow the log to its head (what the dispatcher's follower does live)."""
        await self.runner.catch_up()


@contextlib.asynccontextmanager
async def delivering(
    deployment: Stack, topologies: list[RabbitNotificationQueue], policy: RetryPolicy = FAST
) -> AsyncIterator[Delivery]:
    app = deployment.app()
    url = deployment.settings.history_url
    log = SqlDeliveryLog(url)
    positions = SqlPositionStore(url)
    async with httpx.AsyncClient() as client:
        notifier = WebhookNotifier(client, timeout=5.0, allow_private=True)
        queue = RabbitNotificationQueue(
            deployment.amqp_url, policy, f"{deployment.exchange}.notifications"
        )
        topologies.append(queue)
        worker = DeliveryWorker({"webhook": notifier}, log, policy, load_rule=app.get_alert_rule)
        queue.consume(worker.handle)
        await queue.start()
        dispatcher = NotificationDispatcher(app.get_alert_rule, queue, positions)
        runner = ProjectionRunner(
            "notifications", EventStoreLog(app), dispatcher.position, dispatcher.apply
        )
        try:
            yield Delivery(app, queue, log, runner)
        finally:
            await queue.stop()
            log.close()
            positions.close()


async def queue_depth(deployment: Stack, name: str) -> int:
    connection = await aio_pika.connect(deployment.amqp_url, timeout=10)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(name, passive=True)
        count = queue.declaration_result.message_count
        return int(count or 0)
    finally:
        await connection.close()


# -- retries and dead letters (RabbitMQ + PostgreSQL) ----------------------------------------


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.rabbitmq
async def test_a_receiver_failing_three_times_gets_exactly_one_delivery(
    deployment: Stack,
    topologies: list[RabbitNotificationQueue],
    receiver_factory: list[WebhookReceiver],
) -> None:
    receiver = WebhookReceiver(lambda n: 500 if n <= 3 else 200)
    receiver_factory.append(receiver)
    async with delivering(deployment, topologies) as delivery:
        rule_id = create_rule(delivery.app, [{"kind": "webhook", "url": receiver.url}])
        fire(delivery.app, rule_id)
        await delivery.dispatch()
        rows = await wait_attempts(delivery.log, rule_id, "delivered")
        await asyncio.sleep(0.3)  # nothing more arrives
    assert statuses(rows) == ["failed", "failed", "failed", "delivered"]
    assert [row.attempt for row in rows] == [1, 2, 3, 4]
    assert [row.http_status for row in rows] == [500, 500, 500, 200]
    assert len(receiver.requests) == 4
    assert len(receiver.successes) == 1
    keys = {request.headers["x-idempotency-key"] for request in receiver.requests}
    assert keys == {f"{rule_id}:1:0"}
    # Exponential backoff: each wait at least the jittered floor of its ceiling.
    arrivals = [request.arrived_at for request in receiver.requests]
    for attempt, (before, after) in enumerate(itertools.pairwise(arrivals), 1):
        assert after - before >= FAST.ceiling(attempt) * (1 - FAST.jitter) * 0.9
    assert await queue_depth(deployment, delivery.queue.work_queue) == 0
    assert await queue_depth(deployment, delivery.queue.dead_letter_queue) == 0


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.rabbitmq
async def test_a_receiver_that_always_fails_ends_in_the_dead_letter_queue(
    deployment: Stack,
    topologies: list[RabbitNotificationQueue],
    receiver_factory: list[WebhookReceiver],
) -> None:
    receiver = WebhookReceiver(lambda _n: 503)
    receiver_factory.append(receiver)
    policy = RetryPolicy(max_attempts=3, base_delay=0.05, max_delay=1.0, jitter=0.2)
    async with delivering(deployment, topologies, policy) as delivery:
        rule_id = create_rule(delivery.app, [{"kind": "webhook", "url": receiver.url}])
        fire(delivery.app, rule_id)
        await delivery.dispatch()
        rows = await wait_attempts(delivery.log, rule_id, "dead_lettered")
        dead = delivery.queue.dead_letter_queue
        await wait_until(
            lambda: queue_depth(deployment, dead), lambda n: n == 1, 5.0, "a dead letter"
        )
        connection = await aio_pika.connect(deployment.amqp_url, timeout=10)
        try:
            channel = await connection.channel()
            queue = await channel.declare_queue(dead, passive=True)
            message = await queue.get(timeout=5)
            assert message is not None
            await message.ack()
        finally:
            await connection.close()
        for name in delivery.queue.queue_names:
            assert await queue_depth(deployment, name) == 0, name
    assert statuses(rows) == ["failed", "failed", "dead_lettered"]
    assert [row.http_status for row in rows] == [503, 503, 503]
    assert len(receiver.requests) == 3
    job = json.loads(message.body)
    assert job["idempotency_key"] == f"{rule_id}:1:0"
    assert job["attempt"] == 3
    assert (message.headers or {}).get("x-reason") == "HTTP 503"
    assert "secret" not in job["channel"]


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.rabbitmq
async def test_the_signature_verifies_with_the_rules_secret(
    deployment: Stack,
    topologies: list[RabbitNotificationQueue],
    receiver_factory: list[WebhookReceiver],
) -> None:
    receiver = WebhookReceiver()
    receiver_factory.append(receiver)
    async with delivering(deployment, topologies) as delivery:
        channel = {"kind": "webhook", "url": receiver.url, "secret": SECRET}
        rule_id = create_rule(delivery.app, [channel])
        fire(delivery.app, rule_id, measure=42.5)
        await delivery.dispatch()
        await wait_attempts(delivery.log, rule_id, "delivered")
    [request] = receiver.requests
    timestamp = request.headers["x-signature-timestamp"]
    expected = hmac.new(
        SECRET.encode(), timestamp.encode() + b"." + request.body, hashlib.sha256
    ).hexdigest()
    assert hmac.compare_digest(request.headers["x-signature"], expected)
    wrong = hmac.new(b"other", timestamp.encode() + b"." + request.body, hashlib.sha256)
    assert request.headers["x-signature"] != wrong.hexdigest()
    payload = json.loads(request.body)
    assert payload["alertId"] == rule_id
    assert payload["condition"] == "firing"
    assert payload["data"]["measure"] == 42.5
    assert payload["idempotencyKey"] == request.headers["x-idempotency-key"]
    assert SECRET not in request.body.decode()


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.rabbitmq
async def test_a_worker_killed_mid_delivery_delivers_after_restart(
    deployment: Stack,
    topologies: list[RabbitNotificationQueue],
    receiver_factory: list[WebhookReceiver],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The first request hangs (the worker is killed while waiting for it); later ones
    # are answered at once.
    receiver = WebhookReceiver(lambda n: (200, 30.0) if n == 1 else 200)
    receiver_factory.append(receiver)
    name = f"{deployment.exchange}.notifications"
    env = {
        "AMQP_NOTIFICATIONS": name,
        "ALLOW_PRIVATE_WEBHOOKS": "true",
        "NOTIFY_BACKOFF_BASE": "0.05",
        "WEBHOOK_TIMEOUT": "60",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    worker_settings = Settings()
    topologies.append(
        RabbitNotificationQueue(
            deployment.amqp_url,
            RetryPolicy(
                max_attempts=worker_settings.notify_max_attempts,
                base_delay=worker_settings.notify_backoff_base,
                max_delay=worker_settings.notify_backoff_max,
                jitter=worker_settings.notify_jitter,
            ),
            name,
        )
    )
    app = deployment.app()
    rule_id = create_rule(app, [{"kind": "webhook", "url": receiver.url, "secret": SECRET}])
    first = deployment.worker("notifications-1", "notifications")
    fire(app, rule_id)
    await wait_until(
        lambda: first.alive() or pytest.fail(f"the worker exited:\n{first.output()}"),
        lambda _alive: bool(receiver.requests),
        30.0,
        "the first delivery attempt",
    )
    first.kill9()
    log = SqlDeliveryLog(deployment.settings.history_url)
    try:
        assert log.attempts(rule_id) == []  # killed before anything was recorded
        second = deployment.worker("notifications-2", "notifications")
        rows = await wait_attempts(log, rule_id, "delivered", timeout=30.0)
        await asyncio.sleep(0.3)
        assert second.alive(), second.output()
    finally:
        log.close()
    assert statuses(rows) == ["delivered"]
    assert len(receiver.successes) == 1
    assert {r.headers["x-idempotency-key"] for r in receiver.requests} == {f"{rule_id}:1:0"}
    assert len(receiver.requests) == 2  # the interrupted attempt, then the delivery


# -- email (a real SMTP server) -----------------------------------------------------------


class MailSink:
    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.recipients: list[list[str]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(email.message_from_bytes(envelope.content))
        self.recipients.append(list(envelope.rcpt_tos))
        return "250 OK"


def embedded_app(tmp_path: Path) -> tuple[DefiRealtime, Settings]:
    settings = Settings(DATA_DIR=tmp_path / "data")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return DefiRealtime(env=settings.event_store_env), settings


@contextlib.asynccontextmanager
async def embedded_delivery(
    tmp_path: Path,
    notifiers: dict[str, Notifier],
    policy: RetryPolicy = FAST,
    *,
    journaled: bool = False,
) -> AsyncIterator[tuple[DefiRealtime, SqlDeliveryLog, ProjectionRunner, NotificationQueue]]:
    """``journaled``: wired as ``serve`` wires it (the dispatcher journals its jobs, and the
    queue keeps its dead letters in that journal)."""
    app, settings = embedded_app(tmp_path)
    log = SqlDeliveryLog(settings.history_url)
    positions = SqlPositionStore(settings.history_url)
    journal = log if journaled else None
    queue = InProcessNotificationQueue(journal=journal)
    queue.consume(DeliveryWorker(notifiers, log, policy, load_rule=app.get_alert_rule).handle)
    await queue.start()
    dispatcher = NotificationDispatcher(app.get_alert_rule, queue, positions, journal=journal)
    runner = ProjectionRunner(
        "notifications", EventStoreLog(app), dispatcher.position, dispatcher.apply
    )
    try:
        yield app, log, runner, queue
    finally:
        await queue.stop()
        log.close()
        positions.close()
        app.close()


def test_the_journal_keeps_a_job_until_an_attempt_settles_it(tmp_path: Path) -> None:
    app, settings = embedded_app(tmp_path)
    app.close()
    log = SqlDeliveryLog(settings.history_url)
    try:
        first, second = (
            NotificationJob.from_json(
                {
                    "idempotency_key": f"rule:1:{index}",
                    "rule_id": "rule",
                    "owner": "alice",
                    "condition": "firing",
                    "measure": 90.0,
                    "observed_at": T0,
                    "position": 3,
                    "channel_index": index,
                    "channel": {"kind": "webhook", "url": "https://hooks.example/x"},
                    "recorded_at": T0 + index,
                }
            )
            for index in (0, 1)
        )

        def attempt(job: NotificationJob, number: int, status: AttemptStatus) -> DeliveryAttempt:
            return DeliveryAttempt(
                rule_id=job.rule_id,
                owner=job.owner,
                idempotency_key=job.idempotency_key,
                channel_kind=job.channel_kind,
                channel_target=job.channel_target,
                attempt=number,
                status=status,
                started_at=T0,
                finished_at=T0,
            )

        log.record_pending([first, second, first])
        log.record_pending([first])  # a batch dispatched again
        assert log.pending() == [first, second]
        log.record(attempt(first, 1, "failed"))
        assert log.pending() == [first, second]
        log.record(attempt(first, 2, "delivered"))
        log.record(attempt(second, 1, "dead_lettered"))
        assert log.pending() == []
        log.record_pending([first, second])  # settled keys are not journaled again
        assert log.pending() == []
    finally:
        log.close()


async def test_an_email_arrives_at_the_smtp_server(tmp_path: Path) -> None:
    sink = MailSink()
    controller = Controller(sink, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        notifier = SmtpEmailNotifier("127.0.0.1", controller.port, "alerts@defi-realtime.test")
        async with embedded_delivery(tmp_path, {"email": notifier}) as (app, log, runner, _):
            rule_id = create_rule(app, [{"kind": "email", "address": "ops@example.com"}])
            fire(app, rule_id)
            await runner.catch_up()
            rows = await wait_attempts(log, rule_id, "delivered")
    finally:
        controller.stop()
    assert statuses(rows) == ["delivered"]
    assert rows[0].channel_target == "ops@example.com"
    [message] = sink.messages
    assert sink.recipients == [["ops@example.com"]]
    assert message["To"] == "ops@example.com"
    assert message["From"] == "alerts@defi-realtime.test"
    assert "firing" in message["Subject"]
    assert message["X-Idempotency-Key"] == f"{rule_id}:1:0"
    body = message.get_payload(decode=True)
    assert isinstance(body, bytes)
    assert rule_id in body.decode()


# -- the SSRF guard ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "192.168.0.10",
        "169.254.169.254",
        "::1",
        "::ffff:127.0.0.1",
        "0.0.0.0",
    ],
)
def test_private_addresses_are_refused(address: str) -> None:
    with pytest.raises(SsrfRefused):
        check_public_address(address)


def test_public_addresses_pass() -> None:
    check_public_address("93.184.216.34")
    check_public_address("2606:4700:4700::1111")


async def test_the_ssrf_guard_refuses_a_private_target_unless_allowed(tmp_path: Path) -> None:
    with WebhookReceiver() as receiver:
        async with httpx.AsyncClient() as client:
            guarded = WebhookNotifier(client, allow_private=False)
            async with embedded_delivery(tmp_path, {"webhook": guarded}) as (app, log, runner, q):
                by_name = receiver.url.replace("127.0.0.1", "localhost")
                rule_id = create_rule(
                    app,
                    [{"kind": "webhook", "url": receiver.url}, {"kind": "webhook", "url": by_name}],
                )
                fire(app, rule_id)
                await runner.catch_up()
                assert isinstance(q, InProcessNotificationQueue)
                # The queue parks a job right after its attempt is recorded: wait for both.
                rows = await wait_until(
                    lambda: log.attempts(rule_id),
                    lambda rows: len(rows) == 2 and len(q.dead_letters) == 2,
                    DELIVERY_TIMEOUT,
                    "two dead letters",
                )
                [job, _] = [job for job, _reason in q.dead_letters]
            # Refused at once (retrying cannot help), and nothing reached the receiver.
            assert statuses(rows) == ["dead_lettered", "dead_lettered"]
            assert all((row.error or "").startswith("refused") for row in rows)
            assert receiver.requests == []
            # The same target is called once private targets are allowed (tests, labs).
            result = await WebhookNotifier(client, allow_private=True).send(job)
    assert result.ok
    assert result.http_status == 200


# -- dead letters: listed per rule, redriven (RabbitMQ + PostgreSQL, and embedded) -----------

TWO_TRIES = RetryPolicy(max_attempts=2, base_delay=0.05, max_delay=1.0, jitter=0.2)


async def redrive_after_the_receiver_recovers(
    app: DefiRealtime,
    log: SqlDeliveryLog,
    queue: NotificationQueue,
    dispatch: Callable[[], Awaitable[Any]],
    journal: SqlDeliveryLog | None = None,
    restart: Callable[[], Awaitable[NotificationQueue]] | None = None,
) -> None:
    """Two owners' webhooks fail until the receiver is switched on; alice's dead letter,
    redriven, arrives with the same idempotency key, and the record shows the redrive and
    the attempt; bob's stays parked, and alice never sees it."""
    switched_on = threading.Event()
    with WebhookReceiver(lambda _n: 200 if switched_on.is_set() else 503) as receiver:
        channels = [{"kind": "webhook", "url": receiver.url}]
        alice_rule = create_rule(app, channels)
        bob_rule = create_rule(app, channels, owner="bob")
        fire(app, alice_rule)
        fire(app, bob_rule, owner="bob")
        await dispatch()
        for rule_id in (alice_rule, bob_rule):
            await wait_attempts(log, rule_id, "dead_lettered")
        if restart is not None:  # the dead letters outlive the process that parked them
            queue = await restart()
        desk = DeadLetters(queue, log, journal=journal)
        for rule_id in (alice_rule, bob_rule):  # parked right after the record
            await wait_until(
                lambda rule_id=rule_id: desk.of_rule(rule_id),
                lambda parked: len(parked) == 1,
                DELIVERY_TIMEOUT,
                "a dead letter",
            )
        [parked] = await desk.of_rule(alice_rule, "alice")
        assert parked.job.idempotency_key == f"{alice_rule}:1:0"
        assert (parked.job.attempt, parked.reason) == (2, "HTTP 503")
        assert "secret" not in parked.job.channel
        assert await desk.of_rule(bob_rule, "alice") == []  # never another owner's
        with pytest.raises(PermissionError):
            await desk.redrive(bob_rule, "alice")
        assert len(await desk.of_rule(bob_rule)) == 1

        switched_on.set()
        jobs = await desk.redrive(alice_rule, "alice")
        assert [job.idempotency_key for job in jobs] == [f"{alice_rule}:1:0"]
        rows = await wait_attempts(log, alice_rule, "delivered")
        await asyncio.sleep(0.2)  # nothing more arrives
        assert statuses(rows) == ["failed", "dead_lettered", "redriven", "delivered"]
        assert [row.attempt for row in rows] == [1, 2, 2, 3]
        [delivered] = receiver.successes
        assert delivered.headers["x-idempotency-key"] == f"{alice_rule}:1:0"
        assert await desk.of_rule(alice_rule) == []
        assert await desk.redrive(alice_rule) == []
        assert len(await desk.of_rule(bob_rule)) == 1
        assert statuses(log.attempts(bob_rule)) == ["failed", "dead_lettered"]
        if journal is not None:
            assert journal.pending() == []  # the redriven job was journaled, then settled


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.rabbitmq
async def test_a_dead_letter_redriven_from_rabbitmq_is_delivered_once(
    deployment: Stack, topologies: list[RabbitNotificationQueue]
) -> None:
    async with delivering(deployment, topologies, TWO_TRIES) as delivery:
        await redrive_after_the_receiver_recovers(
            delivery.app, delivery.log, delivery.queue, delivery.dispatch
        )


async def test_a_dead_letter_redriven_in_process_is_delivered_once(tmp_path: Path) -> None:
    async with httpx.AsyncClient() as client:
        notifier = WebhookNotifier(client, timeout=5.0, allow_private=True)
        async with embedded_delivery(tmp_path, {"webhook": notifier}, TWO_TRIES) as (
            app,
            log,
            runner,
            queue,
        ):
            await redrive_after_the_receiver_recovers(app, log, queue, runner.catch_up)


async def test_embedded_dead_letters_survive_a_restart_and_are_redriven(tmp_path: Path) -> None:
    """As ``serve`` wires it: the journal keeps the dead letters; a new queue (the process
    restarted) lists and redrives them."""
    async with httpx.AsyncClient() as client:
        notifier = WebhookNotifier(client, timeout=5.0, allow_private=True)
        async with embedded_delivery(
            tmp_path, {"webhook": notifier}, TWO_TRIES, journaled=True
        ) as (app, log, runner, queue):
            restarted: list[InProcessNotificationQueue] = []

            async def restart() -> NotificationQueue:
                await queue.stop()
                fresh = InProcessNotificationQueue(journal=log)
                worker = DeliveryWorker(
                    {"webhook": notifier}, log, TWO_TRIES, load_rule=app.get_alert_rule
                )
                fresh.consume(worker.handle)
                await fresh.start()
                restarted.append(fresh)
                return fresh

            try:
                await redrive_after_the_receiver_recovers(
                    app, log, queue, runner.catch_up, log, restart
                )
            finally:
                for fresh in restarted:
                    await fresh.stop()
            assert restarted
