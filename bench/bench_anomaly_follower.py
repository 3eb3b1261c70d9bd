"""The anomaly follower end to end: log reads, detection and recording, over a real store.

    python bench/bench_anomaly_follower.py [--series 6700] [--points 30] [--repeat 3]

``--series`` protocols' total TVL series of ``--points`` observations each (geometric random
walks, 3 % daily volatility, one in 200 steps a 30 % fall), one point per series per round,
ingested through the application into a SQLite event store (a few hundred observations per
batch, as a poller or REST client sends them). Then, ``--repeat`` times from position 0:

  baseline   the log read alone: every page of ``EventStoreLog.read`` (what any follower pays)
  follower   ``AnomalyFollower`` catching up from 0 with in-memory positions: the same reads,
             the detector over every observation, and each detection recorded as an
             ``AnomalyDetected`` event (on a rerun the aggregates ignore positions they hold,
             so every repeat records nothing new: the first run's figure is reported apart)

Observations per second (median), and the follower's cost against the bare read.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from _common import machine

from defi_realtime.adapters.event_store_log import EventStoreLog
from defi_realtime.adapters.position_stores import InMemoryPositionStore
from defi_realtime.application.anomaly import Detection, DetectorSettings
from defi_realtime.application.anomaly_follower import AnomalyFollower
from defi_realtime.application.app import DefiRealtime
from defi_realtime.application.following import PAGE_SIZE
from defi_realtime.application.ingest import build_batch

T0 = 1_700_000_000.0
DAY = 86_400.0
BATCH = 500


def fill(app: DefiRealtime, series: int, points: int, seed: int = 7) -> int:
    """Ingest the generated observations; returns how many."""
    rng = random.Random(seed)
    values = [rng.uniform(1e6, 1e9) for _ in range(series)]
    pending: list[dict[str, object]] = []
    count = 0
    for step in range(points):
        at = T0 + step * DAY
        for index in range(series):
            move = -0.3 if rng.random() < 1 / 200 else rng.gauss(0.0, 0.03)
            values[index] *= math.exp(move) if move != -0.3 else 0.7
            pending.append(
                {"protocol": f"p{index}", "value": values[index], "observed_at": at, "name": "P"}
            )
            if len(pending) >= BATCH:
                app.ingest([build_batch(pending)])
                count += len(pending)
                pending = []
    if pending:
        app.ingest([build_batch(pending)])
        count += len(pending)
    return count


def read_all(app: DefiRealtime) -> int:
    log = EventStoreLog(app)
    position, entries = 0, 0
    while True:
        batch = log.read(position, PAGE_SIZE)
        if batch.last <= position:
            return entries
        entries += len(batch.entries)
        position = batch.last


async def follow(app: DefiRealtime, settings: DetectorSettings) -> int:
    async def record(detections: Sequence[Detection]) -> int:
        return app.record_anomalies(detections)

    follower = AnomalyFollower(EventStoreLog(app), InMemoryPositionStore(), record, settings)
    await follower.runner().catch_up()
    return follower.recorded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=6_700)
    parser.add_argument("--points", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    settings = DetectorSettings()
    print(machine())
    with tempfile.TemporaryDirectory() as folder:
        env = {
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": str(Path(folder) / "events.sqlite"),
            "SQLITE_LOCK_TIMEOUT": "30",
        }
        app = DefiRealtime(env=env)
        try:
            started = time.perf_counter()
            observations = fill(app, args.series, args.points)
            print(
                f"ingested {observations:,} observations over {args.series:,} series "
                f"in {time.perf_counter() - started:.1f} s"
            )
            started = time.perf_counter()
            first_recorded = asyncio.run(follow(app, settings))
            first = time.perf_counter() - started
            print(
                f"first run (records {first_recorded:,} detections): {first:.2f} s = "
                f"{observations / first:,.0f} obs/s"
            )
            reads: list[float] = []
            follows: list[float] = []
            for _ in range(args.repeat):
                started = time.perf_counter()
                read_all(app)
                reads.append(time.perf_counter() - started)
                started = time.perf_counter()
                asyncio.run(follow(app, settings))
                follows.append(time.perf_counter() - started)
        finally:
            app.close()
    read, followed = statistics.median(reads), statistics.median(follows)
    print(f"baseline, the log read alone: median {read:.2f} s = {observations / read:,.0f} obs/s")
    print(
        f"follower, read + detect (+ record, nothing new): median {followed:.2f} s = "
        f"{observations / followed:,.0f} obs/s ({followed / read:.2f}x the read)"
    )


if __name__ == "__main__":
    main()
