"""The realtime hub: routes log entries to the subscriptions of connected clients.

It answers client frames (``receive``), routes each batch the node follower hands it
(``deliver``) with the facts of the node's own hot state as of each entry, and hands
subscriptions that need the log (``since``, ``snapshot``, a client that fell behind) to
``Replays``. Transports stay outside: a ``Connection`` is the hub's only view of a socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final

from ..hot_state import EntryFacts, HotState
from ..log import API_KEY_KINDS, LogBatch, LogEntry
from ..ports import ConnectionSlots, EventLog
from ..telemetry import NO_TELEMETRY, Telemetry
from .durable import (
    ACK_INTERVAL,
    Acknowledgements,
    Attachment,
    DurableSubscriptionStore,
    SubscriptionGone,
)
from .frames import Encoded, channel_of, encode, price_snapshot, protocol_snapshot, value_key
from .outbox import Connection
from .protocol import (
    CLOSE_IDLE,
    CLOSE_UNAUTHORIZED,
    SMART_MONEY,
    Ack,
    Attach,
    FrameError,
    Ping,
    Subscribe,
    Unsubscribe,
    decode,
    dumps,
    error_frame,
    parse,
    request_id_of,
    with_id,
)
from .replay import REPLAY_PAGE, SEND_TIMEOUT, Pending, Replays, subscribed
from .slots import LocalConnectionSlots
from .smart_money import SmartMoneyTape, SmartMoneyWatch
from .subscriptions import FilterFacts, Subscription, SubscriptionIndex

log = logging.getLogger(__name__)

# Connections the sweeper checks (and pings) between two turns of the event loop: pinging
# 10,000 sockets in one go held the loop for ~120 ms every heartbeat interval.
SWEEP_SLICE: Final = 256
# A connection's next ping is due up to this share of the interval early, so that sockets
# opened together drift apart instead of being pinged in the same sweep forever.
PING_JITTER: Final = 0.1

_UNKNOWN: Final[Any] = object()


class RealtimeHub:
    """Routes log batches to matching subscriptions.

    ``state`` is the node's own hot state, applied by the node follower before the hub sees
    a batch: each frame's facts (``change24h``, ``late``) and each filter's facts come from
    it as of the entry's position, and snapshots from it as of its position.
    """

    def __init__(
        self,
        event_log: EventLog,
        state: HotState,
        *,
        max_replay: int = 500_000,
        replay_page: int = REPLAY_PAGE,
        send_timeout: float = SEND_TIMEOUT,
        offload: Callable[..., Awaitable[Any]] = asyncio.to_thread,
        telemetry: Telemetry = NO_TELEMETRY,
        durable: DurableSubscriptionStore | None = None,
        ack_interval: float = ACK_INTERVAL,
        address_slots: ConnectionSlots | None = None,
        smart_money: SmartMoneyWatch | None = None,
    ) -> None:
        self.event_log = event_log
        self.telemetry = telemetry
        self.state = state
        self.max_replay = max_replay
        self.position = 0
        self.connections: set[Connection] = set()
        self.index = SubscriptionIndex()
        # The top wallets the smart-money channel streams the trades of (ADR 0051).
        self.smart_money = smart_money or SmartMoneyWatch(None)
        # Runs the event log's blocking reads (a thread by default; tests step it inline).
        self.replays = Replays(
            event_log,
            state,
            lambda: self.position,
            drop=self._unregister,
            offload=offload,
            page=replay_page,
            send_timeout=send_timeout,
            smart_money=self.smart_money,
        )
        self.fell_behind = 0  # subscriptions handed to a replay because their queue was full
        self._per_owner = LocalConnectionSlots()  # connections by key owner, this node's
        # Anonymous connections by client address: every node's when the slots are shared
        # (Redis, ADR 0049), this one's otherwise.
        self.address_slots = address_slots or LocalConnectionSlots()
        self._dirty: list[Connection] = []
        self._flush_scheduled = False
        # One bound method for every connection (made per connection, it was one more
        # object per socket for each full collection to scan).
        self._mark_dirty = self.mark_dirty
        # Durable subscriptions (``attach`` / ``ack``): where they are kept, and the
        # acknowledgements not yet written there.
        self.durable = durable
        self.acks = (
            None
            if durable is None
            else Acknowledgements(
                durable, interval=ack_interval, on_gone=self.durable_closed, telemetry=telemetry
            )
        )
        self._attaching: set[tuple[Connection, str]] = set()
        self._lookups: set[asyncio.Task[None]] = set()

    def close(self) -> None:
        """Stop the replays under way (the node is shutting down)."""
        self.replays.close()
        for task in list(self._lookups):
            task.cancel()
        if self.acks is not None:
            self.acks.close()

    async def flush_acknowledgements(self) -> None:
        """Write the acknowledgements gathered so far (before the node shuts down)."""
        if self.acks is not None:
            await self.acks.aclose()

    async def seed(self, position: int) -> None:
        """Start routing after ``position`` (what the node follower has applied)."""
        self.position = max(self.position, position)

    # -- connections ----------------------------------------------------------------------

    def reserve(self, owner: str, limit: int) -> bool:
        """Count a connection against ``owner``'s limit before accepting it."""
        return self._per_owner.take(owner, limit)

    def release(self, owner: str) -> None:
        self._per_owner.release(owner)

    async def reserve_address(self, address: str, limit: int) -> bool:
        """Count an anonymous connection against its address's limit before accepting it."""
        return await self.address_slots.acquire(address, limit)

    def release_address(self, address: str) -> None:
        self.address_slots.release(address)

    def connections_of(self, owner: str) -> int:
        return self._per_owner.held.get(owner, 0)

    def connect(self, connection: Connection) -> None:
        connection.attach(self._mark_dirty)
        self.connections.add(connection)

    def detach(self, connection: Connection) -> asyncio.Task[None] | None:
        """Forget a connection whose socket is gone (synchronous part of ``disconnect``)."""
        if connection in self.connections:
            self.connections.discard(connection)
            if connection.reserved:
                connection.reserved = False
                if connection.owner is not None:
                    self.release(connection.owner)
                elif connection.address is not None:
                    self.release_address(connection.address)
        for subscription in list(self.index.of(connection).values()):
            self._unregister(subscription)
        self.replays.forget(connection)
        return connection.stop()

    async def disconnect(self, connection: Connection) -> None:
        sender = self.detach(connection)
        if sender is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender

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
        *,
        wall: float | None = None,
    ) -> None:
        """Close connections idle for ``idle_timeout``, and those whose key's grace ended
        (at ``wall``, unix seconds; now by default); ping the others every interval (the
        ``connections`` given, or all of them)."""
        wall = time.time() if wall is None else wall
        for connection in list(self.connections) if connections is None else connections:
            if connection.closed:
                continue
            if connection.valid_until is not None and wall >= connection.valid_until:
                connection.shut(CLOSE_UNAUTHORIZED, "API key rotated out")
            elif now - connection.last_seen > idle_timeout:
                connection.shut(CLOSE_IDLE, "idle timeout")
            elif connection.pings and now - connection.last_ping >= heartbeat_interval:
                connection.last_ping = now - random.random() * PING_JITTER * heartbeat_interval
                try:
                    connection.ping()
                except Exception:
                    log.debug("ping failed", exc_info=True)

    async def run_sweeper(self, idle_timeout: float, heartbeat_interval: float) -> None:
        # At most a second: a rotated-out key's sockets close within a second of its grace.
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

    def receive(self, connection: Connection, data: str | bytes) -> None:
        """One client frame. Every malformed frame is answered with an ``error``; the
        connection and its other subscriptions stay up."""
        connection.last_seen = time.monotonic()
        request_id: str | int | None = None
        try:
            message = decode(data)
            request_id = request_id_of(message)
            request = parse(message)
            if isinstance(request, Ping):
                connection.offer_message(
                    dumps(with_id({"type": "pong", "position": self.position}, request_id))
                )
            elif isinstance(request, Subscribe):
                self._subscribe(connection, request, request_id)
            elif isinstance(request, Unsubscribe):
                self._unsubscribe(connection, request, request_id)
            elif isinstance(request, Attach):
                self._attach(connection, request, request_id)
            elif isinstance(request, Ack):
                self._ack(connection, request, request_id)
        except FrameError as error:
            connection.offer_message(error_frame(error.code, str(error), request_id))

    def _subscribe(
        self, connection: Connection, request: Subscribe, request_id: str | int | None
    ) -> None:
        if request.channel == "alerts" and connection.owner is None:
            raise FrameError("unauthorized", "the alerts channel needs an API key")
        if request.channel == SMART_MONEY and not self.smart_money.serving:
            raise FrameError("invalid_channel", "smart money is not served: no EVM_CHAINS")
        if len(self.index.of(connection)) >= connection.max_subscriptions:
            raise FrameError(
                "too_many_subscriptions",
                f"at most {connection.max_subscriptions} subscriptions per connection",
            )
        since = request.since
        reads_log = request.snapshot or (since is not None and since != self.position)
        if reads_log:
            refused = self.replays.room_for_request(connection)
            if refused is not None:
                raise FrameError("too_many_replays", refused)
        subscription = Subscription(
            id=self.index.next_id(),
            channel=request.channel,
            filter=request.filter,
            connection=connection,
            coalesce=request.coalesce,
        )
        self._open(subscription, since, request.snapshot, request_id)

    def _open(
        self,
        subscription: Subscription,
        since: int | None,
        snapshot: bool,
        request_id: str | int | None,
    ) -> None:
        """Add a checked subscription: live now, or after a replay or a snapshot."""
        connection = subscription.connection
        self.index.add(subscription)
        if snapshot:
            # The current values as of the state's position, then the log after it.
            position = self.state.position
            connection.offer_message(subscribed(subscription, position, True, request_id))
            self.replays.start(
                Pending(
                    subscription,
                    after=position,
                    prelude=self._snapshot(subscription, position),
                    requested=True,
                )
            )
        elif since is None or since == self.position:
            connection.offer_message(subscribed(subscription, self.position, True, request_id))
        elif since > self.position:
            # Beyond what this node has delivered: fine if the log has it (the node is
            # catching up), refused beyond the log's head. Announced after the check.
            self.replays.start(
                Pending(
                    subscription, after=since, announce=True, request_id=request_id, requested=True
                )
            )
        else:
            recovered = self.position - since <= self.max_replay
            connection.offer_message(subscribed(subscription, self.position, recovered, request_id))
            start = since if recovered else self.position - self.max_replay
            self.replays.start(
                Pending(subscription, after=start, request_id=request_id, requested=True)
            )

    # -- durable subscriptions --------------------------------------------------------------

    def _attach(
        self, connection: Connection, request: Attach, request_id: str | int | None
    ) -> None:
        """Re-attach to a durable subscription: looked up (ownership checked) off the
        event loop, then replayed from its acknowledged position like ``since``."""
        if self.durable is None:
            raise FrameError("unknown_subscription", "durable subscriptions are not served here")
        owner = connection.owner
        if owner is None:
            raise FrameError("unauthorized", "durable subscriptions need an API key")
        self._check_attach(connection, request.subscription_id)
        attaching = (connection, request.subscription_id)
        self._attaching.add(attaching)
        task = asyncio.get_running_loop().create_task(
            self._attach_found(connection, owner, request.subscription_id, request_id)
        )
        self._lookups.add(task)
        task.add_done_callback(self._lookups.discard)
        task.add_done_callback(lambda _task: self._attaching.discard(attaching))

    def _check_attach(self, connection: Connection, subscription_id: str) -> None:
        if (
            subscription_id in self.index.of(connection)
            or (connection, subscription_id) in self._attaching
        ):
            raise FrameError("already_attached", f"{subscription_id!r} is attached already")
        held = len(self.index.of(connection)) + sum(
            1 for attaching, _ in self._attaching if attaching is connection
        )
        if held >= connection.max_subscriptions:
            raise FrameError(
                "too_many_subscriptions",
                f"at most {connection.max_subscriptions} subscriptions per connection",
            )
        refused = self.replays.room_for_request(connection)
        if refused is not None:
            raise FrameError("too_many_replays", refused)

    async def _attach_found(
        self, connection: Connection, owner: str, subscription_id: str, request_id: str | int | None
    ) -> None:
        assert self.durable is not None
        assert self.acks is not None
        try:
            found: Attachment | None = await self.durable.attach(owner, subscription_id)
        except SubscriptionGone:
            found = None
        except Exception:
            log.exception("looking up a durable subscription failed")
            if not connection.closed:
                connection.offer_message(
                    error_frame("replay_failed", "looking it up failed; attach again", request_id)
                )
            return
        if connection.closed:
            return
        if found is None:
            connection.offer_message(
                error_frame(
                    "unknown_subscription", f"no subscription {subscription_id!r}", request_id
                )
            )
            return
        self._attaching.discard((connection, subscription_id))
        try:
            # Again: frames handled during the lookup may have changed the answer.
            self._check_attach(connection, subscription_id)
        except FrameError as error:
            connection.offer_message(error_frame(error.code, str(error), request_id))
            return
        subscription = Subscription(
            id=found.id,
            channel=found.channel,
            filter=found.filter,
            connection=connection,
            coalesce=False,  # every update is acknowledged: none may be replaced
        )
        subscription.durable = True
        # After the latest acknowledgement this node holds, written or not yet.
        since = max(found.position, self.acks.latest(found.id))
        subscription.acknowledged = since
        self._open(subscription, since, False, request_id)

    def _ack(self, connection: Connection, request: Ack, request_id: str | int | None) -> None:
        subscription = self.index.of(connection).get(request.subscription_id)
        if subscription is None or not subscription.durable or self.acks is None:
            raise FrameError(
                "unknown_subscription",
                f"no durable subscription {request.subscription_id!r} on this connection",
            )
        # Never beyond what it can have been sent: the hub's position, or where it was
        # re-attached after (that may lie beyond this node's position).
        bound = max(self.position, subscription.floor, subscription.acknowledged or 0)
        if request.position > bound:
            raise FrameError(
                "invalid_ack", f"position {request.position} is beyond what was sent ({bound})"
            )
        assert connection.owner is not None  # attached: it has a key
        self.acks.record(
            subscription.id, connection.owner, request.position, connection, request_id
        )

    def durable_closed(self, subscription_id: str) -> None:
        """A durable subscription was deleted: the connections attached to it are told
        and it sends nothing more."""
        for connection in list(self.connections):
            subscription = self.index.of(connection).get(subscription_id)
            if subscription is not None and subscription.durable:
                self._unregister(subscription)
                connection.offer_message(
                    error_frame(
                        "subscription_closed", f"subscription {subscription_id!r} was deleted"
                    )
                )

    def _snapshot(self, subscription: Subscription, position: int) -> list[tuple[Encoded, str]]:
        """The current value of every id the subscription matches, as frames at
        ``position``, in id order."""
        state = self.state
        frames: list[tuple[Encoded, str]] = []
        ids = subscription.ids()
        if subscription.channel == "prices":
            tokens = state.tokens
            for token in sorted(tokens if ids is None else ids & tokens.keys()):
                frames.append((price_snapshot(tokens[token], position), token))
            return frames
        protocols = state.protocols
        for slug in sorted(protocols if ids is None else ids & protocols.keys()):
            protocol = protocols[slug]
            facts = None if subscription.exact else FilterFacts.of(protocol)
            for chain, key, encoded in protocol_snapshot(protocol, subscription.channel, position):
                if subscription.matches(slug, chain, facts):
                    frames.append((encoded, key))
        return frames

    def _unsubscribe(
        self, connection: Connection, request: Unsubscribe, request_id: str | int | None
    ) -> None:
        subscription = self.index.of(connection).get(request.subscription_id)
        if subscription is None:
            raise FrameError("unknown_subscription", f"no subscription {request.subscription_id!r}")
        self._unregister(subscription)
        connection.offer_message(
            dumps(with_id({"type": "unsubscribed", "subscriptionId": subscription.id}, request_id))
        )

    def _unregister(self, subscription: Subscription) -> None:
        self.index.remove(subscription)

    # -- dispatch -------------------------------------------------------------------------

    async def deliver(self, batch: LogBatch) -> None:
        """Route a batch (the node follower guarantees order and no duplicates, and has
        applied it to ``state`` first)."""
        facts = self.state.facts
        recorded: list[float] = []
        for entry in batch.entries:
            if entry.kind in API_KEY_KINDS:
                self._key_changed(entry)
            elif self._route(entry, facts.get(entry.position)):
                recorded.append(entry.recorded_at)
        self.position = max(self.position, batch.last)
        self.flush()
        if recorded:
            # After the flush: the frames are with the transports now (the lean transport
            # writes them to its socket in ``flush``). One value per entry, not per socket.
            now = time.time()
            self.telemetry.entries_delivered([now - at for at in recorded])

    def _key_changed(self, entry: LogEntry, now: float | None = None) -> None:
        """A key was revoked (its sockets close now, 4001) or rotated out (they close when
        its grace ends: the sweeper's business)."""
        if entry.kind == "api_key_revoked":
            until = 0.0
        elif entry.kind == "api_key_rotated_out":
            until = float(entry.data["grace_until"])
        else:
            return
        now = time.time() if now is None else now
        # A scan of every socket: revocations are rare, and a per-key index would cost
        # every connection an entry for the sake of them.
        for connection in list(self.connections):
            if connection.key_id != entry.key or connection.closed:
                continue
            if until <= now:
                connection.shut(CLOSE_UNAUTHORIZED, "API key revoked")
            elif connection.valid_until is None or until < connection.valid_until:
                connection.valid_until = until

    def _route(self, entry: LogEntry, facts: EntryFacts | None) -> bool:
        """Offer ``entry`` to its subscriptions; True if some connection took it."""
        channel = channel_of(entry)
        if channel is None:
            return False
        index = self.index
        if not index.has_subscribers(channel) and channel != "alerts":
            return False
        taken = False
        encoded: Encoded | None = None
        key: str | None = None
        filter_facts: Any = _UNKNOWN
        tape: SmartMoneyTape | None = None
        chain = entry.data.get("chain")
        for subscription in index.candidates(channel, entry.key, entry.data.get("owner")):
            if not subscription.exact:
                if filter_facts is _UNKNOWN:
                    filter_facts = FilterFacts.as_of(entry.key, facts, self.state)
                if not subscription.matches(entry.key, chain, filter_facts):
                    continue
            if subscription.replaying or entry.position <= subscription.floor:
                continue  # a replay sends it from the log, or the client has it
            if channel == SMART_MONEY:
                # A frame per filter, not per entry (realtime/smart_money.py).
                tape = tape or self.smart_money.tape(entry)
                encoded = tape.frame(subscription.filter.smart_money)
                if encoded is None:
                    continue
            elif encoded is None:
                encoded = encode(entry, channel, facts)
                key = None if channel == "alerts" else value_key(entry)
            connection = subscription.connection
            if connection.offer(
                encoded[0], subscription.sid, encoded[1], key if subscription.coalesce else None
            ):
                taken = True
            elif not connection.closed:
                # Its queue is full: the rest comes from the log at the client's pace (and
                # a client that stopped reading is closed there).
                self.fell_behind += 1
                self.replays.start(Pending(subscription, after=entry.position - 1))
        return taken

    def subscriptions(self, channel: str) -> Iterable[Subscription]:
        return self.index.of_channel(channel)
