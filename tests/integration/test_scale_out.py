"""Two ``serve`` nodes against one PostgreSQL + Redis + RabbitMQ.

An ingest on node A reaches a WebSocket client of node B (value and log position); a
protocol the client did not subscribe to produces no frame. Then the node holding the relay
lock is killed with SIGKILL: the other node takes the relay (and the shared projections)
over and its clients keep getting updates within seconds.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.integration.cluster import (
    PROJECTIONS_LOCK_KEY,
    RELAY_LOCK_KEY,
    Stack,
    lock_holder,
    read_log,
    stack,
    wait_until,
)

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.rabbitmq,
    pytest.mark.timeout(120),
]

FRAME_TIMEOUT = 5.0
TAKEOVER_TIMEOUT = 15.0
T0 = 1_700_000_000


def observation(slug: str, value: float, observed_at: float) -> dict[str, Any]:
    return {
        "protocol": slug,
        "name": slug.title(),
        "metric": "tvl",
        "chain": "total",
        "value": value,
        "observed_at": observed_at,
    }


async def post(client: httpx.AsyncClient, key: str, *items: dict[str, Any]) -> int:
    """Ingest ``items``; returns the log position of the last event written."""
    response = await client.post(
        "/v2/ingest", json={"observations": list(items)}, headers={"X-API-Key": key}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["accepted"] == len(items), body
    position: int = body["position"]
    return position


async def next_frame(ws: ClientConnection, timeout: float = FRAME_TIMEOUT) -> dict[str, Any]:
    frame: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    return frame


async def expect_update(ws: ClientConnection, slug: str, value: float, position: int) -> None:
    frame = await next_frame(ws)
    assert frame["type"] == "update", frame
    assert frame["channel"] == "protocols", frame
    assert frame["data"]["id"] == slug, frame
    assert frame["data"]["value"] == value, frame
    assert frame["position"] == position, frame


async def hot_tvl(client: httpx.AsyncClient, slug: str) -> float | None:
    response = await client.get(f"/v2/protocols/{slug}")
    if response.status_code != 200:
        return None
    tvl: float | None = response.json().get("tvl")
    return tvl


def metric_position(deployment: Stack, slug: str, value: float) -> int:
    _, entries = read_log(deployment.app())
    [position] = [
        entry.position
        for entry in entries
        if entry.kind == "metric" and entry.key == slug and entry.data["value"] == value
    ]
    return position


async def test_update_on_one_node_reaches_clients_of_another_and_relay_fails_over(
    tmp_path: Path,
) -> None:
    async with stack(tmp_path / "stack") as deployment:
        key = await deployment.create_key()
        # A starts alone, so it is elected for the relay and the shared projections; B
        # stands by for both.
        node_a = await deployment.serve("node-a")
        for lock in (RELAY_LOCK_KEY, PROJECTIONS_LOCK_KEY):
            await wait_until(
                lambda lock=lock: lock_holder(deployment, lock),
                lambda holder: holder == "node-a",
                10.0,
                "node A elected",
            )
        node_b = await deployment.serve("node-b")
        assert lock_holder(deployment, RELAY_LOCK_KEY) == "node-a"

        async with (
            httpx.AsyncClient(base_url=node_a.base_url, timeout=10.0) as http_a,
            httpx.AsyncClient(base_url=node_b.base_url, timeout=10.0) as http_b,
            connect(node_b.ws_url, additional_headers={"X-API-Key": key}) as ws,
        ):
            await ws.send(
                json.dumps(
                    {
                        "type": "subscribe",
                        "channel": "protocols",
                        "params": {"protocolIds": ["watched"]},
                    }
                )
            )
            subscribed = await next_frame(ws)
            assert subscribed["type"] == "subscribed", subscribed

            # An ingest on A reaches B's client with the value and the log position.
            first = await post(http_a, key, observation("watched", 100.0, T0))
            await expect_update(ws, "watched", 100.0, first)
            assert metric_position(deployment, "watched", 100.0) == first

            # A protocol B's client did not subscribe to sends nothing: the next frame is
            # the next update of the watched protocol.
            await post(http_a, key, observation("other", 5.0, T0))
            second = await post(http_a, key, observation("watched", 101.0, T0 + 60))
            await expect_update(ws, "watched", 101.0, second)
            with pytest.raises(TimeoutError):
                await next_frame(ws, timeout=0.5)
            # B reads the shared hot projection that A's projector maintains.
            await wait_until(
                lambda: hot_tvl(http_b, "watched"), lambda tvl: tvl == 101.0, 5.0, "B reads"
            )

            # Kill -9 the node holding the relay lock: PostgreSQL drops its session and
            # its advisory locks with it; B, retrying every second, takes both over.
            assert lock_holder(deployment, RELAY_LOCK_KEY) == "node-a"
            node_a.kill9()
            for lock in (RELAY_LOCK_KEY, PROJECTIONS_LOCK_KEY):
                await wait_until(
                    lambda lock=lock: lock_holder(deployment, lock),
                    lambda holder: holder == "node-b",
                    TAKEOVER_TIMEOUT,
                    "node B took over",
                )

            third = await post(http_b, key, observation("watched", 102.0, T0 + 120))
            await expect_update(ws, "watched", 102.0, third)
            # B's relay published it (the relay's stored position moved past it) and B's
            # projector applied it to the shared projection.
            await wait_until(
                deployment.relay_position, lambda position: position >= third, 10.0, "relay"
            )
            await wait_until(
                lambda: hot_tvl(http_b, "watched"), lambda tvl: tvl == 102.0, 10.0, "B's hot"
            )
            health = (await http_b.get("/health")).json()
            assert health["log_head"] == third, health
            assert node_b.alive()
        # Losing its peer is routine for B: nothing crashed or was logged as an error.
        log_b = node_b.output(tail=1_000_000)
        assert "Traceback" not in log_b, log_b
        assert "ERROR" not in log_b, log_b
