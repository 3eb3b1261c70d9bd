"""The realtime hub: WebSocket subscriptions, filters, resume from a position, backpressure.

Transport-free: a ``Connection`` is given two callables (send a text frame, close) by the
entrypoint. Frames are serialised once per entry: the per-subscription part (its id) is
spliced into a pre-encoded body, so fan-out to many clients costs no JSON encoding per client.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from .log import LogBatch, LogEntry
from .ports import EventLog, HotProjection

log = logging.getLogger(__name__)

CHANNELS: Final = ("protocols", "prices", "volumes", "alerts")
FILTER_KEYS: Final = frozenset({"protocolIds", "tokenIds", "chains", "categories", "minTvl"})
CLOSE_SLOW_CONSUMER: Final = 4008
CLOSE_TOO_MANY_CONNECTIONS: Final = 4029
CLOSE_UNAUTHORIZED: Final = 4001
CLOSE_IDLE: Final = 4000
MAX_FRAME_BYTES: Final = 64 * 1024
REPLAY_PAGE: Final = 2_000
# How long a replay waits for room in a resuming client's queue before dropping it.
REPLAY_SEND_TIMEOUT: Final = 10.0


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def _finite(number: float) -> bool:
    try:
        return math.isfinite(number)
    except OverflowError:  # an int beyond float range (JSON allows 400-digit integers)
        return False


class FrameError(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(slots=True)
class Filter:
    protocol_ids: frozenset[str] | None = None
    token_ids: frozenset[str] | None = None
    chains: frozenset[str] | None = None
    categories: frozenset[str] | None = None
    min_tvl: float | None = None

    @classmethod
    def parse(cls, params: Any) -> Filter:
        if params is None:
            return cls()
        if not isinstance(params, Mapping):
            raise FrameError("invalid_params", "params must be an object")
        unknown = sorted(set(params) - FILTER_KEYS)
        if unknown:
            raise FrameError("invalid_params", f"unknown filter(s): {', '.join(unknown)}")

        def strings(key: str, lower: bool = False) -> frozenset[str] | None:
            value = params.get(key)
            if value is None:
                return None
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise FrameError("invalid_params", f"{key} must be a list of strings")
            if len(value) > 1_000:
                raise FrameError("invalid_params", f"{key} holds at most 1000 values")
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
            token_ids=strings("tokenIds"),
            chains=strings("chains", lower=True),
            categories=strings("categories", lower=True),
            min_tvl=None if min_tvl is None else float(min_tvl),
        )


@dataclass(slots=True)
class ProtocolFacts:
    """What the hub needs to know about a protocol to filter its updates."""

    category: str = ""
    chains: frozenset[str] = frozenset()
    tvl: float | None = None


@dataclass(eq=False, slots=True)
class Subscription:
    id: str
    channel: str
    filter: Filter
    connection: Connection
    # While replaying from ``since``, live frames wait here (position, frame).
    pending: list[tuple[int, str]] | None = None


@dataclass(eq=False)
class Connection:
    """One client socket: an owner, its subscriptions and a bounded outgoing queue."""

    owner: str | None
    send_text: Callable[[str], Awaitable[None]]
    close: Callable[[int, str], Awaitable[None]]
    max_queue: int = 1_000
    max_subscriptions: int = 50
    subscriptions: dict[str, Subscription] = field(default_factory=dict)
    closed: bool = False

    def __post_init__(self) -> None:
        self.queue: asyncio.Queue[str] = asyncio.Queue(self.max_queue)
        self._sender: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._sender = asyncio.create_task(self._send_loop())

    async def stop(self) -> None:
        self.closed = True
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._sender

    def offer(self, frame: str) -> bool:
        """Queue a frame; False if the client is too far behind (it gets disconnected)."""
        if self.closed:
            return False
        try:
            self.queue.put_nowait(frame)
        except asyncio.QueueFull:
            self.overflow()
            return False
        return True

    async def offer_paced(self, frame: str) -> bool:
        """Queue a replayed frame, waiting (bounded) for room: a resuming client gets its
        backlog at the pace it reads it, instead of being dropped as a slow consumer (and
        again on every resume) whenever the backlog exceeds the queue."""
        if self.closed:
            return False
        try:
            self.queue.put_nowait(frame)
            return True
        except asyncio.QueueFull:
            pass
        try:
            await asyncio.wait_for(self.queue.put(frame), REPLAY_SEND_TIMEOUT)
        except TimeoutError:
            return self.offer(frame)  # still full: dropped as a slow consumer
        return not self.closed

    def overflow(self) -> None:
        """Too far behind: disconnect with a clear code (the client resumes with since)."""
        if not self.closed:
            self.closed = True
            asyncio.get_running_loop().create_task(self._close_slow())

    async def _close_slow(self) -> None:
        with contextlib.suppress(Exception):
            await self.close(CLOSE_SLOW_CONSUMER, "slow consumer: resume with since")

    async def _send_loop(self) -> None:
        while True:
            frame = await self.queue.get()
            try:
                await self.send_text(frame)
            except Exception:
                self.closed = True
                return


class RealtimeHub:
    """Routes log batches to matching subscriptions."""

    def __init__(self, event_log: EventLog, hot: HotProjection, *, max_replay: int = 500_000):
        self.event_log = event_log
        self.hot = hot
        self.max_replay = max_replay
        self.position = 0
        self.protocols: dict[str, ProtocolFacts] = {}
        self.connections: set[Connection] = set()
        self._by_channel: dict[str, set[Subscription]] = {channel: set() for channel in CHANNELS}
        self._ids = itertools.count(1)

    async def seed(self, position: int) -> None:
        """Start from ``position`` with filter facts loaded from the hot projection."""
        from .views import ProtocolQuery

        page = await self.hot.list_protocols(ProtocolQuery(limit=1_000_000))
        for view in page.items:
            self.protocols[view.slug] = ProtocolFacts(
                category=view.category.lower(),
                chains=frozenset(chain.lower() for chain in view.chains),
                tvl=view.tvl,
            )
        self.position = max(self.position, position)

    # -- connections ----------------------------------------------------------------------

    def connect(self, connection: Connection) -> None:
        self.connections.add(connection)
        connection.start()

    async def disconnect(self, connection: Connection) -> None:
        self.connections.discard(connection)
        for subscription in connection.subscriptions.values():
            self._by_channel[subscription.channel].discard(subscription)
        connection.subscriptions.clear()
        await connection.stop()

    def connections_of(self, owner: str) -> int:
        return sum(1 for connection in self.connections if connection.owner == owner)

    async def handle_text(self, connection: Connection, text: str) -> None:
        """One client frame. Every malformed frame is answered with an ``error``."""
        try:
            if len(text) > MAX_FRAME_BYTES:
                raise FrameError("frame_too_large", f"frames are limited to {MAX_FRAME_BYTES}")
            try:
                message = json.loads(text)
            except (ValueError, RecursionError):  # RecursionError: nesting too deep
                raise FrameError("invalid_json", "frame is not valid JSON") from None
            if not isinstance(message, dict):
                raise FrameError("invalid_message", "a message is a JSON object with a type")
            kind = message.get("type")
            if kind == "ping":
                connection.offer(_dumps({"type": "pong", "position": self.position}))
            elif kind == "subscribe":
                await self._subscribe(connection, message)
            elif kind == "unsubscribe":
                self._unsubscribe(connection, message)
            else:
                raise FrameError("unknown_type", f"unknown message type {kind!r}")
        except FrameError as error:
            connection.offer(_dumps({"type": "error", "code": error.code, "message": str(error)}))

    async def _subscribe(self, connection: Connection, message: Mapping[str, Any]) -> None:
        unknown = sorted(set(message) - {"type", "channel", "params", "since", "id"})
        if unknown:
            raise FrameError("invalid_message", f"unknown field(s): {', '.join(unknown)}")
        channel = message.get("channel")
        if channel not in CHANNELS:
            raise FrameError("invalid_channel", f"channel must be one of {list(CHANNELS)}")
        if channel == "alerts" and connection.owner is None:
            raise FrameError("unauthorized", "the alerts channel needs an API key")
        since = message.get("since")
        if since is not None and (
            isinstance(since, bool) or not isinstance(since, int) or since < 0
        ):
            raise FrameError("invalid_since", "since must be a non-negative integer position")
        if len(connection.subscriptions) >= connection.max_subscriptions:
            raise FrameError(
                "too_many_subscriptions",
                f"at most {connection.max_subscriptions} subscriptions per connection",
            )
        subscription = Subscription(
            id=f"s{next(self._ids)}",
            channel=channel,
            filter=Filter.parse(message.get("params")),
            connection=connection,
        )
        recovered = since is None or self.position - since <= self.max_replay
        if since is not None and since < self.position:
            subscription.pending = []
        connection.subscriptions[subscription.id] = subscription
        self._by_channel[channel].add(subscription)
        connection.offer(
            _dumps(
                {
                    "type": "subscribed",
                    "subscriptionId": subscription.id,
                    "channel": channel,
                    "position": self.position,
                    "recovered": recovered,
                }
            )
        )
        if subscription.pending is not None and since is not None:
            start = since if recovered else self.position - self.max_replay
            asyncio.get_running_loop().create_task(self._replay(subscription, start))

    def _unsubscribe(self, connection: Connection, message: Mapping[str, Any]) -> None:
        subscription_id = message.get("subscriptionId")
        subscription = connection.subscriptions.pop(str(subscription_id), None)
        if subscription is None:
            raise FrameError("unknown_subscription", f"no subscription {subscription_id!r}")
        self._by_channel[subscription.channel].discard(subscription)
        connection.offer(_dumps({"type": "unsubscribed", "subscriptionId": subscription.id}))

    async def _replay(self, subscription: Subscription, since: int) -> None:
        """Send every matching update after ``since`` from the log, then go live: frames
        that arrived live meanwhile are sent only if the replay did not cover them."""
        position = since
        try:
            while position < self.position:
                batch = await asyncio.to_thread(
                    self.event_log.read, position, min(REPLAY_PAGE, self.position - position)
                )
                if batch.last == position:
                    break
                for entry in batch.entries:
                    if entry.position > self.position:
                        break
                    frame = self._frame_for(subscription, entry, None)
                    if frame is not None and not await subscription.connection.offer_paced(frame):
                        return
                position = min(batch.last, self.position)
        except Exception:
            log.exception("replay for %s failed", subscription.id)
            subscription.connection.offer(
                _dumps({"type": "error", "code": "replay_failed", "message": "replay failed"})
            )
        # Live frames that arrived meanwhile (and keep arriving while these are sent: the
        # same list), then the switch to live: no await between the last check and it.
        pending = subscription.pending or []
        while pending:
            frame_position, frame = pending.pop(0)
            if frame_position > position and not await subscription.connection.offer_paced(frame):
                return
        subscription.pending = None

    # -- dispatch -------------------------------------------------------------------------

    async def deliver(self, batch: LogBatch) -> None:
        """Route a batch (the node follower guarantees order and no duplicates)."""
        touched = {
            entry.key
            for entry in batch.entries
            if entry.kind == "metric" and entry.data.get("chain") == "total"
        }
        changes: dict[str, float | None] = {}
        if touched and (self._by_channel["protocols"] or self._by_channel["volumes"]):
            for view in await self.hot.get_protocols(sorted(touched)):
                changes[view.slug] = view.change_1d
        price_changes: dict[str, float | None] = {}
        tokens = {entry.key for entry in batch.entries if entry.kind == "price"}
        if tokens and self._by_channel["prices"]:
            for price in await self.hot.prices(sorted(tokens)):
                price_changes[price.token] = price.change_24h
        for entry in batch.entries:
            self._learn(entry)
            change = (
                price_changes.get(entry.key) if entry.kind == "price" else changes.get(entry.key)
            )
            self._route(entry, change)
        self.position = max(self.position, batch.last)

    def _learn(self, entry: LogEntry) -> None:
        if entry.kind in ("protocol_listed", "protocol_updated"):
            facts = self.protocols.setdefault(entry.key, ProtocolFacts())
            facts.category = str(entry.data.get("category", "")).lower()
            facts.chains = frozenset(str(c).lower() for c in entry.data.get("chains", ()))
        elif entry.kind == "metric" and entry.data.get("metric") == "tvl":
            facts = self.protocols.setdefault(entry.key, ProtocolFacts())
            chain = str(entry.data.get("chain"))
            if chain == "total":
                facts.tvl = float(entry.data["value"])
            elif chain.lower() not in facts.chains:
                facts.chains = facts.chains | {chain.lower()}

    def _route(self, entry: LogEntry, change: float | None) -> None:
        channel = _channel_of(entry)
        if channel is None:
            return
        subscriptions = self._by_channel[channel]
        if not subscriptions:
            return
        encoded: tuple[str, str] | None = None
        for subscription in list(subscriptions):
            if not self._matches(subscription, entry):
                continue
            if encoded is None:
                encoded = _encode(entry, channel, change)
            frame = encoded[0] + subscription.id + encoded[1]
            if subscription.pending is not None:
                # Bounded while a replay is under way, like the connection's queue.
                if len(subscription.pending) >= subscription.connection.max_queue:
                    subscription.connection.overflow()
                else:
                    subscription.pending.append((entry.position, frame))
            else:
                subscription.connection.offer(frame)

    def _frame_for(
        self, subscription: Subscription, entry: LogEntry, change: float | None
    ) -> str | None:
        channel = _channel_of(entry)
        if channel != subscription.channel or not self._matches(subscription, entry):
            return None
        prefix, suffix = _encode(entry, channel, change)
        return prefix + subscription.id + suffix

    def _matches(self, subscription: Subscription, entry: LogEntry) -> bool:
        wanted = subscription.filter
        if subscription.channel == "alerts":
            return entry.data.get("owner") == subscription.connection.owner
        if subscription.channel == "prices":
            return wanted.token_ids is None or entry.key in wanted.token_ids
        if wanted.protocol_ids is not None and entry.key not in wanted.protocol_ids:
            return False
        facts = self.protocols.get(entry.key)
        if wanted.categories is not None and (
            facts is None or facts.category not in wanted.categories
        ):
            return False
        if wanted.chains is not None:
            chain = str(entry.data.get("chain", "total")).lower()
            if chain == "total":
                if facts is None or not (facts.chains & wanted.chains):
                    return False
            elif chain not in wanted.chains:
                return False
        if wanted.min_tvl is not None:
            tvl = facts.tvl if facts is not None else None
            if tvl is None or tvl < wanted.min_tvl:
                return False
        return True

    def subscriptions(self, channel: str) -> Iterable[Subscription]:
        return self._by_channel[channel]


def _channel_of(entry: LogEntry) -> str | None:
    if entry.kind == "metric":
        return "protocols" if entry.data.get("metric") == "tvl" else "volumes"
    if entry.kind == "price":
        return "prices"
    if entry.kind in ("alert_triggered", "alert_resolved"):
        return "alerts"
    return None


def _encode(entry: LogEntry, channel: str, change: float | None) -> tuple[str, str]:
    """The frame split around the subscription id: prefix + id + suffix."""
    data = entry.data
    if channel == "alerts":
        body = {
            "alertId": entry.key,
            "condition": "firing" if entry.kind == "alert_triggered" else "resolved",
            "data": {"measure": data.get("measure"), "idempotencyKey": data.get("idempotency_key")},
            "timestamp": data.get("observed_at"),
            "position": entry.position,
        }
        return '{"type":"alert","subscriptionId":"', '",' + _dumps(body)[1:]
    if channel == "prices":
        payload: dict[str, Any] = {
            "id": entry.key,
            "value": data.get("price"),
            "timestamp": data.get("observed_at"),
            "confidence": data.get("confidence"),
            "change24h": change,
        }
    else:
        payload = {
            "id": entry.key,
            "metric": data.get("metric"),
            "chain": data.get("chain"),
            "value": data.get("value"),
            "timestamp": data.get("observed_at"),
            "change24h": change if data.get("chain") == "total" else None,
        }
    body = {"channel": channel, "position": entry.position, "data": payload}
    return '{"type":"update","subscriptionId":"', '",' + _dumps(body)[1:]


def owners(connections: Sequence[Connection]) -> set[str | None]:
    return {connection.owner for connection in connections}
