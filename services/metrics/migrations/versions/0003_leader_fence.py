"""The leader fence: the highest fencing token any leader of the metrics has claimed.

Why: several metrics instances may run; one leads (libs/election.py) and records its token
here when it takes the lead. The metrics store writes through asyncpg, not fenced sessions:
its writes are telemetry and rollups, which a deposed leader's last batch duplicates harmlessly.

Revision ID: metrics_0003
Revises: metrics_0002
Create Date: 2026-12-07
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "metrics_0003"
down_revision: str | None = "metrics_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "metrics"


def upgrade() -> None:
    op.create_table(
        "leader_fence",
        sa.Column("id", sa.SmallInteger, primary_key=True),
        sa.Column("epoch", sa.BigInteger, nullable=False),  # the lease bucket's creation (epoch ms)
        sa.Column("token", sa.BigInteger, nullable=False),  # the lease's KV revision within that bucket
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("id = 1", name="leader_fence_one_row"),
        schema=S,
    )


def downgrade() -> None:
    op.drop_table("leader_fence", schema=S)
