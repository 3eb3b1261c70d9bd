"""Protocol analytics and an explainable risk score (ADR 0033, docs/analytics.md).

Pure functions over what the read models already hold: a protocol's daily TVL closes (the
history's day closes), its view (current chain TVLs, listing, oracles) and the views of its
category. Nothing here reads a database or a clock: the caller passes ``reference``, the
time the answer is about (``asOf``, or now).

The measures:

* **volatility**: the standard deviation of daily log returns (a sample deviation, *not*
  annualised; ``annualised`` multiplies it by sqrt(365)). A return between closes ``g``
  days apart is divided by sqrt(g), the per-day return of a random walk, so irregular
  captures still count; a pair with a zero value has no log return and is left out.
* **max drawdown**: the largest fall from a running peak to a later trough, as a fraction
  of the peak, with both dates.
* **trend**: the least-squares slope of ln(TVL) against time over the last 30 days, given
  as the 30-day change it implies (``exp(30 * slope) - 1``).
* **chain concentration**: the Herfindahl index of the chain TVL shares (TVL sections such
  as ``borrowed`` or ``staking`` are metrics of their own, ADR 0032, and never count).
* **category standing**: rank by TVL and share of the category's TVL.
* **oracles**, **series age** (since the first day held) and **staleness** (since the
  latest TVL observation).

Windows (7d, 30d, 1y) end at the protocol's latest daily close, so a stale protocol is
still described by its last month of data; staleness says how old that is.

The risk score is ``sum(contribution)`` over its components, each ``contribution`` being
``100 * effective_weight * normalised``; ``effective_weight`` is the component's weight
divided by the sum of the weights of the components that could be computed (a component
without data is marked unavailable and contributes 0). So a user recomputes the score
from the components alone.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal, Protocol

from .chain_tvl import tvl_by_chain
from .hot_state import matches, order
from .time_travel import Cut
from .views import ProtocolQuery, ProtocolView, SeriesPoint

__all__ = [
    "ANNUALISATION",
    "DAY",
    "RISK_DAYS",
    "RISK_WEIGHTS",
    "WINDOWS",
    "CategoryStanding",
    "Concentration",
    "Drawdown",
    "Freshness",
    "ProtocolAnalytics",
    "RecentCloses",
    "RiskComponent",
    "RiskEntry",
    "RiskInputs",
    "RiskPage",
    "RiskScore",
    "Trend",
    "TvlCloses",
    "Volatility",
    "analyse",
    "category_standing",
    "chain_concentration",
    "daily_log_returns",
    "freshness",
    "max_drawdown",
    "risk_inputs",
    "risk_page",
    "risk_score",
    "score_of",
    "trend",
    "volatility",
]

DAY: Final = 86_400.0
ANNUALISATION: Final = math.sqrt(365.0)
WindowName = Literal["7d", "30d", "1y", "all"]
WINDOWS: Final[dict[str, float | None]] = {"7d": 7.0, "30d": 30.0, "1y": 365.0, "all": None}
# The fewest returns a volatility is computed from (a sample deviation needs two).
MIN_RETURNS: Final = 2
TREND_DAYS: Final = 30.0

ComponentName = Literal[
    "volatility", "drawdown", "trend", "size", "concentration", "oracles", "age", "staleness"
]
# Weights in percent (they add up to 100); ADR 0033 gives the reasons.
RISK_WEIGHTS: Final[dict[ComponentName, float]] = {
    "volatility": 20.0,
    "drawdown": 20.0,
    "trend": 10.0,
    "size": 15.0,
    "concentration": 10.0,
    "oracles": 10.0,
    "age": 10.0,
    "staleness": 5.0,
}
# Normalisation scales (ADR 0033): the value at which a component reaches 1 (full risk).
VOLATILITY_FULL: Final = 0.05  # a 5 % daily deviation (~95 % annualised)
TREND_FULL: Final = 0.5  # a fitted fall of 50 % over 30 days
SIZE_SMALL: Final = 1e5  # USD: at or below, full risk
SIZE_LARGE: Final = 1e10  # USD: at or above, none
AGE_FULL: Final = 365.0  # days: younger series are riskier, linearly
STALE_FROM: Final = 1.0  # days: fresher data is not stale at all
STALE_FULL: Final = 7.0  # days: a week without a TVL is full risk


# -- measures --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Volatility:
    """Standard deviation of daily log returns over ``window`` (None: too few returns)."""

    window: str
    daily: float | None
    annualised: float | None
    returns: int


@dataclass(frozen=True, slots=True)
class Drawdown:
    """The largest peak-to-trough fall over ``window``, as a fraction of the peak (0 when
    the series never fell; then no dates). None: fewer than two closes in the window."""

    window: str
    value: float | None
    peak_at: float | None
    peak_value: float | None
    trough_at: float | None
    trough_value: float | None


@dataclass(frozen=True, slots=True)
class Trend:
    """Least-squares slope of ln(TVL) per day over the last 30 days, and the 30-day change
    it implies (``exp(30 * slope) - 1``). None: fewer than two positive closes."""

    window: str
    slope_per_day: float | None
    change: float | None
    points: int


@dataclass(frozen=True, slots=True)
class Concentration:
    """Herfindahl index of the TVL shares per chain (1: one chain; 1/n: n equal chains)."""

    hhi: float | None
    largest_chain: str | None
    largest_share: float | None
    shares: dict[str, float]


@dataclass(frozen=True, slots=True)
class CategoryStanding:
    """Rank by TVL (1: the largest) and share of the category's TVL, among the category's
    protocols with a TVL. None when the protocol has no category or no TVL."""

    category: str
    rank: int | None
    protocols: int
    share: float | None


@dataclass(frozen=True, slots=True)
class Freshness:
    """The series' first day held and latest TVL observation, and their age at the
    reference time, in days."""

    first_observed_at: float | None
    age_days: float | None
    last_observed_at: float | None
    staleness_days: float | None


def _in_window(closes: Sequence[SeriesPoint], days: float | None) -> Sequence[SeriesPoint]:
    """The closes within ``days`` of the latest one (every close for None)."""
    if days is None or not closes:
        return closes
    start = closes[-1].timestamp - days * DAY
    return [point for point in closes if point.timestamp >= start]


def daily_log_returns(closes: Sequence[SeriesPoint]) -> list[float]:
    """Per-day log returns between consecutive closes (oldest first): ``ln(b / a)`` divided
    by the square root of the days between them; pairs with a zero value are left out."""
    returns = []
    for before, after in itertools.pairwise(closes):
        if before.value <= 0 or after.value <= 0:
            continue
        gap = max((after.timestamp - before.timestamp) / DAY, 1.0)
        # A difference of logs, not the log of a ratio: a ratio of extreme values (a
        # near-zero TVL) overflows or underflows, their logs never do.
        returns.append((math.log(after.value) - math.log(before.value)) / math.sqrt(gap))
    return returns


def volatility(closes: Sequence[SeriesPoint], window: str) -> Volatility:
    """Volatility over ``window`` (a key of ``WINDOWS``) of daily ``closes``, oldest first."""
    returns = daily_log_returns(_in_window(closes, WINDOWS[window]))
    if len(returns) < MIN_RETURNS:
        return Volatility(window, None, None, len(returns))
    # The sample deviation with fsum: statistics.stdev is exact but computes in Fractions,
    # 20x slower, and the risk list computes one per protocol.
    mean = math.fsum(returns) / len(returns)
    daily = math.sqrt(math.fsum((r - mean) ** 2 for r in returns) / (len(returns) - 1))
    return Volatility(window, daily, daily * ANNUALISATION, len(returns))


def max_drawdown(closes: Sequence[SeriesPoint], window: str) -> Drawdown:
    """The maximum drawdown over ``window`` of daily ``closes``, oldest first: ties go to
    the earliest trough (and the peak before it)."""
    points = _in_window(closes, WINDOWS[window])
    if len(points) < 2:
        return Drawdown(window, None, None, None, None, None)
    peak = points[0]
    worst = 0.0
    found: tuple[SeriesPoint, SeriesPoint] | None = None
    for point in points[1:]:
        if point.value > peak.value:
            peak = point
        elif peak.value > 0:
            fall = (peak.value - point.value) / peak.value
            if fall > worst:
                worst, found = fall, (peak, point)
    if found is None:
        return Drawdown(window, 0.0, None, None, None, None)
    top, bottom = found
    return Drawdown(window, worst, top.timestamp, top.value, bottom.timestamp, bottom.value)


def trend(closes: Sequence[SeriesPoint]) -> Trend:
    """The 30-day trend of daily ``closes``, oldest first (see ``Trend``)."""
    points = [p for p in _in_window(closes, TREND_DAYS) if p.value > 0]
    if len(points) < 2:
        return Trend("30d", None, None, len(points))
    days = [p.timestamp / DAY for p in points]
    logs = [math.log(p.value) for p in points]
    mean_day = math.fsum(days) / len(days)
    mean_log = math.fsum(logs) / len(logs)
    spread = math.fsum((d - mean_day) ** 2 for d in days)
    if spread == 0:
        return Trend("30d", None, None, len(points))
    slope = math.fsum((d - mean_day) * (v - mean_log) for d, v in zip(days, logs, strict=True))
    slope /= spread
    # exp() of a fitted slope over a few noisy days can overflow: cap at a 10^6-fold rise.
    change = math.expm1(min(slope * TREND_DAYS, math.log(1e6)))
    return Trend("30d", slope, change, len(points))


def chain_concentration(view: ProtocolView) -> Concentration:
    """How concentrated the protocol's TVL is across chains (its chain TVLs or, when it
    lists one chain alone, its total there; sections never count: ADR 0032)."""
    by_chain = {
        chain: value
        for chain, value in tvl_by_chain(view.chains, view.chain_tvls, view.tvl).items()
        if value > 0
    }
    total = math.fsum(by_chain.values())
    if total <= 0:
        return Concentration(None, None, None, {})
    shares = {chain: value / total for chain, value in by_chain.items()}
    largest = max(shares, key=lambda chain: (shares[chain], chain))
    hhi = math.fsum(share * share for share in shares.values())
    return Concentration(hhi, largest, shares[largest], shares)


def category_standing(view: ProtocolView, peers: Iterable[ProtocolView]) -> CategoryStanding:
    """``view``'s rank and share among ``peers`` of its category (``peers`` may hold other
    categories, and ``view`` itself: both are sorted out here)."""
    if not view.category:
        return CategoryStanding("", None, 0, None)
    tvls = {
        peer.slug: peer.tvl
        for peer in peers
        if peer.category.casefold() == view.category.casefold()
        and peer.tvl is not None
        and peer.slug != view.slug
    }
    if view.tvl is not None:
        tvls[view.slug] = view.tvl
    total = math.fsum(tvls.values())
    if view.tvl is None:
        return CategoryStanding(view.category, None, len(tvls), None)
    rank = 1 + sum(1 for slug, tvl in tvls.items() if (-tvl, slug) < (-view.tvl, view.slug))
    share = view.tvl / total if total > 0 else None
    return CategoryStanding(view.category, rank, len(tvls), share)


def freshness(
    first_observed_at: float | None, last_observed_at: float | None, reference: float
) -> Freshness:
    """Age and staleness at ``reference`` (never negative)."""
    age = None if first_observed_at is None else max(reference - first_observed_at, 0.0) / DAY
    stale = None if last_observed_at is None else max(reference - last_observed_at, 0.0) / DAY
    return Freshness(first_observed_at, age, last_observed_at, stale)


# -- the risk score --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RiskInputs:
    """What the score is computed from: one value per component (None: not available)."""

    volatility_30d: float | None
    drawdown_1y: float | None
    trend_30d: float | None
    tvl: float | None
    hhi: float | None
    oracles: tuple[str, ...]
    age_days: float | None
    staleness_days: float | None


@dataclass(frozen=True, slots=True)
class RiskComponent:
    """One term of the score: ``contribution = 100 * effective_weight * normalised``."""

    name: str
    value: float | None
    normalised: float | None
    weight: float
    effective_weight: float
    contribution: float
    formula: str
    explanation: str

    @property
    def available(self) -> bool:
        return self.normalised is not None


@dataclass(frozen=True, slots=True)
class RiskScore:
    """0 (least risk) to 100, the sum of the components' contributions; ``coverage`` is
    the share of the weights whose data was available. None when no component was."""

    score: float | None
    coverage: float
    components: tuple[RiskComponent, ...]


def _clamp(value: float) -> float:
    return min(max(value, 0.0), 1.0)


def _percent(value: float) -> str:
    return f"{value * 100:.1f}%"


def _oracle_risk(oracles: Sequence[str]) -> float:
    if not oracles:
        return 0.0
    return 1.0 if len(oracles) == 1 else 0.5


def _normalised(name: ComponentName, inputs: RiskInputs) -> tuple[float | None, float | None]:
    """The component's value and its normalisation to 0..1 (1: the most risk)."""
    if name == "volatility":
        v = inputs.volatility_30d
        return v, None if v is None else _clamp(v / VOLATILITY_FULL)
    if name == "drawdown":
        v = inputs.drawdown_1y
        return v, None if v is None else _clamp(v)
    if name == "trend":
        v = inputs.trend_30d
        return v, None if v is None else _clamp(-v / TREND_FULL)
    if name == "size":
        v = inputs.tvl
        if v is None:
            return None, None
        span = math.log10(SIZE_LARGE / SIZE_SMALL)
        return v, _clamp(1.0 - math.log10(max(v, SIZE_SMALL) / SIZE_SMALL) / span)
    if name == "concentration":
        v = inputs.hhi
        return v, None if v is None else _clamp(v)
    if name == "oracles":
        return float(len(inputs.oracles)), _oracle_risk(inputs.oracles)
    if name == "age":
        v = inputs.age_days
        return v, None if v is None else _clamp(1.0 - v / AGE_FULL)
    v = inputs.staleness_days
    return v, None if v is None else _clamp((v - STALE_FROM) / (STALE_FULL - STALE_FROM))


FORMULAS: Final[dict[ComponentName, str]] = {
    "volatility": f"min(value / {VOLATILITY_FULL}, 1)",
    "drawdown": "min(value, 1)",
    "trend": f"min(max(-value / {TREND_FULL}, 0), 1)",
    "size": f"min(max(1 - log10(max(value, {SIZE_SMALL:g}) / {SIZE_SMALL:g}) / "
    f"log10({SIZE_LARGE:g} / {SIZE_SMALL:g}), 0), 1)",
    "concentration": "value",
    "oracles": "0 if no oracle is named, 1 if one, 0.5 if several",
    "age": f"max(1 - value / {AGE_FULL:.0f}, 0)",
    "staleness": f"min(max((value - {STALE_FROM:.0f}) / {STALE_FULL - STALE_FROM:.0f}, 0), 1)",
}


def _explanation(name: ComponentName, value: float | None, inputs: RiskInputs) -> str:
    if value is None:
        return {
            "volatility": "Unavailable: fewer than two daily returns in the last 30 days.",
            "drawdown": "Unavailable: fewer than two daily closes in the last year.",
            "trend": "Unavailable: fewer than two positive daily closes in the last 30 days.",
            "size": "Unavailable: the protocol has no current TVL.",
            "concentration": "Unavailable: no TVL can be attributed to a chain.",
            "oracles": "",
            "age": "Unavailable: no TVL history is held.",
            "staleness": "Unavailable: no TVL observation is held.",
        }[name]
    if name == "volatility":
        return (
            f"Daily log returns over the last 30 days deviate by {_percent(value)} "
            f"({_percent(value * ANNUALISATION)} annualised); {_percent(VOLATILITY_FULL)} "
            "a day or more is full risk."
        )
    if name == "drawdown":
        return (
            f"TVL fell at most {_percent(value)} from a peak to a later trough within the "
            "last year; the fraction itself is the risk."
        )
    if name == "trend":
        direction = "shrinking" if value < 0 else "growing or flat"
        return (
            f"The 30-day log-linear fit implies a {_percent(value)} change ({direction}); "
            f"only falls count, a fitted fall of {_percent(TREND_FULL)} is full risk."
        )
    if name == "size":
        return (
            f"TVL is ${value:,.0f}; risk falls with the logarithm of TVL from "
            f"${SIZE_SMALL:,.0f} (full) to ${SIZE_LARGE:,.0f} (none)."
        )
    if name == "concentration":
        return (
            f"Herfindahl index of the chain shares is {value:.3f} (1 = a single chain); "
            "it is the risk as is."
        )
    if name == "oracles":
        if not inputs.oracles:
            return "No price oracle is named in the listing: no oracle dependence counted."
        names = ", ".join(inputs.oracles)
        if len(inputs.oracles) == 1:
            return f"Relies on one oracle ({names}): a single point of failure."
        return f"Relies on {len(inputs.oracles)} oracles ({names}): half the risk of one."
    if name == "age":
        return (
            f"The TVL series held starts {value:.0f} days before the reference time; "
            f"younger than {AGE_FULL:.0f} days adds risk linearly."
        )
    return (
        f"The latest TVL observation is {value:.1f} days old; over {STALE_FROM:.0f} day "
        f"adds risk, {STALE_FULL:.0f} days or more is full risk."
    )


def _terms(
    inputs: RiskInputs, weights: Mapping[ComponentName, float]
) -> tuple[list[tuple[ComponentName, float | None, float | None, float]], float, float]:
    """Each component's (name, value, normalised, effective weight), the sum of the
    available weights and of all weights: the one arithmetic ``risk_score`` and
    ``score_of`` share, so that ranking and answer agree to the last bit."""
    found = [(name, *_normalised(name, inputs)) for name in weights]
    available = math.fsum(weights[name] for name, _, norm in found if norm is not None)
    terms = [
        (name, value, norm, weights[name] / available if norm is not None and available else 0.0)
        for name, value, norm in found
    ]
    return terms, available, math.fsum(weights.values())


def score_of(
    inputs: RiskInputs, weights: Mapping[ComponentName, float] = RISK_WEIGHTS
) -> float | None:
    """``risk_score(inputs).score`` without building its components (to rank many)."""
    terms, available, _ = _terms(inputs, weights)
    if available <= 0:
        return None
    return math.fsum(0.0 if norm is None else 100.0 * share * norm for _, _, norm, share in terms)


def risk_score(
    inputs: RiskInputs, weights: Mapping[ComponentName, float] = RISK_WEIGHTS
) -> RiskScore:
    """The score and its components (see the module's docstring for the arithmetic)."""
    terms, available, total = _terms(inputs, weights)
    components = tuple(
        RiskComponent(
            name=name,
            value=value,
            normalised=norm,
            weight=weights[name] / total,
            effective_weight=share,
            contribution=0.0 if norm is None else 100.0 * share * norm,
            formula=FORMULAS[name],
            explanation=_explanation(name, value, inputs),
        )
        for name, value, norm, share in terms
    )
    score = math.fsum(c.contribution for c in components) if available > 0 else None
    return RiskScore(score, available / total if total > 0 else 0.0, components)


# -- what the read models give --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RecentCloses:
    """A protocol's daily total TVL closes (oldest first; a year and a day up to its latest
    close is what the score reads) and the start of the first day of its series."""

    first_observed_at: float
    closes: tuple[SeriesPoint, ...]


class TvlCloses(Protocol):
    """The daily closes the risk list reads (the history read model implements it)."""

    def recent_tvl_closes(self, cut: Cut, days: int) -> dict[str, RecentCloses]: ...


# -- the whole answer ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProtocolAnalytics:
    """Every measure of one protocol at ``reference``, and its risk score."""

    view: ProtocolView
    reference: float
    volatility: tuple[Volatility, ...]
    drawdowns: tuple[Drawdown, ...]
    trend: Trend
    concentration: Concentration
    standing: CategoryStanding
    freshness: Freshness
    risk: RiskScore


def risk_inputs(
    view: ProtocolView,
    closes: Sequence[SeriesPoint],
    first_observed_at: float | None,
    reference: float,
) -> RiskInputs:
    """The score's inputs from a view and its daily closes (oldest first; a year is
    enough), ``first_observed_at`` being the start of the first day held."""
    fresh = freshness(first_observed_at, view.tvl_at, reference)
    return RiskInputs(
        volatility_30d=volatility(closes, "30d").daily,
        drawdown_1y=max_drawdown(closes, "1y").value,
        trend_30d=trend(closes).change,
        tvl=view.tvl,
        hhi=chain_concentration(view).hhi,
        oracles=tuple(view.oracles),
        age_days=fresh.age_days,
        staleness_days=fresh.staleness_days,
    )


def analyse(
    view: ProtocolView,
    closes: Sequence[SeriesPoint],
    peers: Iterable[ProtocolView],
    reference: float,
) -> ProtocolAnalytics:
    """Every measure of ``view``'s protocol: ``closes`` is its whole daily total TVL series
    (oldest first), ``peers`` the views of its category (others are ignored)."""
    first = closes[0].timestamp if closes else None
    fresh = freshness(first, view.tvl_at, reference)
    return ProtocolAnalytics(
        view=view,
        reference=reference,
        volatility=(volatility(closes, "7d"), volatility(closes, "30d")),
        drawdowns=tuple(max_drawdown(closes, w) for w in ("30d", "1y", "all")),
        trend=trend(closes),
        concentration=chain_concentration(view),
        standing=category_standing(view, peers),
        freshness=fresh,
        risk=risk_score(risk_inputs(view, closes, first, reference)),
    )


# -- the risk list ---------------------------------------------------------------------

RISK_DAYS: Final = 366
"""Days of closes up to each protocol's latest that the score reads (the 1y window)."""


@dataclass(frozen=True, slots=True)
class RiskEntry:
    """One protocol of the risk list: its view and its score."""

    view: ProtocolView
    risk: RiskScore


@dataclass(frozen=True, slots=True)
class RiskPage:
    items: Sequence[RiskEntry]
    total: int
    limit: int
    offset: int


def risk_page(
    views: Iterable[ProtocolView],
    closes: Mapping[str, RecentCloses],
    reference: float,
    query: ProtocolQuery,
) -> RiskPage:
    """The protocols passing ``query``'s filters (those of ``/v2/protocols``), each with
    its score, sorted by ``query.sort`` (``score``, or any sort of ``/v2/protocols``; no
    score sorts last in either direction, ties by slug) and paginated. ``closes`` holds
    ``RISK_DAYS`` of each protocol's closes (``TvlCloses``)."""
    selected = [view for view in views if matches(view, query)]
    found: dict[str, RiskInputs] = {}
    scores: dict[str, float | None] = {}
    for view in selected:
        recent = closes.get(view.slug)
        found[view.slug] = inputs = risk_inputs(
            view,
            () if recent is None else recent.closes,
            None if recent is None else recent.first_observed_at,
            reference,
        )
        scores[view.slug] = score_of(inputs)
    if query.sort == "score":
        by_slug = sorted(selected, key=lambda view: view.slug)
        valued = [view for view in by_slug if scores[view.slug] is not None]
        valued.sort(key=lambda view: scores[view.slug] or 0.0, reverse=query.descending)
        ranked = valued + [view for view in by_slug if scores[view.slug] is None]
    else:
        ranked = order(selected, query.sort, query.descending, query.chain)
    # Components and sentences only for the page shown (the same inputs, the same score).
    shown = [
        RiskEntry(view, risk_score(found[view.slug]))
        for view in ranked[query.offset : query.offset + query.limit]
    ]
    return RiskPage(
        items=shown,
        total=len(ranked),
        limit=query.limit,
        offset=query.offset,
    )
