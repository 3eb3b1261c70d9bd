"""A projection that cannot apply the log is visible, does not stop the others, and resumes
on its own once it can (no value or fault may stall a projection silently)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx
from sqlalchemy import create_engine

from defi_realtime.adapters.sql_schema import PROTOCOL_OBSERVATIONS

from .conftest import obs, start_server, wait_for
from .test_api import _samples

T0 = 1_765_000_000.0


def test_a_stalled_projection_is_reported_and_resumes(tmp_path: Path) -> None:
    with (
        start_server(tmp_path / "data", expected_errors="projection history") as server,
        httpx.Client(base_url=server.base_url, timeout=10.0) as http,
    ):
        first = {"observations": [obs("aave-v3", 1.0, T0, name="Aave V3")]}
        assert http.post("/v2/ingest", json=first, headers=server.headers).status_code == 200
        healthy = wait_for(
            lambda: http.get("/health"),
            lambda r: r.status_code == 200 and r.json()["history_position"] == r.json()["log_head"],
        )
        assert healthy.json()["projections"]["history"]["stalled"] is None

        # The history store loses a table under the running node: it cannot apply the
        # next observation (as a value PostgreSQL refuses would make it fail).
        history = server.data_dir / "history.sqlite"
        with sqlite3.connect(history) as connection:
            connection.execute("DROP TABLE protocol_observations")
        second = {"observations": [obs("aave-v3", 2.0, T0 + 60)]}
        assert http.post("/v2/ingest", json=second, headers=server.headers).status_code == 200

        # The history stalls while the other projections, advanced side by side with it,
        # finish the same page: wait until they are at the head too.
        degraded = wait_for(
            lambda: http.get("/health"),
            lambda r: (
                r.status_code == 503
                and r.json()["hot_position"] == r.json()["log_head"] == r.json()["node_position"]
            ),
        )
        health = degraded.json()
        assert health["status"] == "degraded"
        stalled = health["projections"]["history"]["stalled"]
        assert "protocol_observations" in stalled["error"]
        assert stalled["position"] == healthy.json()["log_head"]
        assert stalled["failures"] >= 1
        assert health["projections"]["history"]["lag"] >= 1
        # The other projections and the hub keep following the log.
        assert health["projections"]["hot"]["stalled"] is None
        assert health["hot_position"] == health["log_head"] == health["node_position"]
        assert http.get("/v2/protocols/aave-v3").json()["tvl"] == 2.0
        samples = _samples(http.get("/metrics").text)
        assert samples['dr_projection_stalled{projection="history"}'] == 1.0
        assert samples['dr_projection_stalled{projection="hot"}'] == 0.0
        assert samples['dr_projection_lag{projection="history"}'] >= 1.0
        assert samples['dr_projection_failures{projection="history"}'] >= 1.0

        # Repaired: the node retries while the log is quiet and catches up by itself.
        engine = create_engine(f"sqlite:///{history}")
        try:
            PROTOCOL_OBSERVATIONS.create(engine)
        finally:
            engine.dispose()
        recovered = wait_for(lambda: http.get("/health"), lambda r: r.status_code == 200)
        body = recovered.json()
        assert body["status"] == "ok"
        assert body["history_position"] == body["log_head"]
        series = http.get("/v2/protocols/aave-v3/metrics").json()["points"]
        assert [point["value"] for point in series] == [2.0]
        samples = _samples(http.get("/metrics").text)
        assert samples['dr_projection_stalled{projection="history"}'] == 0.0
