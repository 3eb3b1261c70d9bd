"""Alert evaluation throughput: the evaluator's target index vs evaluating every rule.

    python bench/bench_alert_eval.py [--rules 100000] [--targets 2000] [--repeat 3]

Setup (not timed in the figures; its time is printed): ``--rules`` active rules over
``--targets`` protocol TVL targets, half ``threshold`` (above/below, thresholds spread
around the target's level) and half ``pct_change`` (1h / 24h / 7d windows, -30..-5 % below
or +5..+30 % above), installed the way the log installs them: ``alert_rule_created``
entries through ``AlertEvaluator.evaluate``. Every target then gets one observation an hour
(a random walk, sd 2 % per hour) for ``--warmup-days`` days, so that every window has its
reference (a 7d window takes one from 3.5 days on), and the timed phase runs ``--days``
more days of observations in log pages of 1,000 entries.

  indexed   ``AlertEvaluator.evaluate``: target -> rules grouped by window; the measure is
            computed once per window (bisection over the target's recent series), each rule
            is one comparison, and the domain's ``next_transition`` decides for the rules
            whose state would change. Transitions are not sent to a writer (that cost is
            the event store's, per transition, and is the same for both loops).
  naive     the same decision, for every observation looping over ALL rules: a rule whose
            target is not the observation's is skipped by a string comparison; a watching
            rule computes its measure (``views.percent_change`` over the target's series) and
            calls ``next_transition``. Time-boxed: it runs ``--naive-seconds`` (or at most
            ``--naive-observations``) from the same point of the stream.

Both loops start from the same state (the naive one gets a copy of the index's rules and
series after the warm-up) and the first ``--check`` observations of the timed phase are
checked to produce the same transitions.
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import time
from collections.abc import Sequence
from typing import Any

from _common import machine

from defi_realtime.adapters.position_stores import InMemoryPositionStore
from defi_realtime.application.alert_rules import AlertRuleView, RuleObservation, RuleSnapshot
from defi_realtime.application.alerting import AlertEvaluator
from defi_realtime.application.log import LogBatch, LogEntry
from defi_realtime.application.views import Series, SeriesQuery, percent_change
from defi_realtime.domain.alert_rule import WINDOWS, next_transition

T0 = 1_765_000_000.0
HOUR = 3_600.0
DAY = 86_400.0
PAGE = 1_000


class _NoLog:
    def read(self, after: int, limit: int) -> LogBatch:
        return LogBatch(after, after)

    def head(self) -> int:
        return 0


class _NoHistory:
    def position(self) -> int:
        return 0

    def apply(self, batch: LogBatch) -> bool:
        return False

    def series(self, query: SeriesQuery) -> Series:
        return Series(query.slug, query.metric, query.chain)

    def alert_rules(
        self, owner: str | None = None, *, include_deleted: bool = False
    ) -> list[AlertRuleView]:
        return []

    def reset(self) -> None:
        pass

    def close(self) -> None:
        pass


async def _no_record(observations: Sequence[RuleObservation]) -> list[RuleSnapshot]:
    return []


def make_rules(count: int, targets: int, rng: random.Random) -> list[LogEntry]:
    entries = []
    for n in range(count):
        slug = f"p{n % targets:05d}"
        level = 1e8 * (1 + n % targets)
        if n % 2 == 0:
            direction = rng.choice(["above", "below"])
            factor = rng.uniform(1.02, 1.2) if direction == "above" else rng.uniform(0.8, 0.98)
            condition: dict[str, Any] = {
                "kind": "threshold",
                "direction": direction,
                "value": level * factor,
            }
        else:
            direction = rng.choice(["above", "below"])
            size = rng.uniform(5, 30)
            condition = {
                "kind": "pct_change",
                "direction": direction,
                "value": size if direction == "above" else -size,
                "window": rng.choice(list(WINDOWS)),
            }
        entries.append(
            LogEntry(
                position=n + 1,
                kind="alert_rule_created",
                key=f"rule-{n}",
                data={
                    "owner": f"owner-{n % 5_000}",
                    "name": "",
                    "target": {"protocol": slug, "metric": "tvl", "chain": "total"},
                    "condition": condition,
                    "channels": [{"kind": "websocket"}],
                    "cooldown": rng.choice([0, 3_600, 86_400]),
                    "state": "active",
                },
                recorded_at=T0,
            )
        )
    return entries


def make_stream(
    targets: int, start: float, hours: int, first_position: int, rng: random.Random
) -> tuple[list[LogEntry], dict[str, float]]:
    levels = {f"p{t:05d}": 1e8 * (1 + t) for t in range(targets)}
    entries = []
    position = first_position
    for hour in range(hours):
        at = start + hour * HOUR
        for slug in levels:
            levels[slug] *= max(0.5, rng.gauss(1.0, 0.02))
            position += 1
            entries.append(
                LogEntry(
                    position,
                    "metric",
                    slug,
                    {
                        "metric": "tvl",
                        "chain": "total",
                        "value": levels[slug],
                        "observed_at": at,
                        "source": "bench",
                    },
                    T0,
                )
            )
    return entries, levels


def pages(entries: Sequence[LogEntry]) -> list[Sequence[LogEntry]]:
    return [entries[i : i + PAGE] for i in range(0, len(entries), PAGE)]


class NaiveEvaluator:
    """Every observation against every rule (the same decisions, no index)."""

    def __init__(self, evaluator: AlertEvaluator) -> None:
        # (rule id, target key, condition, window, cooldown, mutable state [firing, fired_at,
        #  since]) for every rule, in one flat list; series as plain (time, value) lists.
        self.rules: list[tuple[str, str, dict[str, Any], float | None, int, list[Any]]] = []
        for rule in copy.deepcopy(list(evaluator._rules.values())):
            state = [rule.firing, rule.last_fired_at, rule.since]
            self.rules.append(
                (rule.id, rule.key, rule.condition, rule.window, rule.cooldown, state)
            )
        self.series: dict[str, list[tuple[float, float]]] = {
            key: list(zip(watch.series.times, watch.series.values, strict=True))
            for key, watch in evaluator._watches.items()
        }
        self.checks = 0

    def evaluate(self, entries: Sequence[LogEntry]) -> list[tuple[str, int]]:
        out = []
        for entry in entries:
            data = entry.data
            key = f"protocol:{entry.key}:{data['metric']}:{data['chain']}"
            value, at = float(data["value"]), float(data["observed_at"])
            series = self.series.setdefault(key, [])
            series.append((at, value))
            for rule_id, rule_key, condition, window, cooldown, state in self.rules:
                self.checks += 1
                if rule_key != key or entry.position <= state[2]:
                    continue
                if window is None:
                    measure: float | None = value
                else:
                    measure = percent_change(series, value, at, window)
                if measure is None:
                    continue
                firing = "firing" if state[0] else "resolved"
                transition = next_transition(condition, firing, state[1], cooldown, measure, at)
                if transition is None:
                    continue
                state[0] = transition == "firing"
                if state[0]:
                    state[1] = at
                out.append((rule_id, entry.position))
        return out


def run_once(args: argparse.Namespace, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    evaluator = AlertEvaluator(
        _NoLog(), _NoHistory(), _NoHistory(), InMemoryPositionStore(), _no_record
    )
    rules = make_rules(args.rules, args.targets, rng)
    wall0 = time.perf_counter()
    evaluator.evaluate(rules)
    setup = time.perf_counter() - wall0
    assert evaluator.rule_count == args.rules

    warm_hours, timed_hours = int(args.warmup_days * 24), int(args.days * 24)
    stream, _ = make_stream(args.targets, T0, warm_hours + timed_hours, len(rules), rng)
    warm, timed = stream[: warm_hours * args.targets], stream[warm_hours * args.targets :]
    wall0 = time.perf_counter()
    for page in pages(warm):
        evaluator.evaluate(page)
    warmup = time.perf_counter() - wall0

    naive = NaiveEvaluator(evaluator)
    # Same start, same decisions: check a prefix.
    checked = timed[: args.check]
    probe = copy.deepcopy(evaluator)
    indexed_transitions = [(o.rule_id, o.position) for o in probe.evaluate(checked)]
    naive_probe = NaiveEvaluator(evaluator)
    naive_transitions = naive_probe.evaluate(checked)
    assert sorted(indexed_transitions) == sorted(naive_transitions), "the loops disagree"

    checks0, transitions = evaluator.checks, 0
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for page in pages(timed):
        transitions += len(evaluator.evaluate(page))
    indexed_wall, indexed_cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    indexed_checks = evaluator.checks - checks0

    done = 0
    wall0, cpu0 = time.perf_counter(), time.process_time()
    while done < min(args.naive_observations, len(timed)):
        naive.evaluate(timed[done : done + 100])
        done += 100
        if time.perf_counter() - wall0 > args.naive_seconds:
            break
    naive_wall, naive_cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return {
        "setup_s": setup,
        "warmup_s": warmup,
        "warm_observations": len(warm),
        "observations": len(timed),
        "transitions": transitions,
        "indexed_wall": indexed_wall,
        "indexed_cpu": indexed_cpu,
        "indexed_rate": len(timed) / indexed_wall,
        "indexed_cpu_rate": len(timed) / indexed_cpu,
        "checks_per_obs": indexed_checks / len(timed),
        "naive_observations": done,
        "naive_wall": naive_wall,
        "naive_rate": done / naive_wall,
        "naive_cpu_rate": done / naive_cpu,
        "checked": len(checked),
        "checked_transitions": len(indexed_transitions),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rules", type=int, default=100_000)
    parser.add_argument("--targets", type=int, default=2_000)
    parser.add_argument("--warmup-days", type=float, default=4.0)
    parser.add_argument("--days", type=float, default=1.0)
    parser.add_argument("--naive-seconds", type=float, default=10.0)
    parser.add_argument("--naive-observations", type=int, default=5_000)
    parser.add_argument("--check", type=int, default=300, help="observations compared")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)

    print(f"machine: {machine()}")
    runs = []
    for repeat in range(args.repeat):
        run = run_once(args, seed=repeat)
        runs.append(run)
        print(
            f"run {repeat + 1}: indexed {run['indexed_rate']:,.0f} obs/s "
            f"({run['observations']:,} obs, {run['transitions']:,} transitions, "
            f"{run['checks_per_obs']:.1f} rule checks/obs); naive {run['naive_rate']:,.0f} obs/s "
            f"({run['naive_observations']:,} obs); setup {run['setup_s']:.2f}s, "
            f"warm-up {run['warm_observations']:,} obs in {run['warmup_s']:.2f}s; "
            f"{run['checked']:,} obs checked equal ({run['checked_transitions']} transitions)"
        )

    def med(name: str) -> float:
        return statistics.median(run[name] for run in runs)

    def span(name: str) -> str:
        values = [run[name] for run in runs]
        return f"{min(values):,.0f}-{max(values):,.0f}"

    print()
    print(
        "| loop | rules | targets | observations | wall s | obs/s (median) | range "
        "| obs per CPU-s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    print(
        f"| indexed (`AlertEvaluator.evaluate`) | {args.rules:,} | {args.targets:,} "
        f"| {int(med('observations')):,} | {med('indexed_wall'):.2f} "
        f"| **{med('indexed_rate'):,.0f}** | {span('indexed_rate')} "
        f"| {med('indexed_cpu_rate'):,.0f} |"
    )
    print(
        f"| naive (every rule, time-boxed) | {args.rules:,} | {args.targets:,} "
        f"| {int(med('naive_observations')):,} | {med('naive_wall'):.2f} "
        f"| {med('naive_rate'):,.0f} | {span('naive_rate')} | {med('naive_cpu_rate'):,.0f} |"
    )
    ratio = statistics.median(run["indexed_rate"] / run["naive_rate"] for run in runs)
    print()
    print(
        f"ratio indexed/naive (median of per-run ratios): {ratio:,.0f}x; transitions per "
        f"timed run {int(med('transitions')):,}; rule checks per observation "
        f"{med('checks_per_obs'):.1f} (naive: {args.rules:,}); setup (install {args.rules:,} "
        f"rules) {med('setup_s'):.2f}s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
