"""Bringing a connection's subscriptions up to date from the log, then live.

Three things read back: ``since`` (a client resuming), ``snapshot`` (the current values
first, then what the log adds after them), and a subscription whose client fell behind
(its queue was full when an update came: the rest comes from the log at the client's pace).
Each connection has at most one replay task, reading the log once for all of its
subscriptions under way; the hub runs at most ``MAX_CONCURRENT_REPLAYS`` of them at once,
and each yields to live traffic between pages.

No gap, no duplicate: live routing skips a subscription while it is replaying; the replay
reads the log up to the hub's position, again and again while the hub moves on, and switches
the subscription to live right after the check that it has caught up, with no ``await`` in
between. A subscription whose start lies beyond the hub's position (the client has seen
more than this node delivered) goes live with a ``floor``: updates up to it are not sent.

Requests are bounded: ``since`` and ``snapshot`` subscriptions under way at once are limited
per connection and per client address (``too_many_replays``). Catching up after falling
behind is never refused: the client did nothing wrong.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

from ..hot_state import HotState
from ..log import LogEntry
from ..ports import EventLog
from .frames import Encoded, channel_of, encode, value_key
from .outbox import Connection
from .protocol import SMART_MONEY, dumps, error_frame, with_id
from .smart_money import SmartMoneyTape, SmartMoneyWatch
from .subscriptions import FilterFacts, Subscription

log = logging.getLogger(__name__)

REPLAY_PAGE: Final = 2_000
MAX_CONCURRENT_REPLAYS: Final = 8
# ``since`` / ``snapshot`` subscriptions being brought up to date at once.
MAX_REPLAYS_PER_CONNECTION: Final = 4
MAX_REPLAYS_PER_ADDRESS: Final = 8
# How long a replay waits for room in a client's queue before judging it not reading
# (``WS_SEND_TIMEOUT``).
SEND_TIMEOUT: Final = 10.0
# Entries handled between two turns of the event loop (live deliveries go first).
YIELD_EVERY: Final = 256


@dataclass(slots=True)
class Pending:
    """One subscription on its way to live."""

    subscription: Subscription
    # Entries after this position come from the log.
    after: int
    # Snapshot frames to send first: (frame, value key).
    prelude: list[tuple[Encoded, str]] = field(default_factory=list)
    # ``since`` beyond the hub's position: check the log's head, then announce.
    announce: bool = False
    request_id: str | int | None = None
    # A client's request (since, snapshot): counted against the bounds.
    requested: bool = False


@dataclass(slots=True)
class _Replay:
    connection: Connection
    pending: dict[str, Pending] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None


class Replays:
    """The replays of one hub."""

    def __init__(
        self,
        event_log: EventLog,
        state: HotState,
        position: Callable[[], int],
        *,
        drop: Callable[[Subscription], None],
        offload: Callable[..., Awaitable[Any]],
        page: int = REPLAY_PAGE,
        send_timeout: float = SEND_TIMEOUT,
        per_connection: int = MAX_REPLAYS_PER_CONNECTION,
        per_address: int = MAX_REPLAYS_PER_ADDRESS,
        smart_money: SmartMoneyWatch | None = None,
    ) -> None:
        self.event_log = event_log
        self.state = state
        self._position = position
        self._unregister = drop
        self._offload = offload
        self.page = page
        self.send_timeout = send_timeout
        self.per_connection = per_connection
        self.per_address = per_address
        self.smart_money = smart_money or SmartMoneyWatch(None)
        self._replays: dict[Connection, _Replay] = {}
        self._per_address: dict[str, int] = {}
        self._slots: asyncio.Semaphore | None = None

    # -- bookkeeping ------------------------------------------------------------------------

    def room_for_request(self, connection: Connection) -> str | None:
        """Why a new ``since`` / ``snapshot`` request is refused now, or None."""
        replay = self._replays.get(connection)
        mine = sum(p.requested for p in replay.pending.values()) if replay else 0
        if mine >= self.per_connection:
            return f"at most {self.per_connection} replays or snapshots per connection at once"
        address = connection.address
        if address is not None and self._per_address.get(address, 0) >= self.per_address:
            return f"at most {self.per_address} replays or snapshots per address at once"
        return None

    def under_way(self) -> int:
        return sum(len(replay.pending) for replay in self._replays.values())

    def start(self, pending: Pending) -> None:
        """Bring ``pending.subscription`` up to date (it is marked replaying)."""
        subscription = pending.subscription
        connection = subscription.connection
        subscription.replaying = True
        replay = self._replays.get(connection)
        if replay is None:
            replay = self._replays[connection] = _Replay(connection)
        replay.pending[subscription.id] = pending
        if pending.requested and connection.address is not None:
            self._per_address[connection.address] = self._per_address.get(connection.address, 0) + 1
        if replay.task is None:
            replay.task = asyncio.get_running_loop().create_task(self._run(replay))

    def _finish(self, replay: _Replay, pending: Pending) -> None:
        if replay.pending.pop(pending.subscription.id, None) is None:
            return
        address = replay.connection.address
        if pending.requested and address is not None:
            left = self._per_address.get(address, 0) - 1
            if left > 0:
                self._per_address[address] = left
            else:
                self._per_address.pop(address, None)

    def close(self) -> None:
        """Stop every replay (a read in a thread ends on its own: the event log's ``close``
        waits for it before the store closes)."""
        for replay in list(self._replays.values()):
            if replay.task is not None:
                replay.task.cancel()

    def forget(self, connection: Connection) -> None:
        """The connection is gone: its replay stops at its next step."""
        replay = self._replays.pop(connection, None)
        if replay is not None:
            for pending in list(replay.pending.values()):
                self._finish(replay, pending)

    # -- the task ---------------------------------------------------------------------------

    async def _run(self, replay: _Replay) -> None:
        connection = replay.connection
        try:
            await self._drive(replay)
        except Exception:
            log.exception("replay for a connection failed")
            for pending in list(replay.pending.values()):
                self._finish(replay, pending)
                self._drop(pending.subscription)
                connection.offer_message(
                    error_frame(
                        "replay_failed", "replay failed; subscribe again", pending.request_id
                    )
                )
        finally:
            # Done, failed, cancelled or the client gone (``_drive`` returns only then).
            replay.task = None
            if self._replays.get(connection) is replay:
                self.forget(connection)

    async def _drive(self, replay: _Replay) -> None:
        connection = replay.connection
        while replay.pending and not connection.closed:
            for pending in list(replay.pending.values()):
                if not pending.subscription.alive:
                    self._finish(replay, pending)
                elif pending.announce and not await self._announce(replay, pending):
                    continue
                elif pending.prelude and not await self._send_prelude(pending):
                    return
            # Those that joined during the awaits above wait for the next round: a page is
            # read for the subscriptions that were ready when it was asked for.
            ready = [p for p in replay.pending.values() if not (p.announce or p.prelude)]
            hub_position = self._position()
            behind = [p for p in ready if p.after < hub_position]
            if not behind:
                # Caught up: live from here, with no await since the check.
                for pending in ready:
                    subscription = pending.subscription
                    subscription.floor = max(subscription.floor, pending.after)
                    subscription.replaying = False
                    self._finish(replay, pending)
                continue
            if not await self._room(connection):
                return
            cursor = min(p.after for p in behind)
            room = max(1, connection.max_queue - connection.live)
            if self._slots is None:
                self._slots = asyncio.Semaphore(MAX_CONCURRENT_REPLAYS)
            async with self._slots:
                batch = await self._offload(
                    self.event_log.read, cursor, min(self.page, room, hub_position - cursor)
                )
            if batch.last <= cursor:
                raise RuntimeError(f"the log ends at {batch.last}, below the hub's {hub_position}")
            for done, entry in enumerate(batch.entries, 1):
                if entry.position > hub_position:
                    break
                if not await self._send(replay, behind, entry):
                    return
                if done % YIELD_EVERY == 0:
                    await asyncio.sleep(0)
            reached = min(batch.last, hub_position)
            for pending in behind:
                pending.after = max(pending.after, reached)
            await asyncio.sleep(0)  # live deliveries before the next page

    async def _announce(self, replay: _Replay, pending: Pending) -> bool:
        """``since`` beyond the hub's position: refused past the log's head."""
        head = await self._offload(self.event_log.head)
        subscription = pending.subscription
        if not subscription.alive:
            self._finish(replay, pending)
            return False
        if pending.after > head:
            self._finish(replay, pending)
            self._drop(subscription)
            subscription.connection.offer_message(
                error_frame(
                    "invalid_since",
                    f"since {pending.after} is beyond the log head {head}",
                    pending.request_id,
                )
            )
            return False
        pending.announce = False
        subscription.connection.offer_message(
            subscribed(subscription, self._position(), True, pending.request_id)
        )
        return True

    async def _send_prelude(self, pending: Pending) -> bool:
        subscription, connection = pending.subscription, pending.subscription.connection
        prelude, pending.prelude = pending.prelude, []
        for (prefix, suffix), key in prelude:
            if not await self._room(connection):
                return False
            if not subscription.alive:
                break
            connection.offer(
                prefix, subscription.sid, suffix, key if subscription.coalesce else None
            )
        return True

    async def _send(self, replay: _Replay, members: list[Pending], entry: LogEntry) -> bool:
        """Send ``entry`` to those of ``members`` still under way it is news to."""
        channel = channel_of(entry)
        if channel is None:
            return True
        encoded: Encoded | None = None
        tape: SmartMoneyTape | None = None
        facts = self.state.facts.get(entry.position)
        filter_facts = (
            FilterFacts.as_of(entry.key, facts, self.state)
            if channel != "alerts" and any(not p.subscription.exact for p in members)
            else None
        )
        for pending in members:
            subscription = pending.subscription
            if (
                pending.after >= entry.position
                or subscription.channel != channel
                or replay.pending.get(subscription.id) is not pending
            ):
                continue
            if channel == "alerts":
                if entry.data.get("owner") != subscription.connection.owner:
                    continue
            elif not subscription.matches(entry.key, entry.data.get("chain"), filter_facts):
                continue
            connection = subscription.connection
            if not await self._room(connection):
                return False
            if not subscription.alive:
                continue
            if channel == SMART_MONEY:
                # By the ranking of now, not of when the entry was recorded.
                tape = tape or self.smart_money.tape(entry)
                encoded = tape.frame(subscription.filter.smart_money)
                if encoded is None:
                    continue
            elif encoded is None:
                encoded = encode(entry, channel, facts)
            key = value_key(entry) if subscription.coalesce else None
            connection.offer(encoded[0], subscription.sid, encoded[1], key)
        return True

    async def _room(self, connection: Connection) -> bool:
        """Wait until the client has read its queue below half; close it if it stopped."""
        if connection.live >= connection.high_water and not (
            await connection.wait_for_room(self.send_timeout)
        ):
            connection.overflow()
            return False
        return not connection.closed

    def _drop(self, subscription: Subscription) -> None:
        self._unregister(subscription)


def subscribed(
    subscription: Subscription, position: int, recovered: bool, request_id: str | int | None
) -> bytes:
    reply: dict[str, Any] = {
        "type": "subscribed",
        "subscriptionId": subscription.id,
        "channel": subscription.channel,
        "position": position,
        "recovered": recovered,
    }
    if subscription.acknowledged is not None:
        reply["acknowledged"] = subscription.acknowledged
    return dumps(with_id(reply, request_id))
