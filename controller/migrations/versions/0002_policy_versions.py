"""The access policy's versions (each row is also the audit entry of the change that made it).

The pre-Alembic `schema_version` 2: a database made by that code is stamped with this revision.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_policy_versions"
down_revision = "0001_baseline"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "policy_versions",
        sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("author", sa.String(200), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("restored", sa.Integer, nullable=True),
        sa.Column("text", sa.Text, nullable=False),
    )
    op.execute("UPDATE schema_version SET version = 2")


def downgrade() -> None:
    op.drop_table("policy_versions")
    op.execute("UPDATE schema_version SET version = 1")
