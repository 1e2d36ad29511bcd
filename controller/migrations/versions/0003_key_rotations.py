"""Key rotation records: one row per node, controller.rotation.NodeRotation as JSON.

The pre-Alembic `schema_version` 3: a database made by that code is stamped with this revision.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_key_rotations"
down_revision = "0002_policy_versions"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "key_rotations",
        sa.Column("node_id", sa.Integer, sa.ForeignKey("nodes.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("record", sa.Text, nullable=False),
    )
    op.execute("UPDATE schema_version SET version = 3")


def downgrade() -> None:
    op.drop_table("key_rotations")
    op.execute("UPDATE schema_version SET version = 2")
