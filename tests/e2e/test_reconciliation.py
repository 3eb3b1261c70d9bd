"""Reconciliation end to end: ``serve``'s reconcile role on its timer, the CLI command once,
and ``GET /v2/reconciliation/latest`` (404 before the first run)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
from typer.testing import CliRunner

from defi_realtime.entrypoints.cli import cli
from tests.e2e.conftest import assert_error, obs, settle, start_server, wait_for

T0 = 1_765_000_000.0
LATEST = "/v2/reconciliation/latest"


def _ingest(http: httpx.Client, key: str) -> None:
    items = [
        obs(slug, 100.0 + hour, T0 + hour * 3_600, name=slug.title())
        for slug in ("aave", "lido")
        for hour in range(3)
    ]
    response = http.post("/v2/ingest", json={"observations": items}, headers={"X-API-Key": key})
    assert response.status_code == 200, response.text


def test_serve_reconciles_on_its_timer_and_reports_a_clean_store(tmp_path: Path) -> None:
    with (
        start_server(tmp_path / "data", reconcile_interval=0.3) as server,
        httpx.Client(base_url=server.base_url, timeout=10.0) as http,
    ):
        _ingest(http, server.api_key)
        settle(http)
        head = http.get("/health").json()["log_head"]
        run: dict[str, Any] = wait_for(
            lambda: http.get(LATEST).json(),
            lambda body: body.get("positions", {}).get("history", 0) >= head,
        )
        assert run["discrepancyCounts"] == {}, run
        assert run["compared"]["hot"] == 2  # serve compares its own memory too
        assert run["compared"]["history"] >= 6
        assert run["run"] >= 1
        assert_error(http.get(LATEST, params={"x": "1"}), 400, "invalid_parameter")


def test_cli_reconcile_once_then_the_latest_run_is_served(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with (
        start_server(data_dir) as server,
        httpx.Client(base_url=server.base_url, timeout=10.0) as http,
    ):
        assert_error(http.get(LATEST), 404, "no_reconciliation")
        _ingest(http, server.api_key)
        settle(http)
        env = {**os.environ, "DATA_DIR": str(data_dir), "COLUMNS": "200"}
        for name in ("DATABASE_URL", "REDIS_URL", "AMQP_URL"):
            env.pop(name, None)
        result = CliRunner().invoke(cli, ["reconcile", "--no-repair"], env=env)
        assert result.exit_code == 0, result.output
        assert "history" in result.output
        run = http.get(LATEST).json()
        assert run["run"] == 1
        assert run["discrepancyCounts"] == {}
        assert "hot" not in run["compared"]  # another process's memory is not compared
