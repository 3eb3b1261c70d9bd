"""Which main log positions an audited request recorded (issue 13, ADR 0041).

Revision ID: 0012_audit_recorded
Revises: 0011_account_keys

``recorded_first`` / ``recorded_last``: the span of the main log positions an ingest
request's events took (its exact ranges stay in ``detail.recorded``), so that "who sent the
observation at position N" is an index lookup. Records written before have neither: their
detail holds only the group's highest position.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012_audit_recorded"
down_revision: str | None = "0011_account_keys"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.add_column("audit_records", sa.Column("recorded_first", sa.BigInteger(), nullable=True))
    op.add_column("audit_records", sa.Column("recorded_last", sa.BigInteger(), nullable=True))
    op.create_index("ix_audit_records_recorded", "audit_records", ["recorded_last"])


def downgrade() -> None:
    op.drop_index("ix_audit_records_recorded", table_name="audit_records")
    with op.batch_alter_table("audit_records") as batch:
        batch.drop_column("recorded_last")
        batch.drop_column("recorded_first")
