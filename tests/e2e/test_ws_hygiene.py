"""WebSocket protocol hygiene: limits, malformed frames, heartbeats and idle timeout, origin
check, replay edge cases, backpressure (coalescing, slow consumers) and the AsyncAPI
document — over both transports where they differ (the lean asyncio one and the ASGI one).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from defi_realtime.application import realtime
from defi_realtime.application.hot_state import HotState
from defi_realtime.application.log import LogBatch, LogEntry
from defi_realtime.application.realtime import Connection, RealtimeHub
from defi_realtime.application.realtime.durable import Attachment
from defi_realtime.application.realtime.protocol import SMART_MONEY_KEYS, Filter
from defi_realtime.application.realtime.smart_money import Leaders, SmartMoneyWatch
from defi_realtime.application.smart_money_reader import SmartMoneyReader
from defi_realtime.entrypoints.ws_transport import RealtimeWebSocketProtocol
from tests.e2e.conftest import LiveServer, obs, start_server

T0 = 1_765_000_000.0
WALLET, PAIR, USDC, WETH = ("0x" + digits * 20 for digits in ("01", "aa", "11", "22"))
# A block with one swap of WALLET's (as an EVM collector records it).
RECORDED: Final = {
    "blocks": [{"number": 7, "hash": "0xb7", "timestamp": T0}],
    "facts": [
        {
            "kind": "swap",
            "block": 7,
            "block_hash": "0xb7",
            "tx_hash": "0xt7",
            "tx_index": 0,
            "log_index": 0,
            "pool": PAIR,
            "recipient": WALLET,
            "token0": USDC,
            "token1": WETH,
            "amount0_in": 1_000,
            "amount1_in": 0,
            "amount0_out": 0,
            "amount1_out": 1,
        }
    ],
}
TRANSPORTS = [
    pytest.param(RealtimeWebSocketProtocol, id="lean"),
    pytest.param("auto", id="asgi"),
]


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> Any:
    return request.param


@pytest.fixture
def live(tmp_path: Path, transport: Any) -> Iterator[LiveServer]:
    with start_server(tmp_path / "data", ws=transport) as server:
        yield server


@asynccontextmanager
async def socket_to(url: str, **kwargs: Any) -> AsyncIterator[ClientConnection]:
    async with asyncio.timeout(10):
        ws = await connect(url, open_timeout=5, close_timeout=2, **kwargs)
    try:
        yield ws
    finally:
        await ws.close()


async def recv(ws: ClientConnection, timeout: float = 3.0) -> Any:
    async with asyncio.timeout(timeout):
        return json.loads(await ws.recv())


async def send(ws: ClientConnection, message: Any) -> None:
    await ws.send(message if isinstance(message, str) else json.dumps(message))


async def ingest(server: LiveServer, observations: list[dict[str, Any]]) -> int:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
        response = await client.post(
            "/v2/ingest", json={"observations": observations}, headers=server.headers
        )
        assert response.status_code == 200, response.text
        return int((await client.get("/health")).json()["log_head"])


async def settle(server: LiveServer) -> int:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
        async with asyncio.timeout(10):
            while True:
                health = (await client.get("/health")).json()
                if health["node_position"] == health["log_head"]:
                    return int(health["log_head"])
                await asyncio.sleep(0.01)


async def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    for _ in itertools.count():
        if condition():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout}s")
        await asyncio.sleep(0.02)


async def subscribe(ws: ClientConnection, **message: Any) -> dict[str, Any]:
    await send(ws, {"type": "subscribe", "channel": "protocols", **message})
    frame: dict[str, Any] = await recv(ws)
    assert frame["type"] == "subscribed", frame
    return frame


# -- malformed frames and limits --------------------------------------------------------------

MALFORMED = [
    # 30,000 three-byte characters: under the limit in characters, over it in bytes.
    pytest.param(json.dumps({"type": "ping", "pad": "€" * 30_000}), "frame_too_large", id="bytes"),
    pytest.param('{"type": "unsubscribe", "subscriptionId": 7}', "unknown_subscription", id="sid"),
    pytest.param('{"type": "ping", "id": [1]}', "invalid_message", id="bad-request-id"),
    pytest.param(
        '{"type": "subscribe", "channel": "protocols", "coalesce": "yes"}',
        "invalid_message",
        id="coalesce-not-bool",
    ),
    pytest.param('{"type": "subscribe", "channel": "protocols", "since": 1e3}', "invalid_since"),
    pytest.param('{"type": "subscribe", "channel": "protocols", "since": 999999}', "invalid_since"),
]


@pytest.mark.parametrize(("frame", "code"), MALFORMED)
async def test_malformed_frames_get_an_error_and_the_other_subscriptions_stay_up(
    live: LiveServer, frame: str, code: str
) -> None:
    await ingest(live, [obs("aave-v3", 1.0, T0, name="Aave")])
    await settle(live)
    async with socket_to(live.ws_url) as ws:
        sid = (await subscribe(ws, params={"protocolIds": ["aave-v3"]}))["subscriptionId"]
        await send(ws, frame)
        error = await recv(ws)
        assert (error["type"], error["code"]) == ("error", code), error
        await ingest(live, [obs("aave-v3", 2.0, T0 + 1)])
        update = await recv(ws)
        assert (update["type"], update["subscriptionId"]) == ("update", sid)
        assert update["data"]["value"] == 2.0


async def test_request_ids_are_echoed(live: LiveServer) -> None:
    async with socket_to(live.ws_url) as ws:
        await send(ws, {"type": "ping", "id": "p-1"})
        pong = await recv(ws)
        assert (pong["type"], pong["id"]) == ("pong", "p-1")
        await send(ws, {"type": "subscribe", "channel": "tvl", "id": 7})
        error = await recv(ws)
        assert (error["code"], error["id"]) == ("invalid_channel", 7)


async def test_subscriptions_per_connection_are_limited(live: LiveServer) -> None:
    async with socket_to(live.ws_url) as ws:  # anonymous: 20
        for _ in range(20):
            await subscribe(ws)
        await send(ws, {"type": "subscribe", "channel": "protocols"})
        assert (await recv(ws))["code"] == "too_many_subscriptions"
        await send(ws, {"type": "ping"})
        assert (await recv(ws))["type"] == "pong"


async def test_idle_connections_are_closed_with_4000(tmp_path: Path, transport: Any) -> None:
    with start_server(tmp_path / "data", ws=transport, ws_idle_timeout=0.6) as server:
        async with socket_to(server.ws_url, ping_interval=None) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                async with asyncio.timeout(5):
                    await ws.recv()
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == realtime.CLOSE_IDLE


async def test_the_lean_transport_pings_and_keeps_clients_that_answer(tmp_path: Path) -> None:
    with start_server(
        tmp_path / "data",
        ws=RealtimeWebSocketProtocol,
        ws_idle_timeout=0.8,
        ws_heartbeat_interval=0.2,
    ) as server:
        # The client sends nothing, but its library answers the server's pings.
        async with socket_to(server.ws_url, ping_interval=None) as ws:
            await asyncio.sleep(2.0)
            await send(ws, {"type": "ping"})
            assert (await recv(ws))["type"] == "pong"


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [("https://app.example", True), ("https://evil.example", False), (None, True)],
)
async def test_origin_check(
    tmp_path: Path, transport: Any, origin: str | None, allowed: bool
) -> None:
    with start_server(
        tmp_path / "data", ws=transport, ws_allowed_origins="https://app.example"
    ) as server:
        try:
            async with socket_to(server.ws_url, origin=origin) as ws:  # type: ignore[arg-type]
                await send(ws, {"type": "ping"})
                assert (await recv(ws))["type"] == "pong"
            refused = None
        except InvalidStatus as error:
            refused = error.response.status_code
        except ConnectionClosed as error:
            refused = error.rcvd.code if error.rcvd is not None else -1
        assert (refused is None) == allowed, refused
        if not allowed:
            assert refused in (403, realtime.CLOSE_FORBIDDEN_ORIGIN)


async def test_batch_mode_sends_json_arrays(tmp_path: Path) -> None:
    with start_server(tmp_path / "data", ws=RealtimeWebSocketProtocol) as server:
        await ingest(server, [obs("aave-v3", 1.0, T0, name="Aave")])
        await settle(server)  # the first value's update has gone out before we subscribe
        async with socket_to(server.ws_url + "?batch=1") as ws:
            await send(ws, {"type": "subscribe", "channel": "protocols"})
            [subscribed] = await recv(ws)
            assert subscribed["type"] == "subscribed"
            await ingest(server, [obs("aave-v3", float(v), T0 + v) for v in range(2, 12)])
            updates: list[dict[str, Any]] = []
            while len(updates) < 10:
                frame = await recv(ws)
                assert isinstance(frame, list)
                updates.extend(frame)
            assert [u["data"]["value"] for u in updates] == [float(v) for v in range(2, 12)]


# -- replay edge cases --------------------------------------------------------------------


async def test_since_beyond_the_log_head_is_refused(live: LiveServer) -> None:
    head = await ingest(live, [obs("aave-v3", 1.0, T0, name="Aave")])
    await settle(live)
    async with socket_to(live.ws_url) as ws:
        await send(ws, {"type": "subscribe", "channel": "protocols", "since": head + 5})
        error = await recv(ws)
        assert (error["type"], error["code"]) == ("error", "invalid_since"), error
        # Nothing was subscribed: the next subscription still works, at the head.
        subscribed = await subscribe(ws, since=head)
        assert subscribed["recovered"] is True


async def test_unsubscribe_stops_a_replay_under_way(live: LiveServer) -> None:
    await ingest(live, [obs("aave-v3", 0.0, T0, name="Aave")])
    start = await settle(live)
    for chunk in range(4):
        await ingest(
            live,
            [
                obs("aave-v3", float(v), T0 + v)
                for v in range(1 + chunk * 1000, 1001 + chunk * 1000)
            ],
        )
    await settle(live)
    async with socket_to(live.ws_url) as ws:
        sid = (await subscribe(ws, since=start))["subscriptionId"]
        await send(ws, {"type": "unsubscribe", "subscriptionId": sid})
        replayed = 0
        while True:
            frame = await recv(ws)
            if frame["type"] == "unsubscribed":
                break
            replayed += 1
        assert replayed < 4_000
        await send(ws, {"type": "ping"})
        assert (await recv(ws))["type"] == "pong"  # nothing more of the replay came first


async def test_replayed_updates_carry_a_null_change24h(live: LiveServer) -> None:
    await ingest(live, [obs("aave-v3", 1.0, T0, name="Aave")])
    start = await settle(live)
    await ingest(live, [obs("aave-v3", 2.0, T0 + 60)])
    await settle(live)
    async with socket_to(live.ws_url) as ws:
        await subscribe(ws, since=start)
        frame = await recv(ws)
        assert frame["data"]["value"] == 2.0
        assert frame["data"]["change24h"] is None


# -- backpressure -------------------------------------------------------------------------------


def test_a_lagging_connection_coalesces_then_refuses_what_it_cannot_hold() -> None:
    async def scenario() -> None:
        written: list[bytes] = []
        closed: list[int] = []

        def write(items: Sequence[tuple[bytes, bytes, bytes, Any]]) -> None:
            written.extend(prefix + sid + suffix for prefix, sid, suffix, _ in items)

        def close(code: int, reason: str) -> None:
            closed.append(code)

        connection = Connection(None, close=close, write=write, max_queue=10)
        connection.pause()  # the socket's buffer is full: nothing is written
        for value in range(5):  # up to the high-water mark: plain appends
            assert connection.offer(b"a", b"", str(value).encode(), "a")
        for value in range(5, 500):  # past it: the newest value of "a" replaces the queued
            assert connection.offer(b"a", b"", str(value).encode(), "a")
        assert connection.live == 6
        assert connection.coalesced == 494
        assert len(connection.outbox) <= 2 * connection.max_queue
        connection.resume()
        assert written == [b"a0", b"a1", b"a2", b"a3", b"a4", b"a499"]
        connection.pause()
        accepted = [connection.offer(b"k", b"", str(key).encode(), f"k{key}") for key in range(20)]
        # Distinct values cannot be coalesced: past the bound an offer is refused (the hub
        # then serves that subscription from the log), and the connection stays open.
        assert accepted == [True] * 10 + [False] * 10
        assert connection.live == connection.max_queue
        assert not connection.closed
        assert closed == []
        connection.overflow()  # what the hub does once the client stopped reading
        assert closed == [realtime.CLOSE_SLOW_CONSUMER]
        assert connection.closed
        assert connection.live == 0

    asyncio.run(scenario())


def _raw_slow_client(port: int) -> socket.socket:
    """A client that subscribes to everything and then never reads."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /v2/realtime HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    payload = b'{"type":"subscribe","channel":"protocols"}'
    sock.sendall(bytes((0x81, 0x80 | len(payload))) + b"\x00\x00\x00\x00" + payload)
    return sock


async def test_slow_consumers_are_bounded_and_closed_while_a_reader_keeps_its_latency(
    tmp_path: Path,
) -> None:
    queue = 50
    with start_server(
        tmp_path / "data",
        ws=RealtimeWebSocketProtocol,
        ws_queue_size=queue,
        ws_send_buffer=8 * 1024,
        ws_send_timeout=1.0,
    ) as server:
        await ingest(server, [obs("probe", 1.0, T0, name="Probe")])
        await settle(server)
        hub: RealtimeHub = server.app.state.node.hub

        async def round_trip(reader: Any, round_: int) -> float:
            """A flood for the slow ones (~400 KB each), then the reader's probe: how long
            from the probe's ingest to its frame."""
            flood = [
                obs(f"bulk-{n % 50}", float(round_ * 1_000 + n), T0 + round_ * 1_000 + n, name="B")
                for n in range(250)
            ]
            await ingest(server, flood)
            started = time.perf_counter()
            await ingest(server, [obs("probe", 2.0 + round_, T0 + 10 + round_)])
            frame = await recv(reader, timeout=5)
            assert frame["data"]["value"] == 2.0 + round_
            return time.perf_counter() - started

        async with socket_to(server.ws_url) as reader:
            await subscribe(reader, params={"protocolIds": ["probe"]})
            # The same rounds with no slow consumer: this machine's latency, for the ratio.
            alone = sorted([await round_trip(reader, round_) for round_ in range(4)])
            slow = await asyncio.gather(
                *(
                    asyncio.to_thread(_raw_slow_client, int(server.base_url.rsplit(":", 1)[1]))
                    for _ in range(200)
                )
            )
            try:
                await eventually(lambda: len(hub.connections) >= 201)
                peak = 0
                latencies: list[float] = []
                for round_ in range(4, 12):
                    latencies.append(await round_trip(reader, round_))
                    peak = max(peak, sum(c.live for c in hub.connections))
                # Memory is bounded: never more than the queue bound per connection.
                assert peak <= 201 * queue
                # Every slow consumer was closed (4008): its queue stayed full, unread, for
                # WS_SEND_TIMEOUT.
                await eventually(lambda: sum(1 for c in hub.connections if not c.closed) == 1)
                latencies.sort()
                # 200 stalled sockets do not stall the reader: each round still fans the
                # flood out to 201 connections (3-6x the time of one on this box: medians
                # of 130-290 ms against 40-67 ms alone, before and after the metrics work
                # alike), but no frame waits on a stalled socket (that would take
                # WS_SEND_TIMEOUT, 1 s, for every round).
                median, baseline = latencies[len(latencies) // 2], alone[len(alone) // 2]
                assert median < min(8 * baseline + 0.05, 0.5), (latencies, alone)
                assert latencies[-1] < 1.0, latencies
                # The reader is still served.
                await send(reader, {"type": "ping"})
                assert (await recv(reader))["type"] == "pong"
            finally:
                for sock in slow:
                    sock.close()


# -- the AsyncAPI document ----------------------------------------------------------------------


async def test_the_asyncapi_document_covers_the_protocol(live: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live.base_url) as client:
        response = await client.get("/asyncapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["asyncapi"].startswith(("2.6", "3."))
    channel = document["channels"]["/v2/realtime"]
    messages = document["components"]["messages"]

    def types(operation: dict[str, Any]) -> set[str]:
        refs = [ref["$ref"].rsplit("/", 1)[1] for ref in operation["message"]["oneOf"]]
        return {messages[ref]["payload"]["properties"]["type"]["const"] for ref in refs}

    assert types(channel["publish"]) == set(realtime.CLIENT_MESSAGE_TYPES)
    assert types(channel["subscribe"]) == set(realtime.SERVER_MESSAGE_TYPES)
    error_codes = messages["error"]["payload"]["properties"]["code"]["enum"]
    assert set(error_codes) == set(realtime.ERROR_CODES)
    close_codes = {entry["code"] for entry in document["x-close-codes"]}
    assert close_codes == set(realtime.CLOSE_CODES)
    # Every constant CLOSE_* of the hub is listed.
    constants = {
        value
        for name, value in vars(realtime).items()
        if name.startswith("CLOSE_") and isinstance(value, int)
    }
    assert constants <= close_codes

    def resolve(schema: dict[str, Any]) -> list[dict[str, Any]]:
        """The branches of a schema's ``anyOf`` but null, with their ``$ref`` followed."""
        found: list[dict[str, Any]] = []
        for branch in schema.get("anyOf", [schema]):
            if branch == {"type": "null"}:
                continue
            if "$ref" not in branch:
                found.append(branch)
                continue
            target = document
            for part in branch["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            found.extend(resolve(target))
        return found

    subscribe_fields = set(messages["subscribe"]["payload"]["properties"])
    assert subscribe_fields == set(realtime.SUBSCRIBE_FIELDS)
    params = resolve(messages["subscribe"]["payload"]["properties"]["params"])
    # Filters, and the smart-money channel's own.
    assert [set(branch["properties"]) for branch in params] == [
        set(realtime.FILTER_KEYS),
        set(SMART_MONEY_KEYS),
    ]
    assert set(messages["subscribe"]["payload"]["properties"]["channel"]["enum"]) == set(
        realtime.CHANNELS
    )


def test_the_hub_emits_only_documented_message_types() -> None:
    """Every message the hub sends in a scripted session has a documented type."""

    async def scenario() -> set[str]:
        seen: set[str] = set()

        def write(items: Sequence[tuple[bytes, bytes, bytes, Any]]) -> None:
            for prefix, sid, suffix, _ in items:
                seen.add(json.loads(prefix + sid + suffix)["type"])

        class Log:
            def read(self, after: int, limit: int) -> LogBatch:
                return LogBatch(after=after, last=after)

            def head(self) -> int:
                return 5

        class FakeDurableStore:
            """One durable subscription of alice's, at position 0."""

            async def attach(self, owner: str, subscription_id: str) -> Attachment:
                return Attachment(subscription_id, "protocols", Filter(), 0)

            async def advance(self, acknowledged: Mapping[str, tuple[str, int]]) -> set[str]:
                return set()

        class NoMoves:
            def wallet_moves(self, chain_id: int) -> list[Any]:
                return []

        # Ranked by hand: the ranking's computation is tests/unit/test_smart_money_channel.
        watch = SmartMoneyWatch(SmartMoneyReader(NoMoves(), {1337: {}}))
        watch.update([Leaders.of(1337, "default", T0, [(WALLET, 80.0)])])
        hub = RealtimeHub(
            Log(),  # type: ignore[arg-type]
            HotState(record_facts=True),
            durable=FakeDurableStore(),
            ack_interval=3_600,
            smart_money=watch,
        )
        owner = Connection("alice", close=lambda code, reason: None, write=write)
        other = Connection("bob", close=lambda code, reason: None, write=write)
        hub.connect(owner)
        hub.connect(other)
        for message in (
            {"type": "ping"},
            {"type": "subscribe", "channel": "protocols"},
            {"type": "subscribe", "channel": "alerts"},
            {"type": "unsubscribe", "subscriptionId": "s1"},
            {"type": "nope"},
        ):
            hub.receive(owner, json.dumps(message))
        hub.receive(other, json.dumps({"type": "subscribe", "channel": "alerts"}))
        entries = (
            LogEntry(
                1,
                "metric",
                "aave-v3",
                {"metric": "tvl", "chain": "total", "value": 1.0, "observed_at": T0},
                T0,
            ),
            LogEntry(
                2,
                "alert_triggered",
                "rule-1",
                {"owner": "alice", "measure": 1.0, "observed_at": T0, "idempotency_key": "k"},
                T0,
            ),
            LogEntry(
                3,
                "anomaly_detected",
                "aave-v3",
                {
                    "series": "aave-v3:tvl:total",
                    "measure": "tvl",
                    "observed_at": T0,
                    "value": 1.0,
                    "score": 9.0,
                    "direction": "fall",
                    "reason": "a fall of 9 robust deviations",
                    "position": 1,
                },
                T0,
            ),
            LogEntry(
                4,
                "mev_retracted",
                "1337",
                {"keys": ["k1"], "block_hashes": ["0xab"]},
                T0,
            ),
            LogEntry(5, "evm_blocks_recorded", "1337", RECORDED, T0),
        )
        hub.receive(owner, json.dumps({"type": "subscribe", "channel": "protocols"}))
        hub.receive(owner, json.dumps({"type": "subscribe", "channel": "anomalies"}))
        hub.receive(owner, json.dumps({"type": "subscribe", "channel": "mev"}))
        hub.receive(owner, json.dumps({"type": "subscribe", "channel": "smart-money"}))
        hub.receive(owner, json.dumps({"type": "attach", "subscription": "d1"}))
        for _ in range(5):  # the lookup, then the replay's turns
            await asyncio.sleep(0)
        await hub.deliver(LogBatch(after=0, last=5, entries=entries))
        await asyncio.sleep(0)
        hub.receive(owner, json.dumps({"type": "ack", "subscriptionId": "d1", "position": 1}))
        assert hub.acks is not None
        await hub.acks.flush()
        hub.flush()
        hub.close()
        return seen

    seen = asyncio.run(scenario())
    assert seen == set(realtime.SERVER_MESSAGE_TYPES)


def test_alerts_reach_only_their_owner() -> None:
    async def scenario() -> dict[str, list[dict[str, Any]]]:
        got: dict[str, list[dict[str, Any]]] = {"alice": [], "bob": []}

        def writer(owner: str) -> Any:
            def write(items: Sequence[tuple[bytes, bytes, bytes, Any]]) -> None:
                got[owner].extend(json.loads(p + s + x) for p, s, x, _ in items)

            return write

        hub = RealtimeHub(None, HotState())  # type: ignore[arg-type]
        for owner in ("alice", "bob"):
            connection = Connection(owner, close=lambda code, reason: None, write=writer(owner))
            hub.connect(connection)
            hub.receive(connection, json.dumps({"type": "subscribe", "channel": "alerts"}))
        alert = {"owner": "alice", "measure": 2.0, "observed_at": T0, "idempotency_key": "k1"}
        await hub.deliver(
            LogBatch(after=0, last=1, entries=(LogEntry(1, "alert_triggered", "r1", alert, T0),))
        )
        return got

    got = asyncio.run(scenario())
    assert [m["type"] for m in got["alice"]] == ["subscribed", "alert"]
    assert got["alice"][1]["alertId"] == "r1"
    assert [m["type"] for m in got["bob"]] == ["subscribed"]
