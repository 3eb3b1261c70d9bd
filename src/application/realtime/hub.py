"""The realtime hub: WebSocket subscriptions, filters, resume from a position, backpressure.

Transport-free: a ``Connection`` is handed either an async ``send_text`` (the Starlette
endpoint) or a synchronous ``write`` of whole messages (the lean asyncio transport,
``entrypoints/ws_server.py``), plus a ``close``. Each update is serialised once per log
entry into a prefix and a suffix around the subscription id; queues hold those shared
parts, so fan-out to many clients costs no JSON encoding (and little memory) per client.

Backpressure: every connection has a bounded outbox. Past its high-water mark, an update
replaces the queued-but-unsent update of the same (subscription, value) — latest value wins
— instead of growing the queue; past the bound the client is closed with 4008 and can
resume with ``since``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Final

from .log import LogBatch, LogEntry
from .ports import EventLog, HotProjection

log = logging.getLogger(__name__)

CHANNELS: Final = ("protocols", "prices", "volumes", "alerts")
FILTER_KEYS: Final = frozenset({"protocolIds", "tokenIds", "chains", "categories", "minTvl"})
SUBSCRIBE_FIELDS: Final = frozenset({"type", "channel", "params", "since", "id", "coalesce"})

# Message types, error codes and close codes: the protocol's vocabulary. The AsyncAPI
# document (entrypoints/asyncapi.py) is checked against these by a test.
CLIENT_MESSAGE_TYPES: Final = ("subscribe", "unsubscribe", "ping")
SERVER_MESSAGE_TYPES: Final = ("subscribed", "unsubscribed", "update", "alert", "error", "pong")
ERROR_CODES: Final[Mapping[str, str]] = {
    "invalid_json": "the frame is not valid JSON (or not UTF-8)",
    "invalid_message": "not a JSON object, an unknown field, or a field of the wrong type",
    "unknown_type": "the message type is not subscribe, unsubscribe or ping",
    "invalid_channel": "the channel is not protocols, prices, volumes or alerts",
    "invalid_params": "a filter in params is unknown or malformed",
    "invalid_since": "since is not a non-negative integer, or is beyond the log head",
    "too_many_subscriptions": "the connection holds its maximum number of subscriptions",
    "unknown_subscription": "unsubscribe names no subscription of this connection",
    "unauthorized": "the alerts channel needs an API key on the handshake",
    "frame_too_large": "the frame is larger than MAX_FRAME_BYTES bytes",
    "replay_failed": "reading the log for since failed; the subscription was dropped",
}
CLOSE_IDLE: Final = 4000
CLOSE_UNAUTHORIZED: Final = 4001
CLOSE_FORBIDDEN_ORIGIN: Final = 4003
CLOSE_SLOW_CONSUMER: Final = 4008
CLOSE_TOO_MANY_CONNECTIONS: Final = 4029
CLOSE_CODES: Final[Mapping[int, str]] = {
    1000: "normal closure (answer to a client's close)",
    1001: "going away: the server is shutting down",
    1002: "protocol error (e.g. an unmasked client frame)",
    1009: "message too big: a message over the transport's limit (1 MiB)",
    CLOSE_IDLE: "idle timeout: nothing received within WS_IDLE_TIMEOUT",
    CLOSE_UNAUTHORIZED: "invalid or missing API key",
    CLOSE_FORBIDDEN_ORIGIN: "the Origin header is not in WS_ALLOWED_ORIGINS",
    CLOSE_SLOW_CONSUMER: "slow consumer: the per-connection queue overflowed; resume with since",
    CLOSE_TOO_MANY_CONNECTIONS: "too many connections for this API key (tier limit)",
}

MAX_FRAME_BYTES: Final = 64 * 1024
MAX_REQUEST_ID_CHARS: Final = 128
REPLAY_PAGE: Final = 2_000
MAX_CONCURRENT_REPLAYS: Final = 8
# How long a replay waits for room in a resuming client's queue before dropping it.
REPLAY_SEND_TIMEOUT: Final = 10.0
# Messages taken from an outbox per write (bounds one write's size).
WRITE_CHUNK: Final = 128
# Connections the sweeper checks (and pings) between two turns of the event loop: pinging
# 10,000 sockets in one go held the loop for ~120 ms every heartbeat interval.
SWEEP_SLICE: Final = 256
# A connection's next ping is due up to this share of the interval early, so that sockets
# opened together drift apart instead of being pinged in the same sweep forever.
PING_JITTER: Final = 0.1

# One queued message: prefix + subscription id + suffix, and its coalescing key (or None).
_Slot = tuple[bytes, str]
_Item = tuple[bytes, bytes, bytes, _Slot | None]
Write = Callable[[Sequence[_Item]], None]
Close = Callable[[int, str], Awaitable[None] | None]


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()


def _finite(number: float) -> bool:
    try:
        return math.isfinite(number)
    except OverflowError:  # an int beyond float range (JSON allows 400-digit integers)
        return False


class FrameError(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Filter:
    """A subscription's ``params``: all given conditions must hold."""

    __slots__ = ("categories", "chains", "min_tvl", "protocol_ids", "token_ids")

    def __init__(
        self,
        protocol_ids: frozenset[str] | None = None,
        token_ids: frozenset[str] | None = None,
        chains: frozenset[str] | None = None,
        categories: frozenset[str] | None = None,
        min_tvl: float | None = None,
    ) -> None:
        self.protocol_ids = protocol_ids
        self.token_ids = token_ids
        self.chains = chains
        self.categories = categories
        self.min_tvl = min_tvl

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


class ProtocolFacts:
    """What the hub needs to know about a protocol to filter its updates."""

    __slots__ = ("category", "chains", "tvl")

    def __init__(
        self, category: str = "", chains: frozenset[str] = frozenset(), tvl: float | None = None
    ) -> None:
        self.category = category
        self.chains = chains
        self.tvl = tvl


class Subscription:
    __slots__ = (
        "active",
        "channel",
        "coalesce",
        "connection",
        "exact",
        "filter",
        "floor",
        "id",
        "replaying",
        "sid",
    )

    def __init__(
        self, id: str, channel: str, filter: Filter, connection: Connection, coalesce: bool
    ) -> None:
        self.id = id
        self.sid = id.encode()
        self.channel = channel
        self.filter = filter
        # Matched by the hub's index alone (no chain, category or TVL condition).
        self.exact = filter.by_id_only
        self.connection = connection
        self.coalesce = coalesce
        self.active = True
        # While replaying from ``since``, live routing skips this subscription: the replay
        # reads the log up to the hub's position and switches to live once caught up.
        self.replaying = False
        # Updates at or before this position are not sent (the client has them: it
        # subscribed with a ``since`` beyond what this node had delivered).
        self.floor = 0


class Connection:
    """One client socket: an owner, its subscriptions and a bounded outbox.

    Give it ``write`` (synchronous, whole messages; the transport calls ``pause`` /
    ``resume`` for flow control) or ``send_text`` (async, one frame at a time).
    With ``batch`` every frame is a JSON array of one or more messages.
    """

    __slots__ = (
        "_close",
        "_dead",
        "_dirty",
        "_hub",
        "_index",
        "_room",
        "_send_text",
        "_sender",
        "_write",
        "batch",
        "closed",
        "coalesced",
        "high_water",
        "last_ping",
        "last_seen",
        "live",
        "max_queue",
        "max_subscriptions",
        "outbox",
        "owner",
        "ping",
        "reserved",
        "subscriptions",
        "writable",
    )

    def __init__(
        self,
        owner: str | None,
        *,
        close: Close,
        send_text: Callable[[str], Awaitable[None]] | None = None,
        write: Write | None = None,
        ping: Callable[[], None] | None = None,
        max_queue: int = 1_000,
        max_subscriptions: int = 50,
        batch: bool = False,
    ) -> None:
        if (send_text is None) == (write is None):
            raise ValueError("give a connection exactly one of send_text or write")
        self.owner = owner
        self._close = close
        self._send_text = send_text
        self._write = write
        self.ping = ping
        self.max_queue = max(1, max_queue)
        self.high_water = max(1, self.max_queue // 2)
        self.max_subscriptions = max_subscriptions
        self.batch = batch
        self.subscriptions: dict[str, Subscription] = {}
        self.closed = False
        self.writable = True
        self.reserved = False  # counted against the owner's connection limit
        self.outbox: deque[_Item] = deque()
        self.live = 0  # queued messages not replaced by a newer value
        self.coalesced = 0  # how many queued updates were replaced (for metrics and tests)
        self._index: dict[_Slot, _Item] | None = None
        self._dead: set[int] = set()
        self._dirty = False
        self._room: asyncio.Event | None = None
        self._sender: asyncio.Task[None] | None = None
        self._hub: RealtimeHub | None = None
        self.last_seen = self.last_ping = time.monotonic()

    # -- queueing (synchronous: called by the hub while routing) -------------------------

    def offer_message(self, payload: bytes) -> bool:
        """Queue a whole message (control replies)."""
        return self.offer(payload, b"", b"", None)

    def offer(self, prefix: bytes, sid: bytes, suffix: bytes, key: str | None) -> bool:
        """Queue ``prefix + sid + suffix``; False if the connection is (now) closed."""
        if self.closed:
            return False
        item: _Item = (prefix, sid, suffix, None)
        if key is not None and self.live >= self.high_water:
            # Lagging: latest value per (subscription, value key) wins.
            index = self._index
            if index is None:
                index = self._index = {}
            slot: _Slot = (sid, key)
            item = (prefix, sid, suffix, slot)
            old = index.get(slot)
            if old is not None:
                self._dead.add(id(old))
                self.live -= 1
                self.coalesced += 1
            index[slot] = item
        if self.live >= self.max_queue:
            self.overflow()
            return False
        self.outbox.append(item)
        self.live += 1
        if len(self.outbox) > 2 * self.max_queue:
            self._compact()
        if not self._dirty:
            self._dirty = True
            if self._hub is not None:
                self._hub.mark_dirty(self)
            else:
                self.flush()
        return True

    def _compact(self) -> None:
        dead = self._dead
        self.outbox = deque(item for item in self.outbox if id(item) not in dead)
        dead.clear()

    def _take(self, limit: int) -> list[_Item]:
        """Up to ``limit`` live messages from the head of the outbox."""
        taken: list[_Item] = []
        outbox, dead, index = self.outbox, self._dead, self._index
        while outbox and len(taken) < limit:
            item = outbox.popleft()
            if dead and id(item) in dead:
                dead.discard(id(item))
                continue
            slot = item[3]
            if slot is not None and index is not None and index.get(slot) is item:
                del index[slot]
            taken.append(item)
        self.live -= len(taken)
        if not outbox:
            self._index = None
            dead.clear()
        if self._room is not None and self.live < self.high_water // 2 + 1:
            self._room.set()
        return taken

    def _batched(self, items: list[_Item]) -> _Item:
        body = b",".join(prefix + sid + suffix for prefix, sid, suffix, _ in items)
        return (b"[", body, b"]", None)

    def flush(self) -> None:
        """Hand queued messages to the transport (as far as it takes them)."""
        self._dirty = False
        if self.closed or not self.outbox:
            return
        write = self._write
        if write is None:
            if self._sender is None:
                self._sender = asyncio.get_running_loop().create_task(self._send_loop())
            return
        while self.outbox and self.writable and not self.closed:
            items = self._take(WRITE_CHUNK)
            if not items:
                break
            try:
                write([self._batched(items)] if self.batch else items)
            except Exception:
                log.debug("write failed; closing", exc_info=True)
                self.closed = True
                return

    def pause(self) -> None:
        """The transport's buffer is full: stop writing (the outbox absorbs, bounded)."""
        self.writable = False

    def resume(self) -> None:
        self.writable = True
        self.flush()

    async def _send_loop(self) -> None:
        send_text = self._send_text
        assert send_text is not None
        try:
            while self.outbox and not self.closed:
                items = self._take(WRITE_CHUNK if self.batch else 1)
                if not items:
                    break
                if self.batch:
                    items = [self._batched(items)]
                for prefix, sid, suffix, _ in items:
                    await send_text((prefix + sid + suffix).decode())
        except Exception:
            log.debug("send failed; closing", exc_info=True)
            self.closed = True
        finally:
            self._sender = None

    async def wait_for_room(self, timeout: float) -> bool:
        """Wait (bounded) until the outbox is back under its high-water mark."""
        while self.live >= self.high_water and not self.closed:
            if self._room is None:
                self._room = asyncio.Event()
            self._room.clear()
            try:
                await asyncio.wait_for(self._room.wait(), timeout)
            except TimeoutError:
                return False
        return not self.closed

    # -- closing ----------------------------------------------------------------------------

    def overflow(self) -> None:
        """Too far behind: disconnect with a clear code (the client resumes with since)."""
        self.shut(CLOSE_SLOW_CONSUMER, "slow consumer: resume with since")

    def shut(self, code: int, reason: str) -> None:
        """Stop sending, drop what is queued, and close the socket with ``code``."""
        if self.closed:
            return
        self.closed = True
        self.outbox.clear()
        self.live = 0
        self._index = None
        self._dead.clear()
        if self._room is not None:
            self._room.set()
        try:
            result = self._close(code, reason)
        except Exception:
            log.debug("close failed", exc_info=True)
            return
        if result is not None:
            task = asyncio.get_running_loop().create_task(_quietly(result))
            if self._hub is not None:
                self._hub.keep(task)

    def stop(self) -> asyncio.Task[None] | None:
        """The socket is gone: stop the sender (returned, to await if wanted)."""
        self.closed = True
        self.outbox.clear()
        self.live = 0
        if self._room is not None:
            self._room.set()
        sender, self._sender = self._sender, None
        if sender is not None:
            sender.cancel()
        return sender


async def _quietly(awaitable: Awaitable[None]) -> None:
    with contextlib.suppress(Exception):
        await awaitable


class RealtimeHub:
    """Routes log batches to matching subscriptions."""

    def __init__(
        self,
        event_log: EventLog,
        hot: HotProjection,
        *,
        max_replay: int = 500_000,
        replay_page: int = REPLAY_PAGE,
        offload: Callable[..., Awaitable[Any]] = asyncio.to_thread,
    ) -> None:
        self.event_log = event_log
        self.hot = hot
        self.max_replay = max_replay
        self.replay_page = replay_page
        # Runs the event log's blocking reads (a thread by default; tests step it inline).
        self._offload = offload
        self.position = 0
        self.protocols: dict[str, ProtocolFacts] = {}
        self.connections: set[Connection] = set()
        # Subscriptions indexed for routing: by id filter (protocolIds / tokenIds), the
        # rest per channel, alerts by owner.
        self._by_key: dict[str, dict[str, set[Subscription]]] = {c: {} for c in CHANNELS}
        self._unkeyed: dict[str, set[Subscription]] = {c: set() for c in CHANNELS}
        self._alerts: dict[str, set[Subscription]] = {}
        self._per_owner: dict[str, int] = {}
        self._ids = itertools.count(1)
        self._dirty: list[Connection] = []
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._replay_slots: asyncio.Semaphore | None = None

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

    def reserve(self, owner: str, limit: int) -> bool:
        """Count a connection against ``owner``'s limit before accepting it."""
        count = self._per_owner.get(owner, 0)
        if count >= limit:
            return False
        self._per_owner[owner] = count + 1
        return True

    def release(self, owner: str) -> None:
        count = self._per_owner.get(owner, 0) - 1
        if count > 0:
            self._per_owner[owner] = count
        else:
            self._per_owner.pop(owner, None)

    def connections_of(self, owner: str) -> int:
        return self._per_owner.get(owner, 0)

    def connect(self, connection: Connection) -> None:
        connection._hub = self
        self.connections.add(connection)

    def detach(self, connection: Connection) -> asyncio.Task[None] | None:
        """Forget a connection whose socket is gone (synchronous part of ``disconnect``)."""
        if connection in self.connections:
            self.connections.discard(connection)
            if connection.reserved and connection.owner is not None:
                connection.reserved = False
                self.release(connection.owner)
        for subscription in connection.subscriptions.values():
            self._unregister(subscription)
        connection.subscriptions.clear()
        return connection.stop()

    async def disconnect(self, connection: Connection) -> None:
        sender = self.detach(connection)
        if sender is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender

    def keep(self, task: asyncio.Task[None]) -> None:
        """Hold a background task until it ends (the loop keeps only weak references)."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def mark_dirty(self, connection: Connection) -> None:
        self._dirty.append(connection)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Hand every connection's new messages to its transport: one write per connection
        per batch of log entries, however many updates it got."""
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, []
        for connection in dirty:
            connection.flush()

    def sweep(
        self,
        now: float,
        idle_timeout: float,
        heartbeat_interval: float,
        connections: Iterable[Connection] | None = None,
    ) -> None:
        """Close connections idle for ``idle_timeout``; ping the others every interval
        (the ``connections`` given, or all of them)."""
        for connection in list(self.connections) if connections is None else connections:
            if connection.closed:
                continue
            if now - connection.last_seen > idle_timeout:
                connection.shut(CLOSE_IDLE, "idle timeout")
            elif connection.ping is not None and now - connection.last_ping >= heartbeat_interval:
                connection.last_ping = now - random.random() * PING_JITTER * heartbeat_interval
                try:
                    connection.ping()
                except Exception:
                    log.debug("ping failed", exc_info=True)

    async def run_sweeper(self, idle_timeout: float, heartbeat_interval: float) -> None:
        interval = max(0.05, min(1.0, idle_timeout / 4, heartbeat_interval / 2))
        while True:
            await asyncio.sleep(interval)
            connections = list(self.connections)
            for start in range(0, len(connections), SWEEP_SLICE):
                if start:
                    await asyncio.sleep(0)  # let deliveries run between slices
                self.sweep(
                    time.monotonic(),
                    idle_timeout,
                    heartbeat_interval,
                    connections[start : start + SWEEP_SLICE],
                )

    # -- client messages ------------------------------------------------------------------

    async def handle_text(self, connection: Connection, text: str | bytes) -> None:
        """Kept for callers that await; ``receive`` does the work synchronously."""
        self.receive(connection, text)

    def receive(self, connection: Connection, data: str | bytes) -> None:
        """One client frame. Every malformed frame is answered with an ``error``; the
        connection and its other subscriptions stay up."""
        connection.last_seen = time.monotonic()
        request_id: Any = None
        try:
            if _size_in_bytes(data) > MAX_FRAME_BYTES:
                raise FrameError(
                    "frame_too_large", f"frames are limited to {MAX_FRAME_BYTES} bytes"
                )
            try:
                message = json.loads(data)
            except (ValueError, RecursionError):  # RecursionError: nesting too deep
                raise FrameError("invalid_json", "frame is not valid UTF-8 JSON") from None
            if not isinstance(message, dict):
                raise FrameError("invalid_message", "a message is a JSON object with a type")
            request_id = _request_id(message)
            kind = message.get("type")
            if kind == "ping":
                connection.offer_message(
                    _dumps(_with_id({"type": "pong", "position": self.position}, request_id))
                )
            elif kind == "subscribe":
                self._subscribe(connection, message, request_id)
            elif kind == "unsubscribe":
                self._unsubscribe(connection, message, request_id)
            else:
                raise FrameError("unknown_type", f"unknown message type {kind!r}")
        except FrameError as error:
            connection.offer_message(_error(error.code, str(error), request_id))

    def _subscribe(
        self, connection: Connection, message: Mapping[str, Any], request_id: Any
    ) -> None:
        unknown = sorted(set(message) - SUBSCRIBE_FIELDS)
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
        coalesce = message.get("coalesce", False)
        if not isinstance(coalesce, bool):
            raise FrameError("invalid_message", "coalesce must be a boolean")
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
            # Alerts are events, not values: never coalesced.
            coalesce=coalesce and channel != "alerts",
        )
        if since is not None and since != self.position:
            # Live routing skips it until the replay from the log has caught up.
            subscription.replaying = True
        connection.subscriptions[subscription.id] = subscription
        self._register(subscription)
        if since is not None and since > self.position:
            # Beyond what this node has seen: fine if the log has it (the node is catching
            # up), refused if it is beyond the log's head. Announced after the check.
            subscription.floor = since
            self._start_replay(subscription, since, request_id, check_head=True)
            return
        recovered = since is None or self.position - since <= self.max_replay
        connection.offer_message(self._subscribed(subscription, recovered, request_id))
        if subscription.replaying and since is not None:
            start = since if recovered else self.position - self.max_replay
            self._start_replay(subscription, start, request_id, check_head=False)

    def _subscribed(self, subscription: Subscription, recovered: bool, request_id: Any) -> bytes:
        return _dumps(
            _with_id(
                {
                    "type": "subscribed",
                    "subscriptionId": subscription.id,
                    "channel": subscription.channel,
                    "position": self.position,
                    "recovered": recovered,
                },
                request_id,
            )
        )

    def _unsubscribe(
        self, connection: Connection, message: Mapping[str, Any], request_id: Any
    ) -> None:
        subscription_id = message.get("subscriptionId")
        subscription = (
            connection.subscriptions.pop(subscription_id, None)
            if isinstance(subscription_id, str)
            else None
        )
        if subscription is None:
            raise FrameError("unknown_subscription", f"no subscription {subscription_id!r}")
        self._unregister(subscription)
        connection.offer_message(
            _dumps(
                _with_id({"type": "unsubscribed", "subscriptionId": subscription.id}, request_id)
            )
        )

    def _register(self, subscription: Subscription) -> None:
        for bucket in self._buckets(subscription):
            bucket.add(subscription)

    def _unregister(self, subscription: Subscription) -> None:
        subscription.active = False
        for bucket in self._buckets(subscription, create=False):
            bucket.discard(subscription)
        if subscription.channel == "alerts":
            owner = subscription.connection.owner or ""
            if not self._alerts.get(owner, True):
                del self._alerts[owner]
        else:
            index = self._by_key[subscription.channel]
            for key in _ids_of(subscription) or ():
                if not index.get(key, True):
                    del index[key]

    def _buckets(self, subscription: Subscription, create: bool = True) -> list[set[Subscription]]:
        channel = subscription.channel
        if channel == "alerts":
            owner = subscription.connection.owner or ""
            bucket = self._alerts.setdefault(owner, set()) if create else self._alerts.get(owner)
            return [bucket] if bucket is not None else []
        ids = _ids_of(subscription)
        if ids is None:
            return [self._unkeyed[channel]]
        index = self._by_key[channel]
        if create:
            return [index.setdefault(key, set()) for key in ids]
        return [index[key] for key in ids if key in index]

    # -- replay ---------------------------------------------------------------------------

    def _start_replay(
        self, subscription: Subscription, since: int, request_id: Any, *, check_head: bool
    ) -> None:
        task = asyncio.get_running_loop().create_task(
            self._replay(subscription, since, request_id, check_head)
        )
        self.keep(task)

    async def _replay(
        self, subscription: Subscription, since: int, request_id: Any, check_head: bool
    ) -> None:
        """Send every matching update after ``since`` from the log, then go live.

        Live routing skips the subscription meanwhile; the replay keeps reading until it
        has reached the hub's position, and the switch to live follows that check with no
        ``await`` in between: every update is sent once, from the log or live."""
        connection = subscription.connection
        if self._replay_slots is None:
            self._replay_slots = asyncio.Semaphore(MAX_CONCURRENT_REPLAYS)
        try:
            async with self._replay_slots:
                if check_head:
                    head = await self._offload(self.event_log.head)
                    if since > head:
                        self._drop(subscription)
                        connection.offer_message(
                            _error(
                                "invalid_since",
                                f"since {since} is beyond the log head {head}",
                                request_id,
                            )
                        )
                        return
                    if not self._alive(subscription):
                        return
                    connection.offer_message(self._subscribed(subscription, True, request_id))
                position = await self._replay_from_log(subscription, since)
        except Exception:
            log.exception("replay for %s failed", subscription.id)
            self._drop(subscription)
            connection.offer_message(
                _error("replay_failed", "replay failed; subscribe again", request_id)
            )
            return
        if position is not None:
            subscription.replaying = False

    async def _replay_from_log(self, subscription: Subscription, since: int) -> int | None:
        """Replay (since, hub position]; the position reached, or None if it stopped."""
        connection = subscription.connection
        position = since
        while position < self.position:
            if not self._alive(subscription):
                return None
            batch = await self._offload(
                self.event_log.read, position, min(self.replay_page, self.position - position)
            )
            if batch.last == position:
                break
            for entry in batch.entries:
                if entry.position > self.position:
                    break
                channel = _channel_of(entry)
                if channel != subscription.channel or not self._matches(subscription, entry):
                    continue
                if connection.live >= connection.high_water and not (
                    await connection.wait_for_room(REPLAY_SEND_TIMEOUT)
                ):
                    connection.overflow()
                    return None
                if not self._alive(subscription):
                    return None
                # Replayed updates carry change24h: null (the 24 h change as of a past
                # position is not kept; see docs/websocket.md).
                prefix, suffix = _encode(entry, channel, None)
                key = _value_key(entry, subscription) if subscription.coalesce else None
                connection.offer(prefix, subscription.sid, suffix, key)
            position = min(batch.last, self.position)
        return position if self._alive(subscription) else None

    def _alive(self, subscription: Subscription) -> bool:
        return subscription.active and not subscription.connection.closed

    def _drop(self, subscription: Subscription) -> None:
        subscription.connection.subscriptions.pop(subscription.id, None)
        self._unregister(subscription)

    # -- dispatch -------------------------------------------------------------------------

    async def deliver(self, batch: LogBatch) -> None:
        """Route a batch (the node follower guarantees order and no duplicates)."""
        touched = {
            entry.key
            for entry in batch.entries
            if entry.kind == "metric" and entry.data.get("chain") == "total"
        }
        changes: dict[str, float | None] = {}
        if touched and (self._has_subscribers("protocols") or self._has_subscribers("volumes")):
            for view in await self.hot.get_protocols(sorted(touched)):
                changes[view.slug] = view.change_1d
        price_changes: dict[str, float | None] = {}
        tokens = {entry.key for entry in batch.entries if entry.kind == "price"}
        if tokens and self._has_subscribers("prices"):
            for price in await self.hot.prices(sorted(tokens)):
                price_changes[price.token] = price.change_24h
        for entry in batch.entries:
            self._learn(entry)
            change = (
                price_changes.get(entry.key) if entry.kind == "price" else changes.get(entry.key)
            )
            self._route(entry, change)
        self.position = max(self.position, batch.last)
        self.flush()

    def _has_subscribers(self, channel: str) -> bool:
        return bool(self._unkeyed[channel] or self._by_key[channel])

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

    def _candidates(self, entry: LogEntry, channel: str) -> Iterable[Subscription]:
        if channel == "alerts":
            return self._alerts.get(str(entry.data.get("owner")), ())
        keyed = self._by_key[channel].get(entry.key)
        unkeyed = self._unkeyed[channel]
        if keyed and unkeyed:
            return itertools.chain(keyed, unkeyed)
        return keyed or unkeyed

    def _route(self, entry: LogEntry, change: float | None) -> None:
        channel = _channel_of(entry)
        if channel is None:
            return
        encoded: tuple[bytes, bytes] | None = None
        key: str | None = None
        for subscription in self._candidates(entry, channel):
            if not subscription.exact and not self._matches(subscription, entry):
                continue
            if encoded is None:
                encoded = _encode(entry, channel, change)
                key = _value_key(entry, subscription)
            prefix, suffix = encoded
            if subscription.replaying or entry.position <= subscription.floor:
                continue  # the replay reads it from the log, or the client has it
            subscription.connection.offer(
                prefix, subscription.sid, suffix, key if subscription.coalesce else None
            )

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
        found: set[Subscription] = set(self._unkeyed[channel])
        for bucket in self._by_key[channel].values():
            found |= bucket
        if channel == "alerts":
            for bucket in self._alerts.values():
                found |= bucket
        return found


def _ids_of(subscription: Subscription) -> frozenset[str] | None:
    if subscription.channel == "prices":
        return subscription.filter.token_ids
    return subscription.filter.protocol_ids


def _size_in_bytes(data: str | bytes) -> int:
    if isinstance(data, bytes):
        return len(data)
    # Characters count at least one byte: encode only when it could matter.
    if len(data) > MAX_FRAME_BYTES or len(data) * 4 <= MAX_FRAME_BYTES:
        return len(data)
    return len(data.encode("utf-8", "surrogatepass"))


def _request_id(message: Mapping[str, Any]) -> Any:
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


def _with_id(message: dict[str, Any], request_id: Any) -> dict[str, Any]:
    if request_id is not None:
        message["id"] = request_id
    return message


def _error(code: str, message: str, request_id: Any = None) -> bytes:
    return _dumps(_with_id({"type": "error", "code": code, "message": message}, request_id))


def _channel_of(entry: LogEntry) -> str | None:
    if entry.kind == "metric":
        return "protocols" if entry.data.get("metric") == "tvl" else "volumes"
    if entry.kind == "price":
        return "prices"
    if entry.kind in ("alert_triggered", "alert_resolved"):
        return "alerts"
    return None


def _value_key(entry: LogEntry, subscription: Subscription) -> str | None:
    """Which value an update is of: a newer update of the same value may replace it."""
    if subscription.channel == "alerts":
        return None
    if entry.kind == "metric":
        return f"{entry.key}\x00{entry.data.get('metric')}\x00{entry.data.get('chain')}"
    return entry.key


def _encode(entry: LogEntry, channel: str, change: float | None) -> tuple[bytes, bytes]:
    """The message split around the subscription id: prefix + id + suffix."""
    data = entry.data
    if channel == "alerts":
        body = {
            "alertId": entry.key,
            "condition": "firing" if entry.kind == "alert_triggered" else "resolved",
            "data": {"measure": data.get("measure"), "idempotencyKey": data.get("idempotency_key")},
            "timestamp": data.get("observed_at"),
            "position": entry.position,
        }
        return b'{"type":"alert","subscriptionId":"', b'",' + _dumps(body)[1:]
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
    return b'{"type":"update","subscriptionId":"', b'",' + _dumps(body)[1:]
