"""Removed nodes: the keys and credential of every node an admin removed, refused until allowed again.

A row is written in the transaction that deletes the node and deleted by `wgmesh nodes allow`. While
it exists, enrollment with its identity or WireGuard key is refused (whatever pre-auth key comes with
it) and its old credential is answered 410 Gone. Node ids are kept without a foreign key: the node row
is gone.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_removed_nodes"
down_revision = "0006_tags"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "removed_nodes",
        sa.Column("node_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("name", sa.String(253), nullable=False),
        sa.Column("wg_public_key", sa.String(44), nullable=False, index=True),
        sa.Column("identity_public_key", sa.String(44), nullable=False, index=True),
        sa.Column("credential_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("removed_at", sa.DateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("removed_nodes")
