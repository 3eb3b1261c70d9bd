"""Initial history schema: observations, protocols, alert events and tracking.

Revision ID: 0001
Revises: (none)

Frozen DDL: later schema changes go into new revisions, never into this file.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # ``position`` (the global log position) is the primary key of every fact table: one
    # log entry is one row, so a double application fails loudly instead of duplicating.
    op.create_table(
        "protocol_observations",
        sa.Column("position", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("protocol", sa.Text(), nullable=False),
        sa.Column("metric", sa.Text(), nullable=False),
        sa.Column("chain", sa.Text(), nullable=False),
        sa.Column("observed_at", sa.Double(), nullable=False),
        sa.Column("value", sa.Double(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("recorded_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("position", name="pk_protocol_observations"),
    )
    op.create_index(
        "ix_protocol_observations_series",
        "protocol_observations",
        ["protocol", "metric", "chain", "observed_at"],
    )
    op.create_table(
        "price_observations",
        sa.Column("position", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("token", sa.Text(), nullable=False),
        sa.Column("observed_at", sa.Double(), nullable=False),
        sa.Column("price", sa.Double(), nullable=False),
        sa.Column("confidence", sa.Double(), nullable=True),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("recorded_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("position", name="pk_price_observations"),
    )
    op.create_index("ix_price_observations_series", "price_observations", ["token", "observed_at"])
    op.create_table(
        "protocols",
        sa.Column("slug", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("category", sa.Text(), nullable=False),
        sa.Column("chains", sa.JSON(), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("slug", name="pk_protocols"),
    )
    op.create_table(
        "alert_events",
        sa.Column("position", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("rule_id", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("owner", sa.Text(), nullable=False),
        sa.Column("measure", sa.Double(), nullable=False),
        sa.Column("observed_at", sa.Double(), nullable=False),
        sa.Column("idempotency_key", sa.Text(), nullable=True),
        sa.Column("recorded_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("position", name="pk_alert_events"),
        sa.UniqueConstraint("idempotency_key", name="uq_alert_events_idempotency_key"),
    )
    op.create_index("ix_alert_events_rule", "alert_events", ["rule_id", "observed_at"])
    op.create_table(
        "projection_tracking",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_projection_tracking"),
    )


def downgrade() -> None:
    op.drop_table("projection_tracking")
    op.drop_index("ix_alert_events_rule", table_name="alert_events")
    op.drop_table("alert_events")
    op.drop_table("protocols")
    op.drop_index("ix_price_observations_series", table_name="price_observations")
    op.drop_table("price_observations")
    op.drop_index("ix_protocol_observations_series", table_name="protocol_observations")
    op.drop_table("protocol_observations")
