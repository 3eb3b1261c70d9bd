"""The server's WebSocket frames (``/v2/realtime``) as the client reads them.

A mirror of ``entrypoints/schemas/frames.py``, not an import of it (ADR 0027): that module
is server code (it reads the hub's limits from the application layer) and is strict about
unknown fields, as a server must be about what it is sent. A client reads the other way:
it ignores fields it does not know, so that a newer server can add one without breaking
it. ``tests/unit/test_client_mirrors.py`` holds the two to the same field names and types.
"""

from __future__ import annotations

import json
from typing import Final, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field

from ..domain.observations import Metric

__all__ = [
    "Acked",
    "Alert",
    "AlertData",
    "Anomaly",
    "AnomalyData",
    "Error",
    "MetricData",
    "Mev",
    "MevData",
    "Pong",
    "PriceData",
    "ServerFrame",
    "SmartMoney",
    "SmartMoneyData",
    "SmartMoneyTrade",
    "Subscribed",
    "Unsubscribed",
    "Update",
    "parse_frames",
]

_FRAME: Final = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


class Subscribed(BaseModel):
    """A subscription is live (or replaying, or sending its snapshot) from ``position``."""

    model_config = _FRAME
    type: Literal["subscribed"]
    subscription_id: str = Field(alias="subscriptionId")
    channel: str
    position: int
    recovered: bool
    # On an ``attach``: the acknowledged position the durable subscription resumes after.
    acknowledged: int | None = None
    id: str | int | None = None


class Unsubscribed(BaseModel):
    model_config = _FRAME
    type: Literal["unsubscribed"]
    subscription_id: str = Field(alias="subscriptionId")
    id: str | int | None = None


class MetricData(BaseModel):
    """A protocol's value: TVL (``protocols``), volume_24h or fees_24h (``volumes``)."""

    model_config = _FRAME
    id: str
    metric: Metric
    chain: str
    value: float
    timestamp: float
    change24h: float | None = None
    late: bool | None = None


class PriceData(BaseModel):
    """A token's price (``prices``)."""

    model_config = _FRAME
    id: str
    value: float
    timestamp: float
    confidence: float | None = None
    change24h: float | None = None
    late: bool | None = None


class Update(BaseModel):
    """A value: live, read back from the log, or part of a snapshot (``snapshot`` true)."""

    model_config = _FRAME
    type: Literal["update"]
    subscription_id: str = Field(alias="subscriptionId")
    channel: str
    position: int
    snapshot: bool = False
    data: MetricData | PriceData

    @property
    def key(self) -> tuple[str, str, str]:
        """The series this value belongs to: (id, metric, chain); ``price`` for tokens."""
        data = self.data
        if isinstance(data, MetricData):
            return (data.id, data.metric, data.chain)
        return (data.id, "price", "")


class AlertData(BaseModel):
    model_config = _FRAME
    measure: float | None = None
    idempotency_key: str | None = Field(None, alias="idempotencyKey")


class Alert(BaseModel):
    """One of the key owner's alert rules fired or resolved."""

    model_config = _FRAME
    type: Literal["alert"]
    subscription_id: str = Field(alias="subscriptionId")
    alert_id: str = Field(alias="alertId")
    condition: Literal["firing", "resolved"]
    data: AlertData
    timestamp: float
    position: int


class AnomalyData(BaseModel):
    model_config = _FRAME
    id: str
    series: str
    measure: str
    value: float
    timestamp: float
    score: float
    direction: Literal["fall", "rise"]
    reason: str


class Anomaly(BaseModel):
    """An anomaly detected in a series (the ``anomalies`` channel)."""

    model_config = _FRAME
    type: Literal["anomaly"]
    subscription_id: str = Field(alias="subscriptionId")
    channel: Literal["anomalies"]
    position: int
    data: AnomalyData


class MevData(BaseModel):
    model_config = _FRAME
    chain_id: int = Field(alias="chainId")
    retracted: bool
    key: str | None = None
    kind: Literal["sandwich", "arbitrage"] | None = None
    block: int | None = None
    block_hash: str | None = Field(default=None, alias="blockHash")
    pool: str | None = None
    actor: str | None = None
    victim: str | None = None
    quote_token: str | None = Field(default=None, alias="quoteToken")
    profit: str | None = None
    profit_quote: float | None = Field(default=None, alias="profitQuote")
    profit_usd: float | None = Field(default=None, alias="profitUsd")
    tx_hashes: list[str] | None = Field(default=None, alias="txHashes")
    keys: list[str] | None = None
    block_hashes: list[str] | None = Field(default=None, alias="blockHashes")


class Mev(BaseModel):
    """A MEV detection, or a reorg's retraction of some (the ``mev`` channel)."""

    model_config = _FRAME
    type: Literal["mev"]
    subscription_id: str = Field(alias="subscriptionId")
    channel: Literal["mev"]
    position: int
    data: MevData


class SmartMoneyTrade(BaseModel):
    """A swap by a wallet ranked in the subscription's top (amounts in raw units)."""

    model_config = _FRAME
    wallet: str
    rank: int
    score: float
    block: int
    block_hash: str = Field(alias="blockHash")
    timestamp: float
    tx_hash: str = Field(alias="txHash")
    log_index: int = Field(alias="logIndex")
    pool: str | None
    token_paid: str | None = Field(alias="tokenPaid")
    amount_paid: str = Field(alias="amountPaid")
    token_got: str | None = Field(alias="tokenGot")
    amount_got: str = Field(alias="amountGot")


class SmartMoneyData(BaseModel):
    model_config = _FRAME
    chain_id: int = Field(alias="chainId")
    retracted: bool
    ranking: Literal["default", "model"] | None = None
    ranked_at: float | None = Field(default=None, alias="rankedAt")
    trades: list[SmartMoneyTrade] | None = None
    block_hashes: list[str] | None = Field(default=None, alias="blockHashes")


class SmartMoney(BaseModel):
    """Trades of the top wallets, or blocks a reorg orphaned (the ``smart-money`` channel)."""

    model_config = _FRAME
    type: Literal["smart-money"]
    subscription_id: str = Field(alias="subscriptionId")
    channel: Literal["smart-money"]
    position: int
    data: SmartMoneyData


class Error(BaseModel):
    """A refused frame; the socket stays open."""

    model_config = _FRAME
    type: Literal["error"]
    code: str
    message: str
    id: str | int | None = None
    # Only on ``rate_limited``: the budget's facts, as the HTTP RateLimit headers say them.
    policy: str | None = None
    limit: int | None = None
    window: int | None = None
    remaining: int | None = None
    reset: int | None = None
    retry_after: int | None = Field(default=None, alias="retryAfter")


class Pong(BaseModel):
    model_config = _FRAME
    type: Literal["pong"]
    position: int
    id: str | int | None = None


class Acked(BaseModel):
    """An ``ack`` of a durable subscription is stored up to ``position``."""

    model_config = _FRAME
    type: Literal["acked"]
    subscription_id: str = Field(alias="subscriptionId")
    position: int
    id: str | int | None = None


ServerFrame: TypeAlias = (
    Subscribed | Unsubscribed | Update | Alert | Anomaly | Mev | SmartMoney | Error | Pong | Acked
)
"""Any frame the server sends."""

_BY_TYPE: Final[dict[str, type[ServerFrame]]] = {
    "subscribed": Subscribed,
    "unsubscribed": Unsubscribed,
    "update": Update,
    "alert": Alert,
    "anomaly": Anomaly,
    "mev": Mev,
    "smart-money": SmartMoney,
    "error": Error,
    "pong": Pong,
    "acked": Acked,
}


def parse_frames(text: str | bytes) -> list[ServerFrame]:
    """One text frame as a list of messages: a JSON object, or (``?batch=1``) an array.

    A message of a type this client does not know (a newer server's) is left out rather
    than failing the stream; a known type that does not match its model raises
    ``pydantic.ValidationError``.
    """
    parsed = json.loads(text)
    messages = parsed if isinstance(parsed, list) else [parsed]
    frames: list[ServerFrame] = []
    for message in messages:
        if not isinstance(message, dict):
            raise ValueError(f"a server message must be a JSON object, not {message!r}")
        model = _BY_TYPE.get(message.get("type"))  # type: ignore[arg-type]
        if model is not None:
            frames.append(model.model_validate(message))
    return frames
