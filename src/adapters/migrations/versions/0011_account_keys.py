"""The accounts' data keys (crypto-shredding, docs/adr/0042-crypto-shredding.md).

Revision ID: 0011_account_keys
Revises: 0010_audit_records

``account_keys``: one AES-GCM key per subject (a digest of an account's owner string);
destroying a key deletes its row. ``erased_subjects``: the subjects erased, so that nothing
of theirs is written in clear afterwards. Neither is derived from the event log: projection
rebuilds leave them alone, and backups keep them (without the keys, the log's personal
fields cannot be read).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011_account_keys"
down_revision: str | None = "0010_audit_records"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "account_keys",
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("key_id", sa.Text(), nullable=False),
        sa.Column("secret", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("subject", name="pk_account_keys"),
        sa.UniqueConstraint("key_id", name="uq_account_keys_key_id"),
    )
    op.create_table(
        "erased_subjects",
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("erased_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("subject", name="pk_erased_subjects"),
    )


def downgrade() -> None:
    op.drop_table("erased_subjects")
    op.drop_table("account_keys")
