"""MEV detections (docs/adr/0050-mev-detection.md).

Revision ID: 0013_mev_detections
Revises: 0012_audit_recorded

``mev_detections``: the ``MevDetected`` events not retracted since, for
``GET /v2/analytics/mev``; a ``MevRetracted`` event deletes its rows. Derived from the event
log: a projection rebuild refills it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013_mev_detections"
down_revision: str | None = "0012_audit_recorded"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "mev_detections",
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("block", sa.BigInteger(), nullable=False),
        sa.Column("block_hash", sa.Text(), nullable=False),
        sa.Column("pool", sa.Text(), nullable=False),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("victim", sa.Text(), nullable=True),
        sa.Column("quote_token", sa.Text(), nullable=False),
        sa.Column("profit", sa.Text(), nullable=False),
        sa.Column("profit_quote", sa.Double(), nullable=False),
        sa.Column("profit_usd", sa.Double(), nullable=True),
        sa.Column("tx_hashes", sa.Text(), nullable=False),
        sa.Column("recorded_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_mev_detections"),
    )
    op.create_index("ix_mev_detections_pool", "mev_detections", ["pool", "block"])
    op.create_index("ix_mev_detections_actor", "mev_detections", ["actor", "block"])
    op.create_index("ix_mev_detections_block", "mev_detections", ["block"])


def downgrade() -> None:
    op.drop_table("mev_detections")
