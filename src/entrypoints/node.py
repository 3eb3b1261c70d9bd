"""A running process: the loops the role table plans, started from the container's objects.

``running(settings, process)`` opens what the process needs, starts one supervised task
per loop of ``roles.plan(process, settings)`` (the relay, the node follower, the shared
projector, the alert evaluator, the notification dispatcher), each elected on its lock when
the table says so, and closes everything on exit. ``serve`` and every ``worker`` go through
here; nothing else decides what runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

from ..adapters.event_store_log import EventStoreLog
from ..adapters.postgres_coordination import (
    LeadershipLost,
    PostgresCommitListener,
    PostgresLeadership,
)
from ..adapters.sql_delivery_log import SqlDeliveryLog
from ..adapters.sql_history import SqlHistoryReadModel
from ..application.alerting import AlertEvaluator
from ..application.app import DefiRealtime
from ..application.durable_subscriptions import DurableSubscriptions
from ..application.evm_collector import EvmCollector
from ..application.following import NodeFollower, ProjectionRunner, Relay
from ..application.ports import EventFanout, HotProjection, NotificationQueue, QueryCache
from ..application.realtime import RealtimeHub
from ..application.smart_money_reader import SmartMoneyReader
from ..application.writer import IngestWriter
from .container import Container, build_container, provide
from .roles import Follower, Lock, Loop, Placement, loops, plan
from .settings import Settings
from .startup import check_services

__all__ = ["Node", "elected", "running", "supervise"]

log = logging.getLogger(__name__)

LoopBody = Callable[[], Awaitable[None]]
RESTART_FIRST_DELAY = 0.2
RESTART_MAX_DELAY = 5.0
# A loop that ran this long before crashing had been healthy: its back-off starts over.
RESTART_HEALTHY_AFTER = 30.0
# How long shutting down waits to write the acknowledgements of durable subscriptions.
ACK_FLUSH_TIMEOUT = 5.0
# How long shutting down waits for each checkpoint (a large hot state takes seconds).
CHECKPOINT_FLUSH_TIMEOUT = 60.0


def supervise(name: str, run: LoopBody) -> asyncio.Task[None]:
    """Run a loop until it returns; if it crashes (e.g. a broker outage), log it and restart
    it after a back-off (0.2 s doubling to 5 s)."""

    async def loop() -> None:
        delay = RESTART_FIRST_DELAY
        while True:
            started = time.monotonic()
            try:
                await run()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                if time.monotonic() - started > RESTART_HEALTHY_AFTER:
                    delay = RESTART_FIRST_DELAY  # a new incident: start over
                log.exception("%s crashed; restarting in %.1fs", name, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RESTART_MAX_DELAY)

    return asyncio.create_task(loop(), name=name)


def elected(
    run: LoopBody, *, leadership: PostgresLeadership | None, lock: Lock | None, what: str
) -> LoopBody:
    """``run`` wrapped so that only the process holding ``lock`` (a PostgreSQL advisory lock)
    runs it; with no lock (per node, or embedded) ``run`` as is. A standby waits for the
    lock and takes over when the leader's session ends; a leader whose session ends stops
    ``run`` (``LeadershipLost``: ``supervise`` restarts it, as a candidate again)."""
    if lock is None or leadership is None:
        return run
    held_by, key, name = leadership, lock.key, lock.name

    async def lead() -> None:
        async with held_by.lead(key) as lost:
            log.info("this node now %s (lock %s)", what, name)
            body = asyncio.ensure_future(run())
            watch = asyncio.ensure_future(lost.wait())
            try:
                await asyncio.wait({body, watch}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (body, watch):
                    task.cancel()
                await asyncio.gather(body, watch, return_exceptions=True)
            if not body.cancelled() and (error := body.exception()) is not None:
                raise error
            if not body.cancelled() or not lost.is_set():
                return
        raise LeadershipLost(f"lost lock {name} while it {what}")

    return lead


@dataclass
class Node:
    """What a running process holds: the objects the API and the CLI use, and its loops."""

    settings: Settings
    process: str
    container: Container
    placements: tuple[Placement, ...]
    app: DefiRealtime
    writer: IngestWriter
    event_log: EventStoreLog
    hot: HotProjection
    history: SqlHistoryReadModel
    delivery_log: SqlDeliveryLog
    hub: RealtimeHub
    subscriptions: DurableSubscriptions
    fanout: EventFanout
    query_cache: QueryCache
    smart_money: SmartMoneyReader
    # The follower whose position this process reports (``/health``, metrics): the node
    # follower in ``serve``, the process's first follower in a worker.
    follower: NodeFollower | None = None
    # Every projection-like runner this process drives, by name (``/health``, metrics).
    runners: dict[str, ProjectionRunner] = field(default_factory=dict)
    # Every follower this process starts (metrics and ``/health/ready`` report their lag,
    # while running).
    followers: list[NodeFollower] = field(default_factory=list)
    relay: Relay | None = None
    evaluator: AlertEvaluator | None = None
    notification_queue: NotificationQueue | None = None
    evm_collectors: list[EvmCollector] = field(default_factory=list)
    # The advisory locks of this process's elected loops (PostgreSQL only).
    leadership: PostgresLeadership | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    # Set once ``fanout.start()`` returned: loops register their handlers before it, and the
    # relay must not publish before it.
    fanout_started: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until the node follower has caught up with the log. Fails when its
        projections moved no position for ``timeout`` seconds: a long log (a first start,
        a checkpoint discarded) takes as long as it takes, a stuck one does not (ADR 0046)."""
        follower = self.follower
        if follower is None:
            return
        reached = -1
        while True:
            try:
                async with asyncio.timeout(timeout):
                    await follower.ready.wait()
                return
            except TimeoutError:
                now = sum(r.position for r in [*follower.runners, *follower.late_runners])
                if now == reached:
                    raise
                reached = now

    async def settle(self, timeout: float = 10.0) -> None:
        """Wait until this node has followed the log up to its head (tests, CLI)."""
        head = await asyncio.to_thread(self.event_log.head)
        deadline = asyncio.get_running_loop().time() + timeout
        while self.follower is not None and self.follower.position < head:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"node at {self.follower.position}, log head {head}")
            await asyncio.sleep(0.005)

    # -- the loops ------------------------------------------------------------------------

    async def _start(self, loop: Loop) -> None:
        """Start ``loop``'s task (registering its handlers on the fan-out first)."""
        if loop.follower is Follower.STORE:
            await self._start_relay(loop)
        elif loop.follower is Follower.NODE:
            follower = await provide(self.container.node_follower)
            self._follow(follower, loop)
            self.follower = follower  # what serves clients: the one to report and wait for
            self.runners.update(_named(follower))
        elif loop.follower is Follower.PROJECTOR:
            projector = await provide(self.container.projector)
            self._follow(projector, loop)
            self.runners.update(_named(projector))
        elif loop.name == "alerts":
            self.evaluator = await provide(self.container.evaluator)
            follower = await provide(self.container.alert_follower)
            evaluator = self.evaluator

            async def evaluate() -> None:
                try:
                    await follower.run()
                finally:
                    evaluator.forget()  # whoever runs next rebuilds from the stores

            self._follow(follower, loop, evaluate)
            self.runners.update(_named(follower))
        elif loop.name == "anomalies":
            detector = await provide(self.container.anomaly_follower)
            anomaly_loop = await provide(self.container.anomaly_loop)

            async def detect() -> None:
                try:
                    await anomaly_loop.run()
                finally:
                    # Its checkpoint first (a restart or the next leader folds only the
                    # log after it), then whoever runs next starts from the stores.
                    try:
                        await detector.close()
                    except Exception:
                        log.exception("anomaly checkpoint not written")
                    detector.forget()

            self._follow(anomaly_loop, loop, detect)
            self.runners.update(_named(anomaly_loop))
        elif loop.name == "mev":
            mev = await provide(self.container.mev_follower)
            mev_loop = await provide(self.container.mev_loop)

            async def detect_mev() -> None:
                try:
                    await mev_loop.run()
                finally:
                    mev.forget()  # whoever runs next reads the stored position

            self._follow(mev_loop, loop, detect_mev)
            self.runners.update(_named(mev_loop))
        elif loop.name == "notifications":
            await self._start_notifications(loop)
        elif loop.name == "reconcile":
            await self._start_reconcile(loop)
        elif loop.name == "retention":
            await self._start_retention(loop)
        elif loop.name == "evm":
            await self._start_evm(loop)
        elif loop.name == "webhooks":
            webhooks = await provide(self.container.subscription_webhooks)
            self.tasks.append(
                supervise(
                    loop.name,
                    elected(
                        webhooks.run,
                        leadership=self.leadership,
                        lock=loop.lock,
                        what="delivers the webhooks of durable subscriptions",
                    ),
                )
            )
        else:  # pragma: no cover - the role table and this dispatch change together
            raise ValueError(f"no way to run loop {loop.name!r}")

    def _follow(self, follower: NodeFollower, loop: Loop, run: LoopBody | None = None) -> None:
        self.fanout.listen(follower.on_batch)
        self.followers.append(follower)
        if self.follower is None:
            self.follower = follower
        self.tasks.append(
            supervise(
                loop.name,
                elected(
                    run or follower.run,
                    leadership=self.leadership,
                    lock=loop.lock,
                    what=f"runs {', '.join(role.name for role in loop.roles)}",
                ),
            )
        )

    async def _start_relay(self, loop: Loop) -> None:
        relay = self.relay = await provide(self.container.relay)
        self.writer.set_on_commit(lambda _position: relay.wake())
        listener: PostgresCommitListener | None = await provide(self.container.commit_listener)
        if listener is not None:
            # Several nodes: one relay publishes (elected), woken by every node's commits.
            self.tasks.append(supervise("commit-listener", lambda: listener.run(relay.wake)))
        started = self.fanout_started

        async def run_relay() -> None:
            # The election can be won before the fan-out has connected (it starts after
            # every loop registered its handlers): publishing then would crash the relay.
            await started.wait()
            await relay.run()

        self.tasks.append(
            supervise(
                loop.name,
                elected(
                    run_relay,
                    leadership=self.leadership,
                    lock=loop.lock,
                    what="runs the relay",
                ),
            )
        )

    async def _start_notifications(self, loop: Loop) -> None:
        queue: NotificationQueue = await provide(self.container.notification_queue)
        self.notification_queue = queue
        worker = await provide(self.container.delivery_worker)
        dispatcher = await provide(self.container.dispatcher)
        follower = await provide(self.container.dispatch_follower)
        # Deliver from the work queue in every notifications process; dispatch (follow the
        # log and enqueue) in the elected one.
        queue.consume(worker.handle)
        await queue.start()

        async def dispatch() -> None:
            # Again after a crash of the loop: harmless, the in-process queue drops the keys
            # it already holds and the worker those that settled.
            await dispatcher.resume()
            await follower.run()

        self._follow(follower, loop, dispatch)
        self.runners.update(_named(follower))

    async def _start_reconcile(self, loop: Loop) -> None:
        reconciliation = await provide(self.container.reconciliation)
        app = self.app

        async def last_run() -> float | None:
            latest = await asyncio.to_thread(app.latest_reconciliation)
            return None if latest is None else float(latest["completed_at"])

        async def reconcile() -> None:
            await reconciliation.run_every(self.settings.reconcile_interval, last_run)

        self.tasks.append(
            supervise(
                loop.name,
                elected(
                    reconcile,
                    leadership=self.leadership,
                    lock=loop.lock,
                    what="reconciles the read models",
                ),
            )
        )

    async def _start_retention(self, loop: Loop) -> None:
        retention = await provide(self.container.detail_retention)
        if retention is None:
            # ``worker reconcile`` plans the role whatever the settings: nothing to drop.
            log.info("history retention off (HISTORY_DETAIL_RETENTION_DAYS unset)")
            return
        interval = self.settings.history_retention_interval
        self.tasks.append(
            supervise(
                loop.name,
                elected(
                    lambda: retention.run_every(interval),
                    leadership=self.leadership,
                    lock=loop.lock,
                    what="drops expired history detail",
                ),
            )
        )

    async def _start_evm(self, loop: Loop) -> None:
        collectors = await provide(self.container.evm_collectors)
        self.evm_collectors = collectors
        for collector in collectors:
            # One supervised task per chain: a chain whose nodes fail does not stop the
            # others. Each chain is elected on its own lock (one collector per chain across
            # the processes); two tasks of this process could not share one session lock.
            chain_lock = None
            if loop.lock is not None:
                chain_id = collector.spec.chain_id
                chain_lock = Lock(f"{loop.lock.name}_{chain_id}", loop.lock.key + chain_id)
            self.tasks.append(
                supervise(
                    f"{loop.name}-{collector.spec.chain_id}",
                    elected(
                        collector.run,
                        leadership=self.leadership,
                        lock=chain_lock,
                        what=f"collects chain {collector.spec.chain_id}",
                    ),
                )
            )


async def _write_checkpoints(container: Container) -> None:
    """Each in-memory state's checkpoint at a clean shutdown (ADR 0046): a restart then
    replays only what was logged after it. A failure leaves the previous checkpoint."""
    for checkpointer in await provide(container.checkpointers):
        try:
            async with asyncio.timeout(CHECKPOINT_FLUSH_TIMEOUT):
                await checkpointer.flush()
        except Exception:
            log.exception("checkpoint %s not written at shutdown", checkpointer.name)


def _named(follower: NodeFollower) -> dict[str, ProjectionRunner]:
    return {runner.name: runner for runner in [*follower.runners, *follower.late_runners]}


SOCKET_BURST: Final = 1_000
"""Sockets opened since the last freeze that make ``Refreezer`` freeze at the end of the next
young (generation 1) collection, without waiting for a full one (ADR 0057)."""


class Refreezer:
    """``gc.callbacks`` hook (``GC_REFREEZE``, ADR 0054): what a full collection left alive
    is in use (the sockets held, above all), so the next full collection need not scan it
    again. A full collection unfreezes first, and so scans everything (cyclic garbage
    frozen while it was alive is reclaimed there, not never), after one that ended with the
    interpreter's memory grown by more than ``rescan_growth`` (a fraction) since the last
    such scan (ADR 0058), and every ``rescan_every``-th full collection (0: never).

    The ``warmup`` seconds after ready do not count: full collections that end within them,
    and the first after them, take the memory they leave as the mark (ADR 0059). A node
    that starts with its state to build (a first start, from an empty log) grows as it
    fills, and that is what lives; the node makes no cyclic garbage that freezing keeps
    (``bench_gc_pause.py --garbage``: none at any stage, clients closed included), so a
    rescan then would be a pause for nothing.

    Growth is read from ``sys.getallocatedblocks()`` (the interpreter's small-object
    blocks, a few microseconds), never from ``gc.get_freeze_count()``, which walks every
    frozen object: ~30 ms at 300,000 of them, inside the pause it was meant to keep short.

    ``sockets`` (the node's open sockets) adds a freeze without a scan: when ``burst`` or
    more were opened since the last freeze, the end of the next generation-1 collection
    freezes what lives (the young generations are empty then), so a burst of connections
    is never scanned by a full collection (ADR 0057). What it also freezes is what reached
    the oldest generation since the last full collection, cyclic garbage included: that
    waits for a rescan, as above. What the memory grew by up to a burst freeze does not
    count as growth: it is the connections, alive; their garbage, once they close, does."""

    __slots__ = (
        "at_freeze",
        "baseline",
        "burst",
        "clock",
        "due",
        "full_collections",
        "rescan_every",
        "rescan_growth",
        "rescans",
        "sockets",
        "sockets_frozen",
        "warm_at",
    )

    def __init__(
        self,
        rescan_every: int,
        sockets: Callable[[], int] | None = None,
        burst: int = SOCKET_BURST,
        rescan_growth: float = 0.0,
        warmup: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rescan_every = rescan_every
        self.rescan_growth = rescan_growth
        self.full_collections = 0
        self.rescans = 0
        self.sockets = sockets
        self.burst = burst
        self.sockets_frozen = 0  # open sockets at the last freeze
        # Allocated blocks after the last scan of everything (the freeze at ready counts as
        # one), plus what burst freezes added since; lowered when the memory shrinks.
        self.baseline = sys.getallocatedblocks()
        self.at_freeze = self.baseline  # allocated blocks at the last freeze
        self.due = False  # the next full collection rescans
        self.clock = clock
        # While set, full collections set the mark rather than test it (None: warm).
        self.warm_at: float | None = clock() + warmup if warmup > 0 else None

    @property
    def warming(self) -> bool:
        return self.warm_at is not None

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        generation = info["generation"]
        if generation == 1 and phase == "stop" and self.sockets is not None:
            held = self.sockets()
            if held - self.sockets_frozen >= self.burst:
                gc.freeze()
                blocks = sys.getallocatedblocks()
                self.baseline += max(0, blocks - self.at_freeze)
                self.at_freeze = blocks
                self.sockets_frozen = held
            elif held < self.sockets_frozen:
                self.sockets_frozen = held  # closed ones: a burst counts from here
            return
        if generation != 2:
            return
        if phase == "start":
            self.full_collections += 1
            every = self.rescan_every and self.full_collections % self.rescan_every == 0
            if self.due or every:
                self.rescans += 1
                gc.unfreeze()
                self.baseline = -1  # set from what this scan leaves alive
        elif phase == "stop":
            gc.freeze()
            # What this collection left: every garbage it could reach is freed by now.
            blocks = sys.getallocatedblocks()
            if self.baseline < 0 or self.warm_at is not None:
                self.baseline = blocks
                if self.warm_at is not None and self.clock() >= self.warm_at:
                    self.warm_at = None  # this was the first full collection after
            else:
                # Frozen objects that died without a cycle were freed by reference
                # counting (closed connections): growth counts from the lowest point since.
                self.baseline = min(self.baseline, blocks)
            self.at_freeze = blocks
            self.due = self.rescan_growth > 0 and blocks > self.baseline * (1 + self.rescan_growth)
            if self.sockets is not None:
                self.sockets_frozen = self.sockets()


@contextlib.asynccontextmanager
async def running(
    settings: Settings,
    process: str = "serve",
    *,
    follow: bool = True,
    container: Container | None = None,
) -> AsyncIterator[Node]:
    """Open what ``process`` (``serve`` or a worker name) needs and start its loops;
    close everything on exit. ``follow=False`` starts no loop (maintenance commands);
    ``container``: one built already (the API builds it first, for its middleware)."""
    placements = plan(process, settings)
    # Fail fast, in one line, when a service this process uses does not answer.
    await check_services(settings, process)
    container = container or build_container(settings, process)
    # Full collections made rare (ADR 0012); the process's own setting comes back on exit.
    collector = gc.get_threshold()
    gc.set_threshold(*settings.collector_thresholds)
    refreezer: Refreezer | None = None
    node: Node | None = None
    try:
        node = Node(
            settings=settings,
            process=process,
            container=container,
            placements=placements,
            app=await provide(container.application),
            writer=await provide(container.writer),
            event_log=await provide(container.event_log),
            hot=await provide(container.hot_projection),
            history=await provide(container.history),
            delivery_log=await provide(container.delivery_log),
            hub=await provide(container.hub),
            subscriptions=await provide(container.durable_subscriptions),
            fanout=await provide(container.fanout),
            query_cache=await provide(container.query_cache),
            leadership=await provide(container.leadership),
            smart_money=await provide(container.smart_money),
        )
        if follow:
            for loop in loops(placements):
                await node._start(loop)
            await node.fanout.start()
            node.fanout_started.set()
            if process == "serve":
                await node.wait_ready()
            if settings.gc_freeze:
                # Code, settings and start-up state live as long as the node: out of every
                # later full collection's scan (ADR 0044). Collected first, so no garbage
                # of the start-up is frozen with them.
                gc.collect()
                gc.freeze()
                if settings.gc_refreeze:
                    connections = node.hub.connections
                    refreezer = Refreezer(
                        settings.gc_rescan_every,
                        lambda: len(connections),
                        rescan_growth=settings.gc_rescan_growth,
                        warmup=settings.gc_rescan_warmup,
                    )
                    gc.callbacks.append(refreezer)
        yield node
    finally:
        if node is not None:
            if node.notification_queue is not None:
                # Stop taking jobs before the resources they use close.
                await node.notification_queue.stop()
            # Acknowledgements gathered but not yet written: written now (best effort).
            with contextlib.suppress(Exception):
                async with asyncio.timeout(ACK_FLUSH_TIMEOUT):
                    await node.hub.flush_acknowledgements()
            node.hub.close()  # replays under way stop
            for task in node.tasks:
                task.cancel()
            for task in node.tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            # The loops are stopped, their states whole: write their last checkpoints.
            await _write_checkpoints(container)
        gc.set_threshold(*collector)
        if refreezer is not None and refreezer in gc.callbacks:
            gc.callbacks.remove(refreezer)
        if follow and settings.gc_freeze:
            gc.unfreeze()
        result = container.shutdown_resources()
        if result is not None:
            await result
