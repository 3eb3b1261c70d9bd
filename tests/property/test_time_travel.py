"""Time travel and the rollups equal a recomputation from the event log.

For random logs (corrections, late observations, several chains and metrics) applied in
random batches, and random cuts (``as_of`` a data time, ``known_at`` a log position, either
or both), the views the history read model answers for the cut (from the raw facts, and from
the series-states rollup where the cut is a time alone) must equal what the live fold
(``HotState``, the hot projections' own rules) makes of the log's facts inside the cut,
listings included (a listing is inside when recorded by ``known_at`` and true by ``as_of``;
one without a time is always true). The group-days rollup must answer every bucket as
``bucketed`` computes it from the day closes, listings changing on the way included.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from defi_realtime.adapters.sql_history import SqlHistoryReadModel
from defi_realtime.application.aggregate import (
    ROLLUP_METRICS,
    AggregateQuery,
    Measure,
    bucket_starts,
    bucketed,
    bucketed_from_rollup,
)
from defi_realtime.application.chain_tvl import CARRY_DAYS, DAY
from defi_realtime.application.hot_state import HotState
from defi_realtime.application.log import LogBatch, LogEntry
from defi_realtime.application.time_travel import Cut, protocols_at, views_at
from defi_realtime.application.views import ProtocolView
from tests.services import throwaway_schema

T0 = 1_700_000_000.0
HOUR = 3_600.0
# Times that reach every change window (1h, 1d, 7d and their tolerances) and beyond the
# hot projections' 8-day window.
TIMES = [
    T0 + hours * HOUR for hours in (0, 1, 2, 12, 23, 24, 25, 36, 100, 160, 168, 170, 200, 230, 250)
]
LISTED = {
    "aave": ("Aave", "Lending", ["Ethereum"]),
    "curve": ("Curve", "Dexes", ["Ethereum", "Arbitrum"]),
}

# Weighted towards one protocol's total TVL, so that its series is long enough for the
# change windows.
metrics = st.tuples(
    st.sampled_from(["aave", "aave", "aave", "curve", "ghost"]),
    st.sampled_from(["tvl", "tvl", "tvl", "tvl", "volume_24h", "fees_24h"]),
    st.sampled_from(["total", "total", "total", "Ethereum", "Base"]),
    st.sampled_from(TIMES),
    st.sampled_from([0.0, 1.0, 5.0, 10.0, 12.5, 100.0]),
)


def log_of(observations: list[tuple[str, str, str, float, float]]) -> list[LogEntry]:
    entries = [
        LogEntry(
            position,
            "protocol_listed",
            slug,
            {"name": name, "category": category, "chains": chains, "url": ""},
            T0,
        )
        for position, (slug, (name, category, chains)) in enumerate(LISTED.items(), 1)
    ]
    for protocol, metric, chain, observed_at, value in observations:
        position = len(entries) + 1
        data = {
            "metric": metric,
            "chain": chain,
            "value": value,
            "observed_at": observed_at,
            "source": "",
        }
        entries.append(LogEntry(position, "metric", protocol, data, T0 + position))
    return entries


def inside(entry: LogEntry, cut: Cut) -> bool:
    if cut.known_at is not None and entry.position > cut.known_at:
        return False
    observed_at = entry.data.get("observed_at")
    return cut.as_of is None or observed_at is None or float(observed_at) <= cut.as_of


# Listings recorded later: (index in the log, slug, category, chains, time or None).
timed_relistings = st.lists(
    st.tuples(
        st.integers(0, 40),
        st.sampled_from(["aave", "curve", "ghost"]),
        st.sampled_from(["Lending", "Dexes", "CEX"]),
        st.sampled_from([["Ethereum"], ["Ethereum", "Base"], ["Arbitrum"], []]),
        st.one_of(st.none(), st.sampled_from(TIMES)),
    ),
    max_size=3,
)


def relist(
    entries: list[LogEntry], relisted: list[tuple[int, str, str, list[str], float | None]]
) -> list[LogEntry]:
    """``entries`` with the listings inserted, renumbered."""
    entries = list(entries)
    for at, slug, category, chains, observed_at in sorted(
        relisted, key=lambda item: item[0], reverse=True
    ):
        data = {
            "name": slug.title(),
            "category": category,
            "chains": chains,
            "url": f"https://{slug}",
            "observed_at": observed_at,
        }
        entries.insert(min(at, len(entries)), LogEntry(0, "protocol_updated", slug, data, T0))
    return [
        LogEntry(position, e.kind, e.key, e.data, e.recorded_at)
        for position, e in enumerate(entries, 1)
    ]


def comparable(view: ProtocolView) -> dict[str, Any]:
    shown = view.to_json()
    del shown["position"]  # the fold's last change vs the cut's newest fact: not compared
    return shown


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def model(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SqlHistoryReadModel]:
    """The read model on SQLite, and on PostgreSQL in a throwaway schema."""
    if request.param == "sqlite":
        path = Path(tmp_path_factory.mktemp("travel")) / "history.db"
        history = SqlHistoryReadModel(f"sqlite:///{path}")
        yield history
        history.close()
        return
    with throwaway_schema("travel_test") as url:
        history = SqlHistoryReadModel(url)
        yield history
        history.close()


# The edge of the kept window: a point 230 h before the newest is past what the live view
# keeps (8 days), though the 7-day change's tolerance would reach it.
@example(
    observations=[("aave", "tvl", "total", T0, 10.0), ("aave", "tvl", "total", TIMES[-2], 12.5)],
    as_of=None,
    known_share=None,
    cuts=[],
    relisted=[],
)
# A later listing true from TIMES[3]: a cut before then shows the first one's details.
@example(
    observations=[("aave", "tvl", "total", T0, 1.0), ("aave", "tvl", "total", TIMES[4], 2.0)],
    as_of=TIMES[2],
    known_share=None,
    cuts=[0.5],
    relisted=[(4, "aave", "CEX", ["Ethereum"], TIMES[3])],
)
# Live data: each batch newer than everything before it (the states' short path).
@example(
    observations=[("aave", "tvl", "total", at, float(i)) for i, at in enumerate(TIMES)],
    as_of=None,
    known_share=None,
    cuts=[0.25, 0.5, 0.6, 0.7, 0.8, 0.9],
    relisted=[],
)
@example(
    observations=[("aave", "tvl", "total", at, float(i)) for i, at in enumerate(TIMES)],
    as_of=TIMES[-3],
    known_share=None,
    cuts=[0.3, 0.5, 0.7, 0.9],
    relisted=[],
)
@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    observations=st.lists(metrics, min_size=1, max_size=30),
    as_of=st.one_of(st.none(), st.sampled_from(TIMES), st.floats(T0 - HOUR, T0 + 300 * HOUR)),
    known_share=st.one_of(st.none(), st.floats(0, 1)),
    cuts=st.lists(st.floats(0, 1), max_size=4),
    relisted=timed_relistings,
)
def test_a_cut_answers_as_a_fold_of_the_facts_inside_it(
    model: SqlHistoryReadModel,
    observations: list[tuple[str, str, str, float, float]],
    as_of: float | None,
    known_share: float | None,
    cuts: list[float],
    relisted: list[tuple[int, str, str, list[str], float | None]],
) -> None:
    entries = relist(log_of(observations), relisted)
    last = entries[-1].position
    known_at = None if known_share is None else round(known_share * last)
    cut = Cut(as_of=as_of, known_at=known_at)
    model.reset()
    apply_in_batches(model, entries, cuts)

    answered = views_at(
        model.latest_values(cut), model.change_points(cut), model.listing_details(cut)
    )
    from_rollup = protocols_at(model, cut)

    fold = HotState()
    fold.apply(LogBatch(after=0, last=last, entries=tuple(e for e in entries if inside(e, cut))))
    with_values = {e.key for e in entries if e.kind == "metric" and inside(e, cut)}
    expected = {slug: fold.protocol_views[slug] for slug in with_values}
    expected_views = {slug: comparable(view) for slug, view in expected.items()}
    assert {view.slug: comparable(view) for view in answered} == expected_views
    assert {view.slug: comparable(view) for view in from_rollup} == expected_views


def apply_in_batches(
    model: SqlHistoryReadModel, entries: list[LogEntry], cuts: list[float]
) -> None:
    """``entries`` applied in batches split at the ``cuts`` (shares of the log)."""
    bounds = sorted({0, len(entries), *(round(share * len(entries)) for share in cuts)})
    for start, stop in itertools.pairwise(bounds):
        if start < stop:
            batch = entries[start:stop]
            model.apply(LogBatch(after=start, last=stop, entries=tuple(batch)))


DAYS_APART = [T0 + days * DAY + hours * HOUR for days in (0, 1, 3, 9, 10, 20) for hours in (0, 5)]
daily_metrics = st.tuples(
    st.sampled_from(["aave", "aave", "curve", "ghost"]),
    st.sampled_from(["tvl", "tvl", "tvl", "volume_24h", "fees_24h"]),
    st.sampled_from(["total", "total", "Ethereum", "Base"]),
    st.sampled_from(DAYS_APART),
    st.sampled_from([0.0, 1.0, 5.0, 12.5, 100.0]),
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    observations=st.lists(daily_metrics, min_size=1, max_size=30),
    relisted=timed_relistings,
    cuts=st.lists(st.floats(0, 1), max_size=4),
    group_by=st.sampled_from([None, "category", "chain"]),
    bucket=st.sampled_from(["1d", "1w"]),
)
def test_the_group_days_rollup_answers_buckets_as_a_recomputation(
    model: SqlHistoryReadModel,
    observations: list[tuple[str, str, str, float, float]],
    relisted: list[tuple[int, str, str, list[str], float | None]],
    cuts: list[float],
    group_by: Any,
    bucket: Any,
) -> None:
    entries = relist(log_of(observations), relisted)
    model.reset()
    apply_in_batches(model, entries, cuts)

    query = AggregateQuery(
        group_by=group_by,
        measures=(
            Measure("sum", "tvl"),
            Measure("count", "volume_24h"),
            Measure("avg", "fees_24h"),
        ),
    )
    start, end = T0 - 2 * DAY, T0 + 32 * DAY - 1
    starts = bucket_starts(bucket, start, end)
    first_day = int(starts[0] // DAY) - CARRY_DAYS
    rows = model.daily_metric_values(ROLLUP_METRICS, first_day, int(end // DAY), Cut())
    expected = bucketed(rows, model.listings(), query, starts, end)
    last_days = [int((b - 1) // DAY) for b in [*starts[1:], end + 1]]
    dimension = "all" if group_by is None else group_by
    answered = bucketed_from_rollup(
        model.group_days(dimension, last_days, ROLLUP_METRICS), query, starts, end
    )
    assert [(b.start, [(g.key, g.protocols) for g in b.groups]) for b in answered] == [
        (b.start, [(g.key, g.protocols) for g in b.groups]) for b in expected
    ]
    for mine, theirs in zip(answered, expected, strict=True):
        for group, other in zip(mine.groups, theirs.groups, strict=True):
            for name, value in other.measures.items():
                if value is None:
                    assert group.measures[name] is None, (name, group)
                else:
                    assert group.measures[name] == pytest.approx(value, rel=1e-9, abs=1e-9)


def test_a_time_becomes_the_last_position_recorded_by_then(
    model: SqlHistoryReadModel,
) -> None:
    entries = log_of([("aave", "tvl", "total", T0, 1.0), ("aave", "tvl", "total", T0, 2.0)])
    model.reset()
    model.apply(LogBatch(after=0, last=entries[-1].position, entries=tuple(entries)))
    # Recorded at T0 + position: the correction (position 4) is not known at T0 + 3.5.
    assert model.position_recorded_by(T0 + 3.5) == 3
    assert model.position_recorded_by(T0) == 0
    [view] = views_at(
        model.latest_values(Cut(known_at=3)),
        model.change_points(Cut(known_at=3)),
        model.listing_details(),
    )
    assert view.tvl == 1.0
