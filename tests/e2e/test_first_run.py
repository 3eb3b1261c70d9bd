"""The README's main job on a fresh machine: ``serve --sample`` (what ``make run`` starts)
loads the packaged real-data sample into an empty store; ``serve`` alone starts empty; a
restart never loads it twice. The real CLI in a subprocess, stopped by its PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

CLI = str(Path(sys.executable).with_name("defi-realtime"))
# Loading the sample (~46k observations) and starting; generous for a loaded CI machine.
READY_TIMEOUT = 120.0
STOP_TIMEOUT = 20.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serving(data_dir: Path, *args: str) -> Iterator[tuple[httpx.Client, list[str]]]:
    """``defi-realtime serve ARGS`` on a free port over ``data_dir``; yields a client and,
    once stopped, the server's stderr lines."""
    port = _free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DATABASE_URL", "REDIS_URL", "AMQP_URL", "REQUIRE_KEY_FOR_READS"}
    }
    env.update({"DATA_DIR": str(data_dir), "PORT": str(port), "NO_COLOR": "1", "TERM": "dumb"})
    log = data_dir.parent / f"serve-{port}.log"
    lines: list[str] = []
    with log.open("w") as out:
        process = subprocess.Popen([CLI, "serve", *args], env=env, stdout=out, stderr=out)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            deadline = time.monotonic() + READY_TIMEOUT
            while True:
                assert process.poll() is None, log.read_text()
                try:
                    if client.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
            yield client, lines
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)
        lines.extend(log.read_text().splitlines())


def _protocols(client: httpx.Client, **params: Any) -> dict[str, Any]:
    response = client.get("/v2/protocols", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_serve_with_the_sample_shows_real_data_at_once_and_loads_it_only_once(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    with serving(data_dir, "--sample") as (client, log):
        top = _protocols(client, sort="tvl", order="desc", limit=5)
        # DeFiLlama's /protocols of December 2025: ~6,690 protocols, Aave V3 the largest.
        assert top["total"] > 6_000
        first = top["protocols"][0]
        assert (first["slug"], first["category"]) == ("aave-v3", "Lending")
        assert first["tvl"] > 1e10
        # Three captures a week apart: the 1d and 7d changes have points to compare.
        assert first["change_1d"] is not None
        assert first["change_7d"] is not None
        # The daily histories: years of points for a chart.
        series = client.get("/v2/protocols/kamino-lend/metrics", params={"metric": "tvl"})
        assert series.status_code == 200, series.text
        assert len(series.json()["points"]) > 300
        loaded_total = top["total"]
    assert any("first run: loaded" in line for line in log), log

    with serving(data_dir, "--sample") as (client, log):
        assert _protocols(client)["total"] == loaded_total
    assert not any("first run: loaded" in line for line in log), log
    assert any("the sample is not loaded" in line for line in log), log


def test_serve_alone_starts_empty(tmp_path: Path) -> None:
    with serving(tmp_path / "data") as (client, log):
        assert _protocols(client)["total"] == 0
    assert any(f"SQLite files in {tmp_path / 'data'}" in line for line in log), log


def test_version() -> None:
    from importlib.metadata import version

    result = subprocess.run([CLI, "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"defi-realtime {version('defi-realtime')}"


def test_serve_with_workers_makes_the_stores_before_starting_them(tmp_path: Path) -> None:
    """N workers creating a fresh SQLite store at once raced for its first lock ("database
    is locked" while one switched it to WAL; seen in CI): ``serve --workers N`` creates the
    stores once before the workers start."""
    import sqlite3

    from defi_realtime.entrypoints.cli import _prepare_stores
    from defi_realtime.entrypoints.settings import Settings

    settings = Settings(DATA_DIR=tmp_path / "data")
    _prepare_stores(settings)
    for name in ("events.sqlite", "history.sqlite"):
        with sqlite3.connect(tmp_path / "data" / name) as connection:
            assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",), name
    with sqlite3.connect(tmp_path / "data" / "history.sqlite") as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
    assert {"protocol_observations", "series_states", "log_follower_positions"} <= tables
