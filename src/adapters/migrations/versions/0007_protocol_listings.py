"""Every listing as the log recorded it, so a cut shows the details of its time.

Revision ID: 0007_protocol_listings
Revises: 0006_flow_changes

A database upgraded with facts in it starts with each protocol's current details, as
timeless versions at their position: cuts show today's details for what was listed before
the upgrade (a ``projections rebuild`` gives them their history).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_protocol_listings"
down_revision: str | None = "0006_flow_changes"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "protocol_listings",
        sa.Column("slug", sa.Text(), nullable=False),
        sa.Column("position", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("observed_at", sa.Double(), nullable=True),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("category", sa.Text(), nullable=False),
        sa.Column("chains", sa.JSON(), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("slug", "position", name="pk_protocol_listings"),
    )
    op.execute(
        "INSERT INTO protocol_listings (slug, position, observed_at, name, category, chains, url)"
        " SELECT slug, position, NULL, name, category, chains, url FROM protocols"
    )


def downgrade() -> None:
    op.drop_table("protocol_listings")
