"""The raw observations partitioned by week on PostgreSQL; detail retention (ADR 0047).

Revision ID: 0014_history_partitions
Revises: 0013_mev_detections

``protocol_observations`` and ``price_observations`` become declaratively partitioned
tables on PostgreSQL (range of ``observed_at``, one partition per UTC week from Monday),
their rows moved into the partitions their weeks need. A partitioned table's unique keys
hold the partition key, so both primary keys become ``(position, observed_at)``, on SQLite
too (one shape for both; a log entry has one time, so a double application still fails).
``history_retention``: the time before which the raw detail was dropped (-inf: none was).

Frozen DDL: the week arithmetic is repeated here rather than imported from the adapters.
"""

from __future__ import annotations

import math
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0014_history_partitions"
down_revision: str | None = "0013_mev_detections"
branch_labels: str | None = None
depends_on: str | None = None

_WEEK = 7 * 86_400.0
_MONDAY = 4 * 86_400.0  # 1970-01-05: weeks start on Mondays at 00:00 UTC
_SERIES = {
    "protocol_observations": ["protocol", "metric", "chain", "observed_at"],
    "price_observations": ["token", "observed_at"],
}


def _columns(table: str) -> list[sa.Column[object]]:
    if table == "protocol_observations":
        return [
            sa.Column("position", sa.BigInteger(), autoincrement=False, nullable=False),
            sa.Column("protocol", sa.Text(), nullable=False),
            sa.Column("metric", sa.Text(), nullable=False),
            sa.Column("chain", sa.Text(), nullable=False),
            sa.Column("observed_at", sa.Double(), nullable=False),
            sa.Column("value", sa.Double(), nullable=False),
            sa.Column("source", sa.Text(), nullable=False),
            sa.Column("recorded_at", sa.Double(), nullable=False),
        ]
    return [
        sa.Column("position", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("token", sa.Text(), nullable=False),
        sa.Column("observed_at", sa.Double(), nullable=False),
        sa.Column("price", sa.Double(), nullable=False),
        sa.Column("confidence", sa.Double(), nullable=True),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("recorded_at", sa.Double(), nullable=False),
    ]


def _postgres() -> bool:
    return bool(op.get_bind().dialect.name == "postgresql")


def _set_aside(table: str, suffix: str) -> str:
    """Rename ``table`` (and the names its key and index hold in the schema) out of the way."""
    old = f"{table}_{suffix}"
    op.drop_index(f"ix_{table}_series", table_name=table)
    op.rename_table(table, old)
    if _postgres():
        op.execute(f"ALTER TABLE {old} RENAME CONSTRAINT pk_{table} TO pk_{old}")
    return old


def _rebuild(table: str, old: str, key: list[str], *, partitioned: bool) -> None:
    """Create ``table`` anew with primary ``key`` (partitioned by week or not), move
    ``old``'s rows into it, drop ``old``."""
    options: dict[str, Any] = (
        {"postgresql_partition_by": "RANGE (observed_at)"} if partitioned else {}
    )
    op.create_table(
        table, *_columns(table), sa.PrimaryKeyConstraint(*key, name=f"pk_{table}"), **options
    )
    op.create_index(f"ix_{table}_series", table, _SERIES[table])
    if partitioned:
        weeks = op.get_bind().exec_driver_sql(
            f"SELECT DISTINCT floor((observed_at - {_MONDAY!r}) / {_WEEK!r}) FROM {old}"
        )
        for (week,) in weeks.all():
            start = float(week) * _WEEK + _MONDAY
            name = (
                f"{table}_w"
                + op.get_bind()
                .exec_driver_sql(
                    f"SELECT to_char(to_timestamp({start!r}) AT TIME ZONE 'UTC', 'YYYYMMDD')"
                )
                .scalar_one()
            )
            op.execute(
                f"CREATE TABLE {name} PARTITION OF {table}"
                f" FOR VALUES FROM ({start!r}) TO ({start + _WEEK!r})"
            )
    names = ", ".join(column.name for column in _columns(table))
    op.execute(f"INSERT INTO {table} ({names}) SELECT {names} FROM {old}")
    op.drop_table(old)


def upgrade() -> None:
    for table in _SERIES:
        old = _set_aside(table, "0013")
        # SQLite: the same primary key as PostgreSQL's, no partitions.
        _rebuild(table, old, ["position", "observed_at"], partitioned=_postgres())
        if _postgres():
            op.execute(f"ANALYZE {table}")
    retention = op.create_table(
        "history_retention",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("horizon", sa.Double(), nullable=False),
        sa.Column("applied_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_history_retention"),
    )
    # Always a row, so that writers can share-lock it while a retention run moves it.
    op.bulk_insert(retention, [{"name": "detail", "horizon": -math.inf, "applied_at": 0.0}])


def downgrade() -> None:
    op.drop_table("history_retention")
    for table in _SERIES:
        old = _set_aside(table, "0014")
        _rebuild(table, old, ["position"], partitioned=False)
