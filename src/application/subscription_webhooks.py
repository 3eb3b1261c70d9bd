"""Webhook delivery of durable subscriptions: one cursor per subscription over the log.

A ``webhook`` subscription is not attached by a client: the server reads the log after the
subscription's stored position, gathers the matching updates (the frames a socket attached
to it would get, read back from the log) and POSTs them as one signed batch
(``WebhookSender``: the alert webhooks' signature, headers and SSRF guard). Only a 2xx
advances the stored position, to the batch's last position; a failure keeps the batch and
sends it again, unchanged (same body, same ``X-Idempotency-Key``
``<subscription id>:<after>-<through>``), after the ``RetryPolicy``'s back-off, for as long
as it takes: a cursor cannot skip a batch without a gap, so there is no dead letter.

Order and gap-freedom come from the cursor, not from a queue (docs/adr/0043): batch ``n+1``
starts where batch ``n`` was stored. At least once in between: a process that stops after
a 2xx and before its write sends the range again from the stored position (possibly
reaching further); a receiver drops the updates at or below the last position it processed.

Ranges with no match are not posted; the cursor moves over them in memory and stores the
position at most every ``idle_write`` seconds (so that a quiet subscription neither writes
an event per tick nor re-reads a long stretch of log after a restart).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from .delivery import RetryPolicy
from .hot_state import HotState
from .log import LogEntry
from .ports import EventLog, WebhookSender
from .realtime.frames import channel_of, encode
from .realtime.protocol import Filter
from .realtime.subscriptions import FilterFacts, filter_matches

__all__ = ["SubscriptionWebhooks", "WebhookBatch", "WebhookTarget"]

log = logging.getLogger(__name__)

# Updates in one POST at most (a receiver answers within the webhook timeout).
BATCH_SIZE: Final = 100
# Log positions read per page, and pages read per batch at most (a subscription matching
# nothing in a long stretch of log yields between pages, and between batches).
PAGE: Final = 2_000
PAGES_PER_BATCH: Final = 5
# Batches posted per subscription per tick at most (others get their turn).
BATCHES_PER_TICK: Final = 10
# Subscriptions posted to at once (a slow receiver holds only its own cursor).
CONCURRENCY: Final = 16
IDLE_WRITE: Final = 30.0
INTERVAL: Final = 0.5


@dataclass(frozen=True, slots=True)
class WebhookTarget:
    """A webhook-delivered subscription as the delivering loop needs it."""

    id: str
    owner: str
    channel: str
    filter: Filter
    url: str
    secret: str | None
    # The stored position: every matching update after it is still to be delivered.
    position: int


@dataclass(frozen=True, slots=True)
class WebhookBatch:
    """The matching updates of log positions ``after + 1 .. through``, in order."""

    subscription_id: str
    after: int
    through: int
    updates: tuple[Mapping[str, Any], ...]

    @property
    def idempotency_key(self) -> str:
        return f"{self.subscription_id}:{self.after}-{self.through}"

    def payload(self) -> dict[str, Any]:
        """What the receiver gets: the range and the frames an attached socket would."""
        return {
            "type": "updates",
            "subscriptionId": self.subscription_id,
            "after": self.after,
            "through": self.through,
            "updates": list(self.updates),
        }


@dataclass(slots=True)
class _Cursor:
    stored: int
    # Read up to here; nothing matched in (stored, scanned] unless ``batch`` holds it.
    scanned: int
    written_at: float
    batch: WebhookBatch | None = None
    failures: int = 0
    retry_at: float = 0.0
    last_error: str | None = field(default=None)


Targets = Callable[[Mapping[str, WebhookTarget]], Awaitable[Sequence[WebhookTarget]]]
"""The live webhook subscriptions, oldest first, given those already known (kept as they
are: their positions are the loop's own cursors)."""
Advance = Callable[[Mapping[str, tuple[str, int]]], Awaitable[set[str]]]


class SubscriptionWebhooks:
    """The delivering loop (one per deployment: elected, ``entrypoints/roles.py``).

    ``targets``: the live webhook subscriptions (stored positions for new ones); ``advance``:
    stores positions (id -> (owner, position)), returns the ids that are gone; ``state``:
    the node's fold of the log, for the filters that need a protocol's category, chains
    or TVL (as of now, as a socket's replay reads them)."""

    def __init__(
        self,
        event_log: EventLog,
        sender: WebhookSender,
        targets: Targets,
        advance: Advance,
        *,
        state: HotState | None = None,
        policy: RetryPolicy | None = None,
        interval: float = INTERVAL,
        batch_size: int = BATCH_SIZE,
        page: int = PAGE,
        idle_write: float = IDLE_WRITE,
        offload: Callable[..., Awaitable[Any]] = asyncio.to_thread,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.event_log = event_log
        self.sender = sender
        self._targets = targets
        self._advance = advance
        self.state = state
        self.policy = policy or RetryPolicy()
        self.interval = interval
        self.batch_size = batch_size
        self.page = page
        self.idle_write = idle_write
        self._offload = offload
        self._clock = clock
        self._cursors: dict[str, _Cursor] = {}
        self._known: dict[str, WebhookTarget] = {}

    async def run(self) -> None:
        """Deliver every ``interval`` until cancelled."""
        try:
            while True:
                await self.tick()
                await asyncio.sleep(self.interval)
        finally:
            self.forget()

    def forget(self) -> None:
        """Drop what is held in memory: whoever runs next starts from the stored positions."""
        self._cursors.clear()
        self._known.clear()

    async def tick(self) -> int:
        """One round over every live webhook subscription; the batches delivered."""
        targets = await self._targets(self._known)
        self._known = {target.id: target for target in targets}
        for gone in set(self._cursors) - self._known.keys():
            del self._cursors[gone]
        slots = asyncio.Semaphore(CONCURRENCY)

        async def one(target: WebhookTarget) -> int:
            async with slots:
                return await self._deliver(target)

        delivered = await asyncio.gather(*(one(target) for target in targets))
        return sum(delivered)

    def failures(self, subscription_id: str) -> tuple[int, str | None]:
        """Consecutive failed attempts of a subscription's pending batch, and the last error."""
        cursor = self._cursors.get(subscription_id)
        return (0, None) if cursor is None else (cursor.failures, cursor.last_error)

    async def _deliver(self, target: WebhookTarget) -> int:
        now = self._clock()
        cursor = self._cursors.get(target.id)
        if cursor is None or target.position > cursor.stored:
            # First sight, or stored further by a previous leader: start from the store.
            cursor = _Cursor(stored=target.position, scanned=target.position, written_at=now)
            self._cursors[target.id] = cursor
        if cursor.retry_at > now:
            return 0
        delivered = 0
        for _ in range(BATCHES_PER_TICK):
            if cursor.batch is None:
                cursor.batch, reached_head = await self._next_batch(target, cursor)
                if cursor.batch is None:
                    idle = now - cursor.written_at >= self.idle_write
                    if cursor.scanned > cursor.stored and idle:
                        await self._store(target, cursor, cursor.scanned)
                    return delivered
            else:
                reached_head = False
            batch = cursor.batch
            result = await self.sender.post(
                target.url, target.secret, batch.idempotency_key, batch.payload()
            )
            if not result.ok:
                self._failed(target, cursor, result.error or f"HTTP {result.http_status}")
                return delivered
            if not await self._store(target, cursor, batch.through):
                return delivered
            delivered += 1
            if reached_head:
                return delivered
        return delivered

    async def _store(self, target: WebhookTarget, cursor: _Cursor, position: int) -> bool:
        """Store ``position``; False (and a back-off) when the write failed."""
        try:
            gone = await self._advance({target.id: (target.owner, position)})
        except Exception as error:
            log.exception("storing the position of subscription %s failed", target.id)
            self._failed(target, cursor, f"store: {type(error).__name__}")
            return False
        if target.id in gone:
            # Closed meanwhile: nothing more to send.
            self._cursors.pop(target.id, None)
            self._known.pop(target.id, None)
            return False
        cursor.stored = position
        cursor.scanned = max(cursor.scanned, position)
        cursor.batch = None
        cursor.failures = 0
        cursor.last_error = None
        cursor.written_at = self._clock()
        return True

    def _failed(self, target: WebhookTarget, cursor: _Cursor, error: str) -> None:
        cursor.failures += 1
        cursor.last_error = error
        delay = self.policy.delay(min(cursor.failures, self.policy.max_attempts))
        cursor.retry_at = self._clock() + delay
        log.warning(
            "webhook of subscription %s failed (%s), attempt %d; again in %.1fs",
            target.id,
            error,
            cursor.failures,
            delay,
        )

    async def _next_batch(
        self, target: WebhookTarget, cursor: _Cursor
    ) -> tuple[WebhookBatch | None, bool]:
        """The next batch after the cursor (None: nothing matched up to where it read) and
        whether it read up to the log's head."""
        updates: list[Mapping[str, Any]] = []
        sid = target.id.encode()
        for _ in range(PAGES_PER_BATCH):
            page = await self._offload(self.event_log.read, cursor.scanned, self.page)
            if page.last <= cursor.scanned:
                break  # the head
            for entry in page.entries:
                if entry.position <= cursor.scanned or not self._matches(target, entry):
                    continue
                prefix, suffix = encode(entry, target.channel, None)
                updates.append(json.loads(prefix + sid + suffix))
                if len(updates) == self.batch_size:
                    return self._batch(target, cursor, updates, entry.position), False
            cursor.scanned = page.last
            if updates:
                return self._batch(target, cursor, updates, page.last), False
        else:
            return None, False  # a long stretch without a match: go on next time
        return None, True

    @staticmethod
    def _batch(
        target: WebhookTarget, cursor: _Cursor, updates: list[Mapping[str, Any]], through: int
    ) -> WebhookBatch:
        cursor.scanned = through
        return WebhookBatch(target.id, cursor.stored, through, tuple(updates))

    def _matches(self, target: WebhookTarget, entry: LogEntry) -> bool:
        channel = channel_of(entry)
        if channel != target.channel:
            return False
        if channel == "alerts":
            return bool(entry.data.get("owner") == target.owner)
        facts = None
        if self.state is not None and not target.filter.by_id_only:
            facts = FilterFacts.as_of(entry.key, None, self.state)
        return filter_matches(channel, target.filter, entry.key, entry.data.get("chain"), facts)
