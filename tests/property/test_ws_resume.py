"""Property: resuming with ``since``, and subscribing with a snapshot, are gap-free and
duplicate-free.

Fake clients drive the realtime hub directly (no sockets) over a real SQLite event store
and ``EventStoreLog``. Hypothesis interleaves ingests, partial deliveries to the hub (the
node follower lagging the log), event-loop turns (replays half done), disconnects,
unsubscribes mid-replay, clients falling behind (tiny queues: the rest comes from the log)
and resubscribes with the last position each client saw. Whatever the interleaving, the
positions each client saw, across all its sessions, are exactly the positions of the
matching entries of the event log after its first subscription — in order, none missing,
none twice. A client that opted in to coalescing may skip superseded values, but never the
latest one. A client that subscribes with ``snapshot`` gets, in each session, the value of
every matching protocol as of the snapshot's position P (folded from the log independently
here), then exactly the matching entries after P.
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
from defi_realtime.application.hot_state import HotState
from defi_realtime.application.ingest import build_batch
from defi_realtime.application.realtime import CLOSE_SLOW_CONSUMER, Connection, RealtimeHub

T = TypeVar("T")
T0 = 1_765_000_000.0
PROTOCOLS = ("p0", "p1", "p2", "p3")
# (protocolIds filter, coalesce, snapshot): one client opts in to coalescing; the last two
# subscribe with a snapshot each time instead of resuming.
CLIENTS: tuple[tuple[tuple[str, ...] | None, bool, bool], ...] = (
    (("p0", "p1"), False, False),
    (("p1", "p2"), False, False),
    (None, False, False),
    (("p0", "p3"), True, False),
    (("p1", "p3"), False, True),
    (None, False, True),
)


class Session:
    """One snapshot subscription: its position, the snapshot and the live positions."""

    def __init__(self, position: int) -> None:
        self.position = position
        self.snapshot: dict[str, float] = {}
        self.received: list[int] = []


class FakeClient:
    """A client that remembers the last position it processed and resumes from it."""

    def __init__(
        self,
        hub: RealtimeHub,
        protocols: tuple[str, ...] | None,
        coalesce: bool,
        snapshot: bool,
        queue: int,
    ) -> None:
        self.hub = hub
        self.protocols = protocols
        self.coalesce = coalesce
        self.snapshot = snapshot
        self.sessions: list[Session] = []
        self.queue = queue
        self.connection: Connection | None = None
        self.subscription: str | None = None
        self.leaving: set[str] = set()  # unsubscribe sent: what still comes is ignored
        self.ended: set[str] = set()  # unsubscribed received: nothing may come any more
        self.failures: list[str] = []
        self.start: int | None = None
        self.received: list[int] = []
        self.slow_closes = 0

    @property
    def last_seen(self) -> int | None:
        return self.received[-1] if self.received else self.start

    def connect(self) -> None:
        if self.connection is None:
            self.connection = Connection(
                None, close=self._closed, write=self._write, max_queue=self.queue
            )
            self.hub.connect(self.connection)

    def subscribe(self) -> None:
        if self.connection is None or self.subscription is not None:
            return
        message: dict[str, Any] = {"type": "subscribe", "channel": "protocols"}
        if self.coalesce:
            message["coalesce"] = True
        if self.protocols is not None:
            message["params"] = {"protocolIds": list(self.protocols)}
        if self.snapshot:
            message["snapshot"] = True
        elif self.last_seen is not None:
            message["since"] = self.last_seen
        self.subscription = "?"  # until the subscribed message names it
        self.hub.receive(self.connection, json.dumps(message))

    def unsubscribe(self) -> None:
        if self.connection is None or self.subscription in (None, "?"):
            return
        sid, self.subscription = self.subscription, None
        assert sid is not None
        # Updates of it still queued will be ignored: the next subscription resumes from
        # the last update processed.
        self.leaving.add(sid)
        self.hub.receive(
            self.connection, json.dumps({"type": "unsubscribe", "subscriptionId": sid})
        )

    def disconnect(self) -> None:
        if self.connection is not None:
            self.hub.detach(self.connection)
            self.connection = None
            self.subscription = None

    def _closed(self, code: int, reason: str) -> None:
        assert code == CLOSE_SLOW_CONSUMER, (code, reason)
        self.slow_closes += 1
        # The transport reports the socket gone on a later loop turn, as a real one does.
        asyncio.get_running_loop().call_soon(self.disconnect)

    def _write(self, items: Sequence[tuple[bytes, bytes, bytes, Any]]) -> None:
        # The hub closes a connection whose write raises: keep what failed for the test.
        try:
            self._receive(items)
        except AssertionError as failure:
            self.failures.append(str(failure))
            raise

    def _receive(self, items: Sequence[tuple[bytes, bytes, bytes, Any]]) -> None:
        for prefix, sid, suffix, _ in items:
            message = json.loads(prefix + sid + suffix)
            kind = message["type"]
            if kind == "subscribed":
                assert self.subscription == "?", message
                assert message["recovered"] is True
                self.subscription = message["subscriptionId"]
                if self.snapshot:
                    self.sessions.append(Session(message["position"]))
                if self.start is None:
                    self.start = message["position"]
            elif kind == "update":
                assert message["subscriptionId"] not in self.ended, message
                if message["subscriptionId"] in self.leaving:
                    continue
                assert message["subscriptionId"] == self.subscription, message
                if message.get("snapshot"):
                    session = self.sessions[-1]
                    assert not session.received, "a snapshot frame after a live update"
                    assert message["position"] == session.position, message
                    assert message["data"]["id"] not in session.snapshot, "twice in a snapshot"
                    session.snapshot[message["data"]["id"]] = message["data"]["value"]
                    continue
                if self.snapshot:
                    self.sessions[-1].received.append(message["position"])
                self.received.append(message["position"])
            elif kind == "unsubscribed":
                self.ended.add(message["subscriptionId"])
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


# One round: ingest some observations (starting at protocol ``first``), let the hub
# follow the log by up to ``deliver`` positions (it lags the log), turn the event loop
# ``spin`` times (replays advance a page a turn), and churn one client.
Round = tuple[int, int, int, int, str, int]
CHURN = ("none", "reconnect", "disconnect", "unsubscribe")
rounds = st.lists(
    st.tuples(
        st.integers(0, len(PROTOCOLS) - 1),
        st.integers(0, 5),
        st.integers(0, 6),
        st.integers(0, 3),
        st.sampled_from(CHURN),
        st.integers(0, len(CLIENTS) - 1),
    ),
    min_size=3,
    max_size=25,
)


async def inline(function: Callable[..., T], *args: Any) -> T:
    """The hub's blocking log reads, run inline after a loop turn: replays advance only
    when the script lets the loop turn, so every interleaving is reproducible."""
    await asyncio.sleep(0)
    return function(*args)


async def scenario(app: DefiRealtime, script: list[Round], queue: int, page: int) -> None:
    # No read-ahead thread: it could still be reading when the store closes.
    event_log = EventStoreLog(app)
    # The node's own hot state, applied before the hub sees a batch (as the node follower
    # does): snapshots are read from it.
    state = HotState(record_facts=True)
    hub = RealtimeHub(event_log, state, replay_page=page, offload=inline)
    clients = [
        FakeClient(hub, protocols, coalesce, snapshot, queue)
        for protocols, coalesce, snapshot in CLIENTS
    ]
    clock = iter(range(1, 1_000_000))

    async def spin(turns: int) -> None:
        for _ in range(turns):
            await asyncio.sleep(0)

    async def deliver(limit: int) -> None:
        batch = event_log.read(hub.position, limit)
        if batch.last > hub.position:
            state.apply(batch)
            await hub.deliver(batch)

    for client in clients:
        client.connect()
        client.subscribe()
    for first, count, delivered, turns, churn, which in script:
        if count:
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
        if delivered:
            await deliver(delivered)
        await spin(turns)
        client = clients[which]
        if churn == "reconnect":
            # Disconnect, connect and subscribe with the last position seen.
            client.disconnect()
            client.connect()
            client.subscribe()
        elif churn == "disconnect":
            client.disconnect()
        elif churn == "unsubscribe":
            # Often mid-replay: the replay must stop and send nothing more for it.
            client.unsubscribe()
            client.subscribe()
        elif client.connection is None:
            client.connect()
            client.subscribe()

    # Settle: the hub follows the log to its head; every client (re)subscribes from where
    # it is and its replay runs to the end.
    head = event_log.head()
    while hub.position < head:
        await deliver(50)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 2
    while loop.time() < deadline:
        for client in clients:
            client.connect()
            client.subscribe()
        await spin(5)
        if not hub.replays.under_way() and all(
            c.connection and c.subscription != "?" for c in clients
        ):
            break
        await asyncio.sleep(0.002)
    await spin(10)
    assert not hub.replays.under_way(), "replays did not finish"

    entries = event_log.read(0, head + 1).entries
    for client in clients:
        assert not client.failures, client.failures
        assert client.start is not None
        if client.snapshot:
            check_sessions(client, entries, head)
            continue
        expected = [
            entry.position
            for entry in entries
            if entry.kind == "metric"
            and entry.position > client.start
            and (client.protocols is None or entry.key in client.protocols)
        ]
        if not client.coalesce:
            assert client.received == expected, (client.protocols, client.start)
            continue
        # Coalescing: some intermediate values may be skipped, but what arrives is in
        # order, never twice, and the latest value of every protocol always arrives.
        assert client.received == sorted(set(client.received))
        assert set(client.received) <= set(expected)
        latest = {entry.key: entry.position for entry in entries if entry.position in expected}
        assert set(latest.values()) <= set(client.received)


def check_sessions(client: FakeClient, entries: Sequence[Any], head: int) -> None:
    """Each snapshot is the log folded to its position; live updates follow it exactly."""
    assert client.sessions
    wanted = [
        entry
        for entry in entries
        if entry.kind == "metric" and (client.protocols is None or entry.key in client.protocols)
    ]
    for number, session in enumerate(client.sessions):
        values = {e.key: e.data["value"] for e in wanted if e.position <= session.position}
        final = number == len(client.sessions) - 1
        if final or session.received:
            assert session.snapshot == values, (session.position, client.protocols)
        else:  # cut short while the snapshot was being sent: what came of it is right
            assert session.snapshot.items() <= values.items(), (session.position, values)
        last = head if final else max(session.received, default=0)
        after = [e.position for e in wanted if session.position < e.position <= last]
        assert session.received == after, (session.position, client.protocols)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(script=rounds, queue=st.sampled_from([2, 5, 1_000]), page=st.sampled_from([1, 3, 2_000]))
def test_resume_with_since_and_snapshots_are_gap_free_and_duplicate_free(
    script: list[Round], queue: int, page: int
) -> None:
    with event_store() as app:
        asyncio.run(scenario(app, script, queue, page))
