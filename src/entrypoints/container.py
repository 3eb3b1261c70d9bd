"""The composition root: every object a process runs is built here, from the settings.

One ``DeclarativeContainer`` in dependency-injector's usual order: the configuration (the
whole ``Settings``, loaded with ``from_pydantic``), then the infrastructure as
``Resource``s (each opens on first use and is closed by ``shutdown_resources()``, in
reverse dependency order), then the services, built with plain constructor arguments (no
service imports the container). ``serve``, every ``worker`` role and every CLI command get
their objects from here; which loops a process runs is the role table's business
(``entrypoints/roles.py``), how they run ``entrypoints/node.py``'s.

Nothing here does I/O at import time, or on construction of the container.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from uuid import UUID

from dependency_injector import containers, providers

from ..adapters.event_store_log import EventStoreLog
from ..adapters.memory_fanout import InProcessEventFanout
from ..adapters.memory_hot_projection import InMemoryHotProjection
from ..adapters.memory_notification_queue import InProcessNotificationQueue
from ..application import anomaly_checkpoint, hot_checkpoint
from ..application.alert_rules import RuleObservation, RuleSnapshot
from ..application.alerting import AlertEvaluator
from ..application.anomaly import Detection, DetectorSettings, Method
from ..application.anomaly_follower import AnomalyFollower
from ..application.api_keys import AccountKeyService
from ..application.app import DefiRealtime
from ..application.audit import AuditJournal, AuditLog
from ..application.audit_trail import AuditTrail
from ..application.checkpoints import Checkpointer, CheckpointPolicy
from ..application.delivery import RetryPolicy
from ..application.durable_subscriptions import DurableSubscriptions
from ..application.evm_facts import TokenSpec
from ..application.following import NodeFollower, ProjectionRunner, Relay
from ..application.hot_checkpoint import CheckpointedHotState
from ..application.hot_state import HotState
from ..application.keyring import KeyRing
from ..application.log import LogBatch
from ..application.mev_follower import MevFollower, MevStep
from ..application.notifications import DeadLetters, DeliveryWorker, NotificationDispatcher
from ..application.personal_fields import KeysOnFirstUse
from ..application.ports import AccountKeys, ConnectionSlots, HotProjection, RateLimiter
from ..application.privacy import AccountPrivacy, KeyTraces
from ..application.rate_limiting import LeasedRateLimiter, RateLimits
from ..application.rate_limits import RateLimitPolicy
from ..application.readiness import Probe, Readiness
from ..application.realtime import RealtimeHub
from ..application.realtime.smart_money import SmartMoneyWatch
from ..application.reconciliation import Reconciliation, ReconciliationReport
from ..application.retention import DetailRetention
from ..application.smart_money_reader import SmartMoneyReader
from ..application.subscription_webhooks import SubscriptionWebhooks
from ..application.telemetry import ObservedQueryCache, Telemetry
from ..application.writer import IngestWriter
from ..domain.api_key import ApiKey
from .roles import Follower, Stage, plan
from .settings import Settings
from .startup import CLI, check_services, check_services_now

if TYPE_CHECKING:
    import httpx
    from redis.asyncio import Redis
    from sqlalchemy.engine import Engine

    from ..adapters.defillama_http import DefiLlamaHttpSource
    from ..adapters.file_checkpoints import FileCheckpointStore
    from ..adapters.limits_rate_limiter import MemoryRateLimiter, Strategy
    from ..adapters.position_stores import InMemoryPositionStore, SqlPositionStore
    from ..adapters.postgres_coordination import PostgresCommitListener, PostgresLeadership
    from ..adapters.prometheus_metrics import PrometheusMetrics
    from ..adapters.query_cache import MemoryQueryCache, RedisQueryCache
    from ..adapters.rabbit_fanout import RabbitEventFanout
    from ..adapters.rabbit_notification_queue import RabbitNotificationQueue
    from ..adapters.redis_hot_projection import RedisHotProjection
    from ..adapters.smtp_email_notifier import SmtpEmailNotifier
    from ..adapters.sql_audit_records import SqlAuditRecords
    from ..adapters.sql_delivery_log import SqlDeliveryLog
    from ..adapters.sql_history import SqlHistoryReadModel
    from ..adapters.webhook_notifier import WebhookGuard, WebhookNotifier
    from ..application.evm_collector import EvmCollector
    from .auth import ApiKeyBackend
    from .sessions import SessionTokens
    from .ws_server import SocketGateway

__all__ = ["Container", "build_container", "opened", "opened_async", "provide"]

T = TypeVar("T")

# The node's own followers poll the log when the fan-out is quiet at least this often;
# the dispatcher a little more eagerly (a notification is the point of an alert).
FOLLOWER_POLL_FLOOR = 0.2
DISPATCHER_POLL_FLOOR = 0.1
CONNECT_TIMEOUT = 5.0
# The embedded audit log's file, in DATA_DIR beside events.sqlite.
AUDIT_SQLITE_FILE = "audit.sqlite"


# -- infrastructure (Resources: opened on first use, closed by shutdown_resources) ---------
# Each technology's adapter is imported when it is first built, not with this module: a
# command pays only for what it opens (`ingest` into SQLite imports no SQLAlchemy, Redis,
# RabbitMQ, HTTP or Starlette; ~0.65 s of CPU per CLI run, docs/benchmarks.md).


def _in_data_dir(data_dir: Path, url: str | None = None) -> None:
    # Embedded stores are files under DATA_DIR: make sure it exists before opening one.
    if url is None or url.startswith("sqlite"):
        data_dir.mkdir(parents=True, exist_ok=True)


def _sql_engine(url: str, data_dir: Path) -> Iterator[Engine]:
    """The process's one SQLAlchemy engine on the read models' database, migrated: every
    read model shares its pool (PostgreSQL's connections are shared by every process of a
    deployment), and it closes after them."""
    from ..adapters.sql_schema import close_engine, migrated_engine

    _in_data_dir(data_dir, url)
    engine = migrated_engine(url)
    try:
        yield engine
    finally:
        close_engine(engine)


def _account_keys(engine: Callable[[], Engine]) -> Iterator[KeysOnFirstUse]:
    def open_keys() -> AccountKeys:
        from ..adapters.sql_account_keys import SqlAccountKeys

        return SqlAccountKeys(engine())

    keys = KeysOnFirstUse(open_keys)
    try:
        yield keys
    finally:
        keys.close()


def _application(
    env: Mapping[str, str], data_dir: Path, account_keys: AccountKeys
) -> Iterator[DefiRealtime]:
    if env.get("PERSISTENCE_MODULE") == "eventsourcing.sqlite":
        _in_data_dir(data_dir)
    # Personal fields of events are sealed with their account's key (docs/adr/0042).
    app = DefiRealtime(env=dict(env), account_keys=account_keys)
    try:
        yield app
    finally:
        app.close()


def _audit_log(env: Mapping[str, str], data_dir: Path) -> Iterator[AuditLog]:
    """The audit trail's own event store (ADR 0041): on PostgreSQL its own tables in the same
    database (named for the application); embedded, its own file beside the main log's,
    since eventsourcing's SQLite recorder uses one table name in every file."""
    env = dict(env)
    if env.get("PERSISTENCE_MODULE") == "eventsourcing.sqlite":
        _in_data_dir(data_dir)
        env["SQLITE_DBNAME"] = str(Path(env["SQLITE_DBNAME"]).with_name(AUDIT_SQLITE_FILE))
        # Commits without an fsync each (survive the process, not a power loss): every
        # audited request waits for one (adapters/sqlite_audit_store.py).
        env["PERSISTENCE_MODULE"] = "defi_realtime.adapters.sqlite_audit_store"
    elif "POSTGRES_POOL_SIZE" in env:
        # One writer (the journal's thread) and the occasional reader: a pool of the main
        # log's size would hold 5 more connections per process for nothing (the compose
        # topology's processes ran PostgreSQL out of its 100).
        env["POSTGRES_POOL_SIZE"] = "1"
        env["POSTGRES_MAX_OVERFLOW"] = "2"
    log = AuditLog(env=env)
    try:
        yield log
    finally:
        log.close()


def _audit_records(engine: Engine) -> Iterator[SqlAuditRecords]:
    from ..adapters.sql_audit_records import SqlAuditRecords

    records = SqlAuditRecords(engine)
    try:
        yield records
    finally:
        records.close()


def _metrics() -> PrometheusMetrics:
    # Imported here: prometheus_client picks its multiprocess mode when first imported, after
    # ``serve --workers`` has set PROMETHEUS_MULTIPROC_DIR.
    from ..adapters.prometheus_metrics import PrometheusMetrics

    return PrometheusMetrics()


def _writer(app: DefiRealtime, telemetry: Telemetry) -> Iterator[IngestWriter]:
    writer = IngestWriter(app, telemetry=telemetry)
    writer.start()
    try:
        yield writer
    finally:
        writer.stop()


def _event_log(app: DefiRealtime) -> Iterator[EventStoreLog]:
    event_log = EventStoreLog(app)
    try:
        yield event_log
    finally:
        event_log.close()  # before the application's store closes: no read runs into it


def _history(engine: Engine) -> Iterator[SqlHistoryReadModel]:
    from ..adapters.sql_history import SqlHistoryReadModel

    model = SqlHistoryReadModel(engine)
    try:
        yield model
    finally:
        model.close()


def _delivery_log(engine: Engine) -> Iterator[SqlDeliveryLog]:
    from ..adapters.sql_delivery_log import SqlDeliveryLog

    delivery_log = SqlDeliveryLog(engine)
    try:
        yield delivery_log
    finally:
        delivery_log.close()


def _relay_positions(
    database_url: str | None, engine: Callable[[], Engine]
) -> Iterator[InMemoryPositionStore | SqlPositionStore]:
    from ..adapters.position_stores import InMemoryPositionStore, SqlPositionStore

    # Embedded: the in-process fan-out has no consumers outside this process, which all
    # catch up from the log themselves, so the relay may start from the head each time.
    if database_url is None:
        yield InMemoryPositionStore()
        return
    store = SqlPositionStore(engine())
    try:
        yield store
    finally:
        store.close()


def _follower_positions(engine: Engine) -> Iterator[SqlPositionStore]:
    # Durable even when embedded: a notification dispatcher that forgot its position would
    # notify every past transition again; the alert evaluator stores its position only after
    # the transitions it found are saved, and resumes from it (docs/adr/0008).
    from ..adapters.position_stores import SqlPositionStore

    store = SqlPositionStore(engine)
    try:
        yield store
    finally:
        store.close()


def _checkpoint_store(data_dir: Path) -> FileCheckpointStore:
    from ..adapters.file_checkpoints import FileCheckpointStore

    # Per node, like the memory it restores: beside the embedded stores (ADR 0046).
    return FileCheckpointStore(data_dir / "checkpoints")


def _store_id(event_store_env: Mapping[str, str]) -> str:
    """Which event store a checkpoint was folded from: a digest of where it is (never the
    password), so that a DATA_DIR reused with another store replays that store's log."""
    import hashlib

    where = {
        key: value
        for key, value in sorted(event_store_env.items())
        if key in {"PERSISTENCE_MODULE", "SQLITE_DBNAME"}
        or key in {"POSTGRES_DBNAME", "POSTGRES_HOST", "POSTGRES_PORT", "POSTGRES_USER"}
    }
    return hashlib.sha256(repr(sorted(where.items())).encode()).hexdigest()[:32]


def _checkpointer(
    store: FileCheckpointStore,
    name: str,
    kind: str,
    version: int,
    store_id: str,
    event_log: EventStoreLog,
    policy: CheckpointPolicy,
) -> Checkpointer:
    return Checkpointer(
        store,
        name,
        kind=kind,
        version=version,
        store_id=store_id,
        head=event_log.head,
        policy=policy,
    )


async def _redis(url: str | None) -> AsyncIterator[Redis | None]:
    if url is None:
        yield None
        return
    from redis.asyncio import Redis

    # A bounded connect: an unreachable Redis fails each call in seconds, not minutes.
    client = Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT)
    try:
        yield client
    finally:
        await client.aclose()


async def _memory_fanout() -> AsyncIterator[InProcessEventFanout]:
    fanout = InProcessEventFanout()
    try:
        yield fanout
    finally:
        await fanout.stop()


async def _rabbit_fanout(
    url: str, exchange: str, node_id: str | None
) -> AsyncIterator[RabbitEventFanout]:
    from ..adapters.rabbit_fanout import RabbitEventFanout

    # Constructed only: it connects in ``start()``, once every role registered its handler.
    fanout = RabbitEventFanout(url, exchange=exchange, node_id=node_id)
    try:
        yield fanout
    finally:
        await fanout.stop()


async def _http_client() -> AsyncIterator[httpx.AsyncClient]:
    import httpx

    client = httpx.AsyncClient(headers={"User-Agent": "defi-realtime"})
    try:
        yield client
    finally:
        await client.aclose()


async def _memory_notifications(
    concurrency: int, journal: SqlDeliveryLog
) -> AsyncIterator[InProcessNotificationQueue]:
    # The dispatcher's journal keeps the queue's dead letters across restarts (ADR 0037).
    queue = InProcessNotificationQueue(concurrency=concurrency, journal=journal)
    try:
        yield queue
    finally:
        await queue.stop()


async def _rabbit_notifications(
    url: str, policy: RetryPolicy, name: str, prefetch: int
) -> AsyncIterator[RabbitNotificationQueue]:
    from ..adapters.rabbit_notification_queue import RabbitNotificationQueue

    # Constructed only: the notifications role connects it in ``start()``.
    queue = RabbitNotificationQueue(url, policy, name, prefetch=prefetch)
    try:
        yield queue
    finally:
        await queue.stop()


BEFORE, AFTER = Stage.BEFORE_HUB, Stage.AFTER_HUB


# -- services assembled from several parts ------------------------------------------------


def _commit_listener(database_url: str | None, app: DefiRealtime) -> PostgresCommitListener | None:
    """With PostgreSQL, every node's commits wake the elected relay through NOTIFY."""
    channel = getattr(app.recorder, "channel_name", None)
    if database_url is None or not isinstance(channel, str):
        return None
    from ..adapters.postgres_coordination import PostgresCommitListener

    return PostgresCommitListener(database_url, channel)


async def _leadership(database_url: str | None) -> AsyncIterator[PostgresLeadership | None]:
    """With PostgreSQL, the advisory locks the elected loops of this process run under, on
    one connection (closing it releases them all); embedded, nothing is elected."""
    if database_url is None:
        yield None
        return
    from ..adapters.postgres_coordination import PostgresLeadership

    leadership = PostgresLeadership(database_url)
    try:
        yield leadership
    finally:
        await leadership.close()


def _memory_query_cache() -> MemoryQueryCache:
    from ..adapters.query_cache import MemoryQueryCache

    return MemoryQueryCache()


def _redis_query_cache(client: Redis, prefix: str) -> RedisQueryCache:
    from ..adapters.query_cache import RedisQueryCache

    return RedisQueryCache(client, prefix)


def _key_traces(client: Redis | None, prefix: str) -> KeyTraces | None:
    # Only Redis keeps counters under a key's id beyond the process.
    if client is None:
        return None
    from ..adapters.redis_key_traces import RedisKeyTraces

    return RedisKeyTraces(client, prefix)


def _privacy(
    app: DefiRealtime,
    keys: AccountKeys,
    history: SqlHistoryReadModel,
    delivery_log: SqlDeliveryLog,
) -> AccountPrivacy:
    return AccountPrivacy(app, keys, history, [history, delivery_log], delivery_log)


def _redis_hot_projection(client: Redis, prefix: str) -> RedisHotProjection:
    from ..adapters.redis_hot_projection import RedisHotProjection

    return RedisHotProjection(client, prefix)


def _sessions(settings: Settings) -> SessionTokens:
    from .sessions import SessionTokens, session_secret

    # Read (or generated once, in DATA_DIR) on first use: workers of a node sign alike.
    return SessionTokens(
        lambda: session_secret(settings.session_secret, settings.data_dir),
        settings.session_token_ttl,
    )


def _auth_backend(keyring: KeyRing, sessions: SessionTokens, settings: Settings) -> ApiKeyBackend:
    from .auth import ApiKeyBackend

    return ApiKeyBackend(keyring, sessions, settings.trusted_networks)


def _gateway(
    hub: RealtimeHub, settings: Settings, auth: ApiKeyBackend, rate_limits: RateLimits | None
) -> SocketGateway:
    from .ws_server import SocketGateway

    return SocketGateway(hub, settings, auth, rate_limits)


async def _connection_slots(
    client: Redis | None, backend: str, prefix: str
) -> AsyncIterator[ConnectionSlots | None]:
    """Anonymous sockets per address (ADR 0049): counted in Redis, by every node, with the
    rate limits there; None: the hub counts its own."""
    if backend != "redis" or client is None:
        yield None
        return
    from ..adapters.redis_connection_slots import RedisConnectionSlots

    slots = RedisConnectionSlots(client, prefix)
    await slots.start()
    try:
        yield slots
    finally:
        await slots.aclose()


def _memory_rate_limiter(strategy: Strategy) -> MemoryRateLimiter:
    from ..adapters.limits_rate_limiter import MemoryRateLimiter

    return MemoryRateLimiter(strategy)


def _redis_rate_limiter(
    client: Redis, prefix: str, strategy: Strategy, lease: float
) -> RateLimiter:
    from ..adapters.limits_rate_limiter import RedisRateLimiter

    limiter = RedisRateLimiter(client, prefix, strategy)
    # Large budgets in blocks: a round trip per hit costs more CPU than a cheap request.
    return LeasedRateLimiter(limiter, share=lease) if lease > 0 else limiter


def _rate_limits(limiter: RateLimiter | None, settings: Settings) -> RateLimits | None:
    """The limits every entrypoint spends (None with RATE_LIMITS=off)."""
    if limiter is None:
        return None
    policy = RateLimitPolicy(
        anonymous_per_minute=settings.rate_limit_anonymous,
        auth_failures_per_minute=settings.rate_limit_auth_failures,
    )
    return RateLimits(limiter, policy)


def _webhook_guard(allow_private: bool, allowed_hosts: frozenset[str] | None) -> WebhookGuard:
    from ..adapters.webhook_notifier import WebhookGuard

    return WebhookGuard(allow_private=allow_private, allowed_hosts=allowed_hosts)


def _webhook_notifier(
    client: httpx.AsyncClient, guard: WebhookGuard, *, timeout: float
) -> WebhookNotifier:
    from ..adapters.webhook_notifier import WebhookNotifier

    return WebhookNotifier(client, timeout=timeout, guard=guard)


def _email_notifier(
    host: str | None,
    port: int,
    sender: str,
    *,
    starttls: bool,
    username: str | None,
    password: str | None,
    timeout: float,
) -> SmtpEmailNotifier:
    from ..adapters.smtp_email_notifier import SmtpEmailNotifier

    return SmtpEmailNotifier(
        host,
        port,
        sender,
        starttls=starttls,
        username=username,
        password=password,
        timeout=timeout,
    )


def _key_lookup(application: Callable[[], DefiRealtime]) -> Callable[[UUID], ApiKey | None]:
    """Key lookups that open the event store on first use, not when the API is built (its
    authentication middleware exists before the lifespan opens anything)."""

    def lookup(key_id: UUID) -> ApiKey | None:
        return application().find_api_key(key_id)

    return lookup


def _durable_subscriptions(
    app: DefiRealtime, writer: IngestWriter, guard: WebhookGuard
) -> DurableSubscriptions:
    """Durable subscriptions: written on the writer thread (docs/adr/0003); a webhook's
    target checked by the node's SSRF guard when it is created."""
    return DurableSubscriptions(app, writer.call, webhook_targets=guard)


def _key_service(
    app: DefiRealtime, writer: IngestWriter, keyring: KeyRing, grace: float
) -> AccountKeyService:
    """Keys over REST: written on the writer thread (docs/adr/0003); a revoked or rotated
    key is forgotten by this node's key ring at once (others hear it on the log)."""
    return AccountKeyService(app, writer.call, grace=grace, forget=keyring.forget)


def _subscription_webhooks(
    event_log: EventStoreLog,
    sender: WebhookNotifier,
    subscriptions: DurableSubscriptions,
    state: HotState,
    policy: RetryPolicy,
    interval: float,
) -> SubscriptionWebhooks:
    """The webhook delivery of durable subscriptions (ADR 0043): the alert webhooks'
    notifier and retry policy; filters read the node's own fold of the log."""
    return SubscriptionWebhooks(
        event_log,
        sender,
        subscriptions.webhook_targets,
        subscriptions.advance,
        state=state,
        policy=policy,
        interval=interval,
    )


def _rule_recorder(
    app: DefiRealtime, writer: IngestWriter
) -> Callable[[Sequence[RuleObservation]], Awaitable[list[RuleSnapshot]]]:
    """How the evaluator records transitions: on the writer thread, the only one that
    mutates cached aggregates (docs/adr/0003)."""

    async def record(observations: Sequence[RuleObservation]) -> list[RuleSnapshot]:
        return await writer.call(lambda: app.observe_alert_rules(observations))

    return record


def _anomaly_recorder(
    app: DefiRealtime, writer: IngestWriter
) -> Callable[[Sequence[Detection]], Awaitable[int]]:
    """How the anomaly follower records detections: on the writer thread (docs/adr/0003)."""

    async def record(detections: Sequence[Detection]) -> int:
        return await writer.call(lambda: app.record_anomalies(detections))

    return record


def _mev_recorder(
    app: DefiRealtime, writer: IngestWriter
) -> Callable[[Sequence[MevStep]], Awaitable[int]]:
    """How the MEV follower records its steps: on the writer thread (docs/adr/0003)."""

    async def record(steps: Sequence[MevStep]) -> int:
        return await writer.call(lambda: app.record_mev(steps))

    return record


def _mev_tokens(evm_chains: str) -> dict[int, dict[str, TokenSpec]]:
    """Each configured chain's tokens by address: their prices value MEV profits and
    smart-money PnL in USD."""
    from .evm_settings import chain_specs

    return {
        spec.chain_id: {token.address: token for token in spec.tokens}
        for spec in chain_specs(evm_chains)
    }


def _detector_settings(method: Method, window: int, threshold: float) -> DetectorSettings:
    return DetectorSettings(method=method, window=window, threshold=threshold)


def _node_follower(
    settings: Settings,
    event_log: EventStoreLog,
    hub: RealtimeHub,
    projections: Mapping[str, ProjectionRunner],
    keyring: KeyRing,
) -> NodeFollower:
    """``serve``'s own follower: the projections the role table keeps on the node, in its
    stages around the hub (the hub waits only for what it reads; the rest after it). Each
    batch reaches the key ring first (it forgets keys that changed), then the hub (which
    closes the sockets of revoked keys): how a revocation reaches every node at once."""
    on_node = {
        placement.role.name: placement.role.stage
        for placement in plan("serve", settings)
        if placement.follower is Follower.NODE
    }
    before = [
        runner for name, runner in projections.items() if on_node.get(name) == Stage.BEFORE_HUB
    ]
    after = [runner for name, runner in projections.items() if on_node.get(name) == Stage.AFTER_HUB]

    async def deliver(batch: LogBatch) -> None:
        keyring.follow(batch)
        await hub.deliver(batch)

    return NodeFollower(
        event_log,
        before,
        deliver,
        on_ready=hub.seed,
        late_runners=after,
        poll_interval=max(settings.poll_interval, FOLLOWER_POLL_FLOOR),
    )


def _projector(
    settings: Settings,
    process: str,
    event_log: EventStoreLog,
    projections: Mapping[str, ProjectionRunner],
) -> NodeFollower:
    """The follower of the projections the role table puts on the shared projector."""
    shared = {
        placement.role.name
        for placement in plan(process, settings)
        if placement.follower is Follower.PROJECTOR
    }
    return NodeFollower(
        event_log,
        [runner for name, runner in projections.items() if name in shared],
        poll_interval=max(settings.poll_interval, FOLLOWER_POLL_FLOOR),
    )


def _readiness(
    settings: Settings,
    event_log: EventStoreLog,
    history: SqlHistoryReadModel,
    redis_client: Redis | None,
    fanout: object,
    followers: Callable[[], Iterable[NodeFollower]],
) -> Readiness:
    """The node's readiness checks: the event store (its head), the history database, and
    Redis and RabbitMQ when configured; ``followers``: those the node runs (lag, stalls)."""
    import asyncio

    from ..adapters.rabbit_fanout import RabbitEventFanout
    from ..adapters.service_checks import fanout_connected, redis_ping

    async def history_position() -> str:
        return f"position {await asyncio.to_thread(history.position)}"

    probes: dict[str, Probe] = {"history_db": history_position}
    if redis_client is not None and settings.redis_url is not None:
        probes["redis"] = redis_ping(redis_client, settings.redis_url)
    if isinstance(fanout, RabbitEventFanout) and settings.amqp_url is not None:
        probes["rabbitmq"] = fanout_connected(fanout, settings.amqp_url)
    return Readiness(
        lambda: asyncio.to_thread(event_log.head),
        probes,
        followers,
        max_lag=settings.ready_max_lag,
        timeout=settings.ready_timeout,
    )


def _own_follower(
    event_log: EventStoreLog, runner: ProjectionRunner, poll_interval: float
) -> NodeFollower:
    return NodeFollower(event_log, [runner], poll_interval=poll_interval)


def _memory_hot_runner(
    hot: CheckpointedHotState, event_log: EventStoreLog, name: str
) -> ProjectionRunner:
    return hot.runner(event_log, name)


def _dispatcher_runner(
    event_log: EventStoreLog, dispatcher: NotificationDispatcher
) -> ProjectionRunner:
    return ProjectionRunner(dispatcher.name, event_log, dispatcher.position, dispatcher.apply)


async def _upstream(url: str | None) -> AsyncIterator[DefiLlamaHttpSource | None]:
    if url is None:
        yield None
        return
    from ..adapters.defillama_http import DefiLlamaHttpSource

    source = DefiLlamaHttpSource(url)
    try:
        yield source
    finally:
        await source.aclose()


async def _evm_collectors(
    evm_chains: str, app: DefiRealtime, writer: IngestWriter
) -> AsyncIterator[list[EvmCollector]]:
    """One collector per ``EVM_CHAINS`` entry, each with its JSON-RPC client (ADR 0048);
    their writes go through the writer thread."""
    from ..adapters.httpx_json_rpc import HttpxJsonRpc
    from ..application.evm_collector import EvmCollector
    from .evm_settings import chain_specs

    collectors = [
        EvmCollector(
            spec,
            HttpxJsonRpc(spec.rpc_urls, requests_per_second=spec.requests_per_second),
            app,
            writer.call,
        )
        for spec in chain_specs(evm_chains)
    ]
    try:
        yield collectors
    finally:
        for collector in collectors:
            await collector.rpc.aclose()


def _reconciliation(
    settings: Settings,
    process: str,
    app: DefiRealtime,
    writer: IngestWriter,
    event_log: EventStoreLog,
    hot: HotProjection,
    history: SqlHistoryReadModel,
    upstream: DefiLlamaHttpSource | None,
    telemetry: Telemetry,
) -> Reconciliation:
    """Reconciliation of this process's stores (ADR 0035). The hot projection only where
    this process can see it: Redis, or ``serve``'s own memory (another process's memory is
    not this one's to compare)."""

    async def record(report: ReconciliationReport) -> None:
        await writer.call(lambda: app.record_reconciliation(report.record()))

    return Reconciliation(
        event_log,
        hot=hot if settings.redis_url is not None or process == "serve" else None,
        history=history,
        upstream=upstream,
        record=record,
        upstream_tolerance=settings.reconcile_upstream_tolerance,
        telemetry=telemetry,
    )


def _detail_retention(days: float | None, history: SqlHistoryReadModel) -> DetailRetention | None:
    """Retention of the history's raw detail (ADR 0047); None when it is kept whole."""
    return None if days is None else DetailRetention(history, days)


class Container(containers.DeclarativeContainer):
    """config -> infrastructure (Resources) -> services."""

    config = providers.Configuration(strict=True)
    settings = providers.Dependency(instance_of=Settings)
    # Which process this container serves: ``serve`` or a worker name (the role table's
    # ``plan`` argument).
    process = providers.Object("serve")

    # -- infrastructure ---------------------------------------------------------------------
    # Prometheus metrics, also the application's ``Telemetry`` port.
    metrics = providers.Singleton(_metrics)
    # One engine for every read model of the process (opened when first needed).
    sql_engine = providers.Resource(_sql_engine, config.history_url, config.data_dir)
    # The accounts' data keys: in the history database, opened when first needed.
    account_keys = providers.Resource(_account_keys, sql_engine.provider)
    application = providers.Resource(
        _application, config.event_store_env, config.data_dir, account_keys
    )
    writer = providers.Resource(_writer, application, metrics)
    event_log = providers.Resource(_event_log, application)
    history = providers.Resource(_history, sql_engine)
    audit_log = providers.Resource(_audit_log, config.event_store_env, config.data_dir)
    audit_records = providers.Resource(_audit_records, sql_engine)
    delivery_log = providers.Resource(_delivery_log, sql_engine)
    relay_positions = providers.Resource(_relay_positions, config.database_url, sql_engine.provider)
    follower_positions = providers.Resource(_follower_positions, sql_engine)
    redis_client = providers.Resource(_redis, config.redis_url)
    http_client = providers.Resource(_http_client)
    fanout = providers.Selector(
        config.fanout_backend,
        memory=providers.Resource(_memory_fanout),
        rabbitmq=providers.Resource(
            _rabbit_fanout,
            config.amqp_url,
            config.amqp_exchange,
            config.node_id,
        ),
    )
    retry_policy = providers.Singleton(
        RetryPolicy,
        max_attempts=config.notify_max_attempts,
        base_delay=config.notify_backoff_base,
        max_delay=config.notify_backoff_max,
        jitter=config.notify_jitter,
    )
    notification_queue = providers.Selector(
        config.fanout_backend,
        memory=providers.Resource(_memory_notifications, config.notify_concurrency, delivery_log),
        rabbitmq=providers.Resource(
            _rabbit_notifications,
            config.amqp_url,
            retry_policy,
            config.amqp_notifications,
            config.notify_concurrency,
        ),
    )

    # -- services ---------------------------------------------------------------------------
    # Erase and export an account's personal data (docs/privacy.md).
    privacy = providers.Singleton(_privacy, application, account_keys, history, delivery_log)
    key_traces = providers.Singleton(_key_traces, redis_client, config.redis_prefix)
    # The node's own fold of the log (the facts of live frames); without Redis it is also
    # the hot projection REST reads from: one fold per node, not two.
    live_state = providers.Singleton(HotState, record_facts=True)
    live_projection = providers.Singleton(InMemoryHotProjection, live_state)
    # Restarts load the latest checkpoint of the in-memory states and replay only the log
    # after it (ADR 0046); ``checkpointers`` write their last one at shutdown (node.py).
    checkpoint_store = providers.Singleton(_checkpoint_store, config.data_dir)
    checkpoint_policy = providers.Singleton(
        CheckpointPolicy,
        every_events=config.checkpoint_events,
        every_seconds=config.checkpoint_interval,
    )
    store_id = providers.Singleton(_store_id, config.event_store_env)
    hot_checkpointer = providers.Singleton(
        _checkpointer,
        checkpoint_store,
        "hot-state",
        hot_checkpoint.KIND,
        hot_checkpoint.FORMAT_VERSION,
        store_id,
        event_log,
        checkpoint_policy,
    )
    anomaly_checkpointer = providers.Singleton(
        _checkpointer,
        checkpoint_store,
        "anomalies",
        anomaly_checkpoint.KIND,
        anomaly_checkpoint.FORMAT_VERSION,
        store_id,
        event_log,
        checkpoint_policy,
    )
    checkpointers = providers.List(hot_checkpointer, anomaly_checkpointer)
    checkpointed_hot = providers.Singleton(CheckpointedHotState, live_state, hot_checkpointer)
    hot_projection = providers.Selector(
        config.hot_backend,
        memory=live_projection,
        redis=providers.Singleton(_redis_hot_projection, redis_client, config.redis_prefix),
    )
    query_cache = providers.Singleton(
        ObservedQueryCache,
        providers.Selector(
            config.hot_backend,
            memory=providers.Singleton(_memory_query_cache),
            redis=providers.Singleton(_redis_query_cache, redis_client, config.redis_prefix),
        ),
        metrics,
    )
    durable_subscriptions = providers.Singleton(_durable_subscriptions, application, writer)
    audit_journal = providers.Singleton(AuditJournal, audit_log.provided.record)
    audit_trail = providers.Singleton(AuditTrail, audit_log, audit_records)
    # One SSRF decision for the node: when a rule names a webhook, and at each delivery.
    webhook_guard = providers.Singleton(
        _webhook_guard, config.allow_private_webhooks, config.webhook_hosts
    )
    durable_subscriptions = providers.Singleton(
        _durable_subscriptions, application, writer, webhook_guard
    )
    # Smart money is read on request from the history read model (docs/adr/0051); the
    # hub streams the trades of its top wallets (the smart-money channel).
    smart_money = providers.Singleton(
        SmartMoneyReader,
        history,
        providers.Singleton(_mev_tokens, config.evm_chains),
        config.smart_money_model_path,
    )
    hub = providers.Singleton(
        RealtimeHub,
        event_log,
        live_state,
        send_timeout=config.ws_send_timeout,
        telemetry=metrics,
        durable=durable_subscriptions,
        ack_interval=config.subscription_ack_interval,
        address_slots=providers.Resource(
            _connection_slots, redis_client, config.rate_limit_backend, config.redis_prefix
        ),
        smart_money=providers.Singleton(SmartMoneyWatch, smart_money),
    )
    keyring = providers.Singleton(KeyRing, providers.Callable(_key_lookup, application.provider))
    sessions = providers.Singleton(_sessions, settings)
    key_service = providers.Singleton(
        _key_service, application, writer, keyring, config.key_rotation_grace
    )
    auth_backend = providers.Singleton(_auth_backend, keyring, sessions, settings)
    # Budgets (ADR 0036): in Redis, shared by every node, when REDIS_URL is set.
    rate_limiter = providers.Selector(
        config.rate_limit_backend,
        off=providers.Object(None),
        memory=providers.Singleton(_memory_rate_limiter, config.rate_limit_strategy),
        redis=providers.Singleton(
            _redis_rate_limiter,
            redis_client,
            config.redis_prefix,
            config.rate_limit_strategy,
            config.rate_limit_lease,
        ),
    )
    rate_limits = providers.Singleton(_rate_limits, rate_limiter, settings)
    gateway = providers.Singleton(_gateway, hub, settings, auth_backend, rate_limits)

    relay = providers.Singleton(
        Relay, event_log, fanout, relay_positions, poll_interval=config.poll_interval
    )
    commit_listener = providers.Singleton(_commit_listener, config.database_url, application)
    leadership = providers.Resource(_leadership, config.database_url)
    hot_runner = providers.Selector(
        config.hot_backend,
        memory=providers.Singleton(_memory_hot_runner, checkpointed_hot, event_log, "hot"),
        redis=providers.Singleton(ProjectionRunner.for_hot, event_log, hot_projection),
    )
    history_runner = providers.Singleton(ProjectionRunner.for_history, event_log, history)
    # By role name (entrypoints/roles.py): the followers take the ones the table gives them.
    live_runner = providers.Singleton(_memory_hot_runner, checkpointed_hot, event_log, "live")
    projections = providers.Dict(hot=hot_runner, live=live_runner, history=history_runner)
    node_follower = providers.Singleton(
        _node_follower, settings, event_log, hub, projections, keyring
    )
    projector = providers.Singleton(_projector, settings, process, event_log, projections)

    detector_settings = providers.Singleton(
        _detector_settings,
        config.anomaly_method,
        config.anomaly_window,
        config.anomaly_threshold,
    )
    evaluator = providers.Singleton(
        AlertEvaluator,
        event_log,
        history,  # the rule listing: the history read model's ``alert_rules`` table
        history,
        follower_positions,
        providers.Singleton(_rule_recorder, application, writer),
        detector=detector_settings,
    )
    alert_follower = providers.Singleton(
        _own_follower,
        event_log,
        evaluator.provided.runner.call(),
        providers.Callable(max, config.poll_interval, FOLLOWER_POLL_FLOOR),
    )

    anomaly_follower = providers.Singleton(
        AnomalyFollower,
        event_log,
        follower_positions,
        providers.Singleton(_anomaly_recorder, application, writer),
        detector_settings,
        checkpointer=anomaly_checkpointer,
    )
    anomaly_loop = providers.Singleton(
        _own_follower,
        event_log,
        anomaly_follower.provided.runner.call(),
        providers.Callable(max, config.poll_interval, FOLLOWER_POLL_FLOOR),
    )

    mev_follower = providers.Singleton(
        MevFollower,
        event_log,
        follower_positions,
        providers.Singleton(_mev_recorder, application, writer),
        providers.Singleton(_mev_tokens, config.evm_chains),
    )
    mev_loop = providers.Singleton(
        _own_follower,
        event_log,
        mev_follower.provided.runner.call(),
        providers.Callable(max, config.poll_interval, FOLLOWER_POLL_FLOOR),
    )

    webhook_notifier = providers.Singleton(
        _webhook_notifier, http_client, webhook_guard, timeout=config.webhook_timeout
    )
    email_notifier = providers.Singleton(
        _email_notifier,
        config.smtp_host,
        config.smtp_port,
        config.smtp_from,
        starttls=config.smtp_starttls,
        username=config.smtp_username,
        password=config.smtp_password,
        timeout=config.webhook_timeout,
    )
    delivery_worker = providers.Singleton(
        DeliveryWorker,
        providers.Dict(webhook=webhook_notifier, email=email_notifier),
        delivery_log,
        retry_policy,
        load_rule=application.provided.get_alert_rule,
        telemetry=metrics,
    )
    # RabbitMQ keeps its jobs; the in-process queue's go with the process, so they are
    # journaled in the delivery log until settled and enqueued again on start.
    notification_journal = providers.Selector(
        config.fanout_backend, memory=delivery_log, rabbitmq=providers.Object(None)
    )
    dispatcher = providers.Singleton(
        NotificationDispatcher,
        application.provided.get_alert_rule,
        notification_queue,
        follower_positions,
        journal=notification_journal,
    )
    dead_letters = providers.Singleton(
        DeadLetters, notification_queue, delivery_log, journal=notification_journal
    )
    dispatch_follower = providers.Singleton(
        _own_follower,
        event_log,
        providers.Singleton(_dispatcher_runner, event_log, dispatcher),
        providers.Callable(max, config.poll_interval, DISPATCHER_POLL_FLOOR),
    )
    evm_collectors = providers.Resource(_evm_collectors, config.evm_chains, application, writer)
    subscription_webhooks = providers.Singleton(
        _subscription_webhooks,
        event_log,
        webhook_notifier,
        durable_subscriptions,
        live_state,
        retry_policy,
        config.subscription_webhook_interval,
    )
    upstream = providers.Resource(_upstream, config.reconcile_upstream_url)
    reconciliation = providers.Singleton(
        _reconciliation,
        settings,
        process,
        application,
        writer,
        event_log,
        hot_projection,
        history,
        upstream,
        metrics,
    )
    detail_retention = providers.Singleton(
        _detail_retention, config.history_detail_retention_days, history
    )
    # ``readiness(followers=...)``: the followers come from the running node.
    readiness = providers.Factory(_readiness, settings, event_log, history, redis_client, fanout)


def build_container(settings: Settings, process: str = "serve") -> Container:
    """A container for ``process`` configured from ``settings`` (nothing opened yet)."""
    container = Container(settings=settings, process=providers.Object(process))
    container.config.from_pydantic(settings)
    return container


async def provide(provider: Callable[[], T | Awaitable[T]]) -> T:
    """What ``provider`` gives, awaited when it involves an async Resource."""
    value = provider()
    if inspect.isawaitable(value):
        return await value
    return value


@contextlib.contextmanager
def opened(settings: Settings) -> Iterator[Container]:
    """A container for a synchronous command (the CLI): its resources close on exit.
    The services it uses are checked first (``ServiceUnavailable``, entrypoints/startup.py)."""
    check_services_now(settings, CLI)
    container = build_container(settings, CLI)
    try:
        yield container
    finally:
        container.shutdown_resources()


@contextlib.asynccontextmanager
async def opened_async(
    settings: Settings, process: str = CLI, *, hot: bool = False
) -> AsyncIterator[Container]:
    """A container for asynchronous code: its resources (async ones too) close on exit.
    The services it uses are checked first; ``hot``: it writes the hot projection."""
    await check_services(settings, process, hot=hot)
    container = build_container(settings, process)
    try:
        yield container
    finally:
        result: Any = container.shutdown_resources()
        if inspect.isawaitable(result):
            await result
