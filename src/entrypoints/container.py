"""The composition root: adapters chosen from settings, lifecycles as Resources.

Nothing here does I/O at import time; resources open when ``init_resources()`` runs (in the
server's lifespan or a CLI command) and close on ``shutdown_resources()``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
from dependency_injector import containers, providers
from redis.asyncio import Redis

from ..adapters.event_store_log import EventStoreLog
from ..adapters.memory_fanout import InProcessEventFanout
from ..adapters.memory_hot_projection import InMemoryHotProjection
from ..adapters.memory_notification_queue import InProcessNotificationQueue
from ..adapters.position_stores import InMemoryPositionStore, SqlPositionStore
from ..adapters.rabbit_fanout import RabbitEventFanout
from ..adapters.rabbit_notification_queue import RabbitNotificationQueue
from ..adapters.redis_hot_projection import RedisHotProjection
from ..adapters.smtp_email_notifier import SmtpEmailNotifier
from ..adapters.sql_delivery_log import SqlDeliveryLog
from ..adapters.sql_history import SqlHistoryReadModel
from ..adapters.webhook_notifier import WebhookNotifier
from ..application.app import DefiRealtime
from ..application.delivery import RetryPolicy
from ..application.realtime import RealtimeHub
from ..application.writer import IngestWriter
from .settings import Settings


def _application(env: dict[str, str], data_dir: Any) -> Iterator[DefiRealtime]:
    if env.get("PERSISTENCE_MODULE") == "eventsourcing.sqlite":
        data_dir.mkdir(parents=True, exist_ok=True)
    app = DefiRealtime(env=env)
    try:
        yield app
    finally:
        app.close()


def _writer(app: DefiRealtime) -> Iterator[IngestWriter]:
    writer = IngestWriter(app)
    writer.start()
    try:
        yield writer
    finally:
        writer.stop()


def _history(url: str, data_dir: Any) -> Iterator[SqlHistoryReadModel]:
    if url.startswith("sqlite"):
        data_dir.mkdir(parents=True, exist_ok=True)
    model = SqlHistoryReadModel(url)
    try:
        yield model
    finally:
        model.close()


async def _redis(url: str | None) -> AsyncIterator[Redis | None]:
    if url is None:
        yield None
        return
    client = Redis.from_url(url)
    try:
        yield client
    finally:
        await client.aclose()


async def _rabbit_fanout(
    url: str | None, exchange: str, node_id: str | None
) -> AsyncIterator[RabbitEventFanout | None]:
    if url is None:
        yield None
        return
    fanout = RabbitEventFanout(url, exchange=exchange, node_id=node_id)
    try:
        yield fanout
    finally:
        await fanout.stop()


async def _memory_fanout() -> AsyncIterator[InProcessEventFanout]:
    fanout = InProcessEventFanout()
    try:
        yield fanout
    finally:
        await fanout.stop()


def _positions(
    database_url: str | None, history_url: str
) -> Iterator[InMemoryPositionStore | SqlPositionStore]:
    # Embedded: the in-process fan-out has no consumers outside this process, which all
    # catch up from the log themselves, so the relay may start from the head each time.
    if database_url is None:
        yield InMemoryPositionStore()
        return
    store = SqlPositionStore(history_url)
    try:
        yield store
    finally:
        store.close()


# -- alert delivery -------------------------------------------------------------------------
# Nothing here connects on init: the queues connect in ``start()``, which only the roles that
# deliver call (entrypoints/notification_runtime.py).


def _delivery_log(url: str, data_dir: Any) -> Iterator[SqlDeliveryLog]:
    if url.startswith("sqlite"):
        data_dir.mkdir(parents=True, exist_ok=True)
    delivery_log = SqlDeliveryLog(url)
    try:
        yield delivery_log
    finally:
        delivery_log.close()


def _durable_positions(url: str, data_dir: Any) -> Iterator[SqlPositionStore]:
    # Durable even when embedded: a notification dispatcher that forgot its position would
    # notify every past transition again; the alert evaluator stores its position only after
    # the transitions it found are saved, and resumes from it (docs/adr/0008).
    if url.startswith("sqlite"):
        data_dir.mkdir(parents=True, exist_ok=True)
    store = SqlPositionStore(url)
    try:
        yield store
    finally:
        store.close()


async def _http_client() -> AsyncIterator[httpx.AsyncClient]:
    client = httpx.AsyncClient(headers={"User-Agent": "defi-realtime"})
    try:
        yield client
    finally:
        await client.aclose()


async def _rabbit_notifications(
    url: str | None, policy: RetryPolicy, name: str, prefetch: int
) -> AsyncIterator[RabbitNotificationQueue | None]:
    if url is None:
        yield None
        return
    queue = RabbitNotificationQueue(url, policy, name, prefetch=prefetch)
    try:
        yield queue
    finally:
        await queue.stop()


async def _memory_notifications(concurrency: int) -> AsyncIterator[InProcessNotificationQueue]:
    queue = InProcessNotificationQueue(concurrency=concurrency)
    try:
        yield queue
    finally:
        await queue.stop()


class Container(containers.DeclarativeContainer):
    """config -> infrastructure (Resources) -> services."""

    config = providers.Configuration()
    settings = providers.Dependency(instance_of=Settings)

    # -- infrastructure -------------------------------------------------------------------
    app = providers.Resource(_application, config.event_store_env, config.data_dir)
    history = providers.Resource(_history, config.history_url, config.data_dir)
    redis_client = providers.Resource(_redis, config.redis_url)
    rabbit_fanout = providers.Resource(
        _rabbit_fanout, config.amqp_url, config.amqp_exchange, config.node_id
    )
    memory_fanout = providers.Resource(_memory_fanout)
    writer = providers.Resource(_writer, app)

    # -- services -------------------------------------------------------------------------
    event_log = providers.Singleton(EventStoreLog, app)
    hot_projection = providers.Selector(
        config.hot_backend,
        memory=providers.Singleton(InMemoryHotProjection),
        redis=providers.Singleton(RedisHotProjection, redis_client, config.redis_prefix),
    )
    fanout = providers.Selector(
        config.fanout_backend,
        memory=memory_fanout,
        rabbitmq=rabbit_fanout,
    )
    positions = providers.Resource(_positions, config.database_url, config.history_url)
    hub = providers.Singleton(RealtimeHub, event_log, hot_projection)
    alert_positions = providers.Resource(_durable_positions, config.history_url, config.data_dir)

    # -- alert delivery -------------------------------------------------------------------
    retry_policy = providers.Singleton(
        RetryPolicy,
        max_attempts=config.notify_max_attempts,
        base_delay=config.notify_backoff_base,
        max_delay=config.notify_backoff_max,
        jitter=config.notify_jitter,
    )
    delivery_log = providers.Resource(_delivery_log, config.history_url, config.data_dir)
    notification_positions = providers.Resource(
        _durable_positions, config.history_url, config.data_dir
    )
    http_client = providers.Resource(_http_client)
    rabbit_notifications = providers.Resource(
        _rabbit_notifications,
        config.amqp_url,
        retry_policy,
        config.amqp_notifications,
        config.notify_concurrency,
    )
    memory_notifications = providers.Resource(_memory_notifications, config.notify_concurrency)
    notification_queue = providers.Selector(
        config.fanout_backend,
        memory=memory_notifications,
        rabbitmq=rabbit_notifications,
    )
    webhook_notifier = providers.Singleton(
        WebhookNotifier,
        http_client,
        timeout=config.webhook_timeout,
        allow_private=config.allow_private_webhooks,
    )
    email_notifier = providers.Singleton(
        SmtpEmailNotifier,
        config.smtp_host,
        config.smtp_port,
        config.smtp_from,
        starttls=config.smtp_starttls,
        username=config.smtp_username,
        password=config.smtp_password,
        timeout=config.webhook_timeout,
    )


def build_container(settings: Settings) -> Container:
    """A container configured from ``settings`` (nothing opened yet)."""
    container = Container(settings=settings)
    container.config.from_dict(
        {
            "event_store_env": settings.event_store_env,
            "data_dir": settings.data_dir,
            "history_url": settings.history_url,
            "database_url": settings.database_url,
            "redis_url": settings.redis_url,
            "redis_prefix": settings.redis_prefix,
            "amqp_url": settings.amqp_url,
            "amqp_exchange": settings.amqp_exchange,
            "node_id": settings.node_id,
            "hot_backend": "redis" if settings.redis_url else "memory",
            "fanout_backend": "rabbitmq" if settings.amqp_url else "memory",
            "amqp_notifications": settings.amqp_notifications,
            "allow_private_webhooks": settings.allow_private_webhooks,
            "webhook_timeout": settings.webhook_timeout,
            "smtp_host": settings.smtp_host,
            "smtp_port": settings.smtp_port,
            "smtp_from": settings.smtp_from,
            "smtp_starttls": settings.smtp_starttls,
            "smtp_username": settings.smtp_username,
            "smtp_password": settings.smtp_password,
            "notify_max_attempts": settings.notify_max_attempts,
            "notify_backoff_base": settings.notify_backoff_base,
            "notify_backoff_max": settings.notify_backoff_max,
            "notify_jitter": settings.notify_jitter,
            "notify_concurrency": settings.notify_concurrency,
        }
    )
    return container
