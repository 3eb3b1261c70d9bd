"""DeFiLlama's volume and fee summaries: ``/overview/{dexs,fees}`` and
``/summary/{dexs,fees}/{protocol}``, in DeFiLlama's shapes."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from .common import ANSWER, QUERY

__all__ = [
    "DexsQuery",
    "FeesQuery",
    "Overview",
    "OverviewProtocol",
    "ProtocolSummary",
]

_NOT_HELD = "null: not held by this server"


class _ChartQuery(BaseModel):
    model_config = QUERY
    excludeTotalDataChart: bool = Field(default=False, description="leave the chart out")
    excludeTotalDataChartBreakdown: bool = Field(
        default=False, description="leave the per-protocol breakdown out"
    )


class DexsQuery(_ChartQuery):
    dataType: Literal["dailyVolume"] = Field(
        default="dailyVolume", description="only dailyVolume is held"
    )


class FeesQuery(_ChartQuery):
    dataType: Literal["dailyFees"] = Field(
        default="dailyFees", description="only dailyFees is held"
    )


class _Totals(BaseModel):
    model_config = ANSWER
    total24h: float | None = Field(description="the latest day's figure, USD")
    total48hto24h: float | None = Field(description="the day before's")
    total7d: float | None = Field(description="sum over the 7 days to the latest")
    total30d: float | None = Field(description="sum over the 30 days to the latest")
    change_1d: float | None = Field(description="percent, against 1 day before")
    change_7d: float | None = Field(description="percent, against 7 days before")
    change_1m: float | None = Field(description="percent, against 30 days before")


class OverviewProtocol(_Totals):
    name: str
    displayName: str
    module: str = Field(description="the slug")
    slug: str
    defillamaId: str = Field(description="the slug")
    category: str
    chains: list[str]
    logo: None = Field(default=None, description=_NOT_HELD)
    methodology: None = Field(default=None, description=_NOT_HELD)
    parentProtocol: None = Field(default=None, description=_NOT_HELD)


class Overview(_Totals):
    # Pairs as DeFiLlama writes them ([day, value]): JSON arrays of two, not tuples, which
    # OpenAPI 3.1 can only state as prefixItems that some tools do not read.
    totalDataChart: list[list[int | float]] = Field(description="[day, sum] pairs, oldest first")
    totalDataChartBreakdown: list[list[int | dict[str, float]]] = Field(
        description="[day, {protocol name: value}] pairs, oldest first"
    )
    protocols: list[OverviewProtocol]
    allChains: list[str]


class ProtocolSummary(_Totals):
    name: str
    displayName: str
    slug: str
    defillamaId: str
    category: str
    chains: list[str]
    logo: None = Field(default=None, description=_NOT_HELD)
    methodology: None = Field(default=None, description=_NOT_HELD)
    totalAllTime: float | None = Field(description="sum of every day held")
    totalDataChart: list[list[int | float]] = Field(description="[day, value] pairs, oldest first")
    totalDataChartBreakdown: list[Any] = Field(
        description="empty: per-chain daily figures are not held"
    )
