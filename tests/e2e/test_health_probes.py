"""``/health/live`` and ``/health/ready`` on the embedded defaults."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx

from .conftest import LiveServer, issue_key, obs, settle, start_server, wait_for

T0 = 1_765_000_000.0


def test_live_answers_without_checking_anything(server: LiveServer, http: httpx.Client) -> None:
    response = http.get("/health/live")
    assert response.status_code == 200
    assert response.json() == {"status": "alive"}


def test_ready_lists_each_check_and_passes(server: LiveServer, http: httpx.Client) -> None:
    ingest = {"observations": [obs("aave-v3", 1.0, T0, name="Aave V3")]}
    assert http.post("/v2/ingest", json=ingest, headers=server.headers).status_code == 200
    settle(http)
    response = http.get("/health/ready")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready"
    checks = body["checks"]
    # Embedded: no Redis, no RabbitMQ to check; every projection the node runs.
    assert {"event_store", "history_db", "projection:hot", "projection:history"} <= set(checks)
    assert "redis" not in checks
    assert "rabbitmq" not in checks
    for name, check in checks.items():
        assert check["status"] == "pass", (name, check)
        assert check["reason"] is None
        assert check["duration_ms"] < 1_000
    assert checks["projection:hot"]["lag"] == 0


def test_a_node_behind_the_log_is_not_ready(tmp_path: Path) -> None:
    # The node polls the log only every 30 s and hears of its own writes only: a write
    # by another process leaves it behind until then (a key of a new account: four positions,
    # the account's, the key's and its KeyListing's two). No lag is allowed.
    with (
        start_server(tmp_path / "data", ready_max_lag=0, poll_interval=30.0) as server,
        httpx.Client(base_url=server.base_url, timeout=10.0) as http,
    ):
        # Ready once the start-up catch-up (the test key's event) is done.
        wait_for(lambda: http.get("/health/ready"), lambda r: r.status_code == 200)
        issue_key(server.settings, "another process")
        response = http.get("/health/ready")
        assert response.status_code == 503
        body = response.json()
        assert body["status"] == "not_ready"
        hot = body["checks"]["projection:hot"]
        assert hot["status"] == "fail"
        assert hot["lag"] == 4
        assert hot["reason"].startswith("lag 4 > 0")
        assert body["checks"]["event_store"]["status"] == "pass"
        assert http.get("/health/live").status_code == 200
        # /health keeps its meaning: nothing is stalled.
        assert http.get("/health").status_code == 200


def test_a_stalled_projection_is_named_with_its_reason(tmp_path: Path) -> None:
    with (
        start_server(tmp_path / "data", expected_errors="projection history") as server,
        httpx.Client(base_url=server.base_url, timeout=10.0) as http,
    ):
        with sqlite3.connect(server.data_dir / "history.sqlite") as connection:
            connection.execute("DROP TABLE protocol_observations")
        ingest = {"observations": [obs("aave-v3", 1.0, T0, name="Aave V3")]}
        assert http.post("/v2/ingest", json=ingest, headers=server.headers).status_code == 200
        response = wait_for(lambda: http.get("/health/ready"), lambda r: r.status_code == 503)
        checks = response.json()["checks"]
        history = checks["projection:history"]
        assert history["status"] == "fail"
        assert "stalled" in history["reason"]
        assert "protocol_observations" in history["reason"]
        assert checks["projection:hot"]["status"] == "pass"


def test_ready_is_documented(server: LiveServer, http: httpx.Client) -> None:
    paths = http.get("/openapi.json").json()["paths"]
    ready = paths["/health/ready"]["get"]["responses"]
    assert {"200", "503"} <= set(ready)
    assert "/health/live" in paths
