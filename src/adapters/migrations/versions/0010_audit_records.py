"""The audit trail's read model (ADR 0041): one row per audited request.

Revision ID: 0010_audit_records
Revises: 0009_protocol_oracles

Filled from the audit log (its own notification sequence), not from the main log:
``position`` is the audit log's, and the highest one held is where the copy resumes. A
history rebuild leaves this table alone.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_audit_records"
down_revision: str | None = "0009_protocol_oracles"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "audit_records",
        sa.Column("position", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("at", sa.Double(), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=False),
        sa.Column("account_id", sa.Text(), nullable=True),
        sa.Column("key_id", sa.Text(), nullable=True),
        sa.Column("request_id", sa.Text(), nullable=True),
        sa.Column("client", sa.Text(), nullable=True),
        sa.Column("method", sa.Text(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("position", name="pk_audit_records"),
    )
    op.create_index("ix_audit_records_account", "audit_records", ["account_id", "position"])
    op.create_index("ix_audit_records_key", "audit_records", ["key_id", "position"])
    op.create_index("ix_audit_records_at", "audit_records", ["at"])


def downgrade() -> None:
    op.drop_index("ix_audit_records_at", table_name="audit_records")
    op.drop_index("ix_audit_records_key", table_name="audit_records")
    op.drop_index("ix_audit_records_account", table_name="audit_records")
    op.drop_table("audit_records")
