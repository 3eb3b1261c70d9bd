"""Durable subscriptions on the hub, over a real SQLite event store and the real
``DurableSubscriptions`` service: attach, acknowledgements (gathered, written together,
confirmed), ownership and deletion."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

from defi_realtime.adapters.event_store_log import EventStoreLog
from defi_realtime.application.app import DefiRealtime
from defi_realtime.application.durable_subscriptions import DurableSubscriptions
from defi_realtime.application.hot_state import HotState
from defi_realtime.application.ingest import build_batch
from defi_realtime.application.realtime import Connection, RealtimeHub
from defi_realtime.application.telemetry import NoTelemetry
from defi_realtime.domain.subscription import InvalidSubscription
from tests.property.test_ws_resume import event_store

T = TypeVar("T")
T0 = 1_765_000_000.0


async def inline(function: Callable[..., T], *args: Any) -> T:
    return function(*args)


async def inline_write(function: Callable[[], T]) -> T:
    return function()


class Client:
    def __init__(self, hub: RealtimeHub, owner: str | None) -> None:
        self.frames: list[dict[str, Any]] = []
        self.connection = Connection(owner, close=lambda *_: None, write=self._write)
        hub.connect(self.connection)
        self.hub = hub

    def _write(self, items: Sequence[tuple[bytes, bytes, bytes, Any]]) -> None:
        self.frames.extend(json.loads(p + s + x) for p, s, x, _ in items)

    def send(self, message: dict[str, Any]) -> None:
        self.hub.receive(self.connection, json.dumps(message))
        self.hub.flush()

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [frame for frame in self.frames if frame["type"] == kind]

    def positions(self) -> list[int]:
        return [frame["position"] for frame in self.of_type("update")]


def ingest_tvl(app: DefiRealtime, ticks: int, *slugs: str) -> int:
    """One TVL observation of each of ``slugs`` (listed on the way), values and times
    counting on from ``ticks``; the new count."""
    observations = []
    for slug in slugs:
        ticks += 1
        observations.append(
            {
                "protocol": slug,
                "metric": "tvl",
                "chain": "total",
                "value": float(ticks),
                "observed_at": T0 + ticks,
                "name": slug,
            }
        )
    [result] = app.ingest([build_batch(observations)])
    assert not result.rejected
    return ticks


@dataclass
class World:
    app: DefiRealtime
    event_log: EventStoreLog
    state: HotState
    hub: RealtimeHub
    store: DurableSubscriptions
    ticks: int = 0

    def ingest(self, *slugs: str) -> None:
        self.ticks = ingest_tvl(self.app, self.ticks, *slugs)

    async def follow(self) -> None:
        """The hub follows the log to its head."""
        batch = self.event_log.read(self.hub.position, 10_000)
        if batch.last > self.hub.position:
            self.state.apply(batch)
            await self.hub.deliver(batch)

    def metrics(self, *, after: int, of: Sequence[str]) -> list[int]:
        """The positions of the metric entries of ``of`` after ``after``."""
        entries = self.event_log.read(after, 10_000).entries
        return [e.position for e in entries if e.kind == "metric" and e.key in of]

    def head(self) -> int:
        return self.event_log.head()

    def advanced_events(self) -> int:
        notifications = self.app.recorder.select_notifications(start=None, limit=10_000)
        return sum(n.topic.endswith("Subscription.Advanced") for n in notifications)


@pytest.fixture
async def world() -> AsyncIterator[World]:
    with event_store() as app:
        event_log = EventStoreLog(app)
        state = HotState(record_facts=True)
        store = DurableSubscriptions(app, inline_write, read=inline)
        hub = RealtimeHub(event_log, state, offload=inline, durable=store, ack_interval=3_600)
        try:
            yield World(app, event_log, state, hub, store)
        finally:
            hub.close()


async def settle(turns: int = 20) -> None:
    for _ in range(turns):
        await asyncio.sleep(0)


async def test_attach_resumes_after_the_acknowledged_position_and_acks_are_written_together(
    world: World,
) -> None:
    world.ingest("aave")  # before the subscription: never sent
    before = world.head()
    view = await world.store.create("alice", "protocols", {"protocolIds": ["aave", "uni"]})
    assert view.position == before  # it starts at the head
    world.ingest("aave", "curve", "uni")
    await world.follow()
    wanted = world.metrics(after=view.position, of=("aave", "uni"))  # not curve
    assert len(wanted) == 2

    client = Client(world.hub, "alice")
    client.send({"type": "attach", "subscription": view.id, "id": 1})
    await settle()
    [subscribed] = client.of_type("subscribed")
    assert subscribed["subscriptionId"] == view.id
    assert (subscribed["acknowledged"], subscribed["id"]) == (view.position, 1)
    assert client.positions() == wanted

    # Acknowledgements are gathered: three acks, one Advanced event, one acked reply.
    before = world.advanced_events()
    for position in (wanted[0], wanted[1] - 1, wanted[1]):
        client.send({"type": "ack", "subscriptionId": view.id, "position": position, "id": "a"})
    assert client.of_type("acked") == []
    assert world.hub.acks is not None
    await world.hub.acks.flush()
    world.hub.flush()
    assert world.advanced_events() == before + 1
    assert client.of_type("acked") == [
        {"type": "acked", "subscriptionId": view.id, "position": wanted[1], "id": "a"}
    ]
    assert (await world.store.get("alice", view.id)).position == wanted[1]

    # A new connection attaches after it: only what came since.
    world.hub.detach(client.connection)
    world.ingest("uni")
    await world.follow()
    again = Client(world.hub, "alice")
    again.send({"type": "attach", "subscription": view.id})
    await settle()
    assert again.of_type("subscribed")[0]["acknowledged"] == wanted[1]
    assert again.positions() == [world.head()]


async def test_reattaching_on_the_same_node_resumes_after_an_ack_not_yet_written(
    world: World,
) -> None:
    view = await world.store.create("alice", "protocols")
    world.ingest("aave", "uni")
    await world.follow()
    client = Client(world.hub, "alice")
    client.send({"type": "attach", "subscription": view.id})
    await settle()
    first, second = client.positions()
    client.send({"type": "ack", "subscriptionId": view.id, "position": first})
    world.hub.detach(client.connection)

    again = Client(world.hub, "alice")
    again.send({"type": "attach", "subscription": view.id})
    await settle()
    assert again.of_type("subscribed")[0]["acknowledged"] == first
    assert again.positions() == [second]  # the acknowledged one does not come again
    assert (await world.store.get("alice", view.id)).position == view.position  # not yet


async def test_attach_and_ack_are_refused_when_they_should_be(world: World) -> None:
    view = await world.store.create("alice", "protocols")
    world.ingest("aave")
    await world.follow()

    mallory = Client(world.hub, "mallory")
    mallory.send({"type": "attach", "subscription": view.id, "id": 1})
    unknown = "00000000-0000-0000-0000-000000000000"
    mallory.send({"type": "attach", "subscription": unknown, "id": 2})
    mallory.send({"type": "attach", "subscription": "not-an-id", "id": 3})
    await settle()
    # Another owner's subscription is not found, exactly as an unknown or malformed id.
    assert [(e["code"], e["id"]) for e in mallory.of_type("error")] == [
        ("unknown_subscription", 1),
        ("unknown_subscription", 2),
        ("unknown_subscription", 3),
    ]
    assert mallory.of_type("update") == []

    anonymous = Client(world.hub, None)
    anonymous.send({"type": "attach", "subscription": view.id})
    assert anonymous.of_type("error")[0]["code"] == "unauthorized"

    alice = Client(world.hub, "alice")
    alice.send({"type": "attach", "subscription": view.id})
    alice.send({"type": "attach", "subscription": view.id})  # while the first looks it up
    await settle()
    alice.send({"type": "attach", "subscription": view.id})
    alice.send({"type": "subscribe", "channel": "prices"})
    plain = alice.of_type("subscribed")[-1]["subscriptionId"]
    alice.send({"type": "ack", "subscriptionId": plain, "position": 1})  # not durable
    alice.send({"type": "ack", "subscriptionId": view.id, "position": world.head() + 1})
    alice.send({"type": "ack", "subscriptionId": view.id, "position": -1})
    assert [e["code"] for e in alice.of_type("error")] == [
        "already_attached",
        "already_attached",
        "unknown_subscription",
        "invalid_ack",
        "invalid_ack",
    ]
    # Mallory cannot acknowledge for alice either.
    mallory.send({"type": "ack", "subscriptionId": view.id, "position": 1})
    assert mallory.of_type("error")[-1]["code"] == "unknown_subscription"


async def test_a_deleted_subscription_stops_its_attached_clients(world: World) -> None:
    view = await world.store.create("alice", "protocols")
    client = Client(world.hub, "alice")
    client.send({"type": "attach", "subscription": view.id})
    await settle()
    world.ingest("aave")
    await world.follow()
    position = client.positions()[-1]

    # Deleted elsewhere (another node): found out at the next acknowledgement's write.
    await world.store.close("alice", view.id)
    client.send({"type": "ack", "subscriptionId": view.id, "position": position})
    assert world.hub.acks is not None
    await world.hub.acks.flush()
    world.hub.flush()
    assert client.of_type("error")[-1]["code"] == "subscription_closed"
    assert client.of_type("acked") == []
    world.ingest("aave")
    await world.follow()
    assert client.positions() == [position]  # nothing more
    client.send({"type": "attach", "subscription": view.id})
    await settle()
    assert client.of_type("error")[-1]["code"] == "unknown_subscription"


class FlakyStore:
    """The real store, whose first write fails (the database is away for a moment)."""

    def __init__(self, store: DurableSubscriptions) -> None:
        self.store = store
        self.failures = 1

    async def attach(self, owner: str, subscription_id: str) -> Any:
        return await self.store.attach(owner, subscription_id)

    async def advance(self, acknowledged: Mapping[str, tuple[str, int]]) -> set[str]:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("database away")
        return await self.store.advance(acknowledged)


class Outcomes(NoTelemetry):
    """Records what the acknowledgement writes report."""

    def __init__(self) -> None:
        self.outcomes: list[tuple[str, int]] = []

    def subscription_acks_written(self, outcome: str, subscriptions: int) -> None:
        self.outcomes.append((outcome, subscriptions))


async def test_acknowledgements_a_failed_write_kept_are_written_next_time(world: World) -> None:
    flaky, telemetry = FlakyStore(world.store), Outcomes()
    hub = RealtimeHub(
        world.event_log,
        world.state,
        offload=inline,
        durable=flaky,
        ack_interval=0,
        telemetry=telemetry,
    )
    try:
        view = await world.store.create("alice", "protocols")
        world.ingest("aave", "uni")
        batch = world.event_log.read(0, 100)
        world.state.apply(batch)
        await hub.deliver(batch)
        client = Client(hub, "alice")
        client.send({"type": "attach", "subscription": view.id})
        await settle()
        last = client.positions()[-1]
        client.send({"type": "ack", "subscriptionId": view.id, "position": last})
        # Written by the hub's own timer (interval 0): fails once, then again and succeeds.
        async with asyncio.timeout(5):
            while not client.of_type("acked"):
                await asyncio.sleep(0.005)
                hub.flush()
        assert flaky.failures == 0
        assert (await world.store.get("alice", view.id)).position == last
        assert telemetry.outcomes == [("failed", 1), ("stored", 1)]
    finally:
        hub.close()


async def test_the_store_checks_a_subscription_as_a_subscribe_frame(world: World) -> None:
    with pytest.raises(InvalidSubscription) as channel:
        await world.store.create("alice", "everything")
    assert channel.value.field == "channel"
    with pytest.raises(InvalidSubscription) as params:
        await world.store.create("alice", "protocols", {"minTvl": -1})
    assert params.value.field == "params"
    assert await world.store.list("alice") == []
