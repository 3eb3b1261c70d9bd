"""Backtest: run an alert rule over stored history and list when it would have fired.

The same domain logic as live evaluation: a throwaway ``AlertRule`` (never saved) observes
each point of the history read model's series in time order, with the measure computed
like the evaluator does (the value itself, or ``RecentSeries.change`` over the window).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from ..domain.alert_rule import AlertRule, Firing, anomaly_move, window_seconds
from ..domain.alert_values import (
    Condition,
    MevCondition,
    MevTarget,
    ProtocolTarget,
    RuleTarget,
    WebsocketChannel,
    mev_measure,
)
from .alerting import RecentSeries, anomaly_measure
from .anomaly import DAY, DetectorSettings, new_detector
from .ports import BacktestHistory, MevReadModel
from .views import MevQuery, SeriesPoint, SeriesQuery

_SERIES_LIMIT: Final = 10_000_000
_MEV_LIMIT: Final = 1_000_000
_REACH: Final = 1.5
# How far before ``start`` an anomaly backtest reads to warm its detector (daily points need
# ``window`` days of them).
_ANOMALY_REACH: Final = 90 * DAY / _REACH
PROGRESS_EVERY: Final = 1_000


class BacktestUnsupported(ValueError):
    """The target has no stored series to replay (token prices, for now)."""


@dataclass(frozen=True, slots=True)
class BacktestEvent:
    state: Firing
    observed_at: float
    measure: float

    def to_json(self) -> dict[str, Any]:
        return {"state": self.state, "observed_at": self.observed_at, "measure": self.measure}


@dataclass(frozen=True, slots=True)
class BacktestResult:
    events: tuple[BacktestEvent, ...]
    points: int
    start: float | None
    end: float | None

    def to_json(self) -> dict[str, Any]:
        return {
            "events": [event.to_json() for event in self.events],
            "points": self.points,
            "start": self.start,
            "end": self.end,
        }


def backtest(
    target: RuleTarget,
    condition: Condition,
    points: Sequence[SeriesPoint],
    *,
    cooldown: int = 3_600,
    start: float | None = None,
    end: float | None = None,
    progress: Callable[[int], None] | None = None,
    detector: DetectorSettings | None = None,
) -> BacktestResult:
    """Every transition the rule would have made over ``points`` (time-ordered), counting
    only observations within ``[start, end]``; earlier points still serve as references
    for percent changes and warm the anomaly detector (an ``anomaly`` condition's measure
    is the detector's score, as the evaluator computes it with ``detector`` settings).
    ``progress`` is called with the number of points done."""
    rule = AlertRule.create(
        "backtest", target, condition, [WebsocketChannel(kind="websocket")], cooldown=cooldown
    )
    window = window_seconds(rule.condition)
    move = anomaly_move(rule.condition)
    scorer = None if move is None else new_detector(detector or DetectorSettings())
    series = RecentSeries()
    events: list[BacktestEvent] = []
    evaluated = 0
    for index, point in enumerate(points, start=1):
        if progress is not None and index % PROGRESS_EVERY == 0:
            progress(PROGRESS_EVERY)
        observed_at, value = point.timestamp, point.value
        if not series.add(observed_at, value):
            continue
        score = None if scorer is None else scorer.observe(observed_at, value)
        if (start is not None and observed_at < start) or (end is not None and observed_at > end):
            continue
        evaluated += 1
        if move is not None:
            measure = anomaly_measure(score, f"anomaly:{move}")
        elif window is None:
            measure = value
        else:
            measure = series.change(value, observed_at, window)
        if measure is None:
            continue
        transition = rule.observe(measure, observed_at)
        if transition is not None:
            events.append(BacktestEvent(transition, observed_at, measure))
    if progress is not None:
        progress(len(points) % PROGRESS_EVERY)
    rule.collect_events()  # throwaway: nothing is saved
    return BacktestResult(tuple(events), evaluated, start, end)


def history_points(
    history: BacktestHistory,
    target: RuleTarget,
    condition: Condition,
    *,
    start: float | None = None,
    end: float | None = None,
) -> list[SeriesPoint]:
    """The stored points a backtest of ``target`` over ``[start, end]`` needs (blocking),
    reaching back before ``start`` far enough for the condition's window."""
    if isinstance(target, MevTarget) and isinstance(condition, MevCondition):
        return mev_points(history, target, condition, start=start, end=end)
    if not isinstance(target, ProtocolTarget):
        raise BacktestUnsupported(
            "backtests replay protocol metrics and MEV detections only (no price series yet)"
        )
    window = window_seconds(condition) or 0.0
    if anomaly_move(condition) is not None:
        window = _ANOMALY_REACH
    series = history.series(
        SeriesQuery(
            slug=target.protocol,
            metric=target.metric,
            chain=target.chain,
            start=None if start is None else start - _REACH * window,
            end=end,
            limit=_SERIES_LIMIT,
        )
    )
    return list(series.points)


def mev_points(
    history: MevReadModel,
    target: MevTarget,
    condition: MevCondition,
    *,
    start: float | None = None,
    end: float | None = None,
) -> list[SeriesPoint]:
    """An ``mev`` rule's measures over the live (not retracted) detections of its chain
    recorded within ``[start, end]``, in log order, each at the time it was recorded: the
    backtest replays them as values. The read model keeps an arbitrage's first pool only,
    so a ``pool`` filter matches an arbitrage by that pool here (live: by any of them)."""
    found, _ = history.mev(MevQuery(limit=_MEV_LIMIT))
    points = [
        SeriesPoint(
            timestamp=view.recorded_at,
            value=mev_measure(
                condition,
                {
                    "kind": view.kind,
                    "actor": view.actor,
                    "pool": view.pool,
                    "profit_usd": view.profit_usd,
                },
            ),
        )
        for view in sorted(found, key=lambda view: view.position)
        if view.chain_id == target.chain_id
        and (start is None or view.recorded_at >= start)
        and (end is None or view.recorded_at <= end)
    ]
    return points
