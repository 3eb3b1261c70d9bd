"""Anomaly detection: the detector on synthetic series, the AnomalyLog aggregate, and the
follower over the real application (in-memory event store) and its real event log."""

from __future__ import annotations

import asyncio
import math
import random
import tracemalloc
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from defi_realtime.adapters.event_store_log import EventStoreLog
from defi_realtime.adapters.position_stores import InMemoryPositionStore
from defi_realtime.application.alert_backtest import backtest
from defi_realtime.application.anomaly import (
    AnomalyDetector,
    Cusum,
    Detection,
    DetectorSettings,
    RobustZScore,
    series_of,
)
from defi_realtime.application.anomaly_follower import AnomalyFollower
from defi_realtime.application.app import DefiRealtime
from defi_realtime.application.ingest import build_batch
from defi_realtime.application.log import LogEntry
from defi_realtime.application.views import SeriesPoint
from defi_realtime.domain.alert_values import InvalidRule, parse_condition, parse_target
from defi_realtime.domain.anomaly import AnomalyLog
from defi_realtime.domain.errors import InvalidObservation
from tests.unit.test_alerting import Harness as AlertHarness
from tests.unit.test_alerting import run

T0 = 1_700_000_000.0
DAY = 86_400.0


def walk(days: int, seed: int = 1, sd: float = 0.02) -> list[tuple[float, float]]:
    rng = random.Random(seed)
    value = 1e8
    points = []
    for day in range(days):
        value *= math.exp(rng.gauss(0, sd))
        points.append((T0 + day * DAY, value))
    return points


def scores(detector: RobustZScore | Cusum, points: Sequence[tuple[float, float]]) -> list[Any]:
    return [detector.observe(at, value) for at, value in points]


@pytest.mark.parametrize("kind", [RobustZScore, Cusum])
def test_a_crash_scores_far_above_normal_days(kind: type[RobustZScore | Cusum]) -> None:
    points = walk(60)
    at, value = points[-1]
    points.append((at + DAY, value * 0.6))  # a 40 % fall in a day
    found = scores(kind(DetectorSettings(method="cusum" if kind is Cusum else "robust_z")), points)
    normal = [s.score for s in found[:-1] if s is not None]
    crash = found[-1]
    assert crash is not None
    assert crash.direction == "fall"
    assert crash.score >= 6.0 > max(normal)
    assert crash.change == pytest.approx(-40.0)


def test_nothing_is_scored_before_the_warmup() -> None:
    detector = RobustZScore(DetectorSettings(warmup=10))
    found = scores(detector, walk(12))
    assert found[:11] == [None] * 11  # the first point, then 10 returns into the window
    assert found[11] is not None


def test_returns_are_per_time_so_minute_and_daily_data_share_a_scale() -> None:
    # The same volatility per sqrt(day), sampled daily and every minute: similar scores
    # for the same relative shock scaled to its interval.
    settings = DetectorSettings(min_scale=1e-6)
    daily, minutely = RobustZScore(settings), RobustZScore(settings)
    rng = random.Random(3)
    value_d = value_m = 100.0
    for step in range(40):
        value_d *= math.exp(rng.gauss(0, 0.02))
        value_m *= math.exp(rng.gauss(0, 0.02 / math.sqrt(1_440)))
        daily.observe(T0 + step * DAY, value_d)
        minutely.observe(T0 + step * 60, value_m)
    shock = 0.12  # six standard deviations of a day
    day_score = daily.observe(T0 + 40 * DAY, value_d * math.exp(-shock))
    minute_score = minutely.observe(T0 + 40 * 60, value_m * math.exp(-shock / math.sqrt(1_440)))
    assert day_score is not None
    assert minute_score is not None
    assert day_score.score == pytest.approx(minute_score.score, rel=0.5)
    assert day_score.score > 3
    assert minute_score.score > 3


@pytest.mark.parametrize("kind", [RobustZScore, Cusum])
def test_duplicates_and_older_points_change_nothing(kind: type[RobustZScore | Cusum]) -> None:
    points = walk(30)
    plain, disturbed = kind(DetectorSettings()), kind(DetectorSettings())
    expected = scores(plain, points)
    got = []
    for index, (at, value) in enumerate(points):
        got.append(disturbed.observe(at, value))
        if index > 2:
            # A repeat, a correction of the current point and a late point: ignored.
            assert disturbed.observe(at, value) is None
            assert disturbed.observe(at, value * 2) is None
            assert disturbed.observe(points[index - 2][0], 1.0) is None
    assert got == expected


@pytest.mark.parametrize("method", ["robust_z", "cusum"])
def test_state_per_series_is_bounded(method: str) -> None:
    settings = DetectorSettings(method=method, window=20)  # type: ignore[arg-type]
    detector = AnomalyDetector(settings)

    def size_after(points: int) -> int:
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            fresh = AnomalyDetector(settings)
            for step in range(points):
                fresh.score("s", T0 + step * DAY, 1e6 + (step % 7) * 1e4)
            return tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()

    # Once the window is full, more points cost nothing (a few bytes of counters aside);
    # keeping them would cost at least 8 bytes each.
    full = size_after(100)
    assert size_after(4_000) <= full + 256
    assert full < 2_000
    assert len(detector) == 0


def test_zero_values_give_finite_scores() -> None:
    detector = RobustZScore(DetectorSettings(warmup=2))
    found = scores(detector, [(T0, 5.0), (T0 + DAY, 5.0), (T0 + 2 * DAY, 5.0), (T0 + 3 * DAY, 0.0)])
    last = found[-1]
    assert last is not None
    assert math.isfinite(last.score)
    assert last.direction == "fall"
    assert detector.observe(T0 + 4 * DAY, 0.0) is not None  # zero to zero: no move


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="method"):
        DetectorSettings(method="magic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="window"):
        DetectorSettings(window=2)


def entry(position: int, kind: str, key: str, **data: Any) -> LogEntry:
    return LogEntry(position, kind, key, data, 0.0)


def test_followed_series_are_totals_of_four_measures() -> None:
    tvl = entry(1, "metric", "aave", metric="tvl", chain="total", value=1.0, observed_at=T0)
    assert series_of(tvl) == ("protocol:aave:tvl:total", "aave", "tvl", T0, 1.0)
    on_chain = entry(2, "metric", "aave", metric="tvl", chain="Ethereum", value=1.0, observed_at=T0)
    section = entry(
        3, "metric", "aave", metric="tvl:staking", chain="total", value=1, observed_at=T0
    )
    assert series_of(on_chain) is None
    assert series_of(section) is None
    price = entry(4, "price", "coingecko:eth", price=3.0, observed_at=T0, confidence=1)
    assert series_of(price) == ("token:coingecko:eth", "coingecko:eth", "price", T0, 3.0)


# --- the aggregate ------------------------------------------------------------------------


def test_anomaly_log_ignores_positions_it_has_handled() -> None:
    log = AnomalyLog.open("protocol:aave:tvl:total", "aave", "tvl")
    assert log.id == AnomalyLog.id_for("protocol:aave:tvl:total")
    assert log.detect(T0, 1.0, 7.0, "fall", "why", position=10)
    assert not log.detect(T0, 1.0, 7.0, "fall", "why", position=10)
    assert not log.detect(T0, 1.0, 7.0, "fall", "why", position=9)
    assert log.detect(T0 + 1, 1.0, 7.0, "rise", "why", position=11)
    assert log.detections == 2
    with pytest.raises(InvalidObservation):
        log.detect(T0, 1.0, math.nan, "fall", "why", position=12)
    with pytest.raises(InvalidObservation):
        log.detect(T0, 1.0, 1.0, "sideways", "why", position=12)
    replayed = AnomalyLog.id_for("protocol:aave:tvl:total")
    assert replayed == log.id


# --- the follower -------------------------------------------------------------------------


class Harness:
    def __init__(self) -> None:
        self.app = DefiRealtime(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
        self.log = EventStoreLog(self.app)
        self.positions = InMemoryPositionStore()

    async def record(self, detections: Sequence[Detection]) -> int:
        return self.app.record_anomalies(detections)

    def follower(self, positions: InMemoryPositionStore | None = None) -> AnomalyFollower:
        return AnomalyFollower(self.log, positions or self.positions, self.record, page_size=50)

    def ingest_series(self, points: Sequence[tuple[float, float]], slug: str = "aave") -> None:
        items = [
            {"protocol": slug, "value": v, "observed_at": at, "name": slug} for at, v in points
        ]
        [result] = self.app.ingest([build_batch(items, [])])
        assert result.committed
        assert not result.rejected

    def anomalies(self) -> list[LogEntry]:
        return [e for e in self.log.read(0, 1_000_000).entries if e.kind == "anomaly_detected"]


def crash_series() -> list[tuple[float, float]]:
    points = walk(40, seed=5)
    at, value = points[-1]
    return [*points, (at + DAY, value * 0.5)]


async def test_the_follower_records_a_crash_once_even_when_replayed() -> None:
    harness = Harness()
    harness.ingest_series(crash_series())
    follower = harness.follower()
    runner = follower.runner()
    await runner.catch_up()
    [found] = harness.anomalies()
    assert found.key == "aave"
    assert found.data["series"] == "protocol:aave:tvl:total"
    assert found.data["measure"] == "tvl"
    assert found.data["direction"] == "fall"
    assert found.data["score"] >= 6.0
    assert "fall of 50.0%" in found.data["reason"]
    # A rebuild from position 0 (another position store) finds it again, records nothing.
    rebuilt = harness.follower(InMemoryPositionStore())
    await rebuilt.runner().catch_up()
    assert rebuilt.recorded == 0
    assert len(harness.anomalies()) == 1


async def test_a_crash_between_recording_and_the_position_records_nothing_twice() -> None:
    class FailingOnce(InMemoryPositionStore):
        failed = False

        async def save(self, name: str, position: int) -> None:
            if not self.failed:
                self.failed = True
                raise ConnectionError("position store went away")
            await super().save(name, position)

    harness = Harness()
    harness.ingest_series(crash_series())
    follower = harness.follower(FailingOnce())
    runner = follower.runner()
    with pytest.raises(ConnectionError):
        await runner.catch_up()
    await runner.catch_up()  # folds the log again from the stored position (0)
    assert len(harness.anomalies()) == 1
    assert await follower.position() == harness.log.head()


async def test_resuming_after_a_stop_detects_what_one_pass_detects() -> None:
    points = crash_series()
    at, value = points[-1]
    later = [(at + (i + 1) * DAY, value * (1 + 0.001 * i)) for i in range(10)]
    later.append((later[-1][0] + DAY, later[-1][1] * 0.4))
    one, two = Harness(), Harness()
    for each in (one, two):
        each.ingest_series(points)
    await one.follower().runner().catch_up()
    first = two.follower()
    await first.runner().catch_up()
    for each in (one, two):
        each.ingest_series(later)
    await one.follower(one.positions).runner().catch_up()
    # A new follower over the same stored position: it rebuilds its state from the log.
    resumed = two.follower(two.positions)
    await resumed.runner().catch_up()
    assert len(one.anomalies()) == 2
    assert [e.data for e in one.anomalies()] == [e.data for e in two.anomalies()]
    await asyncio.sleep(0)


# --- the alert condition ------------------------------------------------------------------

ANOMALY_FALL = {"kind": "anomaly", "min_score": 6}


@pytest.fixture
def alerts() -> Iterator[AlertHarness]:
    harness = AlertHarness()
    try:
        yield harness
    finally:
        harness.app.close()


def test_the_anomaly_condition_is_validated() -> None:
    condition = parse_condition({"kind": "anomaly", "min_score": 4.5, "move": "any"})
    assert condition.value == 4.5
    assert condition.direction == "above"
    assert parse_condition(ANOMALY_FALL).model_dump() == {
        "kind": "anomaly",
        "min_score": 6.0,
        "move": "fall",
    }
    with pytest.raises(InvalidRule, match=r"condition\.min_score"):
        parse_condition({"kind": "anomaly", "min_score": 0})
    with pytest.raises(InvalidRule, match=r"condition\.move"):
        parse_condition({"kind": "anomaly", "min_score": 3, "move": "up"})


async def test_an_anomaly_rule_fires_on_a_crash_and_resolves_after(
    alerts: AlertHarness,
) -> None:
    harness = alerts
    points = crash_series()
    for at, value in points[:-1]:
        harness.tvl(value, at)
    rule_id = harness.rule(ANOMALY_FALL)
    evaluator = harness.evaluator()
    await run(evaluator)
    assert harness.transitions() == []
    at, value = points[-1]
    harness.tvl(value, at)  # the crash
    await run(evaluator)
    [(kind, key, measure, when)] = harness.transitions()
    assert (kind, key, when) == ("alert_triggered", rule_id, at)
    assert measure >= 6
    harness.tvl(value * 1.001, at + DAY)  # a quiet day
    await run(evaluator)
    assert [t[0] for t in harness.transitions()] == ["alert_triggered", "alert_resolved"]


async def test_an_anomaly_rule_on_a_known_series_starts_warm(alerts: AlertHarness) -> None:
    harness = alerts
    # The points were applied to the history before the rule existed: the evaluator seeds
    # its detector from there, and the crash right after the rule's creation fires.
    points = crash_series()
    for at, value in points[:-1]:
        harness.tvl(value, at)
    harness.sync_history()
    evaluator = harness.evaluator()
    await run(evaluator)
    rule_id = harness.rule(ANOMALY_FALL)
    at, value = points[-1]
    harness.tvl(value, at)
    harness.sync_history()
    await run(evaluator)
    assert [(t[0], t[1]) for t in harness.transitions()] == [("alert_triggered", rule_id)]


def test_a_backtest_of_an_anomaly_rule_finds_the_crash() -> None:
    points = [SeriesPoint(at, value) for at, value in crash_series()]
    target = parse_target({"protocol": "aave"})
    result = backtest(target, parse_condition(ANOMALY_FALL), points, cooldown=0)
    [fired] = result.events
    assert fired.state == "firing"
    assert fired.observed_at == points[-1].timestamp
    assert fired.measure >= 6
    # A rise never fires a rule watching falls.
    rising = [*points[:-1], SeriesPoint(points[-1].timestamp, points[-2].value * 2)]
    assert backtest(target, parse_condition(ANOMALY_FALL), rising, cooldown=0).events == ()
    anything = parse_condition({"kind": "anomaly", "min_score": 6, "move": "any"})
    assert len(backtest(target, anything, rising, cooldown=0).events) == 1
