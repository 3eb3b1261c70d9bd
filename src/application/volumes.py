"""DeFiLlama's volume and fee summaries (``/overview/dexs``, ``/summary/fees/{protocol}``...)
from the ``volume_24h`` and ``fees_24h`` series we hold.

A protocol's daily series is the last observation of each UTC day (a 24-hour figure); a day
without one is missing, not carried (a volume is not a balance). From it, as DeFiLlama:
``total24h`` is the latest day's figure, ``total48hto24h`` the day before's, ``total7d`` and
``total30d`` the sums over the 7 and 30 days ending at the latest day, and ``change_1d`` /
``change_7d`` / ``change_1m`` the percent changes of the latest day's figure against 1, 7 and
30 days before (None when that day is missing or zero). The overview's chart is the sum over
protocols per day, and its totals are read off the chart the same way.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .chain_tvl import DAY

__all__ = ["Summary", "daily_by_protocol", "overall", "summarise"]


@dataclass(frozen=True, slots=True)
class Summary:
    total24h: float | None
    total48hto24h: float | None
    total7d: float | None
    total30d: float | None
    change_1d: float | None
    change_7d: float | None
    change_1m: float | None
    chart: list[tuple[int, float]]
    """``(day start, value)``, oldest first."""


def _change(days: Mapping[int, float], last: int, back: int) -> float | None:
    before = days.get(last - back)
    if before is None or before == 0:
        return None
    return (days[last] - before) / before * 100.0


def _window(days: Mapping[int, float], last: int, length: int) -> float:
    return math.fsum(value for day, value in days.items() if last - length < day <= last)


def summarise(days: Mapping[int, float]) -> Summary:
    """The summary of one daily series (days since the epoch -> value)."""
    if not days:
        return Summary(None, None, None, None, None, None, None, [])
    last = max(days)
    return Summary(
        total24h=days[last],
        total48hto24h=days.get(last - 1),
        total7d=_window(days, last, 7),
        total30d=_window(days, last, 30),
        change_1d=_change(days, last, 1),
        change_7d=_change(days, last, 7),
        change_1m=_change(days, last, 30),
        chart=[(day * DAY, days[day]) for day in sorted(days)],
    )


def daily_by_protocol(rows: Iterable[tuple[str, int, float]]) -> dict[str, dict[int, float]]:
    """``(protocol, day, value)`` rows as each protocol's daily series."""
    series: dict[str, dict[int, float]] = defaultdict(dict)
    for protocol, day, value in rows:
        series[protocol][day] = value
    return dict(series)


def overall(series: Mapping[str, Mapping[int, float]]) -> dict[int, float]:
    """The sum over protocols per day."""
    days: dict[int, float] = defaultdict(float)
    for one in series.values():
        for day, value in one.items():
            days[day] += value
    return dict(days)
