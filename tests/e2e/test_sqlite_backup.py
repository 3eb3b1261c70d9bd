"""The embedded deployment's online backup (``deploy/backup-sqlite.py``; docs/deployment.md).

The backup runs while the server runs and another client keeps ingesting. The copy is a
consistent prefix of the live log: a server started on the restored files has exactly the
original's first entries up to the copy's head, its history catches up to that head (the
stored positions were never ahead of the events), it answers what the original answered
about what had been written before the backup, and the original API key still works.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx

from defi_realtime.application.app import DefiRealtime
from tests.e2e.conftest import start_server
from tests.integration.cluster import read_log, wait_until

BACKUP_SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "backup-sqlite.py"
T0 = 1_700_000_000
DAY = 86_400


def observation(slug: str, value: float, at: float) -> dict[str, Any]:
    return {
        "protocol": slug,
        "name": slug.title(),
        "category": "Lending",
        "metric": "tvl",
        "chain": "Ethereum",
        "value": value,
        "observed_at": at,
    }


def ingest(client: httpx.Client, *items: dict[str, Any]) -> int:
    response = client.post("/v2/ingest", json={"observations": list(items)})
    assert response.status_code == 200, response.text
    position: int = response.json()["position"]
    return position


def answers(client: httpx.Client) -> dict[str, Any]:
    paths = [
        "/v2/protocols/lend-a",
        "/v2/protocols/lend-a/metrics?metric=tvl",
        f"/v2/protocols/lend-a?asOf={T0 + 2 * DAY}",
        "/protocol/lend-a",
    ]
    found = {}
    for path in paths:
        response = client.get(path)
        assert response.status_code == 200, (path, response.text)
        found[path] = response.json()
    return found


def log_of(data_dir: Path) -> list[tuple[int, str, str, dict[str, Any]]]:
    app = DefiRealtime(
        env={
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": str(data_dir / "events.sqlite"),
            "SQLITE_LOCK_TIMEOUT": "30",
        }
    )
    try:
        _, entries = read_log(app)
    finally:
        app.close()
    return [(entry.position, entry.kind, entry.key, dict(entry.data)) for entry in entries]


def test_online_backup_restores_a_consistent_prefix(tmp_path: Path) -> None:
    live_dir, backup_dir, restored_dir = (tmp_path / name for name in ("live", "backup", "new"))
    with start_server(live_dir) as live:
        with httpx.Client(base_url=live.base_url, headers=live.headers, timeout=10.0) as client:
            written = ingest(
                client,
                *(observation("lend-a", 1e9 * (1 + day / 10), T0 + day * DAY) for day in range(5)),
            )
            asyncio.run(settle(live.base_url, written))
            before = answers(client)

            # Keep writing while the backup copies the files.
            stop, writing = threading.Event(), threading.Event()
            # Set by the first write that starts after the backup has finished: the live
            # log then surely holds more than the copy (a loaded box may pause the writer).
            backed_up, wrote_after = threading.Event(), threading.Event()

            def keep_ingesting() -> None:
                with httpx.Client(
                    base_url=live.base_url, headers=live.headers, timeout=10.0
                ) as writer:
                    step = 0
                    while not stop.is_set() and step < 500:
                        after = backed_up.is_set()
                        ingest(writer, observation(f"busy-{step % 20}", 1e6 + step, T0 + step))
                        writing.set()
                        if after:
                            wrote_after.set()
                        step += 1

            writer = threading.Thread(target=keep_ingesting, name="backup-test-writer")
            writer.start()
            try:
                assert writing.wait(10), "the writer got going"
                done = subprocess.run(
                    [sys.executable, str(BACKUP_SCRIPT), str(live_dir), str(backup_dir)],
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=False,
                )
                backed_up.set()
                wrote_after.wait(10)
            finally:
                stop.set()
                writer.join(30)
            assert done.returncode == 0, done.stderr
        live_log = log_of(live_dir)

    restored_dir.mkdir()
    for copy in backup_dir.glob("*.sqlite"):
        shutil.copy(copy, restored_dir / copy.name)
    restored_log = log_of(restored_dir)
    head = restored_log[-1][0]
    # Every position stored in the copied history.sqlite is at or before the copied head.
    with contextlib.closing(sqlite3.connect(restored_dir / "history.sqlite")) as history:
        stored = history.execute(
            "SELECT position FROM projection_tracking UNION ALL "
            "SELECT position FROM log_follower_positions"
        ).fetchall()
    assert stored, "positions were backed up"
    assert max(position for (position,) in stored) <= head, (stored, head)
    assert head > written, "the backup holds what was written before it"
    assert restored_log == live_log[: len(restored_log)], "a prefix of the live log"
    assert len(live_log) > len(restored_log), "writes went on during the backup"

    with start_server(restored_dir, api_key=live.api_key) as restored:
        health = asyncio.run(settle(restored.base_url, head))
        assert health["log_head"] == head, health
        with httpx.Client(
            base_url=restored.base_url, headers=restored.headers, timeout=10.0
        ) as client:
            assert answers(client) == before
            # The original key is an event of the restored store: writes are accepted.
            assert ingest(client, observation("lend-a", 2e9, T0 + 9 * DAY)) > head


async def settle(base_url: str, position: int) -> dict[str, Any]:
    """``/health`` once the node's projections reached ``position``."""

    async def health() -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=base_url, timeout=5.0) as client:
            body: dict[str, Any] = (await client.get("/health")).json()
            return body

    return dict(
        await wait_until(
            health,
            lambda body: body["hot_position"] >= position and body["history_position"] >= position,
            20.0,
            f"projections at {position}",
        )
    )
