"""Weekly range partitions of the raw detail tables on PostgreSQL (ADR 0047).

``protocol_observations`` and ``price_observations`` are partitioned by range of
``observed_at`` (migration 0014), one partition per UTC week starting on Monday. A row
needs its week's partition before it is inserted: ``ensure`` creates the missing ones in
the writer's transaction (there is no DEFAULT partition, whose rows would block creating
their week later). Retention drops whole weeks (``drop_before``): a catalog change, not a
DELETE of millions of rows followed by a vacuum.

A partition is created apart and then attached, which takes a SHARE UPDATE EXCLUSIVE lock
on the parent (readers and writers go on); ``CREATE TABLE ... PARTITION OF`` would take
ACCESS EXCLUSIVE. SQLite has no partitions: these are only called on PostgreSQL.
"""

from __future__ import annotations

import math
import re
import threading
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from sqlalchemy import func, select, text
from sqlalchemy.engine import Connection

__all__ = ["WEEK", "DetailPartition", "PostgresDetailPartitions", "partition_name", "week_of"]

WEEK: Final = 7 * 86_400.0
# 1970-01-05, the first Monday after the epoch: weeks start on Mondays at 00:00 UTC.
_MONDAY: Final = 4 * 86_400.0
# Serialises the partition makers of every process (two creating one week would collide).
_LOCK_KEY: Final = zlib.crc32(b"defi_realtime.history.partitions")
_BOUNDS: Final = re.compile(r"FROM \('?([^')]+)'?\) TO \('?([^')]+)'?\)")


def week_of(time: float) -> float:
    """The start of the week (Monday 00:00 UTC) that holds ``time``."""
    return math.floor((time - _MONDAY) / WEEK) * WEEK + _MONDAY


def partition_name(table: str, start: float) -> str:
    """``protocol_observations_w20250106``: the table and its week's first day."""
    return f"{table}_w{datetime.fromtimestamp(start, UTC):%Y%m%d}"


@dataclass(frozen=True, slots=True)
class DetailPartition:
    """One partition: its name and the range of ``observed_at`` it holds, ``[start, end)``."""

    name: str
    start: float
    end: float


def partitions(connection: Connection, table: str) -> list[DetailPartition]:
    """The range partitions of ``table`` (in the search path), oldest first."""
    rows = connection.execute(
        text(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i"
            " JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass(:table)"
        ),
        {"table": table},
    ).all()
    found = []
    for name, bound in rows:
        match = _BOUNDS.search(bound or "")
        if match is None:
            continue  # not a finite range (MINVALUE, DEFAULT): never made here
        found.append(DetailPartition(name, float(match[1]), float(match[2])))
    return sorted(found, key=lambda partition: partition.start)


def create_partition(connection: Connection, table: str, start: float) -> None:
    """Attach ``table``'s partition of the week starting at ``start`` (empty, so attaching
    scans nothing; the parent's indexes are created on it)."""
    name = partition_name(table, start)
    connection.exec_driver_sql(f"CREATE TABLE {name} (LIKE {table} INCLUDING DEFAULTS)")
    connection.exec_driver_sql(
        f"ALTER TABLE {table} ATTACH PARTITION {name}"
        f" FOR VALUES FROM ({start!r}) TO ({start + WEEK!r})"
    )


class PostgresDetailPartitions:
    """Makes the week partitions rows need, and drops weeks wholesale.

    Remembers the weeks it has seen in the catalog, so a batch of this week's rows costs a
    set lookup; a week it has not seen costs one catalog read under the partition lock.
    Thread-safe (the read model is called from several threads)."""

    def __init__(self) -> None:
        self._seen: dict[str, set[float]] = {}
        self._lock = threading.Lock()

    def ensure(self, connection: Connection, table: str, times: Iterable[float]) -> int:
        """Create, in ``connection``'s transaction, the partitions of ``table`` that rows
        observed at ``times`` need; how many were created."""
        weeks = {week_of(time) for time in times}
        with self._lock:
            missing = weeks - self._seen.get(table, set())
        if not missing:
            return 0
        connection.execute(select(func.pg_advisory_xact_lock(_LOCK_KEY)))
        existing = {partition.start for partition in partitions(connection, table)}
        created = sorted(missing - existing)
        for start in created:
            create_partition(connection, table, start)
        with self._lock:
            # Only weeks committed by someone: one created here is remembered when a later
            # call finds it (this transaction may still roll back).
            self._seen.setdefault(table, set()).update(missing & existing)
        return len(created)

    def drop_before(
        self, connection: Connection, table: str, horizon: float
    ) -> list[DetailPartition]:
        """Drop ``table``'s partitions that end at or before ``horizon``; those dropped."""
        connection.execute(select(func.pg_advisory_xact_lock(_LOCK_KEY)))
        dropped = [p for p in partitions(connection, table) if p.end <= horizon]
        for partition in dropped:
            connection.exec_driver_sql(f"DROP TABLE {partition.name}")
        with self._lock:
            self._seen.get(table, set()).difference_update(p.start for p in dropped)
        return dropped
