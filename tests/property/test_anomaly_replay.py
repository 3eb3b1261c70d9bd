"""The anomaly follower over generated logs: what it records is the detector's fold over
the log, and stopping it anywhere and resuming (or rebuilding from position 0) records
the same detections, none twice.

Real application on the in-memory event store, its real event log, in-memory positions.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from defi_realtime.adapters.event_store_log import EventStoreLog
from defi_realtime.adapters.position_stores import InMemoryPositionStore
from defi_realtime.application.anomaly import AnomalyDetector, Detection, DetectorSettings
from defi_realtime.application.anomaly_follower import AnomalyFollower
from defi_realtime.application.app import DefiRealtime
from defi_realtime.application.ingest import build_batch

T0 = 1_700_000_000.0
HOUR = 3_600.0
# Small windows so that short generated series are scored and crashes stand out.
DETECTOR = DetectorSettings(window=6, warmup=3, threshold=4.0)

# One observation: (protocol, hours after the previous point of the log, relative move).
# Hours may be 0 or go back (duplicates and late points the detector must ignore).
_STEP = st.tuples(
    st.sampled_from(["aave", "lido", "token"]),
    st.integers(min_value=-3, max_value=30),
    st.one_of(
        st.floats(min_value=-0.03, max_value=0.03),
        st.sampled_from([-0.6, -0.3, 0.5, -1.0]),  # crashes, a jump, a fall to zero
    ),
)


def build_log(steps: Sequence[tuple[str, int, float]]) -> DefiRealtime:
    """An application whose log holds the generated observations, a few per batch."""
    app = DefiRealtime(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    values = {"aave": 1e8, "lido": 5e9, "token": 3_000.0}
    at = T0
    metrics: list[dict[str, Any]] = []
    prices: list[dict[str, Any]] = []
    for index, (name, hours, move) in enumerate(steps):
        at += hours * HOUR
        values[name] = max(0.0, values[name] * (1 + move))
        if name == "token":
            if values[name] > 0:
                prices.append({"token": "coingecko:eth", "price": values[name], "observed_at": at})
        else:
            metrics.append(
                {"protocol": name, "value": values[name], "observed_at": at, "name": name}
            )
        if index % 4 == 3:
            app.ingest([build_batch(metrics, prices)])
            metrics, prices = [], []
    if metrics or prices:
        app.ingest([build_batch(metrics, prices)])
    return app


def recorded(app: DefiRealtime) -> list[tuple[str, float, float, int]]:
    log = EventStoreLog(app)
    return [
        (e.data["series"], e.data["observed_at"], e.data["score"], e.data["position"])
        for e in log.read(0, 1_000_000).entries
        if e.kind == "anomaly_detected"
    ]


def follower(app: DefiRealtime, positions: InMemoryPositionStore) -> AnomalyFollower:
    async def record(detections: Sequence[Detection]) -> int:
        return app.record_anomalies(detections)

    return AnomalyFollower(EventStoreLog(app), positions, record, DETECTOR, page_size=7)


@settings(max_examples=30, deadline=None)
@given(steps=st.lists(_STEP, min_size=5, max_size=60), stop_at=st.integers(0, 80))
def test_resumed_or_rebuilt_the_follower_records_the_fold_once(
    steps: list[tuple[str, int, float]], stop_at: int
) -> None:
    app = build_log(steps)
    log = EventStoreLog(app)
    head = log.head()
    # What the detector finds folding the whole log in one go (before anything recorded).
    expected = [
        (d.series, d.observed_at, d.score, d.position)
        for d in AnomalyDetector(DETECTOR).fold(log.read(0, head).entries)
    ]

    async def scenario() -> None:
        positions = InMemoryPositionStore()
        # A first follower stops at an arbitrary position...
        first = follower(app, positions)
        await first.runner().catch_up(until=min(stop_at, head))
        # ...a second one resumes from the stored position and goes to the head.
        second = follower(app, positions)
        await second.runner().catch_up(until=head)
        # A rebuild from position 0 finds the same detections and records nothing.
        rebuilt = follower(app, InMemoryPositionStore())
        await rebuilt.runner().catch_up(until=head)
        assert rebuilt.recorded == 0

    asyncio.run(scenario())
    assert recorded(app) == expected
    app.close()
