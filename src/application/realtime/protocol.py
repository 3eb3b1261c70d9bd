"""The WebSocket protocol's vocabulary and the checking of client frames.

Channels, message types, error and close codes are defined here once: the hub speaks them
and the AsyncAPI document (``entrypoints/asyncapi.py``) is generated from them. A client
frame is checked here into a typed ``Request`` (or a ``FrameError`` naming its code); what
the hub does with it is the hub's business.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from ...domain.chains import chain_key
from ...domain.token import canonical_token_id

SMART_MONEY: Final = "smart-money"
CHANNELS: Final = ("protocols", "prices", "volumes", "alerts", "anomalies", "mev", SMART_MONEY)
# Channels whose updates are values (the latest wins; a snapshot makes sense): not alerts
# or anomalies, which are events, nor mev (detections and their retractions), nor
# smart-money (trades).
VALUE_CHANNELS: Final = frozenset({"protocols", "prices", "volumes"})
FILTER_KEYS: Final = frozenset({"protocolIds", "tokenIds", "chains", "categories", "minTvl"})
# The smart-money channel's params (its only ones): the top N wallets of a ranking, one
# wallet among them, one chain.
SMART_MONEY_KEYS: Final = frozenset({"top", "wallet", "chainId", "ranking"})
SMART_MONEY_RANKINGS: Final = ("default", "model")
DEFAULT_TOP: Final = 10
MAX_TOP: Final = 100
SUBSCRIBE_FIELDS: Final = frozenset(
    {"type", "channel", "params", "since", "snapshot", "id", "coalesce"}
)
UNSUBSCRIBE_FIELDS: Final = frozenset({"type", "subscriptionId", "id"})
ATTACH_FIELDS: Final = frozenset({"type", "subscription", "id"})
ACK_FIELDS: Final = frozenset({"type", "subscriptionId", "position", "id"})
# A durable subscription's id (a UUID; the bound only keeps junk out of error messages).
MAX_SUBSCRIPTION_ID_CHARS: Final = 64


CLIENT_MESSAGE_TYPES: Final = ("subscribe", "unsubscribe", "ping", "attach", "ack")
SERVER_MESSAGE_TYPES: Final = (
    "subscribed",
    "unsubscribed",
    "update",
    "alert",
    "anomaly",
    "mev",
    "smart-money",
    "error",
    "pong",
    "acked",
)
ERROR_CODES: Final[Mapping[str, str]] = {
    "invalid_json": "the frame is not valid JSON (or not UTF-8)",
    "invalid_message": "not a JSON object, an unknown field, or a field of the wrong type",
    "unknown_type": "the message type is not subscribe, unsubscribe, ping, attach or ack",
    "invalid_channel": "the channel is not protocols, prices, volumes, alerts, anomalies, mev "
    "or smart-money (or smart-money on a server that follows no EVM chain)",
    "invalid_params": "a filter in params is unknown or malformed, given on the mev channel "
    "(which takes none), or not one of the smart-money channel's (top, wallet, chainId, "
    "ranking) there",
    "invalid_since": "since is not a non-negative integer, or is beyond the log head",
    "invalid_snapshot": "snapshot is not a boolean, is asked with since, or on the alerts, "
    "anomalies, mev or smart-money channel",
    "too_many_subscriptions": "the connection holds its maximum number of subscriptions",
    "too_many_replays": "the connection (or its address) has its maximum number of replays or "
    "snapshots under way; subscribe again when one has finished",
    "unknown_subscription": "unsubscribe or ack names no subscription of this connection, or "
    "attach names no durable subscription of the key's owner",
    "unauthorized": "the alerts channel and durable subscriptions need an API key on the handshake",
    "already_attached": "attach names a durable subscription this connection holds already",
    "invalid_ack": "the ack's position is not a non-negative integer, or is beyond what the "
    "subscription was sent",
    "subscription_closed": "the durable subscription was deleted: it sends nothing more",
    "frame_too_large": "the frame is larger than MAX_FRAME_BYTES bytes",
    "replay_failed": "reading the log for since failed; the subscription was dropped",
    "rate_limited": "the key's (or, without a key, the address's) message budget is spent: "
    "the message was not read; the frame says the policy, limit, window, remaining, reset "
    "and retryAfter (seconds)",
}
CLOSE_IDLE: Final = 4000
CLOSE_UNAUTHORIZED: Final = 4001
CLOSE_FORBIDDEN_ORIGIN: Final = 4003
# The same code for the other refusal of a well-formed handshake: an API key used from an
# address outside its IP allow-list.
CLOSE_FORBIDDEN: Final = CLOSE_FORBIDDEN_ORIGIN
CLOSE_SLOW_CONSUMER: Final = 4008
CLOSE_TOO_MANY_CONNECTIONS: Final = 4029
CLOSE_CODES: Final[Mapping[int, str]] = {
    1000: "normal closure (answer to a client's close)",
    1001: "going away: the server is shutting down",
    1002: "protocol error (e.g. an unmasked client frame, a reserved close code)",
    1007: "invalid frame payload data: a text message that is not UTF-8",
    1009: "message too big: a message over the transport's limit (1 MiB)",
    CLOSE_IDLE: "idle timeout: nothing received within WS_IDLE_TIMEOUT",
    CLOSE_UNAUTHORIZED: "invalid or missing API key or session token; also sent to open "
    "sockets when their key is revoked, or its grace after a rotation ends",
    CLOSE_FORBIDDEN_ORIGIN: "forbidden: the Origin header is not in WS_ALLOWED_ORIGINS, or "
    "the client's address is outside the key's IP allow-list",
    CLOSE_SLOW_CONSUMER: "slow consumer: the client stopped reading (nothing taken from its "
    "queue for WS_SEND_TIMEOUT while it was full); resume with since",
    CLOSE_TOO_MANY_CONNECTIONS: "too many connections for this API key (tier limit) or, "
    "without a key, from this address (WS_ANONYMOUS_SOCKETS); or too many failed "
    "authentications from this address (RATE_LIMIT_AUTH_FAILURES): the reason says which",
}

MAX_FRAME_BYTES: Final = 64 * 1024
MAX_REQUEST_ID_CHARS: Final = 128
MAX_FILTER_VALUES: Final = 1_000
# A chain id fits a JSON safe integer (EIP-2294 bounds it far below).
MAX_CHAIN_ID: Final = 2**53
_ADDRESS: Final = re.compile(r"0x[0-9a-fA-F]{40}")


def dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()


def _finite(number: float) -> bool:
    try:
        return math.isfinite(number)
    except OverflowError:  # an int beyond float range (JSON allows 400-digit integers)
        return False


class FrameError(ValueError):
    """A client frame that is refused: answered with an ``error`` of this ``code``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class SmartMoneyFilter:
    """A ``smart-money`` subscription's ``params``: the trades of the wallets ranked in the
    ``top`` by ``ranking`` (of ``chain_id`` only, when given; of ``wallet`` only, when
    given, while it is among them)."""

    top: int = DEFAULT_TOP
    wallet: str | None = None
    chain_id: int | None = None
    ranking: str = "default"

    @classmethod
    def parse(cls, params: Any) -> SmartMoneyFilter:
        if params is None:
            return cls()
        if not isinstance(params, Mapping):
            raise FrameError("invalid_params", "params must be an object")
        unknown = sorted(set(params) - SMART_MONEY_KEYS)
        if unknown:
            raise FrameError(
                "invalid_params",
                f"unknown filter(s) on smart-money: {', '.join(unknown)} "
                f"(it takes {', '.join(sorted(SMART_MONEY_KEYS))})",
            )
        top = params.get("top", DEFAULT_TOP)
        if isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= MAX_TOP:
            raise FrameError("invalid_params", f"top must be an integer from 1 to {MAX_TOP}")
        wallet = params.get("wallet")
        if wallet is not None and not (
            isinstance(wallet, str) and _ADDRESS.fullmatch(wallet) is not None
        ):
            raise FrameError("invalid_params", "wallet must be a 0x address (40 hex digits)")
        chain_id = params.get("chainId")
        if chain_id is not None and (
            isinstance(chain_id, bool)
            or not isinstance(chain_id, int)
            or not 1 <= chain_id <= MAX_CHAIN_ID
        ):
            raise FrameError("invalid_params", "chainId must be a positive integer chain id")
        ranking = params.get("ranking", "default")
        if ranking not in SMART_MONEY_RANKINGS:
            raise FrameError(
                "invalid_params", f"ranking must be one of {', '.join(SMART_MONEY_RANKINGS)}"
            )
        return cls(
            top=top,
            wallet=None if wallet is None else wallet.lower(),
            chain_id=chain_id,
            ranking=str(ranking),
        )


@dataclass(frozen=True, slots=True)
class Filter:
    """A subscription's ``params``: all given conditions must hold."""

    protocol_ids: frozenset[str] | None = None
    token_ids: frozenset[str] | None = None
    chains: frozenset[str] | None = None
    categories: frozenset[str] | None = None
    min_tvl: float | None = None
    # The smart-money channel's, which takes no other filter.
    smart_money: SmartMoneyFilter | None = None

    @property
    def by_id_only(self) -> bool:
        """Nothing to check beyond the id (the hub's index already did that)."""
        return self.chains is None and self.categories is None and self.min_tvl is None

    @classmethod
    def parse(cls, params: Any) -> Filter:
        if params is None:
            return cls()
        if not isinstance(params, Mapping):
            raise FrameError("invalid_params", "params must be an object")
        unknown = sorted(set(params) - FILTER_KEYS)
        if unknown:
            raise FrameError("invalid_params", f"unknown filter(s): {', '.join(unknown)}")

        def strings(
            key: str, lower: bool = False, key_of: Callable[[str], str] | None = None
        ) -> frozenset[str] | None:
            value = params.get(key)
            if value is None:
                return None
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise FrameError("invalid_params", f"{key} must be a list of strings")
            if len(value) > MAX_FILTER_VALUES:
                raise FrameError(
                    "invalid_params", f"{key} holds at most {MAX_FILTER_VALUES} values"
                )
            if key_of is not None:
                return frozenset(map(key_of, value))
            return frozenset(v.lower() if lower else v for v in value)

        min_tvl = params.get("minTvl")
        if min_tvl is not None and (
            isinstance(min_tvl, bool)
            or not isinstance(min_tvl, int | float)
            or not _finite(min_tvl)
            or min_tvl < 0
        ):
            raise FrameError("invalid_params", "minTvl must be a non-negative number")
        return cls(
            protocol_ids=strings("protocolIds"),
            token_ids=strings("tokenIds", key_of=canonical_token_id),
            # Any spelling or alias of a chain (``bsc``, ``Binance``) matches it.
            chains=strings("chains", key_of=chain_key),
            categories=strings("categories", lower=True),
            min_tvl=None if min_tvl is None else float(min_tvl),
        )


@dataclass(frozen=True, slots=True)
class Subscribe:
    channel: str
    filter: Filter
    since: int | None
    snapshot: bool
    coalesce: bool


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    subscription_id: str


@dataclass(frozen=True, slots=True)
class Ping:
    pass


@dataclass(frozen=True, slots=True)
class Attach:
    """Re-attach to a durable subscription: from its acknowledged position, then live."""

    subscription_id: str


@dataclass(frozen=True, slots=True)
class Ack:
    """The client has processed every update of a durable subscription up to ``position``."""

    subscription_id: str
    position: int


@dataclass(frozen=True, slots=True)
class Request:
    """A checked client frame and its optional ``id`` (echoed in the reply)."""

    message: Subscribe | Unsubscribe | Ping | Attach | Ack
    id: str | int | None


def size_in_bytes(data: str | bytes) -> int:
    if isinstance(data, bytes):
        return len(data)
    # Characters count at least one byte: encode only when it could matter.
    if len(data) > MAX_FRAME_BYTES or len(data) * 4 <= MAX_FRAME_BYTES:
        return len(data)
    return len(data.encode("utf-8", "surrogatepass"))


def decode(data: str | bytes) -> Mapping[str, Any]:
    """The JSON object a frame holds (``FrameError`` otherwise)."""
    if size_in_bytes(data) > MAX_FRAME_BYTES:
        raise FrameError("frame_too_large", f"frames are limited to {MAX_FRAME_BYTES} bytes")
    try:
        message = json.loads(data)
    except (ValueError, RecursionError):  # RecursionError: nesting too deep
        raise FrameError("invalid_json", "frame is not valid UTF-8 JSON") from None
    if not isinstance(message, dict):
        raise FrameError("invalid_message", "a message is a JSON object with a type")
    return message


def request_id_of(message: Mapping[str, Any]) -> str | int | None:
    """The client's optional ``id``, echoed in the reply to correlate it."""
    request_id = message.get("id")
    if request_id is None:
        return None
    if isinstance(request_id, bool) or not isinstance(request_id, int | str):
        raise FrameError("invalid_message", "id must be a string or an integer")
    if isinstance(request_id, str) and len(request_id) > MAX_REQUEST_ID_CHARS:
        raise FrameError("invalid_message", f"id holds at most {MAX_REQUEST_ID_CHARS} characters")
    if isinstance(request_id, int) and not -(2**53) <= request_id <= 2**53:
        raise FrameError("invalid_message", "id must be a safe integer")
    return request_id


def parse(message: Mapping[str, Any]) -> Subscribe | Unsubscribe | Ping | Attach | Ack:
    """The typed message of a decoded frame (its ``id`` checked apart, to echo it even
    when the rest is refused)."""
    kind = message.get("type")
    if kind == "ping":
        return Ping()  # other fields are ignored: a client may pad a ping to probe sizes
    if kind == "subscribe":
        return _subscribe(message)
    if kind == "unsubscribe":
        _known_fields(message, UNSUBSCRIBE_FIELDS)
        subscription_id = message.get("subscriptionId")
        if not isinstance(subscription_id, str):
            raise FrameError("unknown_subscription", f"no subscription {subscription_id!r}")
        return Unsubscribe(subscription_id)
    if kind == "attach":
        _known_fields(message, ATTACH_FIELDS)
        durable = message.get("subscription")
        if not isinstance(durable, str) or len(durable) > MAX_SUBSCRIPTION_ID_CHARS:
            raise FrameError("unknown_subscription", "subscription must be a subscription's id")
        return Attach(durable)
    if kind == "ack":
        _known_fields(message, ACK_FIELDS)
        subscription_id = message.get("subscriptionId")
        if not isinstance(subscription_id, str):
            raise FrameError("unknown_subscription", f"no subscription {subscription_id!r}")
        position = message.get("position")
        if isinstance(position, bool) or not isinstance(position, int) or position < 0:
            raise FrameError("invalid_ack", "position must be a non-negative integer position")
        return Ack(subscription_id, position)
    raise FrameError("unknown_type", f"unknown message type {kind!r}")


def _known_fields(message: Mapping[str, Any], fields: frozenset[str]) -> None:
    unknown = sorted(set(message) - fields)
    if unknown:
        raise FrameError("invalid_message", f"unknown field(s): {', '.join(unknown)}")


def _subscribe(message: Mapping[str, Any]) -> Subscribe:
    _known_fields(message, SUBSCRIBE_FIELDS)
    channel = message.get("channel")
    if channel not in CHANNELS:
        raise FrameError("invalid_channel", f"channel must be one of {list(CHANNELS)}")
    since = message.get("since")
    if since is not None and (isinstance(since, bool) or not isinstance(since, int) or since < 0):
        raise FrameError("invalid_since", "since must be a non-negative integer position")
    coalesce = message.get("coalesce", False)
    if not isinstance(coalesce, bool):
        raise FrameError("invalid_message", "coalesce must be a boolean")
    snapshot = message.get("snapshot", False)
    if not isinstance(snapshot, bool):
        raise FrameError("invalid_snapshot", "snapshot must be a boolean")
    if snapshot and since is not None:
        raise FrameError(
            "invalid_snapshot", "snapshot and since exclude each other: a snapshot starts now"
        )
    if snapshot and channel not in VALUE_CHANNELS:
        raise FrameError("invalid_snapshot", f"{channel} are events, not values: no snapshot")
    if channel == "mev" and message.get("params"):
        raise FrameError("invalid_params", "the mev channel takes no params: it sends every chain")
    params = message.get("params")
    return Subscribe(
        channel=str(channel),
        filter=Filter(smart_money=SmartMoneyFilter.parse(params))
        if channel == SMART_MONEY
        else Filter.parse(params),
        since=since,
        snapshot=snapshot,
        # Alerts and anomalies are events, not values: never coalesced.
        coalesce=coalesce and channel in VALUE_CHANNELS,
    )


def with_id(message: dict[str, Any], request_id: str | int | None) -> dict[str, Any]:
    if request_id is not None:
        message["id"] = request_id
    return message


def error_frame(code: str, message: str, request_id: str | int | None = None) -> bytes:
    return dumps(with_id({"type": "error", "code": code, "message": message}, request_id))


def rate_limited_frame(message: str, facts: Mapping[str, Any]) -> bytes:
    """The ``error`` frame of a message refused by the rate limits, with the limiter's
    facts (``policy``, ``limit``, ``window``, ``remaining``, ``reset``, ``retryAfter``)."""
    return dumps({"type": "error", "code": "rate_limited", "message": message, **facts})
