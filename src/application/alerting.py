"""Alert evaluation: an event-driven follower of the log.

``AlertEvaluator`` keeps, in memory, an index from a target (``protocol:<slug>:<metric>:
<chain>`` or ``token:<id>``) to the active rules watching it, built from the rule lifecycle
entries, and a recent series per watched target. A metric or price entry costs
O(rules watching its target): the measure is computed once per condition window, each
rule is one comparison, and only a rule whose firing state would change goes further.

Transitions are decided by the aggregates: the evaluator sends the candidate
observations (rule, measure, observed_at, log position) to the application, on the writer
thread, which calls ``AlertRule.observe`` and saves ``Triggered``/``Resolved`` in one
transaction. Only then is the evaluator's position stored. A crash in between replays the
same positions, which the rules ignore (they remember the position behind their last
transition): exactly once, by position. See docs/adr/0008-alert-rules-and-evaluation.md.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from ..domain.alert_rule import Firing, anomaly_move, is_mev, next_transition, window_seconds
from ..domain.alert_values import WINDOWS, MevCondition, mev_measure, stored_target
from .alert_rules import (
    RULE_FACT_KINDS,
    AlertRuleView,
    RuleObservation,
    RuleSnapshot,
    fold_rule,
    transition_number,
)
from .anomaly import DetectorSettings, Score, SeriesDetector, new_detector
from .following import PAGE_SIZE, ProjectionRunner
from .log import ALERT_RULE_KINDS, LogBatch, LogEntry, pending
from .ports import AlertRuleReadModel, EventLog, HistoryReadModel, PositionStore
from .views import SeriesQuery

log = logging.getLogger(__name__)

DEFAULT_NAME: Final = "alerts"
# ``percent_change`` accepts a reference up to half a window away from ``now - window``:
# a series must reach back one and a half of the longest window watched.
_REACH: Final = 1.5
_SEED_LIMIT: Final = 100_000
# How long the history read model may stand still before the evaluator stops waiting for it.
_STALL: Final = 1.0

# A rule's measure: the value itself (None), its percent change over a window (seconds),
# the anomaly score of the observation ("anomaly:<move>"), or an MEV detection's USD profit
# when it matches the rule's filters (``MEV``: measured per rule, see ``_observe_mev``).
MeasureKey = float | str | None
MEV: Final = "mev"
Record = Callable[[Sequence[RuleObservation]], Awaitable[Sequence[RuleSnapshot]]]


def anomaly_measure(score: Score | None, key: str) -> float | None:
    """An anomaly rule's measure: the observation's score when it moves as the rule's
    ``move`` (``anomaly:fall``...) says, 0 when it moves the other way, None when the
    detector did not score it (warming up, or a correction of the current point)."""
    if score is None:
        return None
    move = key.partition(":")[2]
    return score.score if move in ("any", score.direction) else 0.0


def mev_target(entry: LogEntry) -> str | None:
    """The MEV target key (``mev:<chain id>``) a ``mev_detected`` / ``mev_retracted`` entry
    feeds, else None."""
    if entry.kind in ("mev_detected", "mev_retracted"):
        return f"mev:{entry.key}"
    return None


def entry_target(entry: LogEntry) -> tuple[str, float, float] | None:
    """``(target key, value, observed_at)`` of a metric or price entry, else None."""
    data = entry.data
    if entry.kind == "metric":
        key = f"protocol:{entry.key}:{data['metric']}:{data.get('chain') or 'total'}"
        return key, float(data["value"]), float(data["observed_at"])
    if entry.kind == "price":
        return f"token:{entry.key}", float(data["price"]), float(data["observed_at"])
    return None


class RecentSeries:
    """A target's recent ``(observed_at, value)`` points, in time order, one per time (a
    correction replaces the value)."""

    __slots__ = ("times", "values")

    def __init__(self) -> None:
        self.times: list[float] = []
        self.values: list[float] = []

    @property
    def latest(self) -> float | None:
        return self.times[-1] if self.times else None

    def add(self, observed_at: float, value: float) -> bool:
        """Record a point; True if it is current (not older than the latest point)."""
        times = self.times
        if not times or observed_at > times[-1]:
            times.append(observed_at)
            self.values.append(value)
            return True
        if observed_at == times[-1]:
            self.values[-1] = value  # a correction of the current value
            return True
        # Late: kept as a reference for later changes, never evaluated itself.
        index = bisect.bisect_left(times, observed_at)
        if times[index] == observed_at:
            self.values[index] = value
        else:
            times.insert(index, observed_at)
            self.values.insert(index, value)
        return False

    def change(self, now_value: float, now_at: float, window: float) -> float | None:
        """``views.percent_change`` over this series, by bisection: the percent change of
        ``now_value`` against the point nearest ``now_at - window``, within half a window
        (of two equally near points, the later); None without one, or if it is zero."""
        times = self.times
        cutoff = now_at - window
        tolerance = window / 2
        index = bisect.bisect_left(times, cutoff)
        reference: float | None = None
        distance = math.inf
        for candidate in (index - 1, index):
            if 0 <= candidate < len(times):
                gap = abs(times[candidate] - cutoff)
                if gap <= tolerance and gap <= distance:
                    reference, distance = self.values[candidate], gap
        if reference is None or reference == 0:
            return None
        return (now_value - reference) / reference * 100.0

    def prune(self, horizon: float, keep: int = 0) -> None:
        """Forget points older than ``latest - horizon`` (amortised: in chunks), but keep
        at least the last ``keep`` points."""
        times = self.times
        if len(times) <= keep or times[0] >= times[-1] - horizon * 1.1:
            return
        cut = min(bisect.bisect_left(times, times[-1] - horizon), len(times) - keep)
        if cut <= 0:
            return
        del times[:cut]
        del self.values[:cut]


class _Rule:
    """The evaluator's working copy of one rule (the aggregate stays the authority)."""

    __slots__ = (
        "above",
        "condition",
        "cooldown",
        "firing",
        "id",
        "key",
        "last_fired_at",
        "since",
        "threshold",
        "transitions",
        "view",
        "window",
    )

    def __init__(self, view: AlertRuleView) -> None:
        self.view = view
        self.id = view.id
        self.key = view.target_key
        self.condition = view.condition
        self.threshold = view.condition.value
        self.above = view.condition.direction == "above"
        move = anomaly_move(view.condition)
        self.window: MeasureKey = (
            MEV
            if is_mev(view.condition)
            else window_seconds(view.condition)
            if move is None
            else f"anomaly:{move}"
        )
        self.cooldown = view.cooldown
        self.firing = view.firing == "firing"
        self.last_fired_at = view.last_fired_at
        self.transitions = view.transitions
        self.since = view.created_position

    @property
    def active(self) -> bool:
        return self.view.state == "active"


@dataclass(slots=True)
class _Watch:
    """A watched target: its recent series and its active rules, grouped by window
    (None: the measure is the value itself). Paused rules keep the series going (by id,
    their window) without being evaluated: a rule resumes against the current value."""

    series: RecentSeries = field(default_factory=RecentSeries)
    groups: dict[MeasureKey, list[_Rule]] = field(default_factory=dict)
    paused: dict[str, MeasureKey] = field(default_factory=dict)
    seeded: bool = False
    # The series' anomaly detector, while an anomaly rule watches it.
    detector: SeriesDetector | None = None

    @property
    def rule_count(self) -> int:
        return sum(len(rules) for rules in self.groups.values())

    @property
    def idle(self) -> bool:
        return not self.groups and not self.paused

    @property
    def horizon(self) -> float:
        windows = [
            window for window in (*self.groups, *self.paused.values()) if isinstance(window, float)
        ]
        return _REACH * max(windows, default=0.0)


class AlertEvaluator:
    """Follows the log and turns observations into alert transitions, exactly once.

    Use ``runner()`` to drive it like a projection (``NodeFollower``: catch up from the log
    on start, then live batches). ``evaluate`` is the synchronous core: it folds entries
    into the index and returns the observations that would change a rule's state.
    """

    def __init__(
        self,
        event_log: EventLog,
        rules: AlertRuleReadModel,
        history: HistoryReadModel,
        positions: PositionStore,
        record: Record,
        *,
        name: str = DEFAULT_NAME,
        page_size: int = PAGE_SIZE,
        history_wait: float = 5.0,
        detector: DetectorSettings | None = None,
    ) -> None:
        self.event_log = event_log
        self.detector_settings = detector or DetectorSettings()
        # Points kept per watched series, so that an anomaly rule starts with a warm
        # detector: its state depends on the last ``window`` returns only.
        self.keep = max(self.detector_settings.window, self.detector_settings.warmup) + 1
        self.rules_model = rules
        self.history = history
        self.positions = positions
        self.record = record
        self.name = name
        self.page_size = page_size
        self.history_wait = history_wait
        self._started = False
        self._position = 0
        self._rules: dict[str, _Rule] = {}
        self._watches: dict[str, _Watch] = {}
        # Rules examined (compared with a measure) since start: the cost of evaluation.
        self.checks = 0
        self.recorded = 0

    # -- driving -----------------------------------------------------------------------

    def runner(self) -> ProjectionRunner:
        return ProjectionRunner(
            self.name, self.event_log, self.position, self.apply, page_size=self.page_size
        )

    async def position(self) -> int:
        """The position evaluated so far; the first call (or the first after a failure)
        rebuilds the in-memory state (see ``start``)."""
        if not self._started:
            await self.start()
        return self._position

    def forget(self) -> None:
        """Drop the in-memory state: the next use rebuilds it from the stores (after a
        failure, or when another process may have evaluated meanwhile)."""
        self._started = False

    async def start(self) -> None:
        """Seed the index: rules from the read model, series of the watched targets from
        the history read model, then the rule entries of the log up to our position."""
        self._rules.clear()
        self._watches.clear()
        position = await self.positions.load(self.name)
        await self._await_history(position)
        seeded_at = await asyncio.to_thread(self.rules_model.position)
        views = await asyncio.to_thread(self.rules_model.alert_rules)
        for view in views:
            self._install(view)
        # The read model may lag our position (it is applied by another follower): seed
        # what it has up to where we are, then fold the rest from the log, without
        # evaluating what we already did.
        cursor = min(position, seeded_at)
        await asyncio.to_thread(self._seed_series, list(self._watches), cursor)
        while cursor < position:
            batch = await asyncio.to_thread(
                self.event_log.read, cursor, min(self.page_size, position - cursor)
            )
            if batch.last == cursor:
                break
            self._fold_only(batch.entries)
            cursor = batch.last
        await asyncio.to_thread(self._seed_series, self._unseeded(), cursor)
        self._position = position
        self._started = True
        log.info(
            "alert evaluator at %d: %d rules on %d targets",
            position,
            len(self._rules),
            len(self._watches),
        )

    async def apply(self, batch: LogBatch) -> bool:
        """Evaluate a batch; record its transitions, then store the position."""
        if not self._started:
            await self.start()
        todo = pending(batch, self._position)
        if todo is None:
            return False
        try:
            entries = list(todo.entries)
            fresh, needed = self._new_targets(entries)
            if fresh:
                # The history read model is applied by another follower: let it reach
                # the rule's creation, so that the series it seeds holds every earlier
                # point (the evaluator did not keep points of unwatched targets).
                await self._await_history(needed)
                await asyncio.to_thread(self._seed_series, fresh, needed)
            observations = self.evaluate(entries)
            if observations:
                self.sync(await self.record(observations))
                self.recorded += len(observations)
            # Only now: a crash before this line replays the batch, which the rules
            # ignore by position.
            await self.positions.save(self.name, batch.last)
        except BaseException:
            # The working copies may hold transitions that were never recorded: rebuild
            # everything from the stores before the next batch.
            self._started = False
            raise
        self._position = batch.last
        return True

    # -- the synchronous core ----------------------------------------------------------

    def evaluate(self, entries: Iterable[LogEntry]) -> list[RuleObservation]:
        """Fold ``entries`` (in log order) into the index; the observations of rules whose
        firing state they change."""
        out: list[RuleObservation] = []
        for entry in entries:
            target = entry_target(entry)
            if target is not None:
                self._observe(target[0], target[1], target[2], entry.position, out)
            elif (mev := mev_target(entry)) is not None:
                self._observe_mev(mev, entry, out)
            elif entry.kind in RULE_FACT_KINDS:
                self._fold(entry)
                if entry.kind == "alert_rule_resumed":
                    self._reevaluate(entry.key, entry.position, out)
        return out

    def sync(self, snapshots: Iterable[RuleSnapshot]) -> None:
        """Take the aggregates' word for the rules' states (after recording)."""
        for snapshot in snapshots:
            rule = self._rules.get(snapshot.rule_id)
            if rule is None:
                continue
            rule.firing = snapshot.firing == "firing"
            rule.last_fired_at = snapshot.last_fired_at
            rule.transitions = snapshot.transitions

    def watching(self, key: str) -> int:
        """How many active rules watch the target ``key``."""
        watch = self._watches.get(key)
        return 0 if watch is None else watch.rule_count

    @property
    def rule_count(self) -> int:
        return len(self._rules)

    def _observe(
        self,
        key: str,
        value: float,
        observed_at: float,
        position: int,
        out: list[RuleObservation],
    ) -> None:
        watch = self._watches.get(key)
        if watch is None:
            return
        series = watch.series
        if not series.add(observed_at, value):
            return  # late: an observation older than the current value never fires
        score = None if watch.detector is None else watch.detector.observe(observed_at, value)
        for window, rules in watch.groups.items():
            if window is None:
                measure: float | None = value
            elif isinstance(window, str):
                measure = anomaly_measure(score, window)
            else:
                measure = series.change(value, observed_at, window)
            if measure is None:
                continue
            self.checks += len(rules)
            for rule in rules:
                # A cheap filter; the domain's rule decides (cooldown, finiteness).
                met = measure >= rule.threshold if rule.above else measure <= rule.threshold
                if met == rule.firing or position <= rule.since:
                    continue
                self._transition(rule, measure, observed_at, position, out)
        series.prune(watch.horizon, self.keep)

    def _observe_mev(self, key: str, entry: LogEntry, out: list[RuleObservation]) -> None:
        """A detection (or a retraction) of a chain's MEV: each ``mev`` rule watching the
        chain measures it through its own filters (``mev_measure``): a match fires, the
        next detection that does not match (or a retraction) resolves. Its time is when
        it was recorded (a detection carries no block time)."""
        watch = self._watches.get(key)
        rules = None if watch is None else watch.groups.get(MEV)
        if not rules:
            return
        detection = entry.data if entry.kind == "mev_detected" else None
        self.checks += len(rules)
        for rule in rules:
            assert isinstance(rule.condition, MevCondition)
            measure = mev_measure(rule.condition, detection)
            met = measure >= rule.threshold
            if met == rule.firing or entry.position <= rule.since:
                continue
            self._transition(rule, measure, entry.recorded_at, entry.position, out)

    def _reevaluate(self, rule_id: str, position: int, out: list[RuleObservation]) -> None:
        """A resumed rule against its target's current value: the value (or change) may
        have crossed the condition while the rule was paused. The transition, if any, is
        recorded at the resumption's position (exactly once, like any other)."""
        rule = self._rules.get(rule_id)
        watch = None if rule is None else self._watches.get(rule.key)
        if rule is None or not rule.active or watch is None or watch.series.latest is None:
            return
        if isinstance(rule.window, str):
            return  # an anomaly or a detection is a moment's: nothing to re-evaluate on resume
        series = watch.series
        observed_at, value = series.times[-1], series.values[-1]
        measure = value if rule.window is None else series.change(value, observed_at, rule.window)
        if measure is None:
            return
        self.checks += 1
        self._transition(rule, measure, observed_at, position, out)

    def _transition(
        self,
        rule: _Rule,
        measure: float,
        observed_at: float,
        position: int,
        out: list[RuleObservation],
    ) -> None:
        """Ask the domain's rule whether ``rule`` changes state on ``measure``; if so, note
        the observation and take the new state optimistically (later observations of the
        batch see it; ``sync`` replaces it with the aggregate's once recorded)."""
        firing: Firing = "firing" if rule.firing else "resolved"
        transition = next_transition(
            rule.condition, firing, rule.last_fired_at, rule.cooldown, measure, observed_at
        )
        if transition is None:
            return
        rule.firing = transition == "firing"
        if rule.firing:
            rule.last_fired_at = observed_at
        rule.transitions += 1
        out.append(RuleObservation(rule.id, measure, observed_at, position))

    def _fold_only(self, entries: Iterable[LogEntry]) -> None:
        for entry in entries:
            target = entry_target(entry)
            if target is not None:
                watch = self._watches.get(target[0])
                if watch is not None:
                    watch.series.add(target[2], target[1])
                    if watch.detector is not None:
                        watch.detector.observe(target[2], target[1])
            elif entry.kind in RULE_FACT_KINDS:
                self._fold(entry)

    def _fold(self, entry: LogEntry) -> None:
        rule = self._rules.get(entry.key)
        if entry.kind in ("alert_triggered", "alert_resolved"):
            if rule is None:
                return
            # Transitions recorded by someone else (another evaluator before a takeover):
            # applied when newer than what this copy reflects.
            count = transition_number(str(entry.data.get("idempotency_key") or ""))
            if count is None or count <= rule.transitions:
                return
            rule.transitions = count
            rule.firing = entry.kind == "alert_triggered"
            if rule.firing:
                rule.last_fired_at = float(entry.data["observed_at"])
            return
        if entry.kind not in ALERT_RULE_KINDS:
            return
        view = fold_rule(rule.view if rule is not None else None, entry)
        if view is None or (rule is not None and view is rule.view):
            return
        self._install(view, previous=rule)

    def _install(self, view: AlertRuleView, previous: _Rule | None = None) -> None:
        if previous is None:
            previous = self._rules.get(view.id)
        if previous is not None:
            self._unindex(previous)
        if view.state == "deleted":
            self._rules.pop(view.id, None)
            self._drop_if_idle(previous)
            return
        rule = _Rule(view)
        if previous is not None:
            # The firing state lives in this copy (and in the aggregate), not in the
            # lifecycle entries.
            rule.firing = previous.firing
            rule.last_fired_at = previous.last_fired_at
            rule.transitions = previous.transitions
        self._rules[rule.id] = rule
        watch = self._watches.get(rule.key)
        if watch is None:
            watch = self._watches[rule.key] = _Watch()
        if rule.active:
            watch.groups.setdefault(rule.window, []).append(rule)
            if isinstance(rule.window, str) and rule.window != MEV and watch.detector is None:
                watch.detector = self._detector_from(watch.series)
        else:
            watch.paused[rule.id] = rule.window
        self._drop_if_idle(previous)

    def _detector_from(self, series: RecentSeries) -> SeriesDetector:
        """A detector that has seen the points ``series`` holds (the last ``keep`` at
        least: the detector's whole state)."""
        detector = new_detector(self.detector_settings)
        for observed_at, value in zip(series.times, series.values, strict=True):
            detector.observe(observed_at, value)
        return detector

    def _drop_if_idle(self, previous: _Rule | None) -> None:
        # A target nobody watches any more: forget its series.
        if previous is not None:
            watch = self._watches.get(previous.key)
            if watch is not None and watch.idle:
                del self._watches[previous.key]

    def _unindex(self, rule: _Rule) -> None:
        watch = self._watches.get(rule.key)
        if watch is None:
            return
        watch.paused.pop(rule.id, None)
        rules = watch.groups.get(rule.window)
        if rules is not None:
            for index, candidate in enumerate(rules):
                if candidate is rule or candidate.id == rule.id:
                    del rules[index]
                    break
            if not rules:
                del watch.groups[rule.window]

    async def _await_history(self, position: int) -> None:
        """Wait until the history read model reaches ``position``: at most ``history_wait``
        seconds, and at most one second without it moving (nobody may be applying it, e.g.
        an embedded ``worker alerts`` without a server)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.history_wait
        seen = await asyncio.to_thread(self.history.position)
        moved_at = loop.time()
        while seen < position:
            now = loop.time()
            if now >= deadline or now - moved_at >= min(_STALL, self.history_wait):
                if self.history_wait > 0:
                    log.warning(
                        "history read model at %d, not %d: seeding new alert targets from "
                        "what it has",
                        seen,
                        position,
                    )
                return
            await asyncio.sleep(0.01)
            latest = await asyncio.to_thread(self.history.position)
            if latest != seen:
                seen, moved_at = latest, loop.time()

    def _new_targets(self, entries: Sequence[LogEntry]) -> tuple[list[str], int]:
        """Targets that this batch starts watching and whose series is not seeded yet, and
        the log position the history must have reached to seed them."""
        keys: list[str] = []
        needed = 0
        for entry in entries:
            if entry.kind in ("alert_rule_created", "alert_rule_resumed"):
                rule = self._rules.get(entry.key)
                if entry.kind == "alert_rule_created":
                    try:
                        key = stored_target(entry.data["target"]).key
                    except (KeyError, TypeError, ValueError):
                        key = None
                else:
                    key = rule.key if rule is not None else None
                watch = self._watches.get(key) if key is not None else None
                if key is not None and (watch is None or not watch.seeded) and key not in keys:
                    keys.append(key)
                    needed = max(needed, entry.position - 1)
        return keys, needed

    def _unseeded(self) -> list[str]:
        return [key for key, watch in self._watches.items() if not watch.seeded]

    def _seed_series(self, keys: Sequence[str], until: int) -> None:
        """Load the recent history of ``keys`` recorded at or before log position ``until``
        (later points come from the log, in order: a point must not look late because the
        read model is ahead). Blocking: run it in a thread. Protocol targets only: the
        history read model has no price series yet."""
        for key in keys:
            points = self._history_points(key, until)
            watch = self._watches.get(key)
            if watch is None:
                # Not watched yet (its rule's entry comes later in this batch): keep the
                # points, the rule's installation finds them.
                watch = self._watches[key] = _Watch()
            for observed_at, value in points:
                watch.series.add(observed_at, value)
                if watch.detector is not None:
                    watch.detector.observe(observed_at, value)
            watch.seeded = True

    def _history_points(self, key: str, until: int) -> list[tuple[float, float]]:
        kind, _, rest = key.partition(":")
        if kind != "protocol":
            return []
        slug, metric, chain = rest.rsplit(":", 2)
        series = self.history.series(
            SeriesQuery(
                slug=slug, metric=metric, chain=chain, limit=_SEED_LIMIT, until_position=until
            )
        )
        if not series.points:
            return []
        horizon = _REACH * max(WINDOWS.values())
        points = series.points
        latest = points[-1].timestamp
        first = 0
        while first < len(points) - self.keep and points[first].timestamp < latest - horizon:
            first += 1
        return [(p.timestamp, p.value) for p in points[first:]]
