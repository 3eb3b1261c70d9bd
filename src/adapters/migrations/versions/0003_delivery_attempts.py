"""Delivery attempts of alert notifications.

Revision ID: 0003_delivery_attempts
Revises: 0002_alert_rules

Every attempt to deliver a notification (webhook, email), with its outcome. Not derived
from the event log: projection rebuilds leave it alone.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_delivery_attempts"
down_revision: str | None = "0002_alert_rules"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "delivery_attempts",
        # INTEGER on SQLite so that the key is the rowid (BIGINT would not autoincrement).
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("rule_id", sa.Text(), nullable=False),
        sa.Column("owner", sa.Text(), nullable=False),
        sa.Column("idempotency_key", sa.Text(), nullable=False),
        sa.Column("channel_kind", sa.Text(), nullable=False),
        sa.Column("channel_target", sa.Text(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("condition", sa.Text(), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("started_at", sa.Double(), nullable=False),
        sa.Column("finished_at", sa.Double(), nullable=False),
    )
    op.create_index("ix_delivery_attempts_key", "delivery_attempts", ["idempotency_key"])
    op.create_index("ix_delivery_attempts_rule", "delivery_attempts", ["rule_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_delivery_attempts_rule", table_name="delivery_attempts")
    op.drop_index("ix_delivery_attempts_key", table_name="delivery_attempts")
    op.drop_table("delivery_attempts")
