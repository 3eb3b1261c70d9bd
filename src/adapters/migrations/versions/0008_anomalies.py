"""The anomalies the detector recorded (AnomalyDetected events, ADR 0034).

Revision ID: 0008_anomalies
Revises: 0007_protocol_listings

A projection like the others: a rebuild fills it from the log.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_anomalies"
down_revision: str | None = "0007_protocol_listings"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "anomalies",
        sa.Column("position", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("series", sa.Text(), nullable=False),
        sa.Column("measure", sa.Text(), nullable=False),
        sa.Column("observed_at", sa.Double(), nullable=False),
        sa.Column("value", sa.Double(), nullable=False),
        sa.Column("score", sa.Double(), nullable=False),
        sa.Column("direction", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("recorded_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("position", name="pk_anomalies"),
    )
    op.create_index("ix_anomalies_subject", "anomalies", ["subject", "observed_at"])
    op.create_index("ix_anomalies_observed_at", "anomalies", ["observed_at"])


def downgrade() -> None:
    op.drop_index("ix_anomalies_observed_at", table_name="anomalies")
    op.drop_index("ix_anomalies_subject", table_name="anomalies")
    op.drop_table("anomalies")
