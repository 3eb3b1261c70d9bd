"""The oracles of a protocol's listing (DeFiLlama's ``oracles``, ADR 0033).

Revision ID: 0006_protocol_oracles
Revises: 0005_rollups

Nullable: rows written before the column existed hold NULL, read as "no oracles known"
(an empty list), as events recorded before oracles were kept replay with none.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_protocol_oracles"
down_revision: str | None = "0005_rollups"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("protocols") as batch:
        batch.add_column(sa.Column("oracles", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("protocols") as batch:
        batch.drop_column("oracles")
