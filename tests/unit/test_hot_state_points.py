"""The hot projections' per-series history (``hot_state.Points``)."""

from __future__ import annotations

import gc
from bisect import bisect_left

from hypothesis import given
from hypothesis import strategies as st

from defi_realtime.application.hot_state import Points, record_point
from defi_realtime.application.views import RECENT_WINDOW_SECONDS

Point = tuple[float, float]


REACH = 3 * 86_400.0


def reference(
    recent: list[Point], observed_at: float, value: float, newest: float
) -> list[Point] | None:
    """The rule, on a plain list: drop points older than the window, a later recording of
    the same time replaces the earlier one, keep time order; then drop every point before
    the last one at or before ``newest - REACH``."""
    if observed_at < newest - RECENT_WINDOW_SECONDS:
        return None
    kept = [p for p in recent if p[0] >= newest - RECENT_WINDOW_SECONDS and p[0] != observed_at]
    kept.insert(bisect_left([t for t, _ in kept], observed_at), (observed_at, value))
    before = [index for index, (t, _) in enumerate(kept) if t <= newest - REACH]
    return kept[before[-1] :] if before else kept


times = st.floats(min_value=0, max_value=20 * 86_400, allow_nan=False).map(lambda t: round(t, -3))


@given(st.lists(st.tuples(times, st.floats(0, 1e12)), max_size=60))
def test_record_point_follows_the_rule(observations: list[Point]) -> None:
    points, expected, newest = Points(), [], float("-inf")
    for observed_at, value in observations:
        newest = max(newest, observed_at)
        got = record_point(points, observed_at, value, newest, REACH)
        want = reference(expected, observed_at, value, newest)
        assert (got is None) == (want is None)
        if got is not None and want is not None:
            points, expected = got, want
        assert list(points) == expected


def test_a_series_costs_the_garbage_collector_the_same_however_long() -> None:
    points = Points()
    for n in range(5_000):
        extended = record_point(points, float(n), float(n), float(n), REACH)
        assert extended is not None
        points = extended
    # Two float arrays: a collection walks none of their points (a tuple of point tuples
    # was rebuilt per observation and walked, point by point, by every young collection).
    assert len(gc.get_referents(points.times)) <= 1  # at most its type
    assert len(gc.get_referents(points.values)) <= 1
    assert len(gc.get_referents(points)) <= 3
    assert list(points)[-1] == (4_999.0, 4_999.0)
    assert len(points) == 5_000


def test_a_series_leaves_one_object_for_the_collector_to_scan() -> None:
    """Every observation builds a new series; what it holds is untracked (ADR 0057), so a
    full collection scans one object per series touched, not three (two arrays)."""
    points = Points()
    for n in range(100):
        extended = record_point(points, float(n), float(n), float(n), REACH)
        assert extended is not None
        points = extended
    held = [o for o in gc.get_referents(points) if not isinstance(o, type)]
    assert len(held) == 2
    assert not any(gc.is_tracked(o) for o in held)


def test_series_compare_and_hash_by_their_points() -> None:
    built = Points.of([(1.0, 0.0), (2.0, 5.0)])
    recorded = record_point(Points.of([(1.0, 0.0)]), 2.0, 5.0, 2.0, REACH)
    assert recorded == built
    assert hash(recorded) == hash(built)
    assert Points.of([(1.0, -0.0)]) == Points.of([(1.0, 0.0)])  # as floats, like arrays
    assert Points.of([(1.0, 1.0)]) != Points.of([(1.0, 2.0)])
    assert list(built.since(1)) == [(2.0, 5.0)]
    assert len(built) == 2
