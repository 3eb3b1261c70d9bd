"""Wallet moves for smart money (docs/adr/0051-smart-money.md).

Revision ID: 0015_wallet_moves
Revises: 0013_mev_detections

``wallet_moves``: each wallet's side of the swaps and ERC-20 transfers EVM collectors
recorded, for ``GET /v2/analytics/smart-money``; an ``evm_blocks_orphaned`` entry deletes
the rows of its block hashes. Derived from the event log: a projection rebuild refills it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015_wallet_moves"
down_revision: str | None = "0014_history_partitions"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "wallet_moves",
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("block", sa.BigInteger(), nullable=False),
        sa.Column("block_hash", sa.Text(), nullable=False),
        sa.Column("timestamp", sa.Double(), nullable=False),
        sa.Column("tx_hash", sa.Text(), nullable=False),
        sa.Column("tx_index", sa.Integer(), nullable=False),
        sa.Column("log_index", sa.Integer(), nullable=False),
        sa.Column("wallet", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("pool", sa.Text(), nullable=True),
        sa.Column("counterparty", sa.Text(), nullable=True),
        sa.Column("token_paid", sa.Text(), nullable=True),
        sa.Column("amount_paid", sa.Text(), nullable=False),
        sa.Column("token_got", sa.Text(), nullable=True),
        sa.Column("amount_got", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint(
            "chain_id", "block_hash", "tx_hash", "log_index", "wallet", name="pk_wallet_moves"
        ),
    )
    op.create_index(
        "ix_wallet_moves_chain_block",
        "wallet_moves",
        ["chain_id", "block", "tx_index", "log_index"],
    )
    op.create_index("ix_wallet_moves_wallet", "wallet_moves", ["wallet", "block"])
    op.create_index("ix_wallet_moves_block_hash", "wallet_moves", ["block_hash"])


def downgrade() -> None:
    op.drop_table("wallet_moves")
