"""Durable subscriptions on the hub's side: what re-attaching needs, and acknowledgements.

A client re-attaches to a durable subscription by its id (``attach``); the hub asks a
``DurableSubscriptionStore`` for its channel, filter and acknowledged position, and brings
it up to date from the log after that position (the ``since`` machinery), then live.

Acknowledgements (``ack``) advance the stored position. They are gathered per subscription
and written together every ``interval`` seconds in one transaction (``Acknowledgements``):
a fast stream acknowledged frame by frame costs one ``Advanced`` event per subscription per
interval, not one per frame. Each write is confirmed to the client with ``acked``. A
re-attach on the same node resumes after the latest acknowledgement even before it is
written; after a node crash, after the last one confirmed (``acked``) at least: what was
acknowledged but not confirmed may come again (at least once, never a gap).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, Protocol

from ..telemetry import NO_TELEMETRY, Telemetry
from .outbox import Connection
from .protocol import Filter, dumps, with_id

log = logging.getLogger(__name__)

# How long acknowledgements are gathered before they are written (one transaction).
ACK_INTERVAL: Final = 0.5


class SubscriptionGone(LookupError):
    """No live durable subscription of that id for that owner (unknown, closed, or another
    owner's: all alike, so ids of others cannot be probed)."""


@dataclass(frozen=True, slots=True)
class Attachment:
    """What the hub needs of a durable subscription to re-attach a client to it."""

    id: str
    channel: str
    filter: Filter
    # The last position the client acknowledged: it gets every matching update after it.
    position: int


class DurableSubscriptionStore(Protocol):
    """Where durable subscriptions are kept (``application/durable_subscriptions.py``)."""

    async def attach(self, owner: str, subscription_id: str) -> Attachment:
        """``owner``'s live subscription ``subscription_id``; ``SubscriptionGone`` else."""
        ...

    async def advance(self, acknowledged: Mapping[str, tuple[str, int]]) -> set[str]:
        """Store positions (id -> (owner, position)) in one write; the ids that are gone."""
        ...


@dataclass(slots=True)
class _Acknowledged:
    owner: str
    position: int
    # Who to confirm it to, with the ``id`` of their latest ack frame.
    replies: dict[Connection, str | int | None] = field(default_factory=dict)


class Acknowledgements:
    """Acknowledged positions not yet written, written together every ``interval``."""

    def __init__(
        self,
        store: DurableSubscriptionStore,
        *,
        interval: float = ACK_INTERVAL,
        on_gone: Callable[[str], None] = lambda _id: None,
        telemetry: Telemetry = NO_TELEMETRY,
    ) -> None:
        self.store = store
        self.telemetry = telemetry
        self.interval = interval
        self._on_gone = on_gone
        self._pending: dict[str, _Acknowledged] = {}
        # Taken by the write under way: still the latest a re-attach must resume after.
        self._writing: dict[str, _Acknowledged] = {}
        self._task: asyncio.Task[None] | None = None
        self.written = 0  # writes made (one per interval with acknowledgements)

    def record(
        self,
        subscription_id: str,
        owner: str,
        position: int,
        connection: Connection,
        request_id: str | int | None = None,
    ) -> None:
        """The client behind ``connection`` has everything up to ``position``."""
        pending = self._pending.get(subscription_id)
        if pending is None:
            pending = self._pending[subscription_id] = _Acknowledged(owner, position)
        pending.position = max(pending.position, position)
        pending.replies[connection] = request_id
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._write_later())

    def latest(self, subscription_id: str) -> int:
        """The latest acknowledged position not yet written (0: none)."""
        found = [
            held.position
            for held in (self._pending.get(subscription_id), self._writing.get(subscription_id))
            if held is not None
        ]
        return max(found, default=0)

    async def _write_later(self) -> None:
        try:
            # Again while some are left: acknowledged during a write, or kept after a
            # failed one.
            while self._pending:
                await asyncio.sleep(self.interval)
                await self.flush()
        finally:
            self._task = None

    async def flush(self) -> None:
        """Write every acknowledgement gathered so far (one write) and confirm them."""
        if not self._pending or self._writing:
            return
        self._writing, self._pending = self._pending, {}
        try:
            gone = await self.store.advance(
                {key: (held.owner, held.position) for key, held in self._writing.items()}
            )
        except Exception:
            log.exception("storing subscription acknowledgements failed; retrying later")
            self.telemetry.subscription_acks_written("failed", len(self._writing))
            for key, held in self._writing.items():
                again = self._pending.setdefault(key, held)
                if again is not held:
                    again.position = max(again.position, held.position)
                    again.replies = {**held.replies, **again.replies}
            return
        finally:
            written, self._writing = self._writing, {}
        self.written += 1
        self.telemetry.subscription_acks_written("stored", len(written) - len(gone))
        if gone:
            self.telemetry.subscription_acks_written("gone", len(gone))
        for key, held in written.items():
            if key in gone:
                self._on_gone(key)
                continue
            for connection, request_id in held.replies.items():
                if not connection.closed:
                    connection.offer_message(acked(key, held.position, request_id))

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def aclose(self) -> None:
        """Write what is pending, then stop (the node is shutting down)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.flush()


def acked(subscription_id: str, position: int, request_id: str | int | None) -> bytes:
    return dumps(
        with_id(
            {"type": "acked", "subscriptionId": subscription_id, "position": position},
            request_id,
        )
    )
