"""``/v2/protocols/{slug}/analytics`` and ``/v2/analytics/risk`` (ADR 0033).

Every measure says what it is in its description; docs/analytics.md gives the formulas and
how to recompute the risk score from its components.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from ...application.analytics import (
    CategoryStanding,
    Concentration,
    Drawdown,
    Freshness,
    ProtocolAnalytics,
    RiskComponent,
    RiskEntry,
    RiskScore,
    Trend,
    Volatility,
)
from ...application.views import SortField
from .common import ANSWER, SlugText
from .protocols import ProtocolListQuery

__all__ = [
    "ProtocolAnalyticsAnswer",
    "RiskEntryAnswer",
    "RiskListQuery",
    "RiskPageAnswer",
]

Window = Literal["7d", "30d", "1y", "all"]


class RiskListQuery(ProtocolListQuery):
    """``GET /v2/analytics/risk``: the filters, sort and pages of ``/v2/protocols``, sorted
    by the risk score unless asked otherwise."""

    # Widens the parent's sort by "score": pydantic validates by the new type, and the model
    # is only ever read, so mypy's rule against changing a field's type does not apply.
    sort: Annotated[
        Literal["score"] | SortField,
        Field(
            description="sort key: score (the default), or any sort of /v2/protocols (no "
            "value sorts last)"
        ),
    ] = "score"  # type: ignore[assignment]


class VolatilityAnswer(BaseModel):
    model_config = ANSWER
    window: Window
    daily: float | None = Field(
        description="sample standard deviation of daily log returns (not annualised); a "
        "return over a gap of g days is divided by sqrt(g); null: fewer than 2 returns"
    )
    annualised: float | None = Field(description="daily * sqrt(365)")
    returns: int = Field(description="how many daily returns the window held")

    @classmethod
    def of(cls, found: Volatility) -> VolatilityAnswer:
        return cls.model_validate(found)


class DrawdownAnswer(BaseModel):
    model_config = ANSWER
    window: Window
    value: float | None = Field(
        description="largest fall from a running peak to a later trough, as a fraction of "
        "the peak (0: never fell); null: fewer than 2 daily closes"
    )
    peak_at: float | None = Field(description="unix time (day start) of the peak")
    peak_value: float | None
    trough_at: float | None = Field(description="unix time (day start) of the trough")
    trough_value: float | None

    @classmethod
    def of(cls, found: Drawdown) -> DrawdownAnswer:
        return cls.model_validate(found)


class TrendAnswer(BaseModel):
    model_config = ANSWER
    window: Literal["30d"]
    slope_per_day: float | None = Field(
        description="least-squares slope of ln(TVL) per day over the last 30 days"
    )
    change: float | None = Field(
        description="the 30-day change the slope implies, exp(30 * slope) - 1 (a fraction)"
    )
    points: int = Field(description="daily closes in the fit")

    @classmethod
    def of(cls, found: Trend) -> TrendAnswer:
        return cls.model_validate(found)


class ConcentrationAnswer(BaseModel):
    model_config = ANSWER
    hhi: float | None = Field(
        description="Herfindahl index of the chain TVL shares (1: one chain; TVL sections "
        "such as borrowed or staking never count)"
    )
    largest_chain: str | None
    largest_share: float | None
    shares: dict[str, float] = Field(description="each chain's share of the TVL")

    @classmethod
    def of(cls, found: Concentration) -> ConcentrationAnswer:
        return cls.model_validate(found)


class CategoryAnswer(BaseModel):
    model_config = ANSWER
    category: str
    rank: int | None = Field(description="1: the largest TVL of the category")
    protocols: int = Field(description="the category's protocols with a TVL")
    share: float | None = Field(description="share of the category's TVL")

    @classmethod
    def of(cls, found: CategoryStanding) -> CategoryAnswer:
        return cls.model_validate(found)


class OraclesAnswer(BaseModel):
    model_config = ANSWER
    count: int
    names: list[str] = Field(description="DeFiLlama's oracles of the listing")


class SeriesAnswer(BaseModel):
    model_config = ANSWER
    first_observed_at: float | None = Field(description="start of the first day of TVL held")
    age_days: float | None = Field(description="reference time minus the first day, in days")
    last_observed_at: float | None = Field(description="the latest TVL observation")
    staleness_days: float | None = Field(
        description="reference time minus the latest TVL observation, in days"
    )

    @classmethod
    def of(cls, found: Freshness) -> SeriesAnswer:
        return cls.model_validate(found)


class RiskComponentAnswer(BaseModel):
    model_config = ANSWER
    name: Literal[
        "volatility", "drawdown", "trend", "size", "concentration", "oracles", "age", "staleness"
    ]
    available: bool = Field(description="false: no data; contributes 0 and its weight is shared")
    value: float | None = Field(description="the measure the component reads")
    normalised: float | None = Field(description="0 (no risk) to 1, by formula")
    weight: float = Field(description="the component's weight (weights add up to 1)")
    effective_weight: float = Field(
        description="weight / the sum of the weights of the available components"
    )
    contribution: float = Field(description="100 * effective_weight * normalised")
    formula: str = Field(description="how value becomes normalised")
    explanation: str

    @classmethod
    def of(cls, found: RiskComponent) -> RiskComponentAnswer:
        return cls.model_validate(found)


class RiskAnswer(BaseModel):
    model_config = ANSWER
    score: float | None = Field(
        description="0 (least risk) to 100: the sum of the components' contributions; null "
        "when no component is available"
    )
    coverage: float = Field(description="share of the weights whose data was available")
    components: list[RiskComponentAnswer]

    @classmethod
    def of(cls, found: RiskScore) -> RiskAnswer:
        return cls(
            score=found.score,
            coverage=found.coverage,
            components=[RiskComponentAnswer.of(c) for c in found.components],
        )


class ProtocolAnalyticsAnswer(BaseModel):
    """A protocol's analytics at the reference time (``asOf``, or now)."""

    model_config = ANSWER
    slug: SlugText
    name: str
    category: str
    tvl: float | None
    reference: float = Field(description="the time the answer is about: asOf, or now")
    asOf: float | None = Field(description="the asOf asked for, if any")
    knownAt: int | None = Field(description="the log position knownAt stands for, if asked")
    volatility: list[VolatilityAnswer] = Field(description="7d and 30d")
    drawdowns: list[DrawdownAnswer] = Field(description="30d, 1y and all")
    trend: TrendAnswer
    concentration: ConcentrationAnswer
    category_standing: CategoryAnswer
    oracles: OraclesAnswer
    series: SeriesAnswer
    risk: RiskAnswer

    @classmethod
    def of(
        cls, found: ProtocolAnalytics, as_of: float | None, known_at: int | None
    ) -> ProtocolAnalyticsAnswer:
        view = found.view
        return cls(
            slug=view.slug,
            name=view.name,
            category=view.category,
            tvl=view.tvl,
            reference=found.reference,
            asOf=as_of,
            knownAt=known_at,
            volatility=[VolatilityAnswer.of(v) for v in found.volatility],
            drawdowns=[DrawdownAnswer.of(d) for d in found.drawdowns],
            trend=TrendAnswer.of(found.trend),
            concentration=ConcentrationAnswer.of(found.concentration),
            category_standing=CategoryAnswer.of(found.standing),
            oracles=OraclesAnswer(count=len(view.oracles), names=list(view.oracles)),
            series=SeriesAnswer.of(found.freshness),
            risk=RiskAnswer.of(found.risk),
        )


class RiskEntryAnswer(BaseModel):
    model_config = ANSWER
    slug: SlugText
    name: str
    category: str
    chains: list[str]
    tvl: float | None
    oracles: list[str]
    risk: RiskAnswer

    @classmethod
    def of(cls, entry: RiskEntry) -> RiskEntryAnswer:
        view = entry.view
        return cls(
            slug=view.slug,
            name=view.name,
            category=view.category,
            chains=list(view.chains),
            tvl=view.tvl,
            oracles=list(view.oracles),
            risk=RiskAnswer.of(entry.risk),
        )


class RiskPageAnswer(BaseModel):
    """One page of protocols with their risk scores."""

    model_config = ANSWER
    protocols: list[RiskEntryAnswer]
    total: int = Field(description="protocols matching the filter, on all pages")
    limit: int
    offset: int
    reference: float = Field(description="the time the scores are about: asOf, or now")
    asOf: float | None = Field(default=None, description="the asOf asked for, if any")
    knownAt: int | None = Field(
        default=None, description="the log position knownAt stands for, if asked"
    )
