"""Alert rules: evaluation (``AlertEvaluator``), the rule lifecycle in the log, the
``alert_rules`` read model and backtests.

The evaluator runs against the real application on the in-memory event store (popo), its
real ``EventStoreLog``, an in-memory position store and a fake history/rules read model.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio import Redis

from defi_realtime.adapters.event_store_log import EventStoreLog
from defi_realtime.adapters.memory_hot_projection import InMemoryHotProjection
from defi_realtime.adapters.position_stores import InMemoryPositionStore
from defi_realtime.adapters.redis_hot_projection import RedisHotProjection
from defi_realtime.adapters.sql_history import SqlHistoryReadModel
from defi_realtime.application.alert_backtest import (
    BacktestUnsupported,
    backtest,
    history_points,
)
from defi_realtime.application.alert_rules import (
    RULE_FACT_KINDS,
    AlertRuleView,
    RuleObservation,
    RuleSnapshot,
    fold_rule,
)
from defi_realtime.application.alerting import AlertEvaluator, RecentSeries
from defi_realtime.application.app import DefiRealtime, ProtocolNotFound, TokenNotFound
from defi_realtime.application.ingest import build_batch
from defi_realtime.application.log import LogBatch, LogEntry
from defi_realtime.application.ports import HotProjection
from defi_realtime.application.views import (
    ProtocolQuery,
    Series,
    SeriesPoint,
    SeriesQuery,
    percent_change,
)
from defi_realtime.domain.alert_rule import AlertRule, InvalidRule
from defi_realtime.domain.alert_values import parse_condition, parse_target
from defi_realtime.domain.token import canonical_token_id
from tests.services import redis_url

T0 = 1_700_000_000.0
HOUR = 3_600.0
DAY = 86_400.0
WEBSOCKET = [{"kind": "websocket"}]
BELOW_1B = {"kind": "threshold", "direction": "below", "value": 1e9}
DROP_20_IN_24H = {"kind": "pct_change", "direction": "below", "value": -20, "window": "24h"}
KEY_AAVE = "protocol:aave:tvl:total"


# --- fakes ------------------------------------------------------------------------------


class FakeHistory:
    """The history read model's two roles for the evaluator: series and the rules.

    With ``follow``, it plays the history follower of a running node: it has applied the
    whole log whenever asked for its position, after ``lag`` stale answers.
    """

    def __init__(self, follow: EventStoreLog | None = None, lag: int = 0) -> None:
        self._position = 0
        # (slug, metric, chain) -> observed_at -> (value, position)
        self.points: dict[tuple[str, str, str], dict[float, tuple[float, int]]] = {}
        self.rules: dict[str, AlertRuleView] = {}
        self.follow = follow
        self.lag = lag
        self.asked = 0

    def position(self) -> int:
        self.asked += 1
        if self.follow is not None and self.asked > self.lag:
            self.apply(self.follow.read(self._position, 1_000_000))
        return self._position

    def apply(self, batch: LogBatch) -> bool:
        for entry in batch.since(self._position).entries:
            if entry.kind == "metric":
                key = (entry.key, entry.data["metric"], entry.data["chain"])
                value = (entry.data["value"], entry.position)
                self.points.setdefault(key, {})[entry.data["observed_at"]] = value
            elif entry.kind in RULE_FACT_KINDS:
                view = fold_rule(self.rules.get(entry.key), entry)
                if view is not None:
                    self.rules[entry.key] = view
        self._position = max(self._position, batch.last)
        return True

    def series(self, query: SeriesQuery) -> Series:
        stored = self.points.get((query.slug, query.metric, query.chain), {})
        until = query.until_position
        points = [
            SeriesPoint(at, value)
            for at, (value, position) in sorted(stored.items())
            if until is None or position <= until
        ]
        return Series(query.slug, query.metric, query.chain, points)

    def alert_rules(
        self, owner: str | None = None, *, include_deleted: bool = False
    ) -> list[AlertRuleView]:
        return [
            view
            for view in self.rules.values()
            if (owner is None or view.owner == owner)
            and (include_deleted or view.state != "deleted")
        ]

    def reset(self) -> None:  # pragma: no cover - the HistoryReadModel port
        raise NotImplementedError

    def close(self) -> None:
        pass


class FailingOncePositionStore(InMemoryPositionStore):
    """Crashes on the first save: transitions recorded, position not."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    async def save(self, name: str, position: int) -> None:
        if not self.failed:
            self.failed = True
            raise ConnectionError("position store went away")
        await super().save(name, position)


class Harness:
    def __init__(self) -> None:
        self.app = DefiRealtime(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
        self.log = EventStoreLog(self.app)
        self.history = FakeHistory(follow=self.log)
        self.positions = InMemoryPositionStore()
        self.recorded: list[list[RuleObservation]] = []

    async def record(self, observations: Sequence[RuleObservation]) -> list[RuleSnapshot]:
        self.recorded.append(list(observations))
        return self.app.observe_alert_rules(observations)

    def evaluator(
        self, positions: InMemoryPositionStore | None = None, history_wait: float = 5.0
    ) -> AlertEvaluator:
        return AlertEvaluator(
            self.log,
            self.history,
            self.history,
            positions or self.positions,
            self.record,
            history_wait=history_wait,
        )

    def ingest(self, *items: dict[str, Any], prices: Sequence[dict[str, Any]] = ()) -> None:
        [result] = self.app.ingest([build_batch(list(items), list(prices))])
        assert result.committed, result.rejected
        assert not result.rejected, result.rejected

    def tvl(self, value: float, at: float, slug: str = "aave") -> None:
        self.ingest({"protocol": slug, "value": value, "observed_at": at, "name": slug.upper()})

    def rule(
        self,
        condition: dict[str, Any] = BELOW_1B,
        *,
        owner: str = "alice",
        target: dict[str, Any] | None = None,
        cooldown: int = 0,
    ) -> str:
        rule_id = self.app.create_alert_rule(
            owner, target or {"protocol": "aave"}, condition, WEBSOCKET, cooldown
        )
        return str(rule_id)

    def sync_history(self) -> None:
        self.history.apply(self.log.read(self.history.position(), 1_000_000))

    def transitions(self) -> list[tuple[str, str, float, float]]:
        return [
            (entry.kind, entry.key, entry.data["measure"], entry.data["observed_at"])
            for entry in self.log.read(0, 1_000_000).entries
            if entry.kind in ("alert_triggered", "alert_resolved")
        ]


@pytest.fixture
def harness() -> Iterator[Harness]:
    h = Harness()
    try:
        yield h
    finally:
        h.app.close()


async def run(evaluator: AlertEvaluator) -> int:
    """Evaluate everything in the log (as the node follower does on start and live)."""
    return await evaluator.runner().catch_up()


# --- evaluation ---------------------------------------------------------------------------


async def test_threshold_rule_fires_and_resolves(harness: Harness) -> None:
    harness.tvl(2e9, T0)
    rule_id = harness.rule()
    evaluator = harness.evaluator()
    await run(evaluator)
    assert harness.transitions() == []

    harness.tvl(5e8, T0 + 60)
    await run(evaluator)
    assert harness.transitions() == [("alert_triggered", rule_id, 5e8, T0 + 60)]

    harness.tvl(4e8, T0 + 120)  # still below: no repeat
    harness.tvl(2e9, T0 + 180)
    await run(evaluator)
    assert harness.transitions()[1:] == [("alert_resolved", rule_id, 2e9, T0 + 180)]
    assert await harness.positions.load("alerts") == harness.log.head()


async def test_pct_change_rule_fires_on_a_drop_within_its_window(harness: Harness) -> None:
    harness.tvl(100.0, T0)
    rule_id = harness.rule(DROP_20_IN_24H)
    evaluator = harness.evaluator()
    harness.tvl(90.0, T0 + DAY)  # -10% against the previous day: quiet
    await run(evaluator)
    assert harness.transitions() == []

    harness.tvl(70.0, T0 + 2 * DAY)  # -22.2% against the previous day
    await run(evaluator)
    [(kind, key, measure, at)] = harness.transitions()
    assert (kind, key, at) == ("alert_triggered", rule_id, T0 + 2 * DAY)
    assert measure == pytest.approx(-22.222, abs=1e-3)

    harness.tvl(69.0, T0 + 3 * DAY)  # -1.4%: the drop is over
    await run(evaluator)
    assert [t[0] for t in harness.transitions()] == ["alert_triggered", "alert_resolved"]


async def test_pct_change_reference_is_seeded_from_the_history_read_model(
    harness: Harness,
) -> None:
    # The history was applied by another follower; the evaluator never saw these points.
    harness.tvl(100.0, T0)
    harness.rule(DROP_20_IN_24H)
    harness.sync_history()
    await harness.positions.save("alerts", harness.log.head())
    evaluator = harness.evaluator()
    await run(evaluator)

    harness.tvl(50.0, T0 + DAY)
    await run(evaluator)
    assert [(t[0], t[2]) for t in harness.transitions()] == [("alert_triggered", -50.0)]


async def test_a_new_target_waits_for_the_history_to_reach_the_rule(harness: Harness) -> None:
    harness.history = FakeHistory(follow=harness.log, lag=5)  # a few polls behind
    evaluator = harness.evaluator()
    await run(evaluator)  # nothing in the log yet
    harness.tvl(100.0, T0)
    await run(evaluator)  # an unwatched target: its points are not kept
    harness.rule(DROP_20_IN_24H)
    harness.tvl(50.0, T0 + DAY)
    await run(evaluator)
    assert [(t[0], t[2]) for t in harness.transitions()] == [("alert_triggered", -50.0)]


async def test_a_history_that_never_catches_up_only_costs_the_reference(
    harness: Harness,
) -> None:
    harness.history = FakeHistory()  # nobody applies it
    evaluator = harness.evaluator(history_wait=0.05)
    await run(evaluator)
    harness.tvl(100.0, T0)
    await run(evaluator)
    harness.rule(DROP_20_IN_24H)
    harness.tvl(50.0, T0 + DAY)  # no reference for the change: quiet, not an error
    await run(evaluator)
    assert harness.transitions() == []
    harness.tvl(20.0, T0 + 2 * DAY)  # the evaluator kept the series from the rule on
    await run(evaluator)
    assert [(t[0], t[2]) for t in harness.transitions()] == [("alert_triggered", -60.0)]


async def test_cooldown_suppresses_a_new_firing_in_data_time(harness: Harness) -> None:
    harness.tvl(2e9, T0)
    harness.rule(cooldown=3_600)
    evaluator = harness.evaluator()
    harness.tvl(1.0, T0 + 10)  # fires
    harness.tvl(2e9, T0 + 20)  # resolves
    harness.tvl(1.0, T0 + 30)  # within the cooldown of the firing: quiet
    harness.tvl(2.0, T0 + 3_609)  # still within it
    harness.tvl(3.0, T0 + 3_610)  # cooldown over: fires again
    await run(evaluator)
    assert [(t[0], t[3]) for t in harness.transitions()] == [
        ("alert_triggered", T0 + 10),
        ("alert_resolved", T0 + 20),
        ("alert_triggered", T0 + 3_610),
    ]


async def test_paused_rule_does_not_fire_until_resumed(harness: Harness) -> None:
    harness.tvl(2e9, T0)
    rule_id = harness.rule()
    evaluator = harness.evaluator()
    await run(evaluator)
    harness.app.pause_alert_rule(UUID(rule_id), "alice")
    harness.tvl(1.0, T0 + 10)
    await run(evaluator)
    assert harness.transitions() == []
    assert evaluator.watching(KEY_AAVE) == 0

    harness.app.resume_alert_rule(UUID(rule_id), "alice")
    harness.tvl(2.0, T0 + 20)
    await run(evaluator)
    # Resumed against the value it missed while paused (1.0: below), then 2.0 is no news.
    assert harness.transitions() == [("alert_triggered", rule_id, 1.0, T0 + 10)]


async def test_a_rule_resumed_after_the_value_recovered_resolves(harness: Harness) -> None:
    harness.tvl(2e9, T0)
    rule_id = harness.rule()
    evaluator = harness.evaluator()
    harness.tvl(5e8, T0 + 10)
    await run(evaluator)
    assert harness.transitions() == [("alert_triggered", rule_id, 5e8, T0 + 10)]
    harness.app.pause_alert_rule(UUID(rule_id), "alice")
    harness.tvl(3e9, T0 + 20)  # recovered while paused
    await run(evaluator)
    assert len(harness.transitions()) == 1
    assert harness.app.get_alert_rule(UUID(rule_id), "alice").firing == "firing"

    harness.app.resume_alert_rule(UUID(rule_id), "alice")
    resumed_at = harness.log.head()
    await run(evaluator)
    assert harness.transitions()[1:] == [("alert_resolved", rule_id, 3e9, T0 + 20)]
    rule = harness.app.get_alert_rule(UUID(rule_id), "alice")
    assert (rule.firing, rule.last_position) == ("resolved", resumed_at)
    # Exactly once: a replay of the resumption (after a crash) records nothing more.
    await run(harness.evaluator(positions=InMemoryPositionStore()))
    assert len(harness.transitions()) == 2


async def test_a_resumed_rule_that_still_holds_records_nothing(harness: Harness) -> None:
    harness.tvl(2e9, T0)
    rule_id = harness.rule()
    evaluator = harness.evaluator()
    harness.tvl(5e8, T0 + 10)
    await run(evaluator)
    harness.app.pause_alert_rule(UUID(rule_id), "alice")
    harness.tvl(4e8, T0 + 20)
    harness.app.resume_alert_rule(UUID(rule_id), "alice")
    await run(evaluator)
    assert harness.transitions() == [("alert_triggered", rule_id, 5e8, T0 + 10)]


async def test_a_pct_change_rule_resumed_after_a_restart_uses_its_window(
    harness: Harness,
) -> None:
    """A paused rule keeps its target's series (with its window's reach), and a new
    evaluator seeds it: the change at resumption is measured over the rule's window."""
    harness.tvl(100.0, T0)
    rule_id = harness.rule(DROP_20_IN_24H)
    await run(harness.evaluator())
    harness.app.pause_alert_rule(UUID(rule_id), "alice")
    harness.tvl(95.0, T0 + DAY / 2)
    harness.tvl(70.0, T0 + DAY)  # -30% over 24h, while paused
    await run(harness.evaluator())
    assert harness.transitions() == []

    harness.app.resume_alert_rule(UUID(rule_id), "alice")
    await run(harness.evaluator())  # a restart: seeded from the stores
    [(kind, key, measure, observed_at)] = harness.transitions()
    assert (kind, key, observed_at) == ("alert_triggered", rule_id, T0 + DAY)
    assert measure == pytest.approx(-30.0)


async def test_deleted_rule_stops_being_evaluated(harness: Harness) -> None:
    harness.tvl(2e9, T0)
    rule_id = harness.rule()
    evaluator = harness.evaluator()
    await run(evaluator)
    assert evaluator.watching(KEY_AAVE) == 1
    harness.app.delete_alert_rule(UUID(rule_id), "alice")
    harness.tvl(1.0, T0 + 10)
    await run(evaluator)
    assert harness.transitions() == []
    assert evaluator.watching(KEY_AAVE) == 0
    assert evaluator.rule_count == 0


async def test_updated_condition_is_used_from_then_on(harness: Harness) -> None:
    harness.tvl(2e9, T0)
    rule_id = harness.rule()
    evaluator = harness.evaluator()
    await run(evaluator)
    harness.app.update_alert_rule(
        UUID(rule_id), "alice", condition={"kind": "threshold", "direction": "above", "value": 3e9}
    )
    harness.tvl(5e8, T0 + 10)  # would have fired the old condition
    harness.tvl(4e9, T0 + 20)
    await run(evaluator)
    assert harness.transitions() == [("alert_triggered", rule_id, 4e9, T0 + 20)]


async def test_an_observation_only_costs_the_rules_watching_its_target(
    harness: Harness,
) -> None:
    harness.tvl(2e9, T0, "aave")
    harness.tvl(2e9, T0, "lido")
    for _ in range(40):
        harness.rule(target={"protocol": "aave"})
    for _ in range(3):
        harness.rule(target={"protocol": "lido"})
    evaluator = harness.evaluator()
    await run(evaluator)
    before = evaluator.checks

    harness.tvl(1.5e9, T0 + 10, "lido")
    await run(evaluator)
    assert evaluator.checks - before == 3
    harness.tvl(1.4e9, T0 + 20, "aave")
    await run(evaluator)
    assert evaluator.checks - before == 3 + 40
    assert evaluator.watching(KEY_AAVE) == 40
    assert evaluator.watching("protocol:lido:tvl:total") == 3


async def test_a_price_rule_watches_its_token(harness: Harness) -> None:
    token = {"token": "coingecko:ethereum"}
    price = {"token": "coingecko:ethereum", "price": 3_000.0, "observed_at": T0}
    harness.ingest(prices=[price])
    rule_id = harness.rule(
        {"kind": "threshold", "direction": "above", "value": 3_500}, target=token
    )
    evaluator = harness.evaluator()
    harness.ingest(prices=[{**price, "price": 3_600.0, "observed_at": T0 + 60}])
    await run(evaluator)
    assert harness.transitions() == [("alert_triggered", rule_id, 3_600.0, T0 + 60)]


async def test_a_late_observation_never_fires(harness: Harness) -> None:
    harness.tvl(2e9, T0 + 100)
    harness.rule()
    evaluator = harness.evaluator()
    await run(evaluator)
    harness.tvl(1.0, T0 + 50)  # older than the current value: history only
    await run(evaluator)
    assert harness.transitions() == []


async def test_observations_before_a_rule_existed_are_not_evaluated_against_it(
    harness: Harness,
) -> None:
    harness.tvl(1.0, T0)  # already below the threshold before the rule was created
    harness.rule()
    evaluator = harness.evaluator()
    await run(evaluator)
    assert harness.transitions() == []


async def test_replaying_the_same_positions_records_no_duplicate(harness: Harness) -> None:
    harness.tvl(2e9, T0)
    rule_id = harness.rule()
    harness.tvl(1.0, T0 + 10)
    harness.tvl(2e9, T0 + 20)
    harness.tvl(1.0, T0 + 30)
    await run(harness.evaluator())
    expected = [
        ("alert_triggered", rule_id, 1.0, T0 + 10),
        ("alert_resolved", rule_id, 2e9, T0 + 20),
        ("alert_triggered", rule_id, 1.0, T0 + 30),
    ]
    assert harness.transitions() == expected

    # A new evaluator that lost its position replays the whole log: the rules ignore
    # the positions they already acted on.
    replayer = harness.evaluator(InMemoryPositionStore())
    await run(replayer)
    assert harness.transitions() == expected
    assert len(harness.recorded) == 2  # it asked, and was told no


async def test_a_crash_between_recording_and_storing_the_position_replays_safely(
    harness: Harness,
) -> None:
    harness.tvl(2e9, T0)
    rule_id = harness.rule()
    harness.tvl(1.0, T0 + 10)
    crashing = FailingOncePositionStore()
    with pytest.raises(ConnectionError):
        await run(harness.evaluator(crashing))
    # The transition was saved, the position was not.
    fired = [("alert_triggered", rule_id, 1.0, T0 + 10)]
    assert harness.transitions() == fired
    assert await crashing.load("alerts") == 0

    # Restarted from the stored position: the same observation again, no duplicate.
    await run(harness.evaluator(crashing))
    assert harness.transitions() == fired
    assert await crashing.load("alerts") == harness.log.head()


async def test_a_restart_behind_the_history_evaluates_every_missed_observation(
    harness: Harness,
) -> None:
    harness.tvl(2e9, T0)
    rule_id = harness.rule()
    await run(harness.evaluator())
    # While the evaluator is down, the history read model moves on.
    harness.tvl(1.0, T0 + 10)
    harness.tvl(2e9, T0 + 20)
    harness.sync_history()
    await run(harness.evaluator())
    assert [(t[0], t[1], t[3]) for t in harness.transitions()] == [
        ("alert_triggered", rule_id, T0 + 10),
        ("alert_resolved", rule_id, T0 + 20),
    ]


async def test_the_same_evaluator_rebuilds_itself_after_a_failure(harness: Harness) -> None:
    harness.tvl(2e9, T0)
    rule_id = harness.rule()
    positions = FailingOncePositionStore()
    evaluator = harness.evaluator(positions)
    harness.tvl(1.0, T0 + 10)
    runner = evaluator.runner()
    with pytest.raises(ConnectionError):
        await runner.catch_up()
    harness.tvl(2e9, T0 + 20)
    await runner.catch_up()
    assert [(t[0], t[1]) for t in harness.transitions()] == [
        ("alert_triggered", rule_id),
        ("alert_resolved", rule_id),
    ]


async def test_live_batches_through_the_runner(harness: Harness) -> None:
    harness.tvl(2e9, T0)
    harness.rule()
    evaluator = harness.evaluator()
    runner = evaluator.runner()
    await runner.catch_up()
    position = runner.position
    harness.tvl(1.0, T0 + 10)
    batch = harness.log.read(position, 100)
    await runner.advance(batch)
    await runner.advance(batch)  # a duplicate delivery changes nothing
    assert len(harness.transitions()) == 1


# --- the domain's part --------------------------------------------------------------------


def test_observe_ignores_positions_it_already_acted_on() -> None:
    rule = AlertRule.create("alice", {"protocol": "aave"}, BELOW_1B, WEBSOCKET, cooldown=0)
    assert rule.observe(1.0, T0, position=10) == "firing"
    assert rule.last_position == 10
    assert rule.observe(2e9, T0 + 1, position=10) is None
    assert rule.observe(2e9, T0 + 1, position=9) is None
    assert rule.observe(2e9, T0 + 1, position=11) == "resolved"
    events = rule.collect_events()
    assert [(type(e).__name__, getattr(e, "position", None)) for e in events[1:]] == [
        ("Triggered", 10),
        ("Resolved", 11),
    ]
    # Replaying the events restores the position.
    replayed = None
    for event in events:
        replayed = event.mutate(replayed)
    assert isinstance(replayed, AlertRule)
    assert replayed.last_position == 11


def test_create_alert_rule_needs_a_listed_protocol() -> None:
    app = DefiRealtime(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    try:
        with pytest.raises(ProtocolNotFound):
            app.create_alert_rule("alice", {"protocol": "aave"}, BELOW_1B, WEBSOCKET)
        assert (app.recorder.max_notification_id() or 0) == 0
    finally:
        app.close()


def test_create_alert_rule_needs_a_token_with_a_price() -> None:
    """An unknown token is refused like an unknown protocol; a token is known once any
    price was recorded for it, under any spelling of its EVM address."""
    app = DefiRealtime(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    usdc = "ethereum:0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48"
    try:
        for token in ("coingecko:nonexistent", usdc):
            with pytest.raises(TokenNotFound) as refused:
                app.create_alert_rule("alice", {"token": token}, BELOW_1B, WEBSOCKET)
            assert refused.value.token_id == canonical_token_id(token)
        assert (app.recorder.max_notification_id() or 0) == 0
        price = {"token": usdc.lower(), "price": 1.0, "observed_at": 1_700_000_000.0}
        app.ingest([build_batch(prices=[price])])
        rule_id = app.create_alert_rule("alice", {"token": usdc}, BELOW_1B, WEBSOCKET)
        assert app.get_alert_rule(rule_id, "alice").target.key == f"token:{usdc.lower()}"
    finally:
        app.close()


# --- the rule lifecycle in the log --------------------------------------------------------


def _sqlite_app(path: Path) -> DefiRealtime:
    return DefiRealtime(
        env={"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(path)}
    )


def test_rule_lifecycle_entries_carry_no_secret_on_either_path(tmp_path: Path) -> None:
    app = _sqlite_app(tmp_path / "events.db")
    try:
        app.ingest(
            [build_batch([{"protocol": "aave", "value": 1.0, "observed_at": T0, "name": "A"}])]
        )
        channels = [{"kind": "webhook", "url": "https://example.com/h", "secret": "s3cret"}]
        rule_id = app.create_alert_rule("alice", {"protocol": "aave"}, BELOW_1B, channels, 60, "n")
        app.update_alert_rule(rule_id, "alice", cooldown=5, channels=channels)
        app.pause_alert_rule(rule_id, "alice")
        app.resume_alert_rule(rule_id, "alice")
        app.delete_alert_rule(rule_id, "alice")
        fast = EventStoreLog(app).read(0, 100)
        mapped = EventStoreLog(app, fast=False).read(0, 100)
    finally:
        app.close()
    assert fast == mapped
    rule_entries = [e for e in fast.entries if e.key == str(rule_id)]
    assert [e.kind for e in rule_entries] == [
        "alert_rule_created",
        "alert_rule_updated",
        "alert_rule_paused",
        "alert_rule_resumed",
        "alert_rule_deleted",
    ]
    public = [{"kind": "webhook", "url": "https://example.com/h", "secret_set": True}]
    assert dict(rule_entries[0].data) == {
        "owner": "alice",
        "name": "n",
        "target": {"protocol": "aave", "metric": "tvl", "chain": "total"},
        "condition": {"kind": "threshold", "direction": "below", "value": 1e9},
        "channels": public,
        "cooldown": 60,
        "state": "active",
    }
    assert rule_entries[1].data["channels"] == public
    assert [e.data.get("state") for e in rule_entries[2:]] == ["paused", "active", "deleted"]
    assert "s3cret" not in repr(fast.to_json())


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def hot(request: pytest.FixtureRequest) -> AsyncIterator[HotProjection]:
    if request.param == "memory":
        yield InMemoryHotProjection()
        return
    client = Redis.from_url(redis_url())
    projection = RedisHotProjection(client, prefix=f"test:alerts:{uuid.uuid4().hex}:")
    try:
        yield projection
    finally:
        await projection.reset()
        await client.aclose()


async def test_hot_projections_ignore_rule_lifecycle_entries(hot: HotProjection) -> None:
    projection = hot
    entry = LogEntry(
        1,
        "alert_rule_created",
        "rule-1",
        {"owner": "o", "target": {"protocol": "aave"}, "condition": BELOW_1B},
        T0,
    )
    paused = LogEntry(2, "alert_rule_paused", "rule-1", {"state": "paused"}, T0)
    assert await projection.apply(LogBatch(0, 2, (entry, paused))) is True
    assert await projection.position() == 2
    assert (await projection.list_protocols(ProtocolQuery())).total == 0


def test_history_read_model_lists_rules_by_owner(tmp_path: Path) -> None:
    app = _sqlite_app(tmp_path / "events.db")
    model = SqlHistoryReadModel(f"sqlite:///{tmp_path / 'history.db'}")
    try:
        app.ingest(
            [build_batch([{"protocol": "aave", "value": 1.0, "observed_at": T0, "name": "A"}])]
        )
        first = str(app.create_alert_rule("alice", {"protocol": "aave"}, BELOW_1B, WEBSOCKET))
        second = str(
            app.create_alert_rule("alice", {"protocol": "aave"}, DROP_20_IN_24H, WEBSOCKET)
        )
        other = str(app.create_alert_rule("bob", {"protocol": "aave"}, BELOW_1B, WEBSOCKET))
        app.pause_alert_rule(UUID(second), "alice")
        rule = app.repository.get(UUID(first))
        rule.observe(5.0, T0 + 1, position=2)
        app.save(rule)
        app.delete_alert_rule(UUID(other), "bob")
        log = EventStoreLog(app)
        # In two batches, the second one replayed: the fold is exactly once.
        model.apply(log.read(0, 6))
        model.apply(log.read(0, 100))
        listed = model.alert_rules("alice")
        assert [(v.id, v.state, v.firing) for v in listed] == [
            (first, "active", "firing"),
            (second, "paused", "resolved"),
        ]
        assert listed[0].last_fired_at == T0 + 1
        assert listed[0].transitions == 1
        assert listed[0].target_key == KEY_AAVE
        assert model.alert_rules("bob") == []
        assert [v.id for v in model.alert_rules("bob", include_deleted=True)] == [other]
        assert len(model.alert_rules()) == 2
        assert model.position() == log.head()
        model.reset()
        assert model.alert_rules() == []
    finally:
        model.close()
        app.close()


def test_history_series_until_a_log_position(tmp_path: Path) -> None:
    model = SqlHistoryReadModel(f"sqlite:///{tmp_path / 'history.db'}")
    try:
        entries = tuple(
            LogEntry(
                n,
                "metric",
                "aave",
                {"metric": "tvl", "chain": "total", "value": float(n), "observed_at": T0 + n},
                T0,
            )
            for n in (1, 2, 3)
        )
        model.apply(LogBatch(0, 3, entries))
        series = model.series(SeriesQuery("aave", until_position=2))
        assert [p.value for p in series.points] == [1.0, 2.0]
        assert len(model.series(SeriesQuery("aave")).points) == 3
    finally:
        model.close()


def test_fold_ignores_what_it_already_reflects() -> None:
    created = LogEntry(
        5,
        "alert_rule_created",
        "r",
        {
            "owner": "o",
            "name": "",
            "target": {"protocol": "aave", "metric": "tvl", "chain": "total"},
            "condition": BELOW_1B,
            "channels": [],
            "cooldown": 0,
            "state": "active",
        },
        T0,
    )
    view = fold_rule(None, created)
    assert view is not None
    triggered = LogEntry(
        7, "alert_triggered", "r", {"observed_at": T0, "measure": 1.0, "idempotency_key": "r:1"}, T0
    )
    fired = fold_rule(view, triggered)
    assert fired is not None
    assert (fired.firing, fired.transitions) == ("firing", 1)
    assert fold_rule(fired, triggered) is fired  # same position
    # A transition the view already counts (seen through a snapshot) changes only the
    # position.
    again = LogEntry(9, "alert_triggered", "r", dict(triggered.data), T0)
    refolded = fold_rule(fired, again)
    assert refolded is not None
    assert (refolded.transitions, refolded.position) == (1, 9)
    assert fold_rule(None, again) is None  # a rule never seen created stays unknown


# --- the measure ----------------------------------------------------------------------------


@given(
    times=st.lists(st.integers(0, 400), min_size=0, max_size=40, unique=True),
    now=st.integers(0, 500),
    window=st.sampled_from([1, 24, 60, 168]),
    data=st.data(),
)
def test_recent_series_change_is_views_percent_change(
    times: list[int], now: int, window: int, data: st.DataObject
) -> None:
    values = data.draw(
        st.lists(st.floats(0, 1e6, allow_nan=False), min_size=len(times), max_size=len(times))
    )
    points = sorted(zip((float(t) for t in times), values, strict=True))
    series = RecentSeries()
    for at, value in points:
        series.add(at, value)
    now_value = data.draw(st.floats(0, 1e6, allow_nan=False))
    expected = percent_change(points, now_value, float(now), float(window))
    got = series.change(now_value, float(now), float(window))
    if expected is None:
        assert got is None
    else:
        assert got is not None
        assert math.isclose(got, expected, rel_tol=1e-12, abs_tol=1e-12)


def test_recent_series_keeps_one_point_per_time_and_knows_late_points() -> None:
    series = RecentSeries()
    assert series.add(10.0, 1.0)
    assert series.add(20.0, 2.0)
    assert series.add(20.0, 3.0)  # a correction of the current value
    assert not series.add(15.0, 9.0)  # late
    assert not series.add(10.0, 4.0)  # a late correction
    assert (series.times, series.values) == ([10.0, 15.0, 20.0], [4.0, 9.0, 3.0])
    series.prune(5.0)
    assert series.times == [15.0, 20.0]


# --- backtest -----------------------------------------------------------------------------


def daily(*values: float) -> list[SeriesPoint]:
    return [SeriesPoint(T0 + i * DAY, value) for i, value in enumerate(values)]


def test_backtest_lists_firings_and_resolutions() -> None:
    points = daily(100, 100, 70, 65, 66, 50, 50)
    result = backtest({"protocol": "aave"}, DROP_20_IN_24H, points, cooldown=0)
    assert [(e.state, e.observed_at) for e in result.events] == [
        ("firing", T0 + 2 * DAY),
        ("resolved", T0 + 3 * DAY),
        ("firing", T0 + 5 * DAY),
        ("resolved", T0 + 6 * DAY),
    ]
    assert result.events[0].measure == pytest.approx(-30.0)
    assert result.points == 7
    assert result.to_json()["events"][0] == {
        "state": "firing",
        "observed_at": T0 + 2 * DAY,
        "measure": pytest.approx(-30.0),
    }


def test_backtest_honours_cooldown_and_the_time_range() -> None:
    points = daily(2e9, 1, 2e9, 1, 2e9, 1)
    fired = backtest({"protocol": "aave"}, BELOW_1B, points, cooldown=int(2 * DAY))
    assert [e.observed_at for e in fired.events if e.state == "firing"] == [
        T0 + DAY,
        T0 + 3 * DAY,
        T0 + 5 * DAY,
    ]
    cooled = backtest({"protocol": "aave"}, BELOW_1B, points, cooldown=int(3 * DAY))
    assert [e.observed_at for e in cooled.events if e.state == "firing"] == [T0 + DAY, T0 + 5 * DAY]
    ranged = backtest(
        {"protocol": "aave"}, BELOW_1B, points, cooldown=0, start=T0 + 2 * DAY, end=T0 + 4 * DAY
    )
    assert [(e.state, e.observed_at) for e in ranged.events] == [
        ("firing", T0 + 3 * DAY),
        ("resolved", T0 + 4 * DAY),
    ]
    assert ranged.points == 3


def test_backtest_validates_the_rule_and_target() -> None:
    with pytest.raises(InvalidRule):
        backtest({"protocol": "aave"}, {"kind": "pct_change", "direction": "below"}, [])
    with pytest.raises(BacktestUnsupported):
        history_points(FakeHistory(), {"token": "coingecko:ethereum"}, BELOW_1B)


def test_backtest_history_reaches_back_one_and_a_half_windows() -> None:
    history = FakeHistory()
    for i, value in enumerate([100.0, 100.0, 70.0]):
        history.points.setdefault(("aave", "tvl", "total"), {})[T0 + i * DAY] = (value, i + 1)
    target, condition = parse_target({"protocol": "aave"}), parse_condition(DROP_20_IN_24H)
    points = history_points(history, target, condition, start=T0 + 2 * DAY)
    result = backtest(target, condition, points, cooldown=0, start=T0 + 2 * DAY)
    assert [e.state for e in result.events] == ["firing"]


def test_evaluator_runs_inside_an_event_loop_only_for_io() -> None:
    # The synchronous core needs no loop: benches and other services can drive it.
    h = Harness()
    try:
        h.tvl(2e9, T0)
        h.rule()
        evaluator = h.evaluator()
        asyncio.run(evaluator.start())
        h.tvl(1.0, T0 + 1)
        observations = evaluator.evaluate(h.log.read(0, 100).entries)
        assert [o.measure for o in observations] == [1.0]
    finally:
        h.app.close()
