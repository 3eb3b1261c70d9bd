"""Property: re-attaching to a durable subscription is gap-free and duplicate-free.

Fake clients drive the realtime hub directly (no sockets) over a real SQLite event store,
``EventStoreLog`` and the real ``DurableSubscriptions`` (acknowledgements stored as
``Advanced`` events). Hypothesis interleaves ingests, partial deliveries to the hub, event
loop turns (replays half done), acknowledgements at random points, writes of the gathered
acknowledgements, disconnects, re-attaches, clients falling behind (tiny queues) and node
crashes (a new hub: the acknowledgements it had not written are lost).

A client keeps no position of its own: it processes updates, acknowledges some, and on
each ``subscribed`` reply drops what it processed after the ``acknowledged`` position the
server resumes from (those come again). Whatever the interleaving:

- the server resumes after every acknowledgement it confirmed (``acked``) and after none
  the client did not send: confirmed <= acknowledged <= sent;
- on the same node, after the latest acknowledgement sent (written or not);
- what the client ends up with is exactly the matching entries of the log after the
  subscription's start: nothing acknowledged came twice, nothing after it was missed.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from defi_realtime.adapters.event_store_log import EventStoreLog
from defi_realtime.application.app import DefiRealtime
from defi_realtime.application.durable_subscriptions import DurableSubscriptions
from defi_realtime.application.hot_state import HotState
from defi_realtime.application.ingest import build_batch
from defi_realtime.application.realtime import CLOSE_SLOW_CONSUMER, Connection, RealtimeHub

T = TypeVar("T")
T0 = 1_765_000_000.0
PROTOCOLS = ("p0", "p1", "p2", "p3")
# (owner, protocolIds filter) of each durable subscription.
CLIENTS: tuple[tuple[str, tuple[str, ...] | None], ...] = (
    ("alice", ("p0", "p1")),
    ("alice", None),
    ("bob", ("p1", "p3")),
)
# Acknowledgements are written only when the script says so (or never, before a crash).
NEVER = 3_600.0


async def inline(function: Callable[..., T], *args: Any) -> T:
    """Blocking reads and writes run inline after a loop turn: reproducible interleavings."""
    await asyncio.sleep(0)
    return function(*args)


async def inline_write(function: Callable[[], T]) -> T:
    await asyncio.sleep(0)
    return function()


class Node:
    """The hub clients talk to; a crash replaces it (what it had not written is lost)."""

    def __init__(self, event_log: EventStoreLog, store: DurableSubscriptions, page: int) -> None:
        self.event_log = event_log
        self.store = store
        self.page = page
        self.state = HotState(record_facts=True)
        self.hub = self._hub()

    def _hub(self) -> RealtimeHub:
        return RealtimeHub(
            self.event_log,
            self.state,
            replay_page=self.page,
            offload=inline,
            durable=self.store,
            ack_interval=NEVER,
        )

    async def crash(self) -> None:
        position = self.hub.position
        # Its sockets go with it (and nothing queued on them is sent any more).
        for connection in list(self.hub.connections):
            self.hub.detach(connection)
        self.hub.close()
        self.hub = self._hub()
        await self.hub.seed(position)


class DurableClient:
    """A client that keeps nothing but its subscription's id."""

    def __init__(self, node: Node, owner: str, subscription_id: str, start: int, queue: int):
        self.node = node
        self.owner = owner
        self.id = subscription_id
        self.start = start
        self.queue = queue
        self.connection: Connection | None = None
        self.attached: bool | None = False  # None: attach sent, no answer yet
        self.processed: list[int] = []
        self.sent = start  # the latest position acknowledged
        self.confirmed = start  # the latest one the server confirmed stored
        self.sent_here = False  # an ack sent to the current hub (not lost in a crash)
        self.failures: list[str] = []
        self.socket = 0  # which socket is the current one: a closed one delivers nothing

    def connect(self) -> None:
        if self.connection is None:
            self.socket += 1
            socket = self.socket

            def write(items: Sequence[tuple[bytes, bytes, bytes, Any]]) -> None:
                if socket == self.socket:
                    self._write(items)

            self.connection = Connection(
                self.owner, close=self._closed, write=write, max_queue=self.queue
            )
            self.node.hub.connect(self.connection)

    def attach(self) -> None:
        if self.connection is None or self.attached is not False:
            return
        self.attached = None
        self.node.hub.receive(
            self.connection, json.dumps({"type": "attach", "subscription": self.id})
        )

    def ack(self) -> None:
        if self.connection is None or not self.attached or not self.processed:
            return
        position = self.processed[-1]
        self.sent = max(self.sent, position)
        self.sent_here = True
        self.node.hub.receive(
            self.connection,
            json.dumps({"type": "ack", "subscriptionId": self.id, "position": position}),
        )

    def disconnect(self) -> None:
        if self.connection is not None:
            self.node.hub.detach(self.connection)
            self.connection = None
            self.attached = False

    def crashed(self) -> None:
        self.connection = None
        self.attached = False
        self.sent_here = False

    def _closed(self, code: int, reason: str) -> None:
        assert code == CLOSE_SLOW_CONSUMER, (code, reason)
        asyncio.get_running_loop().call_soon(self.disconnect)

    def _write(self, items: Sequence[tuple[bytes, bytes, bytes, Any]]) -> None:
        try:
            for prefix, sid, suffix, _ in items:
                self._receive(json.loads(prefix + sid + suffix))
        except AssertionError as failure:
            self.failures.append(str(failure))
            raise

    def _receive(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "subscribed":
            assert self.attached is None, message
            assert message["subscriptionId"] == self.id, message
            assert message["recovered"] is True, message
            acknowledged = message["acknowledged"]
            assert self.confirmed <= acknowledged <= self.sent, (message, self.confirmed)
            if self.sent_here:
                # Same node: after the latest acknowledgement, written or not.
                assert acknowledged == self.sent, (message, self.sent)
            # What was processed after it comes again: not processed yet, as it were.
            self.processed = [p for p in self.processed if p <= acknowledged]
            self.attached = True
        elif kind == "update":
            assert message["subscriptionId"] == self.id, message
            assert self.attached, message
            self.processed.append(message["position"])
        elif kind == "acked":
            assert message["subscriptionId"] == self.id, message
            assert message["position"] <= self.sent, message
            self.confirmed = max(self.confirmed, message["position"])
        else:
            raise AssertionError(f"unexpected message {message}")


@contextmanager
def event_store() -> Iterator[DefiRealtime]:
    with tempfile.TemporaryDirectory() as directory:
        app = DefiRealtime(
            env={
                "PERSISTENCE_MODULE": "eventsourcing.sqlite",
                "SQLITE_DBNAME": str(Path(directory) / "events.db"),
            }
        )
        try:
            yield app
        finally:
            app.close()


# One round: ingest ``count`` observations (from protocol ``first``), let the hub follow the
# log by up to ``deliver`` positions, turn the loop ``turns`` times, then one client does
# ``action`` (or the node crashes / writes its acknowledgements).
ACTIONS = ("none", "ack", "ack", "ack", "reattach", "reattach", "disconnect", "write", "crash")
Round = tuple[int, int, int, int, str, int]
rounds = st.lists(
    st.tuples(
        st.integers(0, len(PROTOCOLS) - 1),
        st.integers(0, 5),
        st.integers(0, 12),
        st.integers(0, 8),
        st.sampled_from(ACTIONS),
        st.integers(0, len(CLIENTS) - 1),
    ),
    min_size=5,
    max_size=30,
)


async def scenario(app: DefiRealtime, script: list[Round], queue: int, page: int) -> None:
    event_log = EventStoreLog(app)
    store = DurableSubscriptions(app, inline_write, read=inline)
    node = Node(event_log, store, page)
    clock = iter(range(1, 1_000_000))

    def ingest(first: int, count: int) -> None:
        observations = []
        for offset in range(count):
            slug = PROTOCOLS[(first + offset) % len(PROTOCOLS)]
            tick = next(clock)
            observations.append(
                {
                    "protocol": slug,
                    "metric": "tvl",
                    "chain": "total",
                    "value": float(tick),
                    "observed_at": T0 + tick,
                    "name": slug,
                }
            )
        [result] = app.ingest([build_batch(observations)])
        assert not result.rejected

    async def deliver(limit: int) -> None:
        hub = node.hub
        batch = event_log.read(hub.position, limit)
        if batch.last > hub.position:
            node.state.apply(batch)
            await hub.deliver(batch)

    async def spin(turns: int) -> None:
        for _ in range(turns):
            await asyncio.sleep(0)

    ingest(0, 3)  # history before the subscriptions: never sent
    clients = []
    for owner, protocols in CLIENTS:
        params = None if protocols is None else {"protocolIds": list(protocols)}
        view = await store.create(owner, "protocols", params)
        clients.append(DurableClient(node, owner, view.id, view.position, queue))
    for client in clients:
        client.connect()
        client.attach()

    for first, count, delivered, turns, action, which in script:
        if count:
            ingest(first, count)
        if delivered:
            await deliver(delivered)
        await spin(turns)
        client = clients[which]
        if action == "ack":
            client.ack()
        elif action == "reattach":
            client.disconnect()
            client.connect()
            client.attach()
            await spin(turns)  # the lookup under way, or done
        elif action == "disconnect":
            client.disconnect()
        elif action == "write":
            assert node.hub.acks is not None
            await node.hub.acks.flush()
        elif action == "crash":
            await node.crash()
            for each in clients:
                each.crashed()
        elif client.connection is None:
            client.connect()
            client.attach()

    # Settle: the hub follows the log to its head; every client attaches and its replay
    # runs to the end.
    head = event_log.head()
    while node.hub.position < head:
        await deliver(50)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 2
    while loop.time() < deadline and not any(c.failures for c in clients):
        for client in clients:
            client.connect()
            client.attach()
        await spin(5)
        if not node.hub.replays.under_way() and all(c.attached for c in clients):
            break
        await asyncio.sleep(0.002)
    await spin(10)
    node.hub.close()
    for client in clients:
        assert not client.failures, client.failures
    assert not node.hub.replays.under_way(), "replays did not finish"

    entries = event_log.read(0, head + 1).entries
    for client, (_, protocols) in zip(clients, CLIENTS, strict=True):
        expected = [
            entry.position
            for entry in entries
            if entry.kind == "metric"
            and entry.position > client.start
            and (protocols is None or entry.key in protocols)
        ]
        assert client.processed == expected, (protocols, client.start)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(script=rounds, queue=st.sampled_from([2, 5, 1_000]), page=st.sampled_from([1, 3, 2_000]))
def test_reattaching_to_a_durable_subscription_is_gap_free_and_duplicate_free(
    script: list[Round], queue: int, page: int
) -> None:
    with event_store() as app:
        asyncio.run(scenario(app, script, queue, page))
