"""Alert delivery in a running node: the dispatcher (one per deployment) and the workers.

Which processes deliver: the ``notifications`` worker role, and ``serve`` when there is no
broker (the in-process queue cannot be reached from another process). With RabbitMQ, any
number of ``worker notifications`` processes consume the work queue side by side; the
dispatcher runs in one of them at a time (PostgreSQL advisory lock) so jobs are enqueued
once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from ..application.following import NodeFollower, ProjectionRunner
from ..application.notifications import DeliveryWorker, NotificationDispatcher
from ..application.ports import DeliveryLog, NotificationQueue
from .election import elected
from .settings import Settings

if TYPE_CHECKING:
    from .runtime import Runtime

log = logging.getLogger(__name__)
T = TypeVar("T")

NOTIFICATIONS_LOCK_KEY = 0x64725F6E6F7469  # "dr_noti"
Supervise = Callable[[str, Callable[[], Awaitable[None]]], "asyncio.Task[None]"]


async def _resolve(value: Any) -> Any:
    if isinstance(value, Awaitable):
        return await value
    return value


def delivers_notifications(settings: Settings, role: str) -> bool:
    """Whether a process of ``role`` runs the dispatcher and delivery workers."""
    return role == "notifications" or (role == "serve" and settings.amqp_url is None)


@dataclass
class NotificationService:
    """The parts running in this process (for tests and shutdown)."""

    queue: NotificationQueue
    worker: DeliveryWorker
    dispatcher: NotificationDispatcher
    follower: NodeFollower

    async def stop(self) -> None:
        """Stop taking jobs (before the resources they use close)."""
        await self.queue.stop()


async def start_notifications(runtime: Runtime, supervise: Supervise) -> NotificationService:
    """Start delivering; register the dispatcher's follower on the fan-out (so call this
    before the fan-out starts)."""
    container = runtime.container
    settings = runtime.settings
    delivery_log: DeliveryLog = await _resolve(container.delivery_log())
    queue: NotificationQueue = await _resolve(container.notification_queue())
    worker = DeliveryWorker(
        {
            "webhook": await _resolve(container.webhook_notifier()),
            "email": await _resolve(container.email_notifier()),
        },
        delivery_log,
        container.retry_policy(),
        load_rule=runtime.app.get_alert_rule,
    )
    queue.consume(worker.handle)
    await queue.start()
    dispatcher = NotificationDispatcher(
        runtime.app.get_alert_rule,
        queue,
        await _resolve(container.notification_positions()),
        # RabbitMQ keeps its jobs; the in-process queue's go with the process, so they are
        # journaled in the delivery log until settled and enqueued again on start.
        journal=delivery_log if settings.amqp_url is None else None,
    )
    runner = ProjectionRunner(
        dispatcher.name, runtime.event_log, dispatcher.position, dispatcher.apply
    )
    follower = NodeFollower(
        runtime.event_log, [runner], poll_interval=max(settings.poll_interval, 0.1)
    )
    runtime.fanout.listen(follower.on_batch)

    async def dispatch() -> None:
        # Again after a crash of the loop: harmless, the in-process queue drops the keys it
        # already holds and the worker those that settled.
        await dispatcher.resume()
        await follower.run()

    runtime.tasks.append(
        supervise(
            "notification-dispatcher",
            elected(
                dispatch,
                database_url=settings.database_url,
                lock_key=NOTIFICATIONS_LOCK_KEY,
                what="dispatches alert notifications",
            ),
        )
    )
    return NotificationService(queue, worker, dispatcher, follower)
