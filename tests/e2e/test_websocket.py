"""End-to-end WebSocket tests: the real server, the ``websockets`` client, HTTP ingest."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.e2e.conftest import LiveServer, obs

# Every test that uses `server` runs on the embedded adapters and on PostgreSQL + Redis +
# RabbitMQ (see conftest.pytest_generate_tests).
BACKENDS = ("embedded", "production")

T0 = 1_765_000_000.0
FRAME_TIMEOUT = 3.0
QUIET = 0.3  # how long "no frame" is awaited
LATENCY_BUDGET = 0.1


@asynccontextmanager
async def socket(server: LiveServer, **kwargs: Any) -> AsyncIterator[ClientConnection]:
    async with asyncio.timeout(10):
        ws = await connect(server.ws_url, open_timeout=5, close_timeout=2, **kwargs)
    try:
        yield ws
    finally:
        await ws.close()


async def recv(ws: ClientConnection, timeout: float = FRAME_TIMEOUT) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        raw = await ws.recv()
    assert isinstance(raw, str), "the server sends JSON text frames"
    frame: dict[str, Any] = json.loads(raw)
    return frame


async def assert_silent(ws: ClientConnection, seconds: float = QUIET) -> None:
    try:
        async with asyncio.timeout(seconds):
            raw = await ws.recv()
    except TimeoutError:
        return
    pytest.fail(f"expected no frame, got {raw!r}")


async def send(ws: ClientConnection, message: Any) -> None:
    await ws.send(message if isinstance(message, str) else json.dumps(message))


async def subscribe(
    ws: ClientConnection, params: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    message: dict[str, Any] = {"type": "subscribe", "channel": "protocols", **extra}
    if params is not None:
        message["params"] = params
    await send(ws, message)
    frame = await recv(ws)
    assert frame["type"] == "subscribed", frame
    assert frame["channel"] == message["channel"]
    assert isinstance(frame["subscriptionId"], str)
    assert frame["subscriptionId"]
    assert isinstance(frame["position"], int)
    return frame


async def ping(ws: ClientConnection) -> None:
    await send(ws, {"type": "ping"})
    frame = await recv(ws)
    assert frame["type"] == "pong", frame


async def ingest(
    ahttp: httpx.AsyncClient, server: LiveServer, observations: list[dict[str, Any]]
) -> dict[str, Any]:
    response = await ahttp.post(
        "/v2/ingest", json={"observations": observations}, headers=server.headers
    )
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def settle(ahttp: httpx.AsyncClient) -> None:
    """Wait until the node has followed the log to its head (bounded)."""
    async with asyncio.timeout(5):
        while True:
            health = (await ahttp.get("/health")).json()
            if health["node_position"] == health["log_head"]:
                return
            await asyncio.sleep(0.01)


MARKET = [
    obs("aave-v3", 30e9, T0, name="Aave V3", category="Lending", chains=["Ethereum", "Arbitrum"]),
    obs("lido", 25e9, T0, name="Lido", category="Liquid Staking", chains=["Ethereum"]),
    obs("uniswap-v3", 5e9, T0, name="Uniswap V3", category="Dexs", chains=["Ethereum", "Polygon"]),
    obs("gmx", 0.5e8, T0, name="GMX", category="Derivatives", chains=["Arbitrum"]),
    obs("curve-dex", 2e9, T0, name="Curve DEX", category="Dexs", chains=["Ethereum"]),
]


async def seed(ahttp: httpx.AsyncClient, server: LiveServer) -> None:
    await ingest(ahttp, server, MARKET)
    await settle(ahttp)


def assert_update(frame: dict[str, Any], subscription_id: str, slug: str, value: float) -> None:
    assert frame["type"] == "update", frame
    assert frame["channel"] == "protocols"
    assert frame["subscriptionId"] == subscription_id
    assert isinstance(frame["position"], int)
    data = frame["data"]
    assert (data["id"], data["value"]) == (slug, value), frame
    assert isinstance(data["timestamp"], float)


# -- live updates -----------------------------------------------------------------------------


async def test_update_arrives_within_100ms_and_only_for_the_subscribed_protocol(
    ahttp: httpx.AsyncClient, server: LiveServer
) -> None:
    await seed(ahttp, server)
    async with socket(server) as ws:
        subscribed = await subscribe(ws, {"protocolIds": ["aave-v3"]})
        head = (await ahttp.get("/health")).json()["log_head"]
        assert subscribed["position"] == head
        sid = subscribed["subscriptionId"]

        latencies: list[float] = []
        last_position = subscribed["position"]
        for attempt in range(3):
            value = 31e9 + attempt
            at = T0 + 60 * (attempt + 1)
            started = time.perf_counter()
            # The other protocol changes in the same batch: its update must not arrive.
            result = await ingest(
                ahttp, server, [obs("lido", 26e9 + attempt, at), obs("aave-v3", value, at)]
            )
            returned = time.perf_counter()
            frame = await recv(ws)
            received = time.perf_counter()
            assert_update(frame, sid, "aave-v3", value)
            assert frame["data"]["timestamp"] == at
            assert frame["data"]["chain"] == "total"
            assert last_position < frame["position"] <= result["position"]
            last_position = frame["position"]
            latencies.append(received - returned)
            print(
                f"ingest->ws: {1000 * (received - returned):.1f} ms after the POST returned, "
                f"{1000 * (received - started):.1f} ms after it was sent"
            )
            await assert_silent(ws, 0.2)
    # Three measured tries; two of them (the median) must be within budget. Typical figures
    # here are 2-15 ms; the one tolerated slow try is for a noisy, shared 2-core machine
    # where the scheduler can stall a single try (run with -s to see every figure).
    assert sorted(latencies)[1] < LATENCY_BUDGET, latencies


async def test_filters_by_chain_category_and_min_tvl(
    ahttp: httpx.AsyncClient, server: LiveServer
) -> None:
    await seed(ahttp, server)
    async with socket(server) as ws:
        by_chain = (await subscribe(ws, {"chains": ["Arbitrum"]}))["subscriptionId"]
        by_category = (await subscribe(ws, {"categories": ["Dexs"]}))["subscriptionId"]
        by_tvl = (await subscribe(ws, {"minTvl": 1e9}))["subscriptionId"]
        combined = (
            await subscribe(ws, {"chains": ["Ethereum"], "categories": ["Dexs"], "minTvl": 3e9})
        )["subscriptionId"]

        at = T0 + 60
        await ingest(
            ahttp,
            server,
            [
                obs("aave-v3", 32e9, at),  # Arbitrum, Lending, big
                obs("aave-v3", 20e9, at, chain="Ethereum"),  # a non-Arbitrum chain of aave
                obs("lido", 26e9, at),  # Ethereum, Liquid Staking, big
                obs("uniswap-v3", 6e9, at),  # Ethereum/Polygon, Dexs, big
                obs("gmx", 0.6e8, at),  # Arbitrum, Derivatives, small
                obs("gmx", 0.6e8, at, chain="Arbitrum"),
                obs("curve-dex", 2.5e9, at),  # Ethereum, Dexs, mid
                # Listed in this very batch: Arbitrum, Dexs, big.
                obs("camelot", 4e9, at, name="Camelot", category="Dexs", chains=["Arbitrum"]),
            ],
        )
        got: dict[str, list[tuple[str, str]]] = {}
        # 3 + 3 + 6 + 2 frames in all (see below), then nothing.
        for _ in range(14):
            frame = await recv(ws)
            assert frame["type"] == "update", frame
            got.setdefault(frame["subscriptionId"], []).append(
                (frame["data"]["id"], frame["data"]["chain"])
            )
        await assert_silent(ws)

    assert got[by_chain] == [
        ("aave-v3", "total"),
        ("gmx", "total"),
        ("gmx", "Arbitrum"),
        ("camelot", "total"),
    ]
    assert got[by_category] == [
        ("uniswap-v3", "total"),
        ("curve-dex", "total"),
        ("camelot", "total"),
    ]
    assert got[by_tvl] == [
        ("aave-v3", "total"),
        ("aave-v3", "Ethereum"),
        ("lido", "total"),
        ("uniswap-v3", "total"),
        ("curve-dex", "total"),
        ("camelot", "total"),
    ]
    assert got[combined] == [("uniswap-v3", "total")]
    assert set(got) == {by_chain, by_category, by_tvl, combined}


async def test_ping_and_unsubscribe(ahttp: httpx.AsyncClient, server: LiveServer) -> None:
    await seed(ahttp, server)
    async with socket(server) as ws:
        await send(ws, {"type": "ping"})
        pong = await recv(ws)
        assert pong["type"] == "pong"
        first = (await subscribe(ws, {"protocolIds": ["aave-v3"]}))["subscriptionId"]
        second = (await subscribe(ws, {"protocolIds": ["aave-v3", "lido"]}))["subscriptionId"]
        assert first != second

        await send(ws, {"type": "unsubscribe", "subscriptionId": first})
        assert await recv(ws) == {"type": "unsubscribed", "subscriptionId": first}
        await send(ws, {"type": "unsubscribe", "subscriptionId": first})
        error = await recv(ws)
        assert (error["type"], error["code"]) == ("error", "unknown_subscription")

        await ingest(ahttp, server, [obs("aave-v3", 33e9, T0 + 60)])
        assert_update(await recv(ws), second, "aave-v3", 33e9)
        await assert_silent(ws)
        await ping(ws)


_CASE = itertools.count()
MALFORMED: list[tuple[str, str, str]] = [
    ("not-json", "{type: ping", "invalid_json"),
    ("json-array", '[{"type": "ping"}]', "invalid_message"),
    ("json-string", '"ping"', "invalid_message"),
    ("no-type", '{"channel": "protocols"}', "unknown_type"),
    ("unknown-type", '{"type": "subscribe-all"}', "unknown_type"),
    ("bad-channel", '{"type": "subscribe", "channel": "tvl"}', "invalid_channel"),
    (
        "params-not-object",
        '{"type": "subscribe", "channel": "protocols", "params": []}',
        "invalid_params",
    ),
    (
        "unknown-filter",
        '{"type": "subscribe", "channel": "protocols", "params": {"protocol": ["x"]}}',
        "invalid_params",
    ),
    (
        "ids-not-a-list",
        '{"type": "subscribe", "channel": "protocols", "params": {"protocolIds": "aave-v3"}}',
        "invalid_params",
    ),
    (
        "negative-min-tvl",
        '{"type": "subscribe", "channel": "protocols", "params": {"minTvl": -1}}',
        "invalid_params",
    ),
    (
        "nan-min-tvl",
        '{"type": "subscribe", "channel": "protocols", "params": {"minTvl": NaN}}',
        "invalid_params",
    ),
    ("bad-since", '{"type": "subscribe", "channel": "protocols", "since": "5"}', "invalid_since"),
    (
        "negative-since",
        '{"type": "subscribe", "channel": "protocols", "since": -1}',
        "invalid_since",
    ),
    (
        "unknown-field",
        '{"type": "subscribe", "channel": "protocols", "filter": {}}',
        "invalid_message",
    ),
    ("alerts-without-key", '{"type": "subscribe", "channel": "alerts"}', "unauthorized"),
    ("deeply-nested", "[" * 50_000 + "]" * 10_000, "invalid_json"),
    (
        "overflowing-min-tvl",
        '{"type": "subscribe", "channel": "protocols", "params": {"minTvl": 1%s}}' % ("0" * 400),
        "invalid_params",
    ),
    ("oversize-frame", json.dumps({"type": "ping", "pad": "x" * (65 * 1024)}), "frame_too_large"),
]


@pytest.mark.parametrize(
    ("frame", "code"), [pytest.param(frame, code, id=name) for name, frame, code in MALFORMED]
)
async def test_malformed_frame_gets_an_error_and_the_socket_stays_open(
    shared_ahttp: httpx.AsyncClient, shared_server: LiveServer, frame: str, code: str
) -> None:
    # One server for all cases; each case moves aave-v3 to a value of its own.
    ahttp, server = shared_ahttp, shared_server
    case = next(_CASE)
    value = 34e9 + case
    await seed(ahttp, server)
    async with socket(server) as ws:
        sid = (await subscribe(ws, {"protocolIds": ["aave-v3"]}))["subscriptionId"]
        await send(ws, frame)
        error = await recv(ws)
        assert error["type"] == "error", error
        assert error["code"] == code, error
        assert isinstance(error["message"], str)
        assert error["message"]
        # Still open: pings are answered and the subscription still delivers.
        await ping(ws)
        await ingest(ahttp, server, [obs("aave-v3", value, T0 + 60 + case)])
        assert_update(await recv(ws), sid, "aave-v3", value)
        await assert_silent(ws, 0.1)


async def test_binary_frames_are_handled_like_text(
    ahttp: httpx.AsyncClient, server: LiveServer
) -> None:
    async with socket(server) as ws:
        await ws.send(b'{"type": "ping"}')
        assert (await recv(ws))["type"] == "pong"
        await ws.send(b"\xff\xfe")
        assert (await recv(ws))["code"] == "invalid_json"
        await ping(ws)


# -- resume with `since` ----------------------------------------------------------------------


async def test_resume_with_since_replays_exactly_the_missed_updates(
    ahttp: httpx.AsyncClient, server: LiveServer
) -> None:
    await seed(ahttp, server)
    seen: list[tuple[int, float]] = []
    async with socket(server) as ws:
        sid = (await subscribe(ws, {"protocolIds": ["aave-v3"]}))["subscriptionId"]
        for i in range(3):
            await ingest(ahttp, server, [obs("aave-v3", 40e9 + i, T0 + 60 * (i + 1))])
            frame = await recv(ws)
            assert_update(frame, sid, "aave-v3", 40e9 + i)
            seen.append((frame["position"], frame["data"]["value"]))
    last_seen = seen[-1][0]

    # While disconnected: three aave changes (one of them a chain value), noise from lido.
    missed = [
        [obs("aave-v3", 41e9, T0 + 600), obs("lido", 27e9, T0 + 600)],
        [obs("aave-v3", 7e9, T0 + 600, chain="Arbitrum")],
        [obs("lido", 28e9, T0 + 660)],
        [obs("aave-v3", 42e9, T0 + 660)],
    ]
    for observations in missed:
        await ingest(ahttp, server, observations)
    await settle(ahttp)

    async with socket(server) as ws:
        subscribed = await subscribe(ws, {"protocolIds": ["aave-v3"]}, since=last_seen)
        sid = subscribed["subscriptionId"]
        assert subscribed["position"] > last_seen
        replayed = [await recv(ws) for _ in range(3)]
        for frame in replayed:
            assert frame["type"] == "update"
            assert frame["subscriptionId"] == sid
            assert frame["data"]["id"] == "aave-v3"
        assert [(f["data"]["chain"], f["data"]["value"]) for f in replayed] == [
            ("total", 41e9),
            ("Arbitrum", 7e9),
            ("total", 42e9),
        ]
        positions = [f["position"] for f in replayed]
        assert positions == sorted(positions)
        assert positions[0] > last_seen
        assert positions[-1] <= subscribed["position"]
        assert len(set(positions)) == 3
        await assert_silent(ws)

        # Then live, no duplicate of the replay.
        await ingest(ahttp, server, [obs("aave-v3", 43e9, T0 + 720)])
        live = await recv(ws)
        assert_update(live, sid, "aave-v3", 43e9)
        assert live["position"] > positions[-1]
        await assert_silent(ws)


@pytest.mark.parametrize(
    "backlog",
    [
        pytest.param(300, id="backlog-within-the-queue"),
        # More missed updates than the per-connection queue holds (WS_QUEUE_SIZE=1000):
        # the replay must pace itself, not drop the client as a slow consumer every time.
        pytest.param(1_500, id="backlog-beyond-the-queue"),
    ],
)
async def test_resume_while_ingest_continues_has_no_gap_and_no_duplicate(
    ahttp: httpx.AsyncClient, server: LiveServer, backlog: int
) -> None:
    await seed(ahttp, server)
    async with socket(server) as ws:
        await subscribe(ws, {"protocolIds": ["aave-v3"]})
        await ingest(ahttp, server, [obs("aave-v3", 1.0, T0 + 1)])
        last_seen = (await recv(ws))["position"]

    # Missed while away: a backlog the replay takes a while to read and send ...
    missed = [float(v) for v in range(2, 2 + backlog)]
    await ingest(ahttp, server, [obs("aave-v3", v, T0 + v) for v in missed])
    await settle(ahttp)  # delivered before the reconnect: the replay has to send it
    # ... and more arriving live while the client reconnects and the replay runs.
    live = [float(v) for v in range(2 + backlog, 42 + backlog)]

    async def producer() -> None:
        for value in live:
            await ingest(
                ahttp, server, [obs("aave-v3", value, T0 + value), obs("lido", value, T0 + value)]
            )

    task = asyncio.create_task(producer())
    try:
        await asyncio.sleep(0.05)  # reconnect in the middle of the stream
        async with socket(server) as ws:
            sid = (await subscribe(ws, {"protocolIds": ["aave-v3"]}, since=last_seen))[
                "subscriptionId"
            ]
            frames = [await recv(ws) for _ in missed + live]
            await task
            await assert_silent(ws)
    finally:
        task.cancel()
    assert all(f["type"] == "update" and f["subscriptionId"] == sid for f in frames)
    assert [f["data"]["value"] for f in frames] == missed + live
    positions = [f["position"] for f in frames]
    assert positions == sorted(set(positions))
    assert positions[0] > last_seen


async def test_since_at_the_head_replays_nothing(
    ahttp: httpx.AsyncClient, server: LiveServer
) -> None:
    await seed(ahttp, server)
    head = (await ahttp.get("/health")).json()["log_head"]
    async with socket(server) as ws:
        subscribed = await subscribe(ws, {"protocolIds": ["aave-v3"]}, since=head)
        assert subscribed["position"] == head
        await assert_silent(ws)
        await ingest(ahttp, server, [obs("aave-v3", 1.0, T0 + 1)])
        assert_update(await recv(ws), subscribed["subscriptionId"], "aave-v3", 1.0)


# -- authentication ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "how", [pytest.param("header", id="header"), pytest.param("query", id="query-string")]
)
async def test_invalid_api_key_is_refused_on_the_handshake(
    ahttp: httpx.AsyncClient, server: LiveServer, how: str
) -> None:
    bad = "drt_not-a-real-key"
    url = server.ws_url + (f"?api_key={bad}" if how == "query" else "")
    headers = {"X-API-Key": bad} if how == "header" else None
    refused: int | None = None
    try:
        async with asyncio.timeout(10):
            async with connect(url, additional_headers=headers, open_timeout=5) as ws:
                await ws.recv()
    except InvalidStatus as error:
        refused = error.response.status_code
        assert refused == 403
    except ConnectionClosed as error:
        refused = error.rcvd.code if error.rcvd is not None else None
        assert refused == 4001
    assert refused is not None, "the handshake with an invalid key was not refused"
    assert (await ahttp.get("/health")).json()["connections"] == 0


async def test_valid_api_key_is_accepted(ahttp: httpx.AsyncClient, server: LiveServer) -> None:
    async with socket(server, additional_headers=server.headers) as ws:
        await ping(ws)
        # With a key the alerts channel is open (only the key owner's alerts arrive).
        await send(ws, {"type": "subscribe", "channel": "alerts"})
        frame = await recv(ws)
        assert (frame["type"], frame["channel"]) == ("subscribed", "alerts")
        health = (await ahttp.get("/health")).json()
        assert health["connections"] == 1


async def test_connections_per_key_are_limited(
    ahttp: httpx.AsyncClient, server: LiveServer
) -> None:
    # A free-tier key holds 2 connections; a third is refused with a clear close code.
    async with (
        socket(server, additional_headers=server.headers) as first,
        socket(server, additional_headers=server.headers) as second,
    ):
        await ping(first)
        await ping(second)
        with pytest.raises((InvalidStatus, ConnectionClosed)) as refused:
            async with socket(server, additional_headers=server.headers) as third:
                await third.recv()
        if isinstance(refused.value, InvalidStatus):
            assert refused.value.response.status_code == 403
        else:
            assert refused.value.rcvd is not None
            assert refused.value.rcvd.code == 4029
        # Anonymous connections are not counted against the key.
        async with socket(server) as anonymous:
            await ping(anonymous)
        await ping(first)
