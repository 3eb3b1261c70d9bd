"""The audit trail: recording who changed what, and answering who did what.

Writes go to ``AuditLog``, an event-sourced application of its own: its own notification
log (on SQLite its own file, on PostgreSQL its own ``auditlog_events`` table in the same
database), so the main log's head never moves for an audited request that changed nothing,
and no follower of the main log ever sees an audit event. ``AuditJournal`` commits the
records of concurrent requests together (one transaction per group) and returns only once
the caller's record is stored: an answer is sent after its audit record is durable.

Reads go to the ``audit_records`` read model (``audit_trail.AuditTrail``).
See docs/adr/0041-audit-trail-in-its-own-log.md.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Final
from uuid import UUID

from eventsourcing.application import Application

from ..domain.audit import AuditRecord

__all__ = [
    "AUDIT_PAGE_MAX",
    "AuditEntry",
    "AuditJournal",
    "AuditLog",
    "AuditPage",
    "AuditQuery",
    "AuditView",
    "recorded",
    "recorded_spans",
]

AUDIT_PAGE_MAX: Final = 1_000


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """What is recorded about one state-changing request (see ``AuditRecord``)."""

    action: str
    at: float
    status: int
    outcome: str
    account_id: str | None = None
    key_id: str | None = None
    request_id: str | None = None
    client: str | None = None
    method: str = ""
    path: str = ""
    detail: dict[str, Any] = field(default_factory=dict)

    def fields(self) -> dict[str, Any]:
        """The entry's fields by name (an ``AuditRecord``'s arguments, a row's columns)."""
        return {name: getattr(self, name) for name in _ENTRY_FIELDS}

    @classmethod
    def from_fields(cls, values: Mapping[str, Any]) -> AuditEntry:
        """The entry held in ``values`` (a ``Recorded`` event's state, a row); other keys
        are ignored."""
        entry = {name: values[name] for name in _ENTRY_FIELDS}
        entry["detail"] = dict(entry["detail"])
        return cls(**entry)


_ENTRY_FIELDS: Final = tuple(field.name for field in fields(AuditEntry))


def recorded_spans(detail: Mapping[str, Any]) -> list[tuple[int, int]]:
    """The main log positions a record's request recorded: ``detail["recorded"]``'s
    inclusive ``[first, last]`` ranges (none for other actions and older records)."""
    return [(int(first), int(last)) for first, last in detail.get("recorded") or ()]


def recorded(detail: Mapping[str, Any], position: int) -> bool:
    """Whether the request of a record with ``detail`` recorded main log ``position``."""
    return any(first <= position <= last for first, last in recorded_spans(detail))


@dataclass(frozen=True, slots=True)
class AuditView:
    """A stored audit record: its position in the audit log and its entry."""

    position: int
    id: UUID
    entry: AuditEntry


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Filters of an audit listing, newest first.

    ``account_id``: only that account's records (None: everyone's, for an admin).
    ``actor``: an account id or a key id. ``action``: an exact action, or a family
    (``alert_rule`` matches ``alert_rule.create``, ``alert_rule.delete``, ...).
    ``since``/``until``: unix seconds, inclusive. ``before``: a position (the previous
    page's ``next``) to continue from. ``recorded``: a main log position; only the record
    of the request whose events include it (an ingest's ``detail.recorded``).
    """

    account_id: str | None = None
    actor: str | None = None
    action: str | None = None
    since: float | None = None
    until: float | None = None
    before: int | None = None
    recorded: int | None = None
    limit: int = 100


@dataclass(frozen=True, slots=True)
class AuditPage:
    records: list[AuditView]
    # The ``before`` of the next page, None when this one is the last.
    next: int | None


class AuditLog(Application[UUID]):
    """The audit trail's event store: one ``AuditRecord`` per audited request.

    Its name gives it its own tables on PostgreSQL (``auditlog_events``); the container
    gives it its own SQLite file when embedded (eventsourcing's SQLite recorder has one
    table name, ``stored_events``, per file).
    """

    name = "AuditLog"

    def record(self, entries: Sequence[AuditEntry]) -> list[UUID]:
        """Store ``entries`` in one transaction; their record ids.

        Each record's one event goes straight to the recorder: ``save``'s per-object type
        checks, snapshots, cache and notification hooks are of no use to records that are
        never read back as aggregates (about a quarter of the CPU of a one-record commit).
        """
        records = [AuditRecord(**entry.fields()) for entry in entries]
        events = [event for record in records for event in record.collect_events()]
        if events:
            self.recorder.insert_events(list(map(self.mapper.to_stored_event, events)))
        return [record.id for record in records]

    def read(self, after: int, limit: int) -> list[AuditView]:
        """The records stored after position ``after``, oldest first (at most ``limit``)."""
        notifications = self.recorder.select_notifications(
            start=after, limit=limit, inclusive_of_start=False
        )
        views = []
        for notification in notifications:
            recorded = self.mapper.to_domain_event(notification)
            views.append(
                AuditView(
                    position=notification.id,
                    id=recorded.originator_id,
                    entry=AuditEntry.from_fields(recorded.__dict__),
                )
            )
        return views

    def head(self) -> int:
        return self.recorder.max_notification_id() or 0


class AuditJournal:
    """Group commit of audit records from the event loop.

    ``record`` returns once its entry is stored: the entries that arrive while a group is
    being written are written together next, in one transaction on a worker thread, so many
    concurrent requests cost one commit, and no answer is sent before its record is durable.
    """

    def __init__(self, save: Callable[[Sequence[AuditEntry]], object]) -> None:
        self._save = save
        self._pending: list[AuditEntry] = []
        self._committed: asyncio.Future[None] | None = None
        self._flusher: asyncio.Task[None] | None = None

    async def record(self, entry: AuditEntry) -> None:
        """Store ``entry`` (with whatever else is pending); raises what the store raised."""
        self._pending.append(entry)
        if self._committed is None:
            self._committed = asyncio.get_running_loop().create_future()
        committed = self._committed
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush(), name="audit-journal")
        # Shielded: a client that goes away must not cancel the group's write.
        await asyncio.shield(committed)

    async def drain(self) -> None:
        """Wait until every entry handed to ``record`` so far is written (shutdown)."""
        flusher = self._flusher
        if flusher is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(flusher)

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                committed, self._committed = self._committed, None
                assert committed is not None  # set with the first pending entry
                try:
                    await asyncio.to_thread(self._save, batch)
                except BaseException as error:
                    committed.set_exception(error)
                    # Read here too, so a group nobody waits for any more (its requests
                    # were cancelled) does not log "exception never retrieved".
                    committed.exception()
                    if isinstance(error, asyncio.CancelledError):
                        raise
                else:
                    committed.set_result(None)
        finally:
            self._flusher = None
