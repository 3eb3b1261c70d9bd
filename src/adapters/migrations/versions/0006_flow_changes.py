"""The flows' series states carry changes too (volume_24h and fees_24h totals).

Revision ID: 0006_flow_changes
Revises: 0005_rollups

Their states were stored without changes. The series states are emptied, so the read
model's next start fills every rollup again from the raw observations
(``SqlHistoryReadModel``, as after 0005): on a large store that start takes minutes.
"""

from __future__ import annotations

from alembic import op

revision = "0006_flow_changes"
down_revision: str | None = "0005_rollups"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.execute("DELETE FROM series_states")


def downgrade() -> None:
    pass  # the older code reads the refilled states as they are (flows' changes unused)
