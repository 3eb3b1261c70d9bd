"""Anomaly detection: quality on the real TVL crashes, and throughput.

    python bench/bench_anomaly.py [--file PATH] [--series 6700] [--points 60] [--repeat 3]

(a) Quality. Over the real daily TVL histories (``tvl-history.jsonl.gz``, 38 protocols),
a **crash** is a point whose TVL is at least 20 % below a point of the same protocol at
most 24 h earlier. Each method flags points in time order, seeing only the past:

  threshold   the plain rule: the 24 h percent change (the alert evaluator's
              ``RecentSeries.change``, as a ``pct_change`` rule computes it) <= -20 %
  robust_z    ``RobustZScore`` falls scoring >= T (several T)
  cusum       ``Cusum`` falls scoring >= T (several T)

A flag **catches** a crash when it is at most ``--tolerance`` hours (default 48) before or
after it. Precision: flags that catch some crash / flags. Recall: crashes caught by some
flag / crashes. Lead: the crash's time minus its earliest catching flag's, in hours
(positive: the flag came first); the median over caught crashes, and how many were caught
before the crash point itself. Then every fall the chosen detector flags that no crash
explains (the threshold rule misses them by definition), with dates, so a reader can judge.

(b) Throughput: ``--series`` series of ``--points`` observations each (geometric random
walks, 3 % daily volatility, one in 200 steps a 30 % fall), interleaved as a live log
delivers them (one point per series per round), as ``LogEntry``s through
``AnomalyDetector.fold``: observations per second, median of ``--repeat``. Then the state
per series, measured with ``tracemalloc`` after ``window`` and after 4 x ``window`` points:
bounded means both are the same.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import math
import random
import statistics
import time
import tracemalloc
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from _common import machine

from defi_realtime.application.alerting import RecentSeries
from defi_realtime.application.anomaly import AnomalyDetector, DetectorSettings, Method
from defi_realtime.application.log import LogEntry

DEFAULT_FILE = Path(__file__).resolve().parents[2] / "shared/data/defillama/tvl-history.jsonl.gz"
DAY = 86_400.0
HOUR = 3_600.0


@dataclass(frozen=True, slots=True)
class Flag:
    protocol: str
    at: float
    change: float  # percent, against the previous point
    score: float


def load(path: Path) -> dict[str, list[tuple[float, float]]]:
    series: dict[str, dict[float, float]] = defaultdict(dict)
    with gzip.open(path, "rt") as lines:
        for line in lines:
            row = json.loads(line)
            if row.get("tvl") is None:
                continue
            series[row["protocol"]][float(row["date"])] = float(row["tvl"])
    return {name: sorted(points.items()) for name, points in sorted(series.items())}


def crashes(points: Sequence[tuple[float, float]]) -> list[float]:
    """Times of the points at least 20 % below a point at most 24 h earlier."""
    found = []
    for index, (at, value) in enumerate(points):
        back = index - 1
        while back >= 0 and at - points[back][0] <= DAY:
            if points[back][1] > 0 and value <= 0.8 * points[back][1]:
                found.append(at)
                break
            back -= 1
    return found


def threshold_flags(name: str, points: Sequence[tuple[float, float]]) -> list[Flag]:
    series = RecentSeries()
    flags = []
    previous = None
    for at, value in points:
        series.add(at, value)
        change = series.change(value, at, DAY)
        if change is not None and change <= -20.0:
            step = 0.0 if not previous else (value - previous) / previous * 100
            flags.append(Flag(name, at, step, -change))
        previous = value
    return flags


def detector_flags(
    name: str, points: Sequence[tuple[float, float]], settings: DetectorSettings
) -> list[Flag]:
    detector = AnomalyDetector(settings)
    flags = []
    for at, value in points:
        score = detector.score(name, at, value)
        if score is not None and score.direction == "fall" and score.score >= settings.threshold:
            flags.append(Flag(name, at, score.change, score.score))
    return flags


@dataclass(frozen=True, slots=True)
class Quality:
    name: str
    flags: int
    precision: float
    crashes: int
    recall: float
    lead_median_h: float | None
    caught_early: int
    unexplained: list[Flag]


def judge(
    name: str, flags: dict[str, list[Flag]], truth: dict[str, list[float]], tolerance: float
) -> Quality:
    total_flags = sum(len(found) for found in flags.values())
    good = 0
    unexplained = []
    caught = 0
    early = 0
    leads = []
    for protocol, found in flags.items():
        times = truth.get(protocol, [])
        for flag in found:
            if any(abs(flag.at - crash) <= tolerance for crash in times):
                good += 1
            else:
                unexplained.append(flag)
    for protocol, times in truth.items():
        found = flags.get(protocol, [])
        for crash in times:
            catching = [flag.at for flag in found if abs(flag.at - crash) <= tolerance]
            if catching:
                caught += 1
                lead = (crash - min(catching)) / HOUR
                leads.append(lead)
                early += lead > 0
    total_crashes = sum(len(times) for times in truth.values())
    return Quality(
        name,
        total_flags,
        good / total_flags if total_flags else math.nan,
        total_crashes,
        caught / total_crashes if total_crashes else math.nan,
        statistics.median(leads) if leads else None,
        early,
        unexplained,
    )


def day(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%d")


def quality(path: Path, tolerance_h: float, chosen: DetectorSettings) -> None:
    histories = load(path)
    truth = {name: crashes(points) for name, points in histories.items()}
    points = sum(len(p) for p in histories.values())
    print(
        f"(a) {len(histories)} protocols, {points} daily points, "
        f"{sum(map(len, truth.values()))} crash points (>= 20 % below a point <= 24 h "
        f"earlier); a flag catches a crash within +-{tolerance_h:g} h"
    )
    tolerance = tolerance_h * HOUR
    rows = [
        judge(
            "threshold -20 % / 24 h",
            {name: threshold_flags(name, p) for name, p in histories.items()},
            truth,
            tolerance,
        )
    ]
    variants: list[tuple[Method, float]] = [
        ("robust_z", 4.0),
        ("robust_z", 5.0),
        ("robust_z", 6.0),
        ("robust_z", 8.0),
        ("cusum", 4.0),
        ("cusum", 6.0),
        ("cusum", 8.0),
    ]
    chosen_row = None
    for method, threshold in variants:
        settings = DetectorSettings(
            method=method,
            window=chosen.window,
            warmup=chosen.warmup,
            min_scale=chosen.min_scale,
            threshold=threshold,
            drift=chosen.drift,
        )
        row = judge(
            f"{method} score >= {threshold:g}",
            {name: detector_flags(name, p, settings) for name, p in histories.items()},
            truth,
            tolerance,
        )
        rows.append(row)
        if method == chosen.method and threshold == chosen.threshold:
            chosen_row = row
    print(
        "| method | flags | precision | recall | crashes caught | median lead (h) | "
        "caught before the crash point |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        lead = "-" if row.lead_median_h is None else f"{row.lead_median_h:+.0f}"
        print(
            f"| {row.name} | {row.flags} | {row.precision:.2f} | {row.recall:.2f} | "
            f"{round(row.recall * row.crashes)}/{row.crashes} | {lead} | {row.caught_early} |"
        )
    if chosen_row is not None:
        print(
            f"\nFalls flagged by {chosen_row.name} (the default) that no crash explains "
            f"({len(chosen_row.unexplained)}; the threshold rule flags none of them):"
        )
        for flag in sorted(chosen_row.unexplained, key=lambda f: (f.protocol, f.at)):
            print(f"- {flag.protocol} {day(flag.at)}: {flag.change:+.1f}% (score {flag.score:.1f})")


def throughput(series: int, points: int, repeat: int, settings: DetectorSettings) -> None:
    rng = random.Random(7)
    entries = []
    values = [1e6 * (1 + rng.random() * 100) for _ in range(series)]
    position = 0
    for step in range(points):
        at = 1_700_000_000.0 + step * 60.0
        for index in range(series):
            shock = math.log(0.7) if rng.random() < 1 / 200 else rng.gauss(0, 0.03 / 38)
            values[index] *= math.exp(shock)
            position += 1
            entries.append(
                LogEntry(
                    position,
                    "metric",
                    f"p{index}",
                    {
                        "metric": "tvl",
                        "chain": "total",
                        "value": values[index],
                        "observed_at": at,
                        "source": "bench",
                    },
                    at,
                )
            )
    rates = []
    found = 0
    for _ in range(repeat):
        detector = AnomalyDetector(settings)
        started = time.perf_counter()
        for page in range(0, len(entries), 2_000):
            found = sum(1 for _ in detector.fold(entries[page : page + 2_000]))
        rates.append(len(entries) / (time.perf_counter() - started))
    print(
        f"\n(b) {settings.method}: {len(entries)} observations over {series} series, one "
        f"process: median {statistics.median(rates):,.0f} obs/s "
        f"(runs: {', '.join(f'{r:,.0f}' for r in rates)}); last page's detections {found}"
    )
    for method in ("robust_z", "cusum"):
        sizes = []
        for rounds in (settings.window + 2, 4 * settings.window):
            detector = AnomalyDetector(DetectorSettings(method=method))
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
            for step in range(rounds):
                for index in range(1_000):
                    detector.score(f"s{index}", float(step), 1.0 + (step * index % 7) / 100)
            sizes.append((tracemalloc.get_traced_memory()[0] - before) / 1_000)
            tracemalloc.stop()
        print(
            f"    state per series ({method}, 1,000 series): {sizes[0]:,.0f} B after "
            f"{settings.window + 2} points, {sizes[1]:,.0f} B after {4 * settings.window}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--file", type=Path, default=DEFAULT_FILE)
    parser.add_argument("--tolerance", type=float, default=48.0, help="hours")
    parser.add_argument("--series", type=int, default=6_700)
    parser.add_argument("--points", type=int, default=60)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(machine())
    settings = DetectorSettings()
    if args.file.exists():
        quality(args.file, args.tolerance, settings)
    else:
        print(f"(a) skipped: {args.file} is absent")
    throughput(args.series, args.points, args.repeat, settings)


if __name__ == "__main__":
    main()
