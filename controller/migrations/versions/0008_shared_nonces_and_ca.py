"""Replicas share what used to live in one controller's memory or state directory: the enrollment
nonces (issued by one replica, taken once by any) and the managed TLS CA (one pin for every replica).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_shared_nonces_and_ca"
down_revision = "0007_removed_nodes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "enroll_nonces",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("nonce", sa.String(64), nullable=False, unique=True),
        sa.Column("expires_at", sa.DateTime, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "tls_ca",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("key_pem", sa.Text, nullable=False),
        sa.Column("cert_pem", sa.Text, nullable=False),
        sa.CheckConstraint("id = 1", name="tls_ca_one_row"),
    )


def downgrade() -> None:
    op.drop_table("tls_ca")
    op.drop_table("enroll_nonces")
