"""The audit trail: one row per admin action or security event (wire.audit.AuditEvent), never changed.

Node ids are kept without a foreign key: the trail outlives the nodes it names.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_audit_events"
down_revision = "0004_replicas"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime, nullable=False, index=True),
        sa.Column("actor", sa.String(300), nullable=False),
        sa.Column("action", sa.String(32), nullable=False, index=True),
        sa.Column("result", sa.String(16), nullable=False),
        sa.Column("source", sa.String(64), nullable=True),
        sa.Column("node_id", sa.Integer, nullable=True, index=True),
        sa.Column("node_name", sa.String(253), nullable=True),
        sa.Column("policy_version", sa.Integer, nullable=True),
        sa.Column("detail", sa.Text, nullable=False),
        sqlite_autoincrement=True,
    )


def downgrade() -> None:
    op.drop_table("audit_events")
