"""The risk score is its components: whatever the inputs, a user who reads only the
components (value, normalised, weight, effective_weight, contribution) recomputes the score,
and each measure stays in its documented range (ADR 0033)."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from defi_realtime.application.analytics import (
    DAY,
    RiskInputs,
    max_drawdown,
    risk_inputs,
    risk_score,
    score_of,
    volatility,
)
from defi_realtime.application.views import ProtocolView, SeriesPoint

T0 = 1_700_006_400.0


def maybe(strategy: st.SearchStrategy[float]) -> st.SearchStrategy[float | None]:
    return st.none() | strategy


inputs = st.builds(
    RiskInputs,
    volatility_30d=maybe(st.floats(0, 10)),
    drawdown_1y=maybe(st.floats(0, 1)),
    trend_30d=maybe(st.floats(-1, 1e6)),
    tvl=maybe(st.floats(0, 1e13)),
    hhi=maybe(st.floats(0, 1)),
    oracles=st.lists(st.sampled_from(["Chainlink", "Pyth", "RedStone"]), unique=True).map(tuple),
    age_days=maybe(st.floats(0, 5_000)),
    staleness_days=maybe(st.floats(0, 5_000)),
)
weights = st.dictionaries(
    st.sampled_from(
        ["volatility", "drawdown", "trend", "size", "concentration", "oracles", "age", "staleness"]
    ),
    st.floats(0.5, 50),
    min_size=1,
)


@settings(max_examples=300, deadline=None)
@given(inputs, weights)
def test_the_components_recompute_to_the_score(found: RiskInputs, weighted: dict) -> None:  # type: ignore[type-arg]
    score = risk_score(found, weighted)
    # The list ranks by score_of: the same number to the last bit.
    assert score_of(found, weighted) == score.score
    available = [c for c in score.components if c.normalised is not None]
    assert math.isclose(math.fsum(c.weight for c in score.components), 1.0)
    if not available:
        assert score.score is None
        return
    assert score.score is not None
    assert 0.0 <= score.score <= 100.0 + 1e-9
    shared = math.fsum(c.weight for c in available)
    assert math.isclose(score.coverage, shared)
    recomputed = 0.0
    for component in score.components:
        if component.normalised is None:
            assert component.contribution == 0.0
            continue
        assert 0.0 <= component.normalised <= 1.0
        assert math.isclose(component.effective_weight, component.weight / shared)
        assert math.isclose(
            component.contribution,
            100.0 * component.effective_weight * component.normalised,
            abs_tol=1e-12,
        )
        recomputed += component.contribution
    assert math.isclose(recomputed, score.score, rel_tol=1e-12, abs_tol=1e-9)


series = st.lists(st.floats(0, 1e12), min_size=0, max_size=60).map(
    lambda values: [SeriesPoint(T0 + day * DAY, v) for day, v in enumerate(values)]
)


@settings(max_examples=200, deadline=None)
@given(series)
def test_measures_stay_in_their_ranges_and_the_score_recomputes(
    points: list[SeriesPoint],
) -> None:
    for window in ("30d", "1y", "all"):
        drawdown = max_drawdown(points, window)
        if drawdown.value is not None:
            assert 0.0 <= drawdown.value <= 1.0
        if drawdown.peak_at is not None:
            assert drawdown.trough_at is not None
            assert drawdown.peak_at < drawdown.trough_at
            assert drawdown.peak_value is not None
            assert drawdown.trough_value is not None
            assert drawdown.peak_value > drawdown.trough_value
    spread = volatility(points, "30d").daily
    assert spread is None or spread >= 0.0
    view = ProtocolView(
        slug="p",
        name="P",
        category="",
        chains=("Base",),
        url="",
        tvl=points[-1].value if points else None,
        chain_tvls={},
        change_1h=None,
        change_1d=None,
        change_7d=None,
        volume_24h=None,
        fees_24h=None,
        updated_at=None,
        position=1,
        tvl_at=points[-1].timestamp if points else None,
    )
    score = risk_score(risk_inputs(view, points, T0 if points else None, T0 + 100 * DAY))
    contributions = math.fsum(c.contribution for c in score.components)
    assert score.score is not None  # the oracle component is always available
    assert math.isclose(contributions, score.score, rel_tol=1e-12, abs_tol=1e-9)
