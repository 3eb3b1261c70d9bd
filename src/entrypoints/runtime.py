"""A running node: resolved services plus the background tasks that follow the log.

Roles: ``serve`` runs everything (API + WebSocket hub + relay + projections, and alert
delivery when there is no broker); workers run one part each (``relay``, ``projections``,
``notifications``, ``alerts``) for scale-out.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..adapters.event_store_log import EventStoreLog
from ..adapters.postgres_coordination import PostgresCommitListener
from ..application.app import DefiRealtime
from ..application.following import NodeFollower, ProjectionRunner, Relay
from ..application.ports import (
    AlertRuleReadModel,
    DeliveryLog,
    EventFanout,
    HistoryReadModel,
    HotProjection,
    PositionStore,
)
from ..application.realtime import RealtimeHub
from ..application.writer import IngestWriter
from .alerts_runtime import AlertService, evaluates_alerts, start_alerts
from .container import Container, build_container
from .election import elected
from .notification_runtime import (
    NotificationService,
    delivers_notifications,
    start_notifications,
)
from .settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

ROLES = ("serve", "relay", "projections", "notifications", "alerts")
RELAY_LOCK_KEY = 0x64725F72656C6179  # "dr_relay"
PROJECTIONS_LOCK_KEY = 0x64725F70726F6A  # "dr_proj"


async def _resolve(value: T | Awaitable[T]) -> T:
    if isinstance(value, Awaitable):
        return await value
    return value


@dataclass
class Runtime:
    settings: Settings
    container: Container
    app: DefiRealtime
    writer: IngestWriter
    event_log: EventStoreLog
    hot: HotProjection
    history: HistoryReadModel
    fanout: EventFanout
    positions: PositionStore
    hub: RealtimeHub
    relay: Relay | None = None
    follower: NodeFollower | None = None
    hot_runner: ProjectionRunner | None = None
    history_runner: ProjectionRunner | None = None
    delivery_log: DeliveryLog | None = None
    notifications: NotificationService | None = None
    alert_rules: AlertRuleReadModel | None = None
    alerts: AlertService | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    # Set once ``fanout.start()`` returned: role tasks start before it (handlers must be
    # registered first), and a publisher must not publish before it.
    fanout_started: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait_ready(self, timeout: float = 60.0) -> None:
        if self.follower is not None:
            await asyncio.wait_for(self.follower.ready.wait(), timeout)

    async def settle(self, timeout: float = 10.0) -> None:
        """Wait until this node has followed the log up to its head (tests, CLI)."""
        head = await asyncio.to_thread(self.event_log.head)
        deadline = asyncio.get_running_loop().time() + timeout
        while self.follower is not None and self.follower.position < head:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"node at {self.follower.position}, log head {head}")
            await asyncio.sleep(0.005)


def _supervise(name: str, run: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
    """Run a follower loop forever; if it crashes (e.g. a broker outage), restart it."""

    async def loop() -> None:
        delay = 0.2
        while True:
            started = time.monotonic()
            try:
                await run()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                if time.monotonic() - started > 30:
                    delay = 0.2  # it had been running fine: a new incident, start over
                log.exception("%s crashed; restarting in %.1fs", name, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    return asyncio.create_task(loop(), name=name)


@contextlib.asynccontextmanager
async def running(
    settings: Settings, role: str = "serve", *, follow: bool = True
) -> AsyncIterator[Runtime]:
    """Open the resources, start the role's background tasks; close everything on exit."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; expected one of {ROLES}")
    container = build_container(settings)
    await _resolve(container.init_resources())
    event_log: EventStoreLog | None = None
    # Full collections made rare (ADR 0012); the process's own setting comes back on exit.
    collector = gc.get_threshold()
    gc.set_threshold(*settings.collector_thresholds)
    try:
        event_log = await _resolve(container.event_log())
        app = await _resolve(container.app())
        runtime = Runtime(
            settings=settings,
            container=container,
            app=app,
            writer=await _resolve(container.writer()),
            event_log=event_log,
            hot=await _resolve(container.hot_projection()),
            history=await _resolve(container.history()),
            fanout=await _resolve(container.fanout()),
            positions=await _resolve(container.positions()),
            hub=await _resolve(container.hub()),
            delivery_log=await _resolve(container.delivery_log()),
            # The history read model also folds the rules (its ``alert_rules`` table).
            alert_rules=await _resolve(container.history()),
        )
        if follow:
            _start_role(runtime, role)
            if delivers_notifications(settings, role):
                runtime.notifications = await start_notifications(runtime, _supervise)
                if runtime.follower is None:
                    runtime.follower = runtime.notifications.follower
            if evaluates_alerts(role):
                runtime.alerts = await start_alerts(runtime, _supervise)
                if runtime.follower is None:
                    runtime.follower = runtime.alerts.follower
            await runtime.fanout.start()
            runtime.fanout_started.set()
            if role == "serve":
                await runtime.wait_ready()
        try:
            yield runtime
        finally:
            if runtime.notifications is not None:
                await runtime.notifications.stop()
            for task in runtime.tasks:
                task.cancel()
            for task in runtime.tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
    finally:
        gc.set_threshold(*collector)
        if event_log is not None:
            await asyncio.to_thread(event_log.close)
        await _resolve(container.shutdown_resources())


def _start_role(runtime: Runtime, role: str) -> None:
    settings = runtime.settings
    runtime.hot_runner = ProjectionRunner.for_hot(runtime.event_log, runtime.hot)
    runtime.history_runner = ProjectionRunner.for_history(runtime.event_log, runtime.history)
    if role in ("serve", "relay"):
        relay = Relay(
            runtime.event_log,
            runtime.fanout,
            runtime.positions,
            poll_interval=settings.poll_interval,
        )
        runtime.relay = relay
        runtime.writer.set_on_commit(lambda _position: relay.wake())
        channel = getattr(runtime.app.recorder, "channel_name", None)
        if settings.database_url is not None and isinstance(channel, str):
            # Several nodes: one relay publishes (advisory lock), woken by every node's
            # commits through PostgreSQL NOTIFY.
            listener = PostgresCommitListener(settings.database_url, channel)
            runtime.tasks.append(_supervise("commit-listener", lambda: listener.run(relay.wake)))

        async def run_relay() -> None:
            # The election can be won before the fan-out has connected (it starts after
            # every role registered its handlers): publishing then would crash the relay.
            await runtime.fanout_started.wait()
            await relay.run()

        runtime.tasks.append(
            _supervise(
                "relay",
                elected(
                    run_relay,
                    database_url=settings.database_url,
                    lock_key=RELAY_LOCK_KEY,
                    what="runs the relay",
                ),
            )
        )
    # Projections kept in this process's memory are applied by this node; projections in
    # shared stores (Redis, PostgreSQL) by one elected node, so nodes don't race on them.
    local: list[ProjectionRunner] = []
    shared: list[ProjectionRunner] = []
    (shared if settings.redis_url else local).append(runtime.hot_runner)
    (shared if settings.database_url else local).append(runtime.history_runner)
    if role == "serve":
        hub = runtime.hub

        async def deliver_to_hub(batch: Any) -> None:
            await hub.deliver(batch)

        # The hub waits only for the hot projection (change24h); the history commit
        # happens after delivery, off the latency path.
        early = [runner for runner in local if runner is runtime.hot_runner]
        late = [runner for runner in local if runner is not runtime.hot_runner]
        follower = NodeFollower(
            runtime.event_log,
            early,
            deliver_to_hub,
            on_ready=hub.seed,
            late_runners=late,
            poll_interval=max(settings.poll_interval, 0.2),
        )
        runtime.follower = follower
        runtime.fanout.listen(follower.on_batch)
        runtime.tasks.append(_supervise("follower", follower.run))
    if role in ("serve", "projections") and (shared or role == "projections"):
        projector = NodeFollower(
            runtime.event_log,
            shared or local,
            poll_interval=max(settings.poll_interval, 0.2),
        )
        runtime.fanout.listen(projector.on_batch)
        if role == "projections":
            runtime.follower = projector
        runtime.tasks.append(
            _supervise(
                "projector",
                elected(
                    projector.run,
                    database_url=settings.database_url,
                    lock_key=PROJECTIONS_LOCK_KEY,
                    what="applies the shared projections",
                ),
            )
        )
