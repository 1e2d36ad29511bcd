"""Replicas share link samples: an end's latest report of a contested link, so a link whose two ends
report to different replicas can still be decided on both ends' reports (controller.topology)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_link_samples"
down_revision = "0008_shared_nonces_and_ca"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "link_samples",
        sa.Column("a", sa.Integer, sa.ForeignKey("nodes.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("b", sa.Integer, sa.ForeignKey("nodes.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("reporter", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("rtt_ms", sa.Float, nullable=True),
        sa.Column("loss", sa.Float, nullable=True),
        sa.Column("handshake_age_s", sa.Float, nullable=True),
        sa.Column("at", sa.DateTime, nullable=False),
        sa.Column("smoothed", sa.Float, nullable=True),
        sa.Column("far_below", sa.Boolean, nullable=False),
        sa.CheckConstraint("a < b", name="link_samples_ordered"),
        sa.CheckConstraint("reporter = a OR reporter = b", name="link_samples_end"),
    )


def downgrade() -> None:
    op.drop_table("link_samples")
