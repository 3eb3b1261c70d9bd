"""Live frames are always true (issue defects 4, 6 and 8), on both backends.

* A legal batch larger than a connection's queue reaches a client that keeps reading, whole
  (or the latest per value with ``coalesce``); nobody is closed for the batch's size.
* Each frame's facts are those of its own series and position: a volume's ``change24h`` is
  the volume's, a late observation says ``late: true``, and with ``REDIS_URL`` (the
  production backend) the hub reads them from the node's own fold, never from Redis ahead
  of the elected projector.
* ``subscribe`` with ``snapshot`` sends the current values, then live updates after them.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection

from tests.e2e.conftest import LiveServer, obs
from tests.e2e.test_websocket import (
    T0,
    assert_silent,
    ingest,
    recv,
    send,
    settle,
    socket,
    subscribe,
)

BACKENDS = ("embedded", "production")
DAY = 86_400.0


async def updates(ws: ClientConnection, count: int) -> list[dict[str, Any]]:
    frames = []
    for _ in range(count):
        frame = await recv(ws, timeout=20)
        assert frame["type"] == "update", frame
        frames.append(frame)
    return frames


# -- defect 4: backpressure judges the client, not the batch -------------------------------


@pytest.mark.parametrize("coalesce", [False, True], ids=["every-update", "coalesce"])
async def test_a_batch_larger_than_the_queue_reaches_a_reading_client(
    ahttp: httpx.AsyncClient, server: LiveServer, coalesce: bool
) -> None:
    """1,100 matching observations in one POST, queue 1,000 (the default): the reader is
    not closed, and gets all 1,100 in log order (coalesce: at least the latest of each)."""
    await ingest(ahttp, server, [obs(f"p{n}", 1.0, T0, name=f"P{n}") for n in range(1_100)])
    await settle(ahttp)
    async with socket(server, max_queue=None) as ws:
        subscribed = await subscribe(ws, coalesce=coalesce) if coalesce else await subscribe(ws)
        result = await ingest(ahttp, server, [obs(f"p{n}", 2.0 + n, T0 + 60) for n in range(1_100)])
        seen: dict[str, float] = {}
        positions: list[int] = []
        while len(seen) < 1_100:
            frame = (await updates(ws, 1))[0]
            positions.append(frame["position"])
            seen[frame["data"]["id"]] = frame["data"]["value"]
        assert seen == {f"p{n}": 2.0 + n for n in range(1_100)}
        assert positions == sorted(set(positions)), "in log order, none twice"
        assert subscribed["position"] < positions[0]
        assert positions[-1] <= result["position"]
        if not coalesce:
            assert len(positions) == 1_100
        await send(ws, {"type": "ping"})
        assert (await recv(ws))["type"] == "pong"  # still open


# -- defect 6: each frame's facts are its own -----------------------------------------------


async def test_a_volume_frame_carries_the_volumes_own_change(
    ahttp: httpx.AsyncClient, server: LiveServer
) -> None:
    """TVL 100 -> 200 and volume 10 -> 11 a day apart: the volume frame says +10 %, the
    TVL frame +100 %."""
    await ingest(
        ahttp,
        server,
        [obs("dex", 100.0, T0, name="Dex"), obs("dex", 10.0, T0, metric="volume_24h")],
    )
    await settle(ahttp)
    async with socket(server) as ws:
        await subscribe(ws, {"protocolIds": ["dex"]})
        await send(
            ws, {"type": "subscribe", "channel": "volumes", "params": {"protocolIds": ["dex"]}}
        )
        assert (await recv(ws))["type"] == "subscribed"
        await ingest(
            ahttp,
            server,
            [obs("dex", 200.0, T0 + DAY), obs("dex", 11.0, T0 + DAY, metric="volume_24h")],
        )
        frames = {frame["channel"]: frame["data"] for frame in await updates(ws, 2)}
        assert frames["protocols"]["change24h"] == pytest.approx(100.0)
        assert frames["volumes"]["metric"] == "volume_24h"
        assert frames["volumes"]["change24h"] == pytest.approx(10.0)
        assert frames["protocols"]["late"] is False
        assert frames["volumes"]["late"] is False


async def test_a_late_observation_is_marked_late(
    ahttp: httpx.AsyncClient, server: LiveServer
) -> None:
    await ingest(ahttp, server, [obs("lend", 500.0, T0 + 3_600, name="Lend")])
    await settle(ahttp)
    async with socket(server) as ws:
        await subscribe(ws, {"protocolIds": ["lend"]})
        # Older than the current value: history, not the current TVL.
        await ingest(ahttp, server, [obs("lend", 400.0, T0)])
        late = (await updates(ws, 1))[0]["data"]
        assert (late["value"], late["late"], late["change24h"]) == (400.0, True, None)
        await ingest(ahttp, server, [obs("lend", 550.0, T0 + 7_200)])
        current = (await updates(ws, 1))[0]["data"]
        assert (current["value"], current["late"]) == (550.0, False)
    # REST agrees once its projection has applied it (with Redis, the shared projector may
    # apply after this node's hub has sent the frame).
    async with asyncio.timeout(5):
        while (await ahttp.get("/v2/protocols/lend")).json()["tvl"] != 550:  # noqa: ASYNC110
            await asyncio.sleep(0.02)  # polls another process's projection over HTTP


async def test_facts_are_those_of_each_entrys_position(
    ahttp: httpx.AsyncClient, server: LiveServer
) -> None:
    """Two observations of one series in one batch: each frame's change is computed as of
    its own entry, not as of the batch's end (nor read from a store another process fills)."""
    await ingest(ahttp, server, [obs("amm", 100.0, T0, name="Amm")])
    await settle(ahttp)
    async with socket(server) as ws:
        await subscribe(ws, {"protocolIds": ["amm"]})
        await ingest(ahttp, server, [obs("amm", 150.0, T0 + DAY), obs("amm", 300.0, T0 + DAY + 60)])
        first, second = (frame["data"] for frame in await updates(ws, 2))
        assert (first["value"], first["change24h"]) == (150.0, pytest.approx(50.0))
        assert (second["value"], second["change24h"]) == (300.0, pytest.approx(200.0))


# -- defect 8: snapshot on subscribe ---------------------------------------------------------


async def test_subscribe_with_snapshot_sends_current_values_then_live(
    ahttp: httpx.AsyncClient, server: LiveServer
) -> None:
    await ingest(
        ahttp,
        server,
        [
            obs("aave", 30.0, T0, name="Aave", chains=["Ethereum"]),
            obs("aave", 20.0, T0, chain="Ethereum"),
            obs("lido", 25.0, T0, name="Lido"),
            obs("gmx", 5.0, T0, name="GMX"),
            obs("aave", 29.0, T0 - 60),  # late: not the current value
        ],
    )
    await settle(ahttp)
    async with socket(server) as ws:
        subscribed = await subscribe(ws, {"protocolIds": ["aave", "lido"]}, snapshot=True)
        position = subscribed["position"]
        snapshot = await updates(ws, 3)
        assert all(frame["snapshot"] is True for frame in snapshot)
        assert all(frame["position"] == position for frame in snapshot)
        assert sorted(
            (f["data"]["id"], f["data"]["chain"], f["data"]["value"]) for f in snapshot
        ) == [
            ("aave", "Ethereum", 20.0),
            ("aave", "total", 30.0),
            ("lido", "total", 25.0),
        ]
        await assert_silent(ws)
        await ingest(ahttp, server, [obs("lido", 26.0, T0 + 60), obs("gmx", 6.0, T0 + 60)])
        live = (await updates(ws, 1))[0]
        assert live["position"] > position
        assert "snapshot" not in live
        assert (live["data"]["id"], live["data"]["value"]) == ("lido", 26.0)
        await assert_silent(ws)


@pytest.mark.parametrize(
    ("extra", "channel"),
    [({"since": 0}, "protocols"), ({}, "alerts"), ({"snapshot": "yes"}, "protocols")],
    ids=["with-since", "on-alerts", "not-a-boolean"],
)
async def test_a_snapshot_that_cannot_be_given_is_refused(
    server: LiveServer, extra: dict[str, Any], channel: str
) -> None:
    async with socket(server, additional_headers=server.headers) as ws:
        await send(ws, {"type": "subscribe", "channel": channel, "snapshot": True, **extra})
        frame = await recv(ws)
        assert (frame["type"], frame["code"]) == ("error", "invalid_snapshot"), frame
