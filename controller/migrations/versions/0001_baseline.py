"""The schema as it was before Alembic (`schema_version` 1): keys, nodes, map states, links, holds.

A database made by that code is stamped with this revision, never re-created. Never edit this file:
it is what existing databases hold.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_baseline"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    schema_version = op.create_table("schema_version", sa.Column("version", sa.Integer, nullable=False))
    op.bulk_insert(schema_version, [{"version": 1}])
    op.create_table(
        "preauth_keys",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("reusable", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("expires_at", sa.DateTime, nullable=True),
        sa.Column("revoked", sa.Boolean, nullable=False),
        sa.Column("used_count", sa.Integer, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "nodes",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(253), nullable=False, unique=True),
        sa.Column("hostname", sa.String(253), nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("wg_public_key", sa.String(44), nullable=False, unique=True),
        sa.Column("identity_public_key", sa.String(44), nullable=False, unique=True),
        sa.Column("tunnel_address", sa.String(45), nullable=False, unique=True),
        sa.Column("endpoints", sa.Text, nullable=False),
        sa.Column("listen_port", sa.Integer, nullable=False),
        sa.Column("enrolled_at", sa.DateTime, nullable=False),
        sa.Column("last_seen", sa.DateTime, nullable=True),
        sa.Column("preauth_key_id", sa.Integer, sa.ForeignKey("preauth_keys.id", ondelete="SET NULL")),
        sa.Column("credential_hash", sa.String(64), nullable=False, unique=True),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "map_states",
        sa.Column("node_id", sa.Integer, sa.ForeignKey("nodes.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("serial", sa.Integer, nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
    )
    op.create_table(
        "links",
        sa.Column("a", sa.Integer, sa.ForeignKey("nodes.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("b", sa.Integer, sa.ForeignKey("nodes.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("weight", sa.Float, nullable=True),
        sa.Column("down_since", sa.DateTime, nullable=True),
        sa.CheckConstraint("a < b", name="links_ordered"),
    )
    op.create_table(
        "address_holds",
        sa.Column("address", sa.String(45), primary_key=True),
        sa.Column("holder", sa.Integer, sa.ForeignKey("nodes.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("min_serial", sa.Integer, nullable=False),
    )


def downgrade() -> None:
    for table in ("address_holds", "links", "map_states", "nodes", "preauth_keys", "schema_version"):
        op.drop_table(table)
