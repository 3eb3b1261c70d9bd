"""The oracles of a protocol's listing (DeFiLlama's ``oracles``, ADR 0033), today's and in
each listing version.

Revision ID: 0009_protocol_oracles
Revises: 0008_anomalies

Nullable: rows written before the column existed hold NULL, read as "no oracles known"
(an empty list), as events recorded before oracles were kept replay with none.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_protocol_oracles"
down_revision: str | None = "0008_anomalies"
branch_labels: str | None = None
depends_on: str | None = None


_LISTING_TABLES = ("protocols", "protocol_listings")


def upgrade() -> None:
    for table in _LISTING_TABLES:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("oracles", sa.JSON(), nullable=True))


def downgrade() -> None:
    for table in _LISTING_TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("oracles")
