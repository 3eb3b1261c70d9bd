"""Time travel equals a recomputation from the event log.

For random logs (corrections, late observations, several chains and metrics) and random cuts
(``as_of`` a data time, ``known_at`` a log position, either or both), the views the history
read model answers for the cut must equal what the live fold (``HotState``, the hot
projections' own rules) makes of the log's facts inside the cut, with today's listings.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from defi_realtime.adapters.sql_history import SqlHistoryReadModel
from defi_realtime.application.hot_state import HotState
from defi_realtime.application.log import LogBatch, LogEntry
from defi_realtime.application.time_travel import Cut, views_at
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
    if entry.kind != "metric":
        return True  # listings: today's, whatever the cut
    if cut.known_at is not None and entry.position > cut.known_at:
        return False
    return cut.as_of is None or float(entry.data["observed_at"]) <= cut.as_of


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
)
def test_a_cut_answers_as_a_fold_of_the_facts_inside_it(
    model: SqlHistoryReadModel,
    observations: list[tuple[str, str, str, float, float]],
    as_of: float | None,
    known_share: float | None,
) -> None:
    entries = log_of(observations)
    last = entries[-1].position
    known_at = None if known_share is None else round(known_share * last)
    cut = Cut(as_of=as_of, known_at=known_at)
    model.reset()
    model.apply(LogBatch(after=0, last=last, entries=tuple(entries)))

    answered = views_at(model.latest_values(cut), model.tvl_points(cut), model.listing_details())

    fold = HotState()
    fold.apply(LogBatch(after=0, last=last, entries=tuple(e for e in entries if inside(e, cut))))
    with_values = {e.key for e in entries if e.kind == "metric" and inside(e, cut)}
    expected = {slug: fold.protocol_views[slug] for slug in with_values}
    assert {view.slug: comparable(view) for view in answered} == {
        slug: comparable(view) for slug, view in expected.items()
    }


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
        model.tvl_points(Cut(known_at=3)),
        model.listing_details(),
    )
    assert view.tvl == 1.0
