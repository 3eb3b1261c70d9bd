"""One client socket's outbox: the bounded queue between the hub and the transport.

Transport-free: a ``Connection`` is handed either an async ``send_text`` (the Starlette
endpoint) or a synchronous ``write`` of whole messages (the lean asyncio transport,
``entrypoints/ws_transport.py``), plus a ``close``. Queues hold the shared, once-encoded
parts of each update (prefix, subscription id, suffix), so fan-out costs no JSON encoding
and little memory per client.

A connection is one of the few objects a node holds per socket, and every full collection
of the garbage collector scans them all (ADR 0054): it keeps no per-socket bound methods
(the lean transport is its ``Sink``; callables are held by one ``Callbacks``) and no empty
containers (an idle outbox is a shared empty deque, the coalescing bookkeeping is made when
first needed).

Backpressure judges the client, not the batch: ``offer`` refuses an update when the queue is
at its bound (the hub then brings that subscription up to date from the log, paced by the
client), and past half the bound an update replaces the queued-but-unsent update of the
same value for subscriptions that asked for ``coalesce``. A connection is closed with 4008
only when its client stops reading (``wait_for_room`` times out).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, Protocol

from .protocol import CLOSE_SLOW_CONSUMER

log = logging.getLogger(__name__)

# Messages taken from an outbox per write (bounds one write's size).
WRITE_CHUNK: Final = 128
# Control replies (pong, subscribed, error) may exceed the bound by this much before the
# connection counts as not reading: a client that sends but never reads cannot grow it.
CONTROL_HEADROOM: Final = 64

# One queued message: prefix + subscription id + suffix, and its coalescing key (or None).
Slot = tuple[bytes, str]
Item = tuple[bytes, bytes, bytes, Slot | None]
Write = Callable[[Sequence[Item]], None]


class SendCounts(Protocol):
    """Where connections count what they send and why they close: one object shared by
    every connection of a gateway (a reference each, no per-connection wrapper), read by
    the metrics."""

    frames: int
    size: int
    closes: Counter[int]


Close = Callable[[int, str], Awaitable[None] | None]


class Sink(Protocol):
    """What a connection writes to: the transport of its socket. The lean transport is
    its own sink, so a connection holds one reference to it, not a bound method each."""

    def write_items(self, items: Sequence[Item]) -> None:
        """Write whole messages (synchronous; flow control through ``pause``/``resume``)."""

    def write_ping(self) -> None:
        """Send a heartbeat ping."""

    def close_from_hub(self, code: int, reason: str) -> Awaitable[None] | None:
        """Close the socket with ``code``."""


class Callbacks:
    """A ``Sink`` made of callables (the Starlette endpoint, tests): one object holding them."""

    __slots__ = ("_close", "_ping", "_write")

    def __init__(
        self, close: Close, write: Write | None, ping: Callable[[], None] | None = None
    ) -> None:
        self._close = close
        self._write = write
        self._ping = ping

    def write_items(self, items: Sequence[Item]) -> None:
        assert self._write is not None
        self._write(items)

    def write_ping(self) -> None:
        if self._ping is not None:
            self._ping()

    def close_from_hub(self, code: int, reason: str) -> Awaitable[None] | None:
        return self._close(code, reason)


# The outbox of a connection with nothing queued: shared, never appended to (``maxlen=0``
# would drop an append rather than hand it to another connection); ``_queue`` gives the
# connection its own deque, ``_take`` puts this back once it is empty.
_IDLE: Final[deque[Item]] = deque(maxlen=0)


class Connection:
    """One client socket: its owner (API key), its address and a bounded outbox.

    Give it a ``sink`` or ``write`` (synchronous, whole messages; the transport calls
    ``pause`` / ``resume`` for flow control) or ``send_text`` (async, one frame at a time).
    With ``batch`` every frame is a JSON array of one or more messages.
    """

    __slots__ = (
        "_closing",
        "_dead",
        "_dirty",
        "_index",
        "_on_dirty",
        "_room",
        "_send_text",
        "_sender",
        "_sink",
        "_tally",
        "address",
        "batch",
        "closed",
        "coalesced",
        "high_water",
        "key_id",
        "last_ping",
        "last_seen",
        "live",
        "max_queue",
        "max_subscriptions",
        "outbox",
        "owner",
        "pings",
        "reserved",
        "valid_until",
        "writable",
    )

    def __init__(
        self,
        owner: str | None,
        *,
        close: Close | None = None,
        sink: Sink | None = None,
        send_text: Callable[[str], Awaitable[None]] | None = None,
        write: Write | None = None,
        ping: Callable[[], None] | None = None,
        max_queue: int = 1_000,
        max_subscriptions: int = 50,
        batch: bool = False,
        address: str | None = None,
        tally: SendCounts | None = None,
        key_id: str | None = None,
        valid_until: float | None = None,
    ) -> None:
        if (send_text is None) + (write is None) + (sink is None) != 2:
            raise ValueError("give a connection exactly one of sink, send_text or write")
        if sink is None:
            if close is None:
                raise ValueError("a connection without a sink needs close")
            sink = Callbacks(close, write, ping)
        elif close is not None or ping is not None:
            raise ValueError("a sink closes and pings itself: no close or ping with it")
        self.owner = owner
        # The API key the socket was opened with (its id): revoking the key closes it, and
        # a rotated-out key's sockets close when its grace ends (``valid_until``, unix s).
        self.key_id = key_id
        self.valid_until = valid_until
        self.address = address  # the peer's IP address (replays are bounded per address)
        self._sink = sink
        self._send_text = send_text
        self._tally = tally
        # Whether the heartbeat pings it (a sink given, or a ping callable).
        self.pings = ping is not None or not isinstance(sink, Callbacks)
        self.max_queue = max(1, max_queue)
        self.high_water = max(1, self.max_queue // 2)
        self.max_subscriptions = max_subscriptions
        self.batch = batch
        self.closed = False
        self.writable = True
        self.reserved = False  # counted against the owner's connection limit
        self.outbox: deque[Item] = _IDLE
        self.live = 0  # queued messages not replaced by a newer value
        self.coalesced = 0  # how many queued updates were replaced (for metrics and tests)
        self._index: dict[Slot, Item] | None = None
        self._dead: set[int] | None = None  # ids of replaced items still in the outbox
        self._dirty = False
        self._room: asyncio.Event | None = None
        self._sender: asyncio.Task[None] | None = None
        self._on_dirty: Callable[[Connection], None] | None = None
        self._closing: asyncio.Task[None] | None = None
        self.last_seen = self.last_ping = time.monotonic()

    def attach(self, on_dirty: Callable[[Connection], None]) -> None:
        """Have ``on_dirty`` told when the queue gets new messages (the hub then hands all
        dirty queues to their transports at once); without it, every offer writes."""
        self._on_dirty = on_dirty

    # -- queueing (synchronous: called by the hub while routing) -------------------------

    def offer_message(self, payload: bytes) -> bool:
        """Queue a whole message (a control reply): past the bound by ``CONTROL_HEADROOM``
        the client is not reading and is closed."""
        if self.live >= self.max_queue + CONTROL_HEADROOM:
            self.overflow()
            return False
        return self._queue((payload, b"", b"", None))

    def offer(self, prefix: bytes, sid: bytes, suffix: bytes, key: str | None) -> bool:
        """Queue ``prefix + sid + suffix``; False if the connection is closed or its queue
        is at the bound (nothing queued: the caller decides what the client misses)."""
        if self.closed:
            return False
        item: Item = (prefix, sid, suffix, None)
        if key is not None and self.live >= self.high_water:
            # Lagging: latest value per (subscription, value key) wins.
            index = self._index
            if index is None:
                index = self._index = {}
            slot: Slot = (sid, key)
            item = (prefix, sid, suffix, slot)
            old = index.get(slot)
            if old is None:
                if self.live >= self.max_queue:
                    return False
            else:
                if self._dead is None:
                    self._dead = set()
                self._dead.add(id(old))
                self.live -= 1
                self.coalesced += 1
            index[slot] = item
        elif self.live >= self.max_queue:
            return False
        return self._queue(item)

    def _queue(self, item: Item) -> bool:
        if self.closed:
            return False
        outbox = self.outbox
        if outbox is _IDLE:
            outbox = self.outbox = deque()
        outbox.append(item)
        self.live += 1
        if len(outbox) > 2 * self.max_queue:
            self._compact()
        if not self._dirty:
            self._dirty = True
            if self._on_dirty is not None:
                self._on_dirty(self)
            else:
                self.flush()
        return True

    def _compact(self) -> None:
        dead = self._dead
        if dead:
            self.outbox = deque(item for item in self.outbox if id(item) not in dead)
        self._dead = None

    def _take(self, limit: int) -> list[Item]:
        """Up to ``limit`` live messages from the head of the outbox."""
        taken: list[Item] = []
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
            self.outbox = _IDLE
            self._index = self._dead = None
        if self._room is not None and self.live < self.high_water // 2 + 1:
            self._room.set()
        return taken

    def _batched(self, items: list[Item]) -> Item:
        body = b",".join(prefix + sid + suffix for prefix, sid, suffix, _ in items)
        return (b"[", body, b"]", None)

    def flush(self) -> None:
        """Hand queued messages to the transport (as far as it takes them)."""
        self._dirty = False
        if self.closed or not self.outbox:
            return
        if self._send_text is not None:
            if self._sender is None:
                self._sender = asyncio.get_running_loop().create_task(self._send_loop())
            return
        while self.outbox and self.writable and not self.closed:
            items = self._take(WRITE_CHUNK)
            if not items:
                break
            written = [self._batched(items)] if self.batch else items
            try:
                self._sink.write_items(written)
            except Exception:
                log.debug("write failed; closing", exc_info=True)
                self.closed = True
                return
            tally = self._tally
            if tally is not None:
                tally.frames += len(written)
                size = 0
                for prefix, sid, suffix, _ in written:  # a loop: half a generator's cost
                    size += len(prefix) + len(sid) + len(suffix)
                tally.size += size

    def ping(self) -> None:
        """Send a heartbeat ping (when ``pings``)."""
        self._sink.write_ping()

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
                tally = self._tally
                for prefix, sid, suffix, _ in items:
                    await send_text((prefix + sid + suffix).decode())
                    if tally is not None:
                        tally.frames += 1
                        tally.size += len(prefix) + len(sid) + len(suffix)
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
                async with asyncio.timeout(timeout):
                    await self._room.wait()
            except TimeoutError:
                return False
        return not self.closed

    # -- closing ----------------------------------------------------------------------------

    def overflow(self) -> None:
        """The client stopped reading: disconnect with a clear code (it resumes with since)."""
        self.shut(CLOSE_SLOW_CONSUMER, "slow consumer: resume with since")

    def shut(self, code: int, reason: str) -> None:
        """Stop sending, drop what is queued, and close the socket with ``code``."""
        if self.closed:
            return
        self.closed = True
        self.outbox = _IDLE
        self.live = 0
        self._index = self._dead = None
        if self._room is not None:
            self._room.set()
        if self._tally is not None:
            self._tally.closes[code] += 1
        try:
            result = self._sink.close_from_hub(code, reason)
        except Exception:
            log.debug("close failed", exc_info=True)
            return
        if result is not None:
            # Held here: the loop keeps only weak references to tasks.
            self._closing = asyncio.get_running_loop().create_task(_quietly(result))

    def stop(self) -> asyncio.Task[None] | None:
        """The socket is gone: stop the sender (returned, to await if wanted)."""
        self.closed = True
        self.outbox = _IDLE
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
