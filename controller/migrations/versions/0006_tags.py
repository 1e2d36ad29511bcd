"""Tags on pre-auth keys and nodes: a JSON list of tag names each; NULL on a key means it gives none
(its nodes carry their role as their only tag, as before tags), NULL on a node the same.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_tags"
down_revision = "0005_audit_events"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("preauth_keys", sa.Column("tags", sa.Text, nullable=True))
    op.add_column("nodes", sa.Column("tags", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("tags")
    with op.batch_alter_table("preauth_keys") as batch:
        batch.drop_column("tags")
