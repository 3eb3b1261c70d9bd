"""Anomalies end to end: an injected crash (``POST /v2/ingest``) reaches the ``anomalies``
WebSocket channel, fires an ``anomaly`` alert rule, and is listed by
``GET /v2/analytics/anomalies``; ``since`` replays it from the log."""

from __future__ import annotations

import asyncio
import json
import math
import random
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

from tests.e2e.conftest import LiveServer, assert_error, obs

T0 = 1_760_000_000.0
DAY = 86_400.0
FRAME_TIMEOUT = 10.0


def history(slug: str, days: int = 40) -> list[dict[str, Any]]:
    rng = random.Random(11)
    value = 100e6
    items = []
    for day in range(days):
        value *= math.exp(rng.gauss(0, 0.02))
        items.append(obs(slug, value, T0 + day * DAY, name=slug))
    return items


async def subscribe(ws: ClientConnection, channel: str, **fields: Any) -> dict[str, Any]:
    await ws.send(json.dumps({"type": "subscribe", "channel": channel, **fields}))
    async with asyncio.timeout(FRAME_TIMEOUT):
        while True:
            frame: dict[str, Any] = json.loads(await ws.recv())
            if frame["type"] in ("subscribed", "error"):
                return frame


async def next_of(ws: ClientConnection, *kinds: str) -> dict[str, dict[str, Any]]:
    """The first frame of each of ``kinds`` (in whatever order they come: the anomaly and
    the alert are recorded by two independent followers)."""
    found: dict[str, dict[str, Any]] = {}
    async with asyncio.timeout(FRAME_TIMEOUT):
        while len(found) < len(kinds):
            frame: dict[str, Any] = json.loads(await ws.recv())
            if frame["type"] in kinds:
                found.setdefault(frame["type"], frame)
    return found


async def test_a_crash_streams_an_anomaly_and_fires_an_anomaly_rule(server: LiveServer) -> None:
    headers = server.headers
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10.0) as http:
        items = history("crash-lend") + history("calm-lend")
        response = await http.post("/v2/ingest", json={"observations": items}, headers=headers)
        assert response.status_code == 200, response.text
        rule = {
            "target": {"protocol": "crash-lend"},
            "condition": {"kind": "anomaly", "min_score": 6},
            "channels": [{"kind": "websocket"}],
            "cooldown": 0,
        }
        response = await http.post("/v2/alerts", json=rule, headers=headers)
        assert response.status_code == 200, response.text
        rule_id = response.json()["id"]
        assert response.json()["condition"] == {"kind": "anomaly", "min_score": 6.0, "move": "fall"}

        async with asyncio.timeout(10):
            ws = await connect(server.ws_url, additional_headers=headers, open_timeout=5)
        try:
            subscribed = await subscribe(ws, "anomalies", params={"protocolIds": ["crash-lend"]})
            assert subscribed["type"] == "subscribed", subscribed
            assert (await subscribe(ws, "alerts"))["type"] == "subscribed"
            refused = await subscribe(ws, "anomalies", snapshot=True)
            assert (refused["type"], refused["code"]) == ("error", "invalid_snapshot")

            last = items[39]["value"]
            crash = [
                obs("crash-lend", last * 0.5, T0 + 40 * DAY),  # -50 % in a day
                obs("calm-lend", items[-1]["value"] * 1.001, T0 + 40 * DAY),
            ]
            response = await http.post("/v2/ingest", json={"observations": crash}, headers=headers)
            assert response.status_code == 200, response.text

            frames = await next_of(ws, "anomaly", "alert")
            anomaly, alert = frames["anomaly"], frames["alert"]
            assert anomaly["channel"] == "anomalies"
            data = anomaly["data"]
            assert (data["id"], data["measure"], data["direction"]) == ("crash-lend", "tvl", "fall")
            assert data["series"] == "protocol:crash-lend:tvl:total"
            assert data["timestamp"] == T0 + 40 * DAY
            assert data["score"] >= 6
            assert "fall of 50.0%" in data["reason"]
            assert (alert["alertId"], alert["condition"]) == (rule_id, "firing")
            assert alert["data"]["measure"] >= 6

            # The calm protocol, not subscribed and not anomalous, sent nothing.
            with_since = await subscribe(ws, "anomalies", since=0)
            assert with_since["type"] == "subscribed"
            replayed = (await next_of(ws, "anomaly"))["anomaly"]
            assert replayed["subscriptionId"] == with_since["subscriptionId"]
            assert replayed["position"] == anomaly["position"]
        finally:
            await ws.close()

        # The history read model lists it once it has applied the detection.
        async with asyncio.timeout(FRAME_TIMEOUT):
            while True:
                response = await http.get(
                    "/v2/analytics/anomalies", params={"protocol": "crash-lend"}
                )
                assert response.status_code == 200, response.text
                listed = response.json()["anomalies"]
                if listed:
                    break
                await asyncio.sleep(0.02)
        assert [(a["id"], a["kind"], a["direction"]) for a in listed] == [
            ("crash-lend", "protocol", "fall")
        ]
        assert listed[0]["position"] == anomaly["position"]
        everything = await http.get("/v2/analytics/anomalies", params={"minScore": 6, "limit": 10})
        assert [a["id"] for a in everything.json()["anomalies"]] == ["crash-lend"]
        calm = await http.get("/v2/analytics/anomalies", params={"protocol": "calm-lend"})
        assert calm.json() == {"anomalies": []}
        unknown = await http.get("/v2/analytics/anomalies", params={"score": 3})
        assert_error(unknown, 400, "invalid_parameter")
        backtest = await http.post(f"/v2/alerts/{rule_id}/backtest", json={}, headers=headers)
        assert backtest.status_code == 200, backtest.text
        fired = [e for e in backtest.json()["events"] if e["state"] == "firing"]
        assert [e["observed_at"] for e in fired] == [T0 + 40 * DAY]
