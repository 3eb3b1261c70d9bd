"""The WebSocket protocol's frames (``/v2/realtime``): what a client sends, what the server sends.

One source for the AsyncAPI document (``entrypoints/asyncapi.py``), generated from these
models' JSON schemas. The hub does not use them on its hot path: it checks client frames with
``application/realtime/protocol.py`` and encodes server frames once per log entry
(``application/realtime/frames.py``); tests hold the three in agreement. Every model is
strict and, but for ``ping``, refuses unknown fields, as the hub does.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Annotated, Any, Final, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from ...application.realtime.protocol import (
    CHANNELS,
    DEFAULT_TOP,
    ERROR_CODES,
    FILTER_KEYS,
    MAX_CHAIN_ID,
    MAX_FILTER_VALUES,
    MAX_REQUEST_ID_CHARS,
    MAX_SUBSCRIPTION_ID_CHARS,
    MAX_TOP,
    SMART_MONEY,
    SMART_MONEY_KEYS,
    VALUE_CHANNELS,
)
from ...domain.alert_rule import Firing
from ...domain.observations import TOTAL, Metric

__all__ = [
    "CLIENT_MESSAGES",
    "SERVER_MESSAGES",
    "Ack",
    "Acked",
    "Alert",
    "AlertData",
    "Anomaly",
    "AnomalyData",
    "Attach",
    "Error",
    "Filters",
    "MetricData",
    "Ping",
    "Pong",
    "PriceData",
    "SmartMoney",
    "SmartMoneyData",
    "SmartMoneyFilters",
    "SmartMoneyTrade",
    "Subscribe",
    "Subscribed",
    "Unsubscribe",
    "Unsubscribed",
    "Update",
]

_FRAME: Final = ConfigDict(extra="forbid", strict=True, frozen=True)
_VALUE_CHANNELS: Final = tuple(channel for channel in CHANNELS if channel in VALUE_CHANNELS)
# The channels whose params are ``Filters`` (mev takes none; smart-money its own).
_FILTERED_CHANNELS: Final = tuple(c for c in CHANNELS if c not in ("mev", SMART_MONEY))


def _one_of(values: Collection[str], what: str) -> AfterValidator:
    """The check of a string field whose schema's ``enum`` lists ``values``."""

    def check(value: str) -> str:
        if value not in values:
            raise ValueError(f"{what} must be one of {', '.join(values)}")
        return value

    return AfterValidator(check)


def _absent_when_none(schema: dict[str, Any]) -> None:
    """An optional server field is left out of the frame, never null: no ``default``."""
    schema.pop("default", None)


Channel = Annotated[
    StrictStr, Field(json_schema_extra={"enum": list(CHANNELS)}), _one_of(CHANNELS, "channel")
]
ValueChannel = Annotated[
    StrictStr,
    Field(json_schema_extra={"enum": list(_VALUE_CHANNELS)}),
    _one_of(_VALUE_CHANNELS, "channel"),
]
ErrorCode = Annotated[
    StrictStr,
    Field(
        description="\n".join(f"- `{code}`: {meaning}" for code, meaning in ERROR_CODES.items()),
        json_schema_extra={"enum": list(ERROR_CODES)},
    ),
    _one_of(ERROR_CODES, "code"),
]
Position = Annotated[StrictInt, Field(ge=0)]
Number = Annotated[float, Field(allow_inf_nan=False)]
SubscriptionId = Annotated[
    StrictStr, Field(alias="subscriptionId", description="as in the `subscribed` reply")
]
RequestId = (
    Annotated[StrictStr, Field(max_length=MAX_REQUEST_ID_CHARS)]
    | Annotated[StrictInt, Field(ge=-(2**53), le=2**53)]
)
ClientRequestId = Annotated[
    RequestId | None,
    Field(
        description="optional; echoed in the reply (`subscribed`, `unsubscribed`, `pong`, "
        f"`acked`, `error`): a string of at most {MAX_REQUEST_ID_CHARS} characters or a safe "
        "integer"
    ),
]
ReplyId = Annotated[
    RequestId | SkipJsonSchema[None],
    Field(
        description="the request's `id`; absent when it carried none",
        json_schema_extra=_absent_when_none,
    ),
]
FilterValues = Annotated[list[StrictStr], Field(max_length=MAX_FILTER_VALUES)] | None

_SINCE: Final = (
    "replay every matching update after this position, then continue live (no gap, no "
    "duplicate); refused (`invalid_since`) beyond the log head. Updates read back from the "
    "log carry `change24h: null` and `late: null`."
)
_SNAPSHOT: Final = (
    "first send the current value of every matching series as `update` frames with "
    "`snapshot: true`, all at the snapshot's position P (the `subscribed` reply carries the "
    "same P); the live updates that follow all have position > P: no gap, no duplicate. "
    "Excludes `since`; not on the alerts or anomalies channel (`invalid_snapshot`)."
)
_COALESCE: Final = (
    "opt in to coalescing: when this connection lags (queue past half its bound), a newer "
    "update of the same value (id, metric, chain) replaces the queued one instead of growing "
    "the queue. Ignored on the alerts and anomalies channels."
)
_CHANGE_24H: Final = (
    "the 24 h percent change of the update's own series (TVL, volume_24h, fees_24h or price) "
    "as of the update's position; null for a chain value, a late observation, when no point a "
    "day back is known, and for updates read back from the log (`since`, or catching up after "
    "falling behind)"
)
_LATE: Final = (
    "true: the observation is older than the current value (history arriving late): the value "
    "shown as current did not move, do not display this one as current; false: it became the "
    "current value; null: read back from the log (unknown)"
)


# -- client → server ------------------------------------------------------------------------


class Filters(BaseModel):
    """A subscription's ``params``: every condition given must hold."""

    model_config = _FRAME
    protocol_ids: FilterValues = Field(None, alias="protocolIds", description="protocol slugs")
    token_ids: FilterValues = Field(
        None, alias="tokenIds", description="token ids such as coingecko:ethereum (prices)"
    )
    chains: FilterValues = Field(
        None,
        description="an update for one of these chains, or a total update of a protocol "
        "listed on one of them (case-insensitive)",
    )
    categories: FilterValues = Field(None, description="protocol categories (case-insensitive)")
    min_tvl: Annotated[Number, Field(ge=0)] | None = Field(
        None, alias="minTvl", description="the protocol's current total TVL is at least this"
    )


class SmartMoneyFilters(BaseModel):
    """The ``smart-money`` channel's ``params`` (it takes no other): the trades of the
    wallets ranked in the ``top`` (of one ``wallet`` among them, of one chain)."""

    model_config = _FRAME
    top: Annotated[StrictInt, Field(ge=1, le=MAX_TOP)] = Field(
        DEFAULT_TOP, description="the wallets ranked 1 to top, by the ranking of the last refresh"
    )
    wallet: Annotated[StrictStr, Field(pattern=r"^0x[0-9a-fA-F]{40}$")] | None = Field(
        None, description="only this wallet's trades, while it is in the top (any case)"
    )
    chain_id: Annotated[StrictInt, Field(ge=1, le=MAX_CHAIN_ID)] | None = Field(
        None, alias="chainId", description="only this chain's (default: every chain followed)"
    )
    ranking: Literal["default", "model"] = Field(
        "default",
        description="the default score, or the trained model's (nothing is sent while no "
        "model is trained)",
    )


def _no_keys(keys: Collection[str]) -> dict[str, Any]:
    """A schema refusing an object that has any of ``keys`` (anything else passes)."""
    return {"not": {"type": "object", "anyOf": [{"required": [key]} for key in sorted(keys)]}}


def _params_of(channels: Collection[str], rule: dict[str, Any]) -> dict[str, Any]:
    return {
        "if": {"properties": {"channel": {"enum": list(channels)}}, "required": ["channel"]},
        "then": {"properties": {"params": rule}},
    }


class Subscribe(BaseModel):
    """Subscribe to a channel: live updates, after a replay from ``since`` or a snapshot
    when asked."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        frozen=True,
        # The rules of the validators below, stated in the schema.
        json_schema_extra={
            "allOf": [
                {
                    "if": {"properties": {"snapshot": {"const": True}}, "required": ["snapshot"]},
                    "then": {
                        "properties": {
                            "since": {"type": "null"},
                            "channel": {"enum": list(_VALUE_CHANNELS)},
                        }
                    },
                },
                _params_of(_FILTERED_CHANNELS, _no_keys(SMART_MONEY_KEYS)),
                _params_of(["mev"], {"not": {"type": "object", "minProperties": 1}}),
                _params_of([SMART_MONEY], _no_keys(FILTER_KEYS)),
            ]
        },
    )
    type: Literal["subscribe"]
    channel: Channel
    params: Filters | SmartMoneyFilters | None = Field(
        None,
        description="absent or null: no filter; SmartMoneyFilters on the smart-money channel "
        "only, none on mev",
    )
    since: Position | None = Field(None, description=_SINCE)
    snapshot: StrictBool = Field(False, description=_SNAPSHOT)
    coalesce: StrictBool = Field(False, description=_COALESCE)
    id: ClientRequestId = None

    @model_validator(mode="after")
    def _snapshot_starts_now(self) -> Subscribe:
        if self.snapshot and self.since is not None:
            raise ValueError("snapshot and since exclude each other: a snapshot starts now")
        if self.snapshot and self.channel not in VALUE_CHANNELS:
            raise ValueError(f"{self.channel} are events, not values: no snapshot")
        return self

    @model_validator(mode="after")
    def _params_fit_the_channel(self) -> Subscribe:
        given = self.params is not None and bool(self.params.model_fields_set)
        if self.channel == "mev" and given:
            raise ValueError("the mev channel takes no params")
        if self.channel == SMART_MONEY:
            if isinstance(self.params, Filters) and given:
                raise ValueError(f"smart-money takes {', '.join(sorted(SMART_MONEY_KEYS))}")
        elif isinstance(self.params, SmartMoneyFilters) and given:
            raise ValueError(f"{', '.join(sorted(SMART_MONEY_KEYS))}: smart-money only")
        return self


class Unsubscribe(BaseModel):
    """Stop one subscription (a replay or snapshot under way stops too)."""

    model_config = _FRAME
    type: Literal["unsubscribe"]
    subscription_id: SubscriptionId
    id: ClientRequestId = None


class Attach(BaseModel):
    """Re-attach to a durable subscription (``POST /v2/subscriptions``): every matching
    update after its acknowledged position, then live (the key's owner's only)."""

    model_config = _FRAME
    type: Literal["attach"]
    subscription: Annotated[StrictStr, Field(max_length=MAX_SUBSCRIPTION_ID_CHARS)] = Field(
        description="the durable subscription's id; the `subscribed` reply and its updates "
        "carry it as `subscriptionId`"
    )
    id: ClientRequestId = None


class Ack(BaseModel):
    """The client has processed every update of an attached durable subscription up to
    ``position``: a later attach resumes after it. Written a moment later (confirmed with
    ``acked``); send the position of the last update processed now and then: one ack covers
    everything before it, and each counts against the message rate limit."""

    model_config = _FRAME
    type: Literal["ack"]
    subscription_id: SubscriptionId
    position: Position = Field(description="at most the position of the last update sent")
    id: ClientRequestId = None


class Ping(BaseModel):
    """Liveness; answered with ``pong``. Other fields are ignored (a client may pad a ping
    to probe frame sizes)."""

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)
    type: Literal["ping"]
    id: ClientRequestId = None


# -- server → client ------------------------------------------------------------------------


class Subscribed(BaseModel):
    """A subscription is live (or replaying, or sending its snapshot)."""

    model_config = _FRAME
    type: Literal["subscribed"]
    subscription_id: SubscriptionId
    channel: Channel
    position: Position = Field(
        description="the hub's position now; with `snapshot`, the snapshot's position P"
    )
    recovered: StrictBool = Field(
        description="false if `since` was further back than the replay limit: only the most "
        "recent part is replayed"
    )
    acknowledged: Position | SkipJsonSchema[None] = Field(
        None,
        description="on an `attach` only: the acknowledged position it resumes after; the "
        "client's updates after it that it did not acknowledge come again",
        json_schema_extra=_absent_when_none,
    )
    id: ReplyId = None


class Unsubscribed(BaseModel):
    """Answer to ``unsubscribe``."""

    model_config = _FRAME
    type: Literal["unsubscribed"]
    subscription_id: SubscriptionId
    id: ReplyId = None


class MetricData(BaseModel):
    """A protocol's value: TVL (protocols channel), volume_24h or fees_24h (volumes)."""

    model_config = _FRAME
    id: StrictStr = Field(description="protocol slug")
    metric: Metric
    chain: StrictStr = Field(description=f"a chain, or `{TOTAL}` for the protocol's total")
    value: Number
    timestamp: Number = Field(description="when it was observed, unix seconds")
    change24h: Number | None = Field(description=_CHANGE_24H)
    late: StrictBool | None = Field(description=_LATE)


class PriceData(BaseModel):
    """A token's price (prices channel)."""

    model_config = _FRAME
    id: StrictStr = Field(description="token id, such as coingecko:ethereum")
    value: Number = Field(description="the price")
    timestamp: Number = Field(description="when it was observed, unix seconds")
    confidence: Number | None
    change24h: Number | None = Field(description=_CHANGE_24H)
    late: StrictBool | None = Field(description=_LATE)


class Update(BaseModel):
    """A value on protocols, volumes or prices: live, read back from the log, or part of a
    snapshot.

    A client that stops reading is closed with 4008; one that keeps reading but falls behind
    gets the rest from the log (``change24h`` and ``late`` null) rather than being closed.
    """

    model_config = _FRAME
    type: Literal["update"]
    subscription_id: SubscriptionId
    channel: ValueChannel
    position: Position = Field(
        description="the event store's position of the update; on a snapshot frame, the "
        "snapshot's position P"
    )
    snapshot: Literal[True] | SkipJsonSchema[None] = Field(
        None,
        description="true on the frames of the snapshot a `subscribe` with `snapshot: true` "
        "asked for, absent otherwise; the live updates that follow all have position > P",
        json_schema_extra=_absent_when_none,
    )
    data: MetricData | PriceData = Field(
        description="metric data on protocols and volumes, price data on prices"
    )


class AlertData(BaseModel):
    """What an alert measured."""

    model_config = _FRAME
    measure: Number | None = Field(description="the rule's measure when it fired or resolved")
    idempotency_key: StrictStr | None = Field(alias="idempotencyKey")


class Alert(BaseModel):
    """One of the key owner's alert rules fired or resolved (only rules with a
    ``websocket`` channel reach sockets)."""

    model_config = _FRAME
    type: Literal["alert"]
    subscription_id: SubscriptionId
    alert_id: StrictStr = Field(alias="alertId", description="the alert rule's id")
    condition: Firing
    data: AlertData
    timestamp: Number = Field(description="when the measure was observed, unix seconds")
    position: Position


class AnomalyData(BaseModel):
    """An anomaly the detector found (docs/anomalies.md)."""

    model_config = _FRAME
    id: StrictStr = Field(description="protocol slug or token id")
    series: StrictStr = Field(
        description="protocol:<slug>:<metric>:total or token:<id>",
        examples=["protocol:aave:tvl:total"],
    )
    measure: StrictStr = Field(description="tvl, volume_24h, fees_24h or price")
    value: Number = Field(description="the anomalous observation's value")
    timestamp: Number = Field(description="when it was observed, unix seconds")
    score: Number = Field(description="how unusual, in (robust) standard deviations")
    direction: Literal["fall", "rise"]
    reason: StrictStr = Field(description="for people")


class Anomaly(BaseModel):
    """An anomaly was detected in a series the subscription's filters match (the
    ``anomalies`` channel; an event, never coalesced, no snapshot)."""

    model_config = _FRAME
    type: Literal["anomaly"]
    subscription_id: SubscriptionId
    channel: Literal["anomalies"]
    position: Position = Field(description="the event store's position of the detection")
    data: AnomalyData


class MevData(BaseModel):
    """A detection (``retracted: false``) or the detections a reorg retracted
    (``retracted: true``: ``keys`` and ``blockHashes`` only), ADR 0050."""

    model_config = _FRAME
    chain_id: StrictInt = Field(alias="chainId")
    retracted: bool
    key: StrictStr | None = Field(default=None, description="kind:block hash:tx hashes")
    kind: Literal["sandwich", "arbitrage"] | None = None
    block: StrictInt | None = None
    block_hash: StrictStr | None = Field(default=None, alias="blockHash")
    pool: StrictStr | None = None
    actor: StrictStr | None = Field(default=None, description="the swap recipient that gained")
    victim: StrictStr | None = None
    quote_token: StrictStr | None = Field(default=None, alias="quoteToken")
    profit: StrictStr | None = Field(default=None, description="raw units of the quote token")
    profit_quote: Number | None = Field(default=None, alias="profitQuote")
    profit_usd: Number | None = Field(default=None, alias="profitUsd")
    tx_hashes: list[StrictStr] | None = Field(default=None, alias="txHashes")
    keys: list[StrictStr] | None = Field(default=None, description="retracted: which")
    block_hashes: list[StrictStr] | None = Field(default=None, alias="blockHashes")


class Mev(BaseModel):
    """A sandwich or cyclic arbitrage was detected, or a reorg retracted detections (the
    ``mev`` channel; events, never coalesced, no snapshot, no filters)."""

    model_config = _FRAME
    type: Literal["mev"]
    subscription_id: SubscriptionId
    channel: Literal["mev"]
    position: Position = Field(description="the event store's position of the fact")
    data: MevData


class SmartMoneyTrade(BaseModel):
    """A swap by a wallet in the subscription's top: what it paid and got (raw units)."""

    model_config = _FRAME
    wallet: StrictStr = Field(description="the swap's recipient, lower-case")
    rank: Annotated[StrictInt, Field(ge=1)] = Field(description="its place at the last ranking")
    score: Number = Field(description="0..100: the default score, or 100 * the model's probability")
    block: StrictInt
    block_hash: StrictStr = Field(alias="blockHash")
    timestamp: Number = Field(description="the block's time, unix seconds")
    tx_hash: StrictStr = Field(alias="txHash")
    log_index: StrictInt = Field(alias="logIndex")
    pool: StrictStr | None
    token_paid: StrictStr | None = Field(alias="tokenPaid")
    amount_paid: StrictStr = Field(alias="amountPaid")
    token_got: StrictStr | None = Field(alias="tokenGot")
    amount_got: StrictStr = Field(alias="amountGot")


class SmartMoneyData(BaseModel):
    """The top wallets' trades in what a collector recorded (``retracted: false``), or the
    blocks a reorg orphaned (``retracted: true``: ``blockHashes`` only), ADR 0051."""

    model_config = _FRAME
    chain_id: StrictInt = Field(alias="chainId")
    retracted: bool
    ranking: Literal["default", "model"] | None = None
    ranked_at: Number | None = Field(
        default=None, alias="rankedAt", description="when the ranking used was computed"
    )
    trades: list[SmartMoneyTrade] | None = None
    block_hashes: list[StrictStr] | None = Field(
        default=None, alias="blockHashes", description="retracted: drop the trades of these"
    )


class SmartMoney(BaseModel):
    """Trades of wallets ranked in the subscription's top N, or a reorg's orphaned blocks
    (the ``smart-money`` channel; events, never coalesced, no snapshot)."""

    model_config = _FRAME
    type: Literal["smart-money"]
    subscription_id: SubscriptionId
    channel: Literal["smart-money"]
    position: Position = Field(description="the event store's position of the collector entry")
    data: SmartMoneyData


class Error(BaseModel):
    """A malformed or refused frame; the socket and its other subscriptions stay up."""

    model_config = _FRAME
    type: Literal["error"]
    code: ErrorCode
    message: StrictStr = Field(description="for people")
    id: ReplyId = None
    # Only on ``rate_limited`` (ADR 0036): the facts of the HTTP RateLimit headers.
    policy: StrictStr | None = Field(default=None, description="rate_limited: the policy's name")
    limit: StrictInt | None = Field(default=None, description="rate_limited: its quota")
    window: StrictInt | None = Field(default=None, description="rate_limited: in seconds")
    remaining: StrictInt | None = Field(default=None, description="rate_limited: left")
    reset: StrictInt | None = Field(
        default=None, description="rate_limited: seconds until a message is free again"
    )
    retry_after: StrictInt | None = Field(
        default=None, alias="retryAfter", description="rate_limited: seconds to wait"
    )


class Acked(BaseModel):
    """An ``ack`` is stored: an attach anywhere resumes after ``position`` at least."""

    model_config = _FRAME
    type: Literal["acked"]
    subscription_id: SubscriptionId
    position: Position
    id: ReplyId = None


class Pong(BaseModel):
    """Answer to ``ping``."""

    model_config = _FRAME
    type: Literal["pong"]
    position: Position = Field(description="the hub's position now")
    id: ReplyId = None


def _by_type(*models: type[BaseModel]) -> Mapping[str, type[BaseModel]]:
    return {get_args(model.model_fields["type"].annotation)[0]: model for model in models}


CLIENT_MESSAGES: Final = _by_type(Subscribe, Unsubscribe, Ping, Attach, Ack)
"""Client messages by ``type``."""
SERVER_MESSAGES: Final = _by_type(
    Subscribed, Unsubscribed, Update, Alert, Anomaly, Mev, SmartMoney, Error, Pong, Acked
)
"""Server messages by ``type``."""
