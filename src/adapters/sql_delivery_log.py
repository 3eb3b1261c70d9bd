"""``DeliveryLog`` on SQLAlchemy 2 Core: the ``delivery_attempts`` table of the history schema.

Same database as the history read model (SQLite file embedded, PostgreSQL in production),
same Alembic revisions (``migrate`` runs on construction). Every ``record`` commits on its
own: the queue acknowledges a job only after its attempt is recorded, so a recorded attempt
must survive a crash right after.

It also journals the jobs of a queue that dies with its process (``pending_notifications``):
a row per job until an attempt delivers it, deleted in that attempt's transaction; a
dead-lettered job's row stays, as that queue's durable dead letter (``parked``).

A key is settled once delivered, or dead-lettered and not redriven since
(``delivery.progress_of``): a redrive records a ``redriven`` row, after which the key may be
attempted (and journaled) again.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace

from sqlalchemy import delete, insert, select
from sqlalchemy.engine import Connection, Engine

from ..application.delivery import (
    AlertTransition,
    AttemptStatus,
    DeliveryAttempt,
    DeliveryProgress,
    NotificationJob,
    ParkedJob,
    progress_of,
)
from ..application.ports import Purged
from .sql_schema import (
    ALERT_EVENTS,
    DELIVERY_ATTEMPTS,
    PENDING_NOTIFICATIONS,
    adapter_engine,
    chunked,
    close_engine,
    scrub,
    write_transaction,
)

__all__ = ["SqlDeliveryLog"]


class SqlDeliveryLog:
    """Implements ``DeliveryLog`` (synchronous: call it from a worker thread)."""

    def __init__(self, target: str | Engine) -> None:
        # A URL: its own engine; the process's shared engine otherwise (sql_schema).
        self._engine, self._owns_engine = adapter_engine(target)

    @property
    def engine(self) -> Engine:
        return self._engine

    def record(self, attempt: DeliveryAttempt) -> None:
        with write_transaction(self._engine) as connection:
            connection.execute(
                insert(DELIVERY_ATTEMPTS).values(
                    rule_id=attempt.rule_id,
                    owner=attempt.owner,
                    idempotency_key=attempt.idempotency_key,
                    channel_kind=attempt.channel_kind,
                    channel_target=attempt.channel_target,
                    attempt=attempt.attempt,
                    status=attempt.status,
                    http_status=attempt.http_status,
                    error=None if attempt.error is None else attempt.error[:2_000],
                    condition=attempt.condition,
                    position=attempt.position,
                    started_at=attempt.started_at,
                    finished_at=attempt.finished_at,
                )
            )
            # A dead-lettered job stays journaled: the journal is the embedded queue's
            # durable record of its dead letters (``parked``), until a redrive delivers it.
            if attempt.status == "delivered":
                connection.execute(
                    delete(PENDING_NOTIFICATIONS).where(
                        PENDING_NOTIFICATIONS.c.idempotency_key == attempt.idempotency_key
                    )
                )

    def record_pending(self, jobs: Sequence[NotificationJob]) -> None:
        table = PENDING_NOTIFICATIONS
        with write_transaction(self._engine) as connection:
            # Keys already journaled or already settled are skipped: the dispatcher enqueues
            # a batch again after a crash before it saved its position.
            keys = list({job.idempotency_key for job in jobs})
            known = _settled(connection, keys)
            for chunk in chunked(keys):
                known.update(
                    connection.execute(
                        select(table.c.idempotency_key).where(table.c.idempotency_key.in_(chunk))
                    ).scalars()
                )
            rows = []
            for job in jobs:
                if job.idempotency_key in known:
                    continue
                known.add(job.idempotency_key)
                rows.append(
                    {
                        "idempotency_key": job.idempotency_key,
                        "rule_id": job.rule_id,
                        "job": job.to_json(),
                        "recorded_at": job.recorded_at,
                    }
                )
            if rows:
                connection.execute(insert(table), rows)

    def pending(self) -> list[NotificationJob]:
        table = PENDING_NOTIFICATIONS
        with self._engine.connect() as connection:
            rows = connection.execute(
                select(table.c.idempotency_key, table.c.job).order_by(
                    table.c.recorded_at, table.c.idempotency_key
                )
            ).all()
            settled = _settled(connection, [row.idempotency_key for row in rows])
        return [
            NotificationJob.from_json(row.job) for row in rows if row.idempotency_key not in settled
        ]

    def parked(self, rule_id: str) -> list[ParkedJob]:
        table = PENDING_NOTIFICATIONS
        attempts = DELIVERY_ATTEMPTS
        with self._engine.connect() as connection:
            rows = connection.execute(
                select(table.c.idempotency_key, table.c.job)
                .where(table.c.rule_id == rule_id)
                .order_by(table.c.recorded_at, table.c.idempotency_key)
            ).all()
            history: dict[str, list[tuple[str, str | None]]] = {}
            for chunk in chunked([row.idempotency_key for row in rows]):
                for key, status, error in connection.execute(
                    select(attempts.c.idempotency_key, attempts.c.status, attempts.c.error)
                    .where(attempts.c.idempotency_key.in_(chunk))
                    .order_by(attempts.c.id)
                ):
                    history.setdefault(key, []).append((status, error))
        parked = []
        for row in rows:
            seen = history.get(row.idempotency_key, [])
            statuses = [status for status, _error in seen]
            if not statuses or statuses[-1] != "dead_lettered" or "delivered" in statuses:
                continue
            progress = progress_of(statuses)
            job = replace(
                NotificationJob.from_json(row.job),
                attempt=progress.attempts - progress.redriven_after,
            )
            parked.append(ParkedJob(job, seen[-1][1] or ""))
        return parked

    def progress(self, idempotency_key: str) -> DeliveryProgress:
        table = DELIVERY_ATTEMPTS
        with self._engine.connect() as connection:
            statuses = connection.execute(
                select(table.c.status)
                .where(table.c.idempotency_key == idempotency_key)
                .order_by(table.c.id)
            ).scalars()
            return progress_of(list(statuses))

    def attempts(self, rule_id: str, limit: int = 1_000) -> list[DeliveryAttempt]:
        table = DELIVERY_ATTEMPTS
        with self._engine.connect() as connection:
            rows = connection.execute(
                select(table).where(table.c.rule_id == rule_id).order_by(table.c.id).limit(limit)
            ).all()
        return [
            DeliveryAttempt(
                rule_id=row.rule_id,
                owner=row.owner,
                idempotency_key=row.idempotency_key,
                channel_kind=row.channel_kind,
                channel_target=row.channel_target,
                attempt=int(row.attempt),
                status=_status(row.status),
                started_at=float(row.started_at),
                finished_at=float(row.finished_at),
                condition=row.condition,
                position=int(row.position),
                http_status=row.http_status,
                error=row.error,
            )
            for row in rows
        ]

    def transitions(self, rule_id: str, limit: int = 1_000) -> list[AlertTransition]:
        table = ALERT_EVENTS
        with self._engine.connect() as connection:
            rows = connection.execute(
                select(table)
                .where(table.c.rule_id == rule_id)
                .order_by(table.c.position)
                .limit(limit)
            ).all()
        return [
            AlertTransition(
                position=int(row.position),
                kind=row.kind,
                measure=float(row.measure),
                observed_at=float(row.observed_at),
                idempotency_key=row.idempotency_key,
                recorded_at=float(row.recorded_at),
            )
            for row in rows
        ]

    def purge(self, owner: str, rule_ids: Sequence[str]) -> Purged:
        """Delete ``owner``'s attempts and its rules' journaled jobs (an erased account's:
        they name webhook URLs and email addresses), leaving no copy in the files
        (``scrub``). Implements ``PersonalRecords``."""
        with write_transaction(self._engine) as connection:
            deleted = connection.execute(
                delete(DELIVERY_ATTEMPTS).where(DELIVERY_ATTEMPTS.c.owner == owner)
            ).rowcount
            for chunk in chunked(list(rule_ids)):
                deleted += connection.execute(
                    delete(PENDING_NOTIFICATIONS).where(PENDING_NOTIFICATIONS.c.rule_id.in_(chunk))
                ).rowcount
        return Purged(
            rows=int(deleted),
            scrubbed=scrub(self._engine, [DELIVERY_ATTEMPTS, PENDING_NOTIFICATIONS]),
        )

    def close(self) -> None:
        if self._owns_engine:
            close_engine(self._engine)


def _settled(connection: Connection, keys: Iterable[str]) -> set[str]:
    """Which of ``keys`` are settled (``progress_of``), read in chunks."""
    table = DELIVERY_ATTEMPTS
    statuses: dict[str, list[str]] = {}
    for chunk in chunked(list(keys)):
        rows = connection.execute(
            select(table.c.idempotency_key, table.c.status)
            .where(table.c.idempotency_key.in_(chunk))
            .order_by(table.c.id)
        )
        for key, status in rows:
            statuses.setdefault(key, []).append(status)
    return {key for key, seen in statuses.items() if progress_of(seen).settled}


_STATUSES: dict[str, AttemptStatus] = {
    "delivered": "delivered",
    "dead_lettered": "dead_lettered",
    "redriven": "redriven",
}


def _status(raw: str) -> AttemptStatus:
    return _STATUSES.get(raw, "failed")
