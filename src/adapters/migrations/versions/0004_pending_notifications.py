"""Notification jobs not settled yet (the embedded queue's durable copy).

Revision ID: 0004_pending_notifications
Revises: 0003_delivery_attempts

One row per job the dispatcher handed to a queue that does not outlive the process (the
in-process queue, embedded), removed when an attempt delivers or dead-letters it. On start
the dispatcher enqueues what is left again. Not derived from the event log: projection
rebuilds leave it alone.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_pending_notifications"
down_revision: str | None = "0003_delivery_attempts"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "pending_notifications",
        sa.Column("idempotency_key", sa.Text(), nullable=False),
        sa.Column("rule_id", sa.Text(), nullable=False),
        sa.Column("job", sa.JSON(), nullable=False),
        sa.Column("recorded_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("idempotency_key", name="pk_pending_notifications"),
    )


def downgrade() -> None:
    op.drop_table("pending_notifications")
