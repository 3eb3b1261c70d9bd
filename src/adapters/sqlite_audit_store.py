"""eventsourcing's SQLite persistence with commits that do not wait for the disk: the
embedded audit log's store (docs/adr/0041-audit-trail-in-its-own-log.md).

Select with ``PERSISTENCE_MODULE=defi_realtime.adapters.sqlite_audit_store`` plus the usual
``SQLITE_*`` variables. Everything is eventsourcing's SQLite persistence except one pragma
on every connection: ``synchronous=NORMAL`` (the stock store keeps SQLite's ``FULL``). In
WAL mode a commit then writes the WAL to the operating system without an ``fsync``; the WAL
is synced at checkpoints. A committed record survives the process dying at any point (the
OS has it); a power loss or kernel crash may lose the last commits before a checkpoint.
For the audit trail that trade is worth it: a commit costs ~1/3 of the CPU and ~1/4 of the
time (measured in docs/benchmarks.md), and every audited request waits for one. The main
log keeps ``FULL``.
"""

from __future__ import annotations

from typing import Final

# The module, never its classes by name: ``InfrastructureFactory.construct`` picks the one
# concrete factory class defined in this module's namespace.
from eventsourcing import sqlite as es_sqlite
from eventsourcing.utils import Environment

__all__ = ["RelaxedSQLiteFactory"]

SYNCHRONOUS: Final = "NORMAL"


class _RelaxedConnectionPool(es_sqlite.SQLiteConnectionPool):
    def _create_connection(self) -> es_sqlite.SQLiteConnection:
        connection = super()._create_connection()
        # Per connection, outside any transaction (the connection is in autocommit mode).
        with connection.cursor() as cursor:
            cursor.execute(f"PRAGMA synchronous={SYNCHRONOUS};")
        return connection


class RelaxedSQLiteFactory(es_sqlite.SQLiteFactory):
    """``SQLiteFactory`` whose connections commit with ``synchronous=NORMAL``."""

    def __init__(self, env: Environment) -> None:
        super().__init__(env)
        stock = self.datastore.pool
        # Nothing has connected yet (recorders connect when they create their tables).
        self.datastore.pool = _RelaxedConnectionPool(
            db_name=stock.db_name, lock_timeout=stock.lock_timeout
        )
        stock.close()
