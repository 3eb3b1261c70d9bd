"""The REST API's answers, and the ingest items a client sends, as typed values.

Mirrors of the server's schemas in ``entrypoints/schemas/`` (ADR 0027): they ignore fields
they do not know, so a newer server can add one. Alert rule targets, conditions and
channels are the domain's own values (``defi_realtime.domain.alert_values``): the domain
is the library this package ships to every user, with no server dependency.
``tests/unit/test_client_mirrors.py`` holds the mirrors to the server's field names.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Final, Literal, TypeAlias
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from ..domain.alert_values import Condition as RuleCondition
from ..domain.alert_values import RuleTarget
from ..domain.observations import TOTAL, Metric

__all__ = [
    "AlertRule",
    "AlertRuleList",
    "IngestResult",
    "MetricSeries",
    "Observation",
    "Price",
    "PriceEntry",
    "Protocol",
    "ProtocolPage",
    "PublicChannel",
    "Rejection",
    "SeriesPoint",
    "TvlEntry",
    "VolumeEntry",
]

_ANSWER: Final = ConfigDict(extra="ignore", frozen=True)


class Protocol(BaseModel):
    """A protocol's listing and current values (DeFiLlama's field names)."""

    model_config = _ANSWER
    slug: str
    name: str
    category: str
    chains: list[str]
    url: str
    tvl: float | None
    chainTvls: dict[str, float]
    change_1h: float | None
    change_1d: float | None
    change_7d: float | None
    volume_24h: float | None
    fees_24h: float | None
    # The flows' own changes; absent from older servers.
    volume_24h_change_1d: float | None = None
    volume_24h_change_7d: float | None = None
    fees_24h_change_1d: float | None = None
    fees_24h_change_7d: float | None = None
    updated_at: float | None
    tvl_at: float | None
    volume_24h_at: float | None
    fees_24h_at: float | None
    # DeFiLlama's TVL sections ("staking", "Ethereum-borrowed"...); absent from older servers.
    sections: dict[str, float] = Field(default_factory=dict)
    # DeFiLlama's oracles of the listing; absent from older servers.
    oracles: list[str] = Field(default_factory=list)
    position: int = Field(description="log position of the latest change")


class ProtocolPage(BaseModel):
    """One page of ``GET /v2/protocols``."""

    model_config = _ANSWER
    protocols: list[Protocol]
    total: int
    limit: int
    offset: int
    asOf: float | None = None
    knownAt: int | None = None


class SeriesPoint(BaseModel):
    model_config = _ANSWER
    timestamp: float
    value: float


class MetricSeries(BaseModel):
    """A metric's time series, oldest first (``GET /v2/protocols/{slug}/metrics``)."""

    model_config = _ANSWER
    slug: str
    metric: Metric
    chain: str
    bucket: int | None
    as_of: float | None
    knownAt: int | None = None
    points: list[SeriesPoint]


class TvlEntry(BaseModel):
    """A protocol's latest total TVL (``GET /v2/realtime/tvl``)."""

    model_config = _ANSWER
    id: str
    value: float | None
    timestamp: float | None
    change24h: float | None
    change1h: float | None
    position: int


class VolumeEntry(BaseModel):
    """A protocol's latest 24 h volume and fees (``GET /v2/realtime/volumes``)."""

    model_config = _ANSWER
    id: str
    volume_24h: float | None
    fees_24h: float | None
    volume_24h_at: float | None
    fees_24h_at: float | None
    position: int


class PriceEntry(BaseModel):
    """A token's latest price (``GET /v2/realtime/prices``)."""

    model_config = _ANSWER
    token: str
    price: float
    timestamp: float
    confidence: float | None
    change24h: float | None
    position: int


class Rejection(BaseModel):
    model_config = _ANSWER
    kind: Literal["observation", "price", "listing"]
    index: int
    field: str | None
    reason: str


class IngestResult(BaseModel):
    """What an ingest batch did; ``position`` is the highest log position it wrote."""

    model_config = _ANSWER
    accepted: int
    duplicates: int
    rejected: int
    errors: list[Rejection]
    committed: bool
    position: int


ObservedAt: TypeAlias = float | datetime


class Observation(BaseModel):
    """One protocol metric observation to ingest (``name``/``category``/``chains``/``url``/
    ``oracles`` list the protocol the first time it is seen). The server checks it."""

    model_config = ConfigDict(frozen=True)
    protocol: str
    value: float
    observed_at: ObservedAt
    metric: Metric = "tvl"
    chain: str = TOTAL
    source: str | None = None
    name: str | None = None
    category: str | None = None
    chains: list[str] | None = None
    url: str | None = None
    oracles: list[str] | None = None


class Price(BaseModel):
    """One token price observation to ingest."""

    model_config = ConfigDict(frozen=True)
    token: str
    price: float
    observed_at: ObservedAt
    confidence: float | None = None
    source: str | None = None


class PublicWebhookChannel(BaseModel):
    model_config = _ANSWER
    kind: Literal["webhook"]
    url: str
    secret_set: bool


class PublicEmailChannel(BaseModel):
    model_config = _ANSWER
    kind: Literal["email"]
    address: str


class PublicWebsocketChannel(BaseModel):
    model_config = _ANSWER
    kind: Literal["websocket"]


PublicChannel: TypeAlias = Annotated[
    PublicWebhookChannel | PublicEmailChannel | PublicWebsocketChannel,
    Field(discriminator="kind"),
]
"""A rule's channel as the API shows it: a webhook's secret is never sent back."""


class AlertRule(BaseModel):
    """One of the account's alert rules."""

    model_config = _ANSWER
    id: UUID
    name: str
    target: RuleTarget
    condition: RuleCondition
    channels: list[PublicChannel]
    cooldown: int
    state: Literal["active", "paused"]
    firing: Literal["firing", "resolved"]
    last_fired_at: float | None
    created_at: float
    updated_at: float


class AlertRuleList(BaseModel):
    model_config = _ANSWER
    alerts: list[AlertRule]
    total: int
