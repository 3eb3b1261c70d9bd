"""``AccountKeys`` on SQLAlchemy 2 Core: the ``account_keys`` and ``erased_subjects`` tables.

Same database as the history read model (a SQLite file embedded, PostgreSQL in production),
same Alembic revisions. The event log is append-only; this table is not: destroying a key
deletes its row, and then makes sure no copy of it is left in the database's files
(``scrub``: SQLite overwrites deleted rows with zeros, ``secure_delete``, and its WAL is
truncated; PostgreSQL rewrites the table, ``VACUUM FULL``, so no dead tuple keeps the key).
What neither can reach: PostgreSQL's WAL segments until they are recycled, and backups
taken before (docs/adr/0042-crypto-shredding.md).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from ..application.personal_fields import new_key_secret
from ..application.ports import AccountKey, Purged
from .sql_schema import (
    ACCOUNT_KEYS,
    ERASED_SUBJECTS,
    adapter_engine,
    close_engine,
    scrub,
    write_transaction,
)

__all__ = ["SqlAccountKeys"]


class SqlAccountKeys:
    """Implements ``AccountKeys`` (synchronous: call it from a worker thread)."""

    def __init__(self, target: str | Engine) -> None:
        # A URL: its own engine; the process's shared engine otherwise (sql_schema).
        self._engine, self._owns_engine = adapter_engine(target)
        dialect = sqlite if self._engine.dialect.name == "sqlite" else postgresql
        self._insert: Any = dialect.insert

    def key_for(self, subject: str) -> AccountKey | None:
        with self._engine.connect() as connection:
            key = _key(connection, subject)
        if key is not None:
            return key
        with write_transaction(self._engine) as connection:
            self._lock(connection, subject)
            if _erased(connection, subject):
                return None
            connection.execute(
                self._insert(ACCOUNT_KEYS)
                .values(
                    subject=subject,
                    key_id=str(uuid.uuid4()),
                    secret=new_key_secret(),
                    created_at=time.time(),
                )
                .on_conflict_do_nothing(index_elements=["subject"])
            )
            return _key(connection, subject)

    def find(self, key_id: str) -> bytes | None:
        with self._engine.connect() as connection:
            secret = connection.execute(
                select(ACCOUNT_KEYS.c.secret).where(ACCOUNT_KEYS.c.key_id == key_id)
            ).scalar_one_or_none()
        return None if secret is None else bytes(secret)

    def destroy(self, subject: str) -> Purged:
        with write_transaction(self._engine) as connection:
            self._lock(connection, subject)
            deleted = connection.execute(
                delete(ACCOUNT_KEYS).where(ACCOUNT_KEYS.c.subject == subject)
            ).rowcount
            connection.execute(
                self._insert(ERASED_SUBJECTS)
                .values(subject=subject, erased_at=time.time())
                .on_conflict_do_nothing(index_elements=["subject"])
            )
        return Purged(rows=int(deleted), scrubbed=scrub(self._engine, [ACCOUNT_KEYS]))

    def erased(self, subject: str) -> bool:
        """Whether ``subject`` was erased."""
        with self._engine.connect() as connection:
            return _erased(connection, subject)

    def close(self) -> None:
        if self._owns_engine:
            close_engine(self._engine)

    def _lock(self, connection: Connection, subject: str) -> None:
        # A key made while the subject is being erased must not survive the erase: on
        # PostgreSQL both take the subject's lock (SQLite's write transactions are serial).
        if self._engine.dialect.name == "postgresql":
            connection.execute(select(func.pg_advisory_xact_lock(func.hashtext(subject))))


def _key(connection: Connection, subject: str) -> AccountKey | None:
    row = connection.execute(
        select(ACCOUNT_KEYS.c.key_id, ACCOUNT_KEYS.c.secret).where(
            ACCOUNT_KEYS.c.subject == subject
        )
    ).first()
    return None if row is None else AccountKey(key_id=row.key_id, secret=bytes(row.secret))


def _erased(connection: Connection, subject: str) -> bool:
    found = connection.execute(
        select(ERASED_SUBJECTS.c.subject).where(ERASED_SUBJECTS.c.subject == subject)
    ).first()
    return found is not None
