"""Replicas: one mesh version bumped in the same transaction as each change, and the change log that
tells the other replicas what to reload.

The version starts at the highest map serial already stored, so serials keep growing. `schema_version`
becomes 4: wgmesh from before Alembic (which knew 1 to 3) refuses the database instead of misreading it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_replicas"
down_revision = "0003_key_rotations"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "mesh_version",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.CheckConstraint("id = 1", name="mesh_version_one_row"),
    )
    op.execute("INSERT INTO mesh_version (id, version) SELECT 1, COALESCE(MAX(serial), 0) FROM map_states")
    op.create_table(
        "changes",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("version", sa.BigInteger, nullable=False, index=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("node_id", sa.Integer, nullable=True),
        sa.Column("peer_id", sa.Integer, nullable=True),
        sqlite_autoincrement=True,
    )
    op.execute("UPDATE schema_version SET version = 4")


def downgrade() -> None:
    op.drop_table("changes")
    op.drop_table("mesh_version")
    op.execute("UPDATE schema_version SET version = 3")
