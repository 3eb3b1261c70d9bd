"""/metrics of a running node: the operator's metrics move with what the node does."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.e2e.conftest import obs, settle, start_server, wait_for
from tests.e2e.served import metric_samples

T0 = 1_765_000_000.0
NO_LABELS: frozenset[tuple[str, str]] = frozenset()


def _sample(client: httpx.Client, name: str, **labels: str) -> float:
    return metric_samples(client.get("/metrics").text).get((name, frozenset(labels.items())), 0.0)


def test_ingest_delivery_sockets_and_cache_show_on_metrics(tmp_path: Path) -> None:
    with (
        start_server(tmp_path / "data", ws_idle_timeout=1.0) as server,
        httpx.Client(base_url=server.base_url, timeout=10.0) as http,
    ):
        # A subscriber gets an update of an ingest: commit and delivery are measured.
        with connect(server.ws_url, additional_headers=server.headers) as socket:
            socket.send(json.dumps({"type": "subscribe", "channel": "protocols"}))
            assert json.loads(socket.recv(timeout=10))["type"] == "subscribed"
            body = {"observations": [obs("aave", 1.0, T0, name="Aave"), obs("uni", 2.0, T0)]}
            body["observations"][1]["name"] = "Uni"
            answer = http.post("/v2/ingest", json=body, headers=server.headers)
            assert answer.status_code == 200, answer.text
            updates = [json.loads(socket.recv(timeout=10)) for _ in range(2)]
            assert {update["type"] for update in updates} == {"update"}
        settle(http)
        assert _sample(http, "dr_ingest_commit_duration_seconds_count") == 1
        assert _sample(http, "dr_ingest_commit_items_sum") == 2
        assert _sample(http, "dr_realtime_delivery_latency_seconds_count") == 2
        assert _sample(http, "dr_websocket_handshakes_total", result="accepted") == 1
        # subscribed + 2 updates at least (the transport may batch nothing here).
        assert _sample(http, "dr_websocket_frames_sent_total") >= 3
        assert _sample(http, "dr_websocket_sent_bytes_total") > 100

        # A refused key: counted as a failed handshake and a close with its code.
        with (
            pytest.raises(ConnectionClosed) as refused,
            connect(server.ws_url, additional_headers={"X-API-Key": "nope"}) as socket,
        ):
            socket.recv(timeout=10)
        assert refused.value.rcvd is not None
        assert refused.value.rcvd.code == 4001
        assert _sample(http, "dr_websocket_handshakes_total", result="4001") == 1
        assert _sample(http, "dr_websocket_closes_total", code="4001") == 1

        # An idle client is closed by the hub with 4000.
        with connect(server.ws_url) as socket, pytest.raises(ConnectionClosed) as idle:
            socket.recv(timeout=10)
        assert idle.value.rcvd is not None
        assert idle.value.rcvd.code == 4000
        wait_for(
            lambda: _sample(http, "dr_websocket_closes_total", code="4000"),
            lambda count: count == 1,
        )

        # A protocol-level failure: a message over WS_MAX_MESSAGE is closed with 1009.
        with connect(server.ws_url) as socket, pytest.raises(ConnectionClosed) as too_big:
            _send_then_receive(socket, "x" * (server.settings.ws_max_message + 1))
        assert too_big.value.rcvd is not None
        assert too_big.value.rcvd.code == 1009
        assert _sample(http, "dr_websocket_closes_total", code="1009") == 1

        # The query cache: a miss, then a hit.
        query = {"groupBy": "category"}
        assert http.post("/v2/query", json=query).json()["cached"] is False
        assert http.post("/v2/query", json=query).json()["cached"] is True
        assert _sample(http, "dr_cache_lookups_total", cache="query", result="miss") == 1
        assert _sample(http, "dr_cache_lookups_total", cache="query", result="hit") == 1

        # Every follower of the node, caught up.
        samples = metric_samples(http.get("/metrics").text)
        lag = {
            dict(labels)["follower"]: value
            for (name, labels), value in samples.items()
            if name == "dr_follower_lag_positions"
        }
        assert set(lag) == {"hot", "history", "alerts", "anomalies", "notifications", "relay"}, lag
        assert set(lag.values()) == {0.0}, lag
        assert samples[("dr_log_head_position", NO_LABELS)] == settle(http)["log_head"]


def _send_then_receive(socket: Any, text: str) -> None:
    # The server may close from the frame's header while the body is still being sent: the
    # send itself can then raise, as the receive does otherwise.
    socket.send(text)
    socket.recv(timeout=10)
