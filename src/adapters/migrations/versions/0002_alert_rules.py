"""Alert rules as their owners list them.

Revision ID: 0002_alert_rules
Revises: 0001

One row per rule, folded from the rule lifecycle entries of the log (and the
``alert_triggered``/``alert_resolved`` entries, for the firing state), so that
``GET /v2/alerts`` lists an account's rules with one indexed query and the alert evaluator
seeds its index without replaying the whole log. Rebuildable: ``reset`` empties it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_alert_rules"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "alert_rules",
        sa.Column("rule_id", sa.Text(), nullable=False),
        sa.Column("owner", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("target", sa.JSON(), nullable=False),
        sa.Column("target_key", sa.Text(), nullable=False),
        sa.Column("condition", sa.JSON(), nullable=False),
        sa.Column("channels", sa.JSON(), nullable=False),
        sa.Column("cooldown", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("firing", sa.Text(), nullable=False),
        sa.Column("last_fired_at", sa.Double(), nullable=True),
        sa.Column("transitions", sa.BigInteger(), nullable=False),
        sa.Column("created_position", sa.BigInteger(), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("rule_id", name="pk_alert_rules"),
    )
    op.create_index("ix_alert_rules_owner", "alert_rules", ["owner", "created_position"])
    op.create_index("ix_alert_rules_state", "alert_rules", ["state"])


def downgrade() -> None:
    op.drop_index("ix_alert_rules_state", table_name="alert_rules")
    op.drop_index("ix_alert_rules_owner", table_name="alert_rules")
    op.drop_table("alert_rules")
