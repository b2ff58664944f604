"""The leader fence: the highest fencing token any leader of the scheduler has claimed.

Why: several scheduler instances may run; one leads (libs/election.py). Every transaction of
the leader checks this row first (libs/db/fencing.py), so a deposed leader that has not yet
noticed cannot commit after its successor claimed a higher token.

Revision ID: scheduler_0006
Revises: scheduler_0005
Create Date: 2026-12-07
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "scheduler_0006"
down_revision: str | None = "scheduler_0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "scheduler"


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
