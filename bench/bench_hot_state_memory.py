"""Hot state memory per protocol, today's 8-day window against ADR 0044's thinning.

    python bench/bench_hot_state_memory.py [--rate 1000] [--protocols 6700] [--days 9]
        [--sample 10]

A simulated clock, no server: one protocol's total-TVL series (and one token's prices) fed
through ``hot_state.record_point`` at its share of ``--rate`` observations/s over
``--protocols`` protocols, for ``--days`` simulated days; once with the reach ADR 0044 keeps
(``TVL_REACH``, ``PRICE_REACH``) and once with the whole window (today's rule: a reach of
``RECENT_WINDOW_SECONDS`` keeps every point of the window). The series is fed at
1/``--sample`` of that rate (the points kept scale linearly with the rate, the ratio not at
all) and the counts multiplied back. Reported: points and bytes (16 a point) per protocol
and for all protocols at the end of each simulated day, and the time one ``record_point``
takes on a series of the steady state's full size (every observation copies its series:
the fold never changes a state in place). Bounded: seconds to a minute.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from typing import Any

from defi_realtime.application.hot_state import (
    PRICE_REACH,
    TVL_REACH,
    Points,
    record_point,
)
from defi_realtime.application.views import RECENT_WINDOW_SECONDS

DAY = 86_400.0
T0 = 1_700_000_000.0


def feed(interval: float, days: float, reach: float, late_share: float) -> list[int]:
    """Points held at the end of each simulated day."""
    rng = random.Random(15)
    points, newest, at, held = Points(), T0, T0, []
    next_day = T0 + DAY
    while at < T0 + days * DAY:
        at += rng.expovariate(1 / interval)
        # Some observations arrive late, up to an hour behind.
        observed = at - rng.uniform(0, 3_600) if rng.random() < late_share else at
        newest = max(newest, observed)
        recorded = record_point(points, observed, rng.uniform(1e6, 2e6), newest, reach)
        points = points if recorded is None else recorded
        if at >= next_day:
            held.append(len(points))
            next_day += DAY
    return held


def copy_cost(size: int, reach: float, interval: float) -> float:
    """Microseconds one ``record_point`` takes on a series of ``size`` points."""
    times = [T0 + n * interval for n in range(size)]
    points = Points.of((t, 1.0) for t in times)
    newest = times[-1]
    runs = 200
    started = time.perf_counter()
    for n in range(runs):
        at = newest + (n + 1) * 1e-3
        record_point(points, at, 2.0, at, reach)
    return (time.perf_counter() - started) / runs * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=1_000)
    parser.add_argument("--protocols", type=int, default=6_700)
    parser.add_argument("--days", type=int, default=9)
    parser.add_argument("--sample", type=int, default=10)
    parser.add_argument("--late", type=float, default=0.05, help="share of late observations")
    args = parser.parse_args()
    if not (0 < args.rate <= 100_000 and 0 < args.protocols <= 1_000_000):
        parser.error("--rate within 0..100000, --protocols within 1..1000000")
    if not (1 <= args.days <= 30 and 1 <= args.sample <= 1_000 and 0 <= args.late <= 1):
        parser.error("--days within 1..30, --sample within 1..1000, --late within 0..1")
    interval = args.protocols / args.rate  # seconds between one protocol's observations
    out: dict[str, Any] = {"per_protocol_interval_s": round(interval, 2)}
    for name, reach in (
        ("tvl_today", RECENT_WINDOW_SECONDS),
        ("tvl_thinned", TVL_REACH),
        ("price_today", RECENT_WINDOW_SECONDS),
        ("price_thinned", PRICE_REACH),
    ):
        started = time.perf_counter()
        held = [n * args.sample for n in feed(interval * args.sample, args.days, reach, args.late)]
        out[name] = {
            "points_per_protocol_by_day": held,
            "mb_all_protocols_by_day": [round(n * 16 * args.protocols / 2**20) for n in held],
            "seconds": round(time.perf_counter() - started, 1),
        }
    steady = {
        "today": (out["tvl_today"]["points_per_protocol_by_day"][-1], RECENT_WINDOW_SECONDS),
        "thinned": (out["tvl_thinned"]["points_per_protocol_by_day"][-1], TVL_REACH),
    }
    # Measured twice each, the first pass discarded: glibc's first allocations of this size
    # are mmapped (page faults on every copy) until its threshold adapts.
    for _ in range(2):
        out["record_point_us_at_steady_size"] = {
            name: round(copy_cost(size, reach, interval), 1)
            for name, (size, reach) in steady.items()
        }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
