"""What the application reports through its ``Telemetry`` port (on a fake): commit time and
size, ingest-to-socket latency, notification outcomes, cache lookups."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from defi_realtime.adapters.event_store_log import EventStoreLog
from defi_realtime.adapters.query_cache import MemoryQueryCache
from defi_realtime.application.delivery import RetryPolicy
from defi_realtime.application.hot_state import HotState
from defi_realtime.application.ingest import build_batch
from defi_realtime.application.notifications import DeliveryWorker
from defi_realtime.application.realtime import Connection, RealtimeHub
from defi_realtime.application.telemetry import ObservedQueryCache
from defi_realtime.application.writer import IngestWriter
from tests.property.test_ws_resume import event_store
from tests.unit.test_notifications import (
    FAIL,
    OK,
    FakeDeliveryLog,
    FakeNotifier,
    make_rule,
    webhook_job,
)

T0 = 1_765_000_000.0


@dataclass
class FakeTelemetry:
    commits: list[tuple[float, int]] = field(default_factory=list)
    delivered: list[float] = field(default_factory=list)
    attempts: list[tuple[str, str]] = field(default_factory=list)
    lookups: list[tuple[str, bool]] = field(default_factory=list)

    def ingest_committed(self, seconds: float, items: int) -> None:
        self.commits.append((seconds, items))

    def entries_delivered(self, latencies: list[float]) -> None:
        self.delivered.extend(latencies)

    def notification_attempted(self, channel: str, outcome: str) -> None:
        self.attempts.append((channel, outcome))

    def cache_looked_up(self, cache: str, hit: bool) -> None:
        self.lookups.append((cache, hit))


def observation(slug: str, value: float, n: int = 0) -> dict[str, Any]:
    return {
        "protocol": slug,
        "metric": "tvl",
        "chain": "total",
        "value": value,
        "observed_at": T0 + n,
        "name": slug.title(),  # lists the protocol on its first observation
    }


def test_the_writer_reports_each_group_commit_with_its_size() -> None:
    telemetry = FakeTelemetry()
    with event_store() as app:
        writer = IngestWriter(app, telemetry=telemetry)
        writer.start()
        try:
            batch = build_batch([observation("a", 1.0), observation("b", 2.0, 1)])
            result = writer.submit(batch).result(timeout=30)
        finally:
            writer.stop()
    assert result.accepted == 2
    [(seconds, items)] = telemetry.commits
    assert items == 2
    assert 0 < seconds < 30


def test_the_hub_reports_the_latency_of_each_entry_it_hands_to_sockets() -> None:
    telemetry = FakeTelemetry()
    written: list[dict[str, Any]] = []

    def write(items: Sequence[tuple[bytes, bytes, bytes, Any]]) -> None:
        written.extend(json.loads(a + b + c) for a, b, c, _ in items)

    async def scenario() -> None:
        with event_store() as app:
            event_log = EventStoreLog(app)
            state = HotState(record_facts=True)
            hub = RealtimeHub(event_log, state, telemetry=telemetry)
            connection = Connection(None, close=lambda code, reason: None, write=write)
            hub.connect(connection)
            subscribe = {
                "type": "subscribe",
                "channel": "protocols",
                "params": {"protocolIds": ["watched"]},
            }
            hub.receive(connection, json.dumps(subscribe))
            hub.flush()
            app.ingest([build_batch([observation("watched", 1.0), observation("other", 2.0)])])
            app.ingest([build_batch([observation("watched", 3.0, 1)])])
            batch = event_log.read(0, 1_000)
            state.apply(batch)
            before = time.time()
            await hub.deliver(batch)
            after = time.time()
            recorded = [
                entry.recorded_at
                for entry in batch.entries
                if entry.kind == "metric" and entry.key == "watched"
            ]
            # One value per entry some socket got (not the unwatched protocol's), measured
            # from the entry's recording to the hand-over.
            assert len(telemetry.delivered) == len(recorded) == 2
            for latency, at in zip(telemetry.delivered, recorded, strict=True):
                assert before - at <= latency <= after - at
            assert [f["data"]["value"] for f in written if f["type"] == "update"] == [1.0, 3.0]
            # Nobody subscribed: nothing to report.
            app.ingest([build_batch([observation("other", 4.0, 2)])])
            more = event_log.read(batch.last, 1_000)
            state.apply(more)
            await hub.deliver(more)
            assert len(telemetry.delivered) == 2

    asyncio.run(scenario())


async def test_the_delivery_worker_reports_each_attempt_by_channel_and_outcome() -> None:
    telemetry = FakeTelemetry()
    rule = make_rule()
    policy = RetryPolicy(max_attempts=2, base_delay=0.0)
    failing = DeliveryWorker(
        {"webhook": FakeNotifier(FAIL)},
        FakeDeliveryLog(),
        policy,
        load_rule=lambda *_: rule,
        telemetry=telemetry,
    )
    job = webhook_job(rule)
    retry = await failing.handle(job)
    await failing.handle(retry.job)  # type: ignore[union-attr]
    delivering = DeliveryWorker(
        {"webhook": FakeNotifier(OK)},
        FakeDeliveryLog(),
        policy,
        load_rule=lambda *_: rule,
        telemetry=telemetry,
    )
    await delivering.handle(job)
    assert telemetry.attempts == [
        ("webhook", "failed"),
        ("webhook", "dead_lettered"),
        ("webhook", "delivered"),
    ]


async def test_an_observed_cache_reports_misses_and_hits() -> None:
    telemetry = FakeTelemetry()
    cache = ObservedQueryCache(MemoryQueryCache(), telemetry)
    assert await cache.get("q@1") is None
    await cache.put("q@1", b"answer")
    assert await cache.get("q@1") == b"answer"
    assert telemetry.lookups == [("query", False), ("query", True)]
