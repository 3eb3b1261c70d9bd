"""A node restarted over the same DATA_DIR loads the checkpoints its clean shutdown wrote and
replays only what was logged after them (ADR 0046): the real composition root and loops,
in-process, on the embedded SQLite stores."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from defi_realtime.adapters.event_store_log import EventStoreLog
from defi_realtime.application.app import DefiRealtime
from defi_realtime.application.hot_state import HotState
from defi_realtime.application.ingest import build_batch
from defi_realtime.entrypoints.node import Node, running
from defi_realtime.entrypoints.settings import Settings

T0 = 1_735_689_600.0
HOUR = 3_600.0


def observations(hours: range) -> list[dict[str, object]]:
    return [
        {
            "protocol": slug,
            "name": slug.title(),
            "value": 1e6 * (1 + hour % 5 / 10),
            "observed_at": T0 + hour * HOUR,
        }
        for hour in hours
        for slug in ("aave", "lido")
    ]


def prices(hours: range) -> list[dict[str, object]]:
    return [
        {"token": "coingecko:eth", "price": 3_000.0 + hour, "observed_at": T0 + hour * HOUR}
        for hour in hours
    ]


async def every_follower_at_head(node: Node, timeout: float = 20.0) -> None:
    """The node follower and the node's own followers (anomalies, alerts...) at the head,
    and the head still (what the anomaly follower records moves it on)."""
    async with asyncio.timeout(timeout):
        settled = 0
        while settled < 3:
            head = node.event_log.head()
            at_head = all(follower.position >= head for follower in node.followers)
            settled = settled + 1 if at_head else 0
            await asyncio.sleep(0.05)


async def test_a_restarted_node_loads_its_checkpoints_and_replays_only_the_tail(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Checkpoints only at shutdown: what the restart finds is the shutdown's.
    settings = Settings(data_dir=tmp_path, checkpoint_events=0, checkpoint_interval=0)
    async with running(settings) as node:
        result = await node.writer.ingest(build_batch(observations(range(40)), prices(range(40))))
        assert result.committed, result
        await every_follower_at_head(node)
        state = node.hot.state  # type: ignore[attr-defined]
    # Where the shutdown left it (the detections the anomaly follower recorded moved the
    # log on after the wait above).
    stopped_at = state.position
    checkpoints = tmp_path / "checkpoints"
    assert sorted(path.name for path in checkpoints.glob("*.ckpt")) == [
        "anomalies.ckpt",
        "hot-state.ckpt",
    ]

    # While the node is down, the log grows (another node, an import).
    app = DefiRealtime(env=settings.event_store_env)
    try:
        app.ingest([build_batch(observations(range(40, 60)), prices(range(40, 60)))])
    finally:
        app.close()

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="defi_realtime.application"):
        async with running(settings) as node:
            await every_follower_at_head(node)
            restarted = node.hot.state  # type: ignore[attr-defined]
            whole = HotState()
            log = EventStoreLog(node.app)
            whole.apply(log.read(0, 1_000_000))
            assert restarted.position == whole.position > stopped_at
            assert restarted.protocol_views == whole.protocol_views
            assert restarted.price_views == whole.price_views
    messages = [record.getMessage() for record in caplog.records]
    assert f"hot state restored at position {stopped_at}" in messages
    # The anomaly follower started from its checkpoint too, not from position 0.
    (anomalies,) = [message for message in messages if message.startswith("anomaly detector")]
    assert "(folded from 0)" not in anomalies
