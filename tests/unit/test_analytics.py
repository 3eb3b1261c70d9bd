"""Each analytics measure on hand-made series with known answers (ADR 0033)."""

from __future__ import annotations

import itertools
import math
import statistics
from typing import Any

import pytest

from defi_realtime.application.analytics import (
    ANNUALISATION,
    DAY,
    RISK_WEIGHTS,
    RecentCloses,
    RiskInputs,
    analyse,
    category_standing,
    chain_concentration,
    daily_log_returns,
    freshness,
    max_drawdown,
    risk_page,
    risk_score,
    trend,
    volatility,
)
from defi_realtime.application.views import ProtocolQuery, ProtocolView, SeriesPoint

T0 = 1_700_006_400.0  # a UTC midnight


def closes(*values: float, start: float = T0, gaps: list[int] | None = None) -> list[SeriesPoint]:
    """Daily closes from ``start``, one day apart unless ``gaps`` says how many days."""
    points, at = [], start
    for index, value in enumerate(values):
        if index:
            at += (gaps[index - 1] if gaps else 1) * DAY
        points.append(SeriesPoint(at, value))
    return points


def view(slug: str = "p", **fields: Any) -> ProtocolView:
    base: dict[str, Any] = {
        "slug": slug,
        "name": slug.upper(),
        "category": "Lending",
        "chains": (),
        "url": "",
        "tvl": None,
        "chain_tvls": {},
        "change_1h": None,
        "change_1d": None,
        "change_7d": None,
        "volume_24h": None,
        "fees_24h": None,
        "updated_at": None,
        "position": 1,
    }
    return ProtocolView(**{**base, **fields})


def test_log_returns_are_per_day_across_gaps_and_skip_zeros() -> None:
    points = closes(100.0, 110.0, 0.0, 50.0, 200.0, gaps=[1, 1, 1, 4])
    assert daily_log_returns(points) == pytest.approx([math.log(1.1), math.log(4) / 2])


def test_volatility_is_the_sample_deviation_of_daily_log_returns() -> None:
    values = [100.0, 110.0, 99.0, 108.9, 98.01]
    found = volatility(closes(*values), "7d")
    returns = [math.log(b / a) for a, b in itertools.pairwise(values)]
    assert found.returns == 4
    assert found.daily == pytest.approx(statistics.stdev(returns))
    assert found.annualised == pytest.approx(statistics.stdev(returns) * ANNUALISATION)
    # The 7d window ends at the latest close: older points do not count.
    older = closes(1.0, 1000.0, start=T0 - 30 * DAY)
    assert volatility([*older, *closes(*values)], "7d") == found
    assert volatility(closes(100.0, 120.0), "30d").daily is None  # one return


def test_max_drawdown_has_its_peak_and_trough_dates() -> None:
    points = closes(100, 150, 120, 200, 90, 130, 180, 60, 70)
    found = max_drawdown(points, "all")
    # 200 (day 3) -> 60 (day 7): 70 %, deeper than 200 -> 90 (55 %).
    assert found.value == pytest.approx(0.7)
    assert (found.peak_at, found.peak_value) == (T0 + 3 * DAY, 200)
    assert (found.trough_at, found.trough_value) == (T0 + 7 * DAY, 60)
    rising = max_drawdown(closes(1, 2, 3), "30d")
    assert (rising.value, rising.peak_at, rising.trough_at) == (0.0, None, None)
    assert max_drawdown(closes(5), "1y").value is None


def test_drawdown_windows_end_at_the_latest_close() -> None:
    crash = closes(100, 10, start=T0)  # two years back
    recent = closes(50, 40, 45, start=T0 + 700 * DAY)
    points = [*crash, *recent]
    assert max_drawdown(points, "all").value == pytest.approx(0.9)
    assert max_drawdown(points, "1y").value == pytest.approx(0.2)
    assert max_drawdown(points, "30d").trough_at == T0 + 701 * DAY


def test_trend_is_the_log_linear_slope_over_30_days() -> None:
    growing = closes(*(100 * 1.01**day for day in range(40)))
    found = trend(growing)
    assert found.points == 31
    assert found.slope_per_day == pytest.approx(math.log(1.01))
    assert found.change == pytest.approx(1.01**30 - 1)
    falling = trend(closes(100, 50, 25))
    assert falling.change == pytest.approx(0.5**30 - 1)
    assert trend(closes(0, 0, 7)).change is None  # one positive close


def test_chain_concentration_is_the_herfindahl_index_of_chain_shares() -> None:
    spread = view(chain_tvls={"Ethereum": 60.0, "Arbitrum": 30.0, "Base": 10.0}, tvl=100.0)
    found = chain_concentration(spread)
    assert found.hhi == pytest.approx(0.36 + 0.09 + 0.01)
    assert (found.largest_chain, found.largest_share) == ("Ethereum", pytest.approx(0.6))
    # Sections are metrics of their own (ADR 0032): never a chain share.
    with_sections = view(
        chain_tvls={"Ethereum": 50.0, "Base": 50.0}, sections={"Ethereum-borrowed": 900.0}
    )
    assert chain_concentration(with_sections).hhi == pytest.approx(0.5)
    one_chain = view(chains=("Solana",), tvl=5.0)
    assert chain_concentration(one_chain).hhi == 1.0
    assert chain_concentration(view(chains=("A", "B"), tvl=5.0)).hhi is None


def test_category_standing_ranks_by_tvl_and_shares_the_category() -> None:
    peers = [
        view("a", tvl=300.0),
        view("b", tvl=100.0),
        view("c", tvl=100.0),
        view("d", tvl=None),
        view("e", tvl=1e9, category="Dexes"),
    ]
    standing = category_standing(view("c", tvl=100.0, category="lending"), peers)
    assert (standing.rank, standing.protocols) == (3, 3)  # ties by slug: b before c
    assert standing.share == pytest.approx(0.2)
    assert category_standing(view("d", tvl=None), peers).rank is None
    assert category_standing(view("x", tvl=1.0, category=""), peers).rank is None


def test_freshness_counts_days_at_the_reference_time() -> None:
    found = freshness(T0, T0 + 10 * DAY, T0 + 12 * DAY)
    assert (found.age_days, found.staleness_days) == (12.0, 2.0)
    assert freshness(None, None, T0).age_days is None


def inputs(**fields: Any) -> RiskInputs:
    base: dict[str, Any] = {
        "volatility_30d": 0.025,
        "drawdown_1y": 0.4,
        "trend_30d": -0.25,
        "tvl": 1e7,
        "hhi": 0.5,
        "oracles": ("Chainlink",),
        "age_days": 73.0,
        "staleness_days": 4.0,
    }
    return RiskInputs(**{**base, **fields})


def test_each_component_normalises_as_the_adr_says() -> None:
    found = {c.name: c for c in risk_score(inputs()).components}
    assert {name: c.normalised for name, c in found.items()} == pytest.approx(
        {
            "volatility": 0.5,
            "drawdown": 0.4,
            "trend": 0.5,
            "size": 0.6,
            "concentration": 0.5,
            "oracles": 1.0,
            "age": 0.8,
            "staleness": 0.5,
        }
    )
    assert {name: c.weight * 100 for name, c in found.items()} == pytest.approx(RISK_WEIGHTS)
    score = risk_score(inputs()).score
    assert score == pytest.approx(
        20 * 0.5 + 20 * 0.4 + 10 * 0.5 + 15 * 0.6 + 10 * 0.5 + 10 * 1.0 + 10 * 0.8 + 5 * 0.5
    )
    several = {c.name: c for c in risk_score(inputs(oracles=("A", "B"))).components}
    assert several["oracles"].normalised == 0.5
    assert {c.name: c for c in risk_score(inputs(oracles=())).components}[
        "oracles"
    ].normalised == 0.0


def test_missing_data_is_unavailable_and_the_weights_are_shared_out() -> None:
    sparse = risk_score(
        inputs(volatility_30d=None, drawdown_1y=None, trend_30d=None, hhi=None, age_days=None)
    )
    available = {c.name for c in sparse.components if c.available}
    assert available == {"size", "oracles", "staleness"}
    assert sparse.coverage == pytest.approx(0.30)
    for component in sparse.components:
        if component.available:
            assert component.effective_weight == pytest.approx(component.weight / 0.30)
        else:
            assert (component.contribution, component.effective_weight) == (0.0, 0.0)
            assert component.explanation.startswith("Unavailable")
    assert sparse.score == pytest.approx(100 * (15 * 0.6 + 10 * 1.0 + 5 * 0.5) / 30)


def test_no_component_available_means_no_score() -> None:
    empty = risk_score(
        inputs(
            volatility_30d=None,
            drawdown_1y=None,
            trend_30d=None,
            tvl=None,
            hhi=None,
            age_days=None,
            staleness_days=None,
        ),
        weights={"size": 1.0, "staleness": 1.0},
    )
    assert (empty.score, empty.coverage) == (None, 0.0)


def test_analyse_scores_what_the_risk_list_scores() -> None:
    points = closes(*(100 + 10 * math.sin(day) for day in range(60)))
    aave = view("aave", tvl=points[-1].value, tvl_at=points[-1].timestamp, chains=("Base",))
    reference = points[-1].timestamp + DAY
    one = analyse(aave, points, [aave], reference)
    recent = {"aave": RecentCloses(points[0].timestamp, tuple(points[-40:]))}
    page = risk_page([aave, view("none")], recent, reference, ProtocolQuery(sort="score"))
    assert [entry.view.slug for entry in page.items] == ["aave", "none"]
    assert page.items[0].risk == one.risk


def test_risk_page_filters_sorts_and_pages_as_the_protocol_list() -> None:
    views = [
        view("big", tvl=1e10, chains=("Ethereum",), tvl_at=T0),
        view("small", tvl=1e5, chains=("Ethereum",), tvl_at=T0),
        view("dex", tvl=1e6, chains=("Base",), category="Dexes", tvl_at=T0),
    ]
    by_score = risk_page(views, {}, T0, ProtocolQuery(sort="score"))
    assert [e.view.slug for e in by_score.items] == ["small", "dex", "big"]
    ascending = risk_page(views, {}, T0, ProtocolQuery(sort="score", descending=False))
    assert [e.view.slug for e in ascending.items] == ["big", "dex", "small"]
    on_chain = risk_page(views, {}, T0, ProtocolQuery(chain="ethereum", sort="tvl", limit=1))
    assert ([e.view.slug for e in on_chain.items], on_chain.total) == (["big"], 2)
