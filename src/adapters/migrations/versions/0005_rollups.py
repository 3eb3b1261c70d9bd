"""The history projection's rollups: series states, day closes, group days (ADR 0021).

Revision ID: 0005_rollups
Revises: 0004_pending_notifications

Derived from ``protocol_observations`` and ``protocols``: a database upgraded with facts in
it fills them on the read model's next start (``SqlHistoryReadModel``), as a rebuild would.
On PostgreSQL a GiST index over each state's span answers "the states that hold at T" with
one index scan, and a partial index the current states (SQLite reads ``valid_to``'s B-tree).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_rollups"
down_revision: str | None = "0004_pending_notifications"
branch_labels: str | None = None
depends_on: str | None = None

# A range of float8 (exact, unlike numrange over a cast) for the span index.
_RANGE_TYPE = "history_float8range"
_COLUMNS = (
    "protocol, metric, chain, observed_at, value, position, first_position, valid_to,"
    " change_1h, change_1d, change_7d"
)


def upgrade() -> None:
    op.create_table(
        "series_states",
        sa.Column("protocol", sa.Text(), nullable=False),
        sa.Column("metric", sa.Text(), nullable=False),
        sa.Column("chain", sa.Text(), nullable=False),
        sa.Column("observed_at", sa.Double(), nullable=False),
        sa.Column("value", sa.Double(), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("first_position", sa.BigInteger(), nullable=False),
        sa.Column("valid_to", sa.Double(), nullable=False),
        sa.Column("change_1h", sa.Double(), nullable=True),
        sa.Column("change_1d", sa.Double(), nullable=True),
        sa.Column("change_7d", sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint(
            "protocol", "metric", "chain", "observed_at", name="pk_series_states"
        ),
    )
    op.create_index("ix_series_states_valid_to", "series_states", ["valid_to"])
    if op.get_bind().dialect.name == "postgresql":
        # Both carry every column a cut reads, so a cut is an index-only scan: the states
        # of one time lie on as many heap pages as there are series.
        op.execute(
            f"CREATE TYPE {_RANGE_TYPE} AS RANGE (subtype = float8, subtype_diff = float8mi)"
        )
        op.execute(
            "CREATE INDEX ix_series_states_span ON series_states"
            f" USING gist ({_RANGE_TYPE}(observed_at, valid_to, '[)')) INCLUDE ({_COLUMNS})"
        )
        op.execute(
            "CREATE INDEX ix_series_states_current ON series_states (first_position)"
            f" INCLUDE ({_COLUMNS}) WHERE valid_to = 'Infinity'"
        )
    op.create_table(
        "series_days",
        sa.Column("protocol", sa.Text(), nullable=False),
        sa.Column("metric", sa.Text(), nullable=False),
        sa.Column("chain", sa.Text(), nullable=False),
        sa.Column("day", sa.Integer(), nullable=False),
        sa.Column("value", sa.Double(), nullable=False),
        sa.Column("observed_at", sa.Double(), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("protocol", "metric", "chain", "day", name="pk_series_days"),
    )
    op.create_table(
        "group_days",
        sa.Column("dimension", sa.Text(), nullable=False),
        sa.Column("grp", sa.Text(), nullable=False),
        sa.Column("metric", sa.Text(), nullable=False),
        sa.Column("day", sa.Integer(), nullable=False),
        sa.Column("total", sa.Double(), nullable=False),
        sa.Column("counted", sa.Integer(), nullable=False),
        sa.Column("members", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("dimension", "day", "grp", "metric", name="pk_group_days"),
    )


def downgrade() -> None:
    op.drop_table("group_days")
    op.drop_table("series_days")
    op.drop_table("series_states")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP TYPE {_RANGE_TYPE}")
