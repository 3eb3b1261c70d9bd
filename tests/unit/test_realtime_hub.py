"""The hub over a real SQLite event store: backpressure judges the client, and replays are
bounded (issue defects 4 and 7)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import pytest

from defi_realtime.adapters.event_store_log import EventStoreLog
from defi_realtime.application.app import DefiRealtime
from defi_realtime.application.hot_state import HotState
from defi_realtime.application.ingest import build_batch
from defi_realtime.application.realtime import CLOSE_SLOW_CONSUMER, Connection, RealtimeHub
from defi_realtime.application.realtime.replay import (
    MAX_REPLAYS_PER_ADDRESS,
    MAX_REPLAYS_PER_CONNECTION,
)
from tests.property.test_ws_resume import event_store

T = TypeVar("T")
T0 = 1_765_000_000.0


def _recorded(count: int) -> Iterator[tuple[DefiRealtime, EventStoreLog]]:
    """``count`` TVL observations of 500 protocols, recorded in one ingest."""
    with event_store() as app:
        observations = [
            {
                "protocol": f"p{n % 500}",
                "metric": "tvl",
                "chain": "total",
                "value": float(n),
                "observed_at": T0 + n,
                **({"name": f"P{n}"} if n < 500 else {}),
            }
            for n in range(count)
        ]
        [result] = app.ingest([build_batch(observations)])
        assert not result.rejected
        yield app, EventStoreLog(app)


@pytest.fixture(scope="module")
def store() -> Iterator[tuple[DefiRealtime, EventStoreLog]]:
    """50,000 TVL observations: a batch and a replay far larger than a socket's queue."""
    yield from _recorded(50_000)


@pytest.fixture(scope="module")
def short_store() -> Iterator[tuple[DefiRealtime, EventStoreLog]]:
    """5,000 observations: replays that outlast the test's gate, ten times cheaper."""
    yield from _recorded(5_000)


class Client:
    """A client socket: it reads whatever is written to it at once, unless ``paused``."""

    def __init__(self, hub: RealtimeHub, *, address: str | None = None, queue: int = 1_000):
        self.frames: list[dict[str, Any]] = []
        self.closed: list[int] = []
        self.connection = Connection(
            None, close=self._close, write=self._write, max_queue=queue, address=address
        )
        hub.connect(self.connection)
        self.hub = hub

    def _write(self, items: Sequence[tuple[bytes, bytes, bytes, Any]]) -> None:
        self.frames.extend(json.loads(p + s + x) for p, s, x, _ in items)

    def _close(self, code: int, reason: str) -> None:
        self.closed.append(code)

    def send(self, message: dict[str, Any]) -> None:
        self.hub.receive(self.connection, json.dumps(message))
        self.hub.flush()  # written now rather than on the next loop turn

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [frame for frame in self.frames if frame["type"] == kind]


# Generous: the replays-bounded test runs ~8 full replays of the 50,000-event log at once,
# a few seconds on an idle box, 30 s and more while the box is loaded; it ends on success.
async def wait_for(condition: Callable[[], bool], seconds: float = 90.0) -> None:
    async with asyncio.timeout(seconds):
        while not condition():  # noqa: ASYNC110 - polls the hub, which signals nothing
            await asyncio.sleep(0.005)


def test_a_50000_item_batch_reaches_a_reading_client_and_closes_one_that_stopped(
    store: tuple[DefiRealtime, EventStoreLog],
) -> None:
    _, event_log = store
    batch = event_log.read(0, 1_000_000)

    async def scenario() -> None:
        state = HotState(record_facts=True)
        hub = RealtimeHub(event_log, state, send_timeout=0.3)
        reader, coalescing, stopped = Client(hub), Client(hub), Client(hub)
        reader.send({"type": "subscribe", "channel": "protocols"})
        coalescing.send({"type": "subscribe", "channel": "protocols", "coalesce": True})
        stopped.send({"type": "subscribe", "channel": "protocols"})
        await asyncio.sleep(0)
        stopped.connection.pause()  # its socket buffer is full and stays full
        state.apply(batch)
        await hub.deliver(batch)  # one batch of every entry: 50,000 updates
        await wait_for(lambda: not hub.replays.under_way() and stopped.closed != [])

        metric = [entry.position for entry in batch.entries if entry.kind == "metric"]
        assert len(metric) == 50_000
        assert [frame["position"] for frame in reader.of_type("update")] == metric
        assert reader.closed == []
        assert not reader.connection.closed
        latest = {
            entry.key: entry.data["value"] for entry in batch.entries if entry.kind == "metric"
        }
        got = {f["data"]["id"]: f["data"]["value"] for f in coalescing.of_type("update")}
        assert got == latest
        assert coalescing.closed == []
        assert stopped.closed == [CLOSE_SLOW_CONSUMER]
        assert hub.fell_behind >= 2
        # Live again afterwards: the reader's subscription left its replay.
        assert all(not s.replaying for s in hub.index.of(reader.connection).values())

    asyncio.run(scenario())


def test_replays_are_bounded_per_connection_and_per_address(
    short_store: tuple[DefiRealtime, EventStoreLog],
) -> None:
    _, event_log = short_store
    gate = asyncio.Event()

    async def gated(function: Callable[..., T], *args: Any) -> T:
        await gate.wait()  # replays stay under way until the test lets them read
        return function(*args)

    async def scenario() -> None:
        hub = RealtimeHub(event_log, HotState(), offload=gated)
        await hub.seed(event_log.head())
        greedy = Client(hub, address="10.0.0.1")
        for _ in range(MAX_REPLAYS_PER_CONNECTION + 1):
            greedy.send({"type": "subscribe", "channel": "protocols", "since": 0})
        assert [f["code"] for f in greedy.of_type("error")] == ["too_many_replays"]
        assert len(greedy.of_type("subscribed")) == MAX_REPLAYS_PER_CONNECTION
        # Live subscriptions are not replays: still fine.
        greedy.send({"type": "subscribe", "channel": "prices"})
        assert len(greedy.of_type("subscribed")) == MAX_REPLAYS_PER_CONNECTION + 1

        # More connections from the same address share its bound; another address does not.
        others = [Client(hub, address="10.0.0.1") for _ in range(3)]
        refused = 0
        for other in others:
            for _ in range(2):
                other.send({"type": "subscribe", "channel": "protocols", "snapshot": True})
            refused += len(other.of_type("error"))
        assert refused == MAX_REPLAYS_PER_CONNECTION + 6 - MAX_REPLAYS_PER_ADDRESS
        elsewhere = Client(hub, address="10.0.0.2")
        elsewhere.send({"type": "subscribe", "channel": "protocols", "since": 0})
        assert elsewhere.of_type("error") == []

        # Once the replays are done, the bound is free again.
        for client in (greedy, *others):
            client.connection.max_queue = 10**9  # a reader with a lot of room
            client.connection.high_water = 10**9
        gate.set()
        await wait_for(lambda: not hub.replays.under_way())
        greedy.send({"type": "subscribe", "channel": "volumes", "since": 0})
        assert greedy.of_type("error") == [greedy.of_type("error")[0]]
        await wait_for(lambda: not hub.replays.under_way())

    asyncio.run(scenario())


def test_a_replay_yields_to_live_traffic(store: tuple[DefiRealtime, EventStoreLog]) -> None:
    """While a full-log replay runs, a live update still reaches another client at once."""
    _, event_log = store

    async def scenario() -> None:
        state = HotState(record_facts=True)
        hub = RealtimeHub(event_log, state)
        head = event_log.head()
        await hub.seed(head - 1)
        resumer, live = Client(hub, queue=10**6), Client(hub)
        resumer.send({"type": "subscribe", "channel": "protocols", "since": 0})
        live.send({"type": "subscribe", "channel": "protocols"})
        await wait_for(lambda: len(resumer.of_type("update")) > 0)
        # The replay is under way; a live batch arrives.
        last = event_log.read(head - 1, 1)
        await hub.deliver(last)
        await asyncio.sleep(0)
        assert [f["position"] for f in live.of_type("update")] == [head]
        assert hub.replays.under_way() == 1, "the replay had not finished: it yielded"
        await wait_for(lambda: not hub.replays.under_way())
        positions = [f["position"] for f in resumer.of_type("update")]
        assert positions == sorted(set(positions))
        assert positions[-1] == head

    asyncio.run(scenario())
