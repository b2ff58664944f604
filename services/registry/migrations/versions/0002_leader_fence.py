"""The leader fence: the highest fencing token any leader of the registry has claimed.

Why: several registry instances may run; one leads (libs/election.py). Every transaction of
the leader checks this row first (libs/db/fencing.py), so a deposed leader that has not yet
noticed cannot commit after its successor claimed a higher token.

Revision ID: registry_0002
Revises: registry_0001
Create Date: 2026-12-07
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "registry_0002"
down_revision: str | None = "registry_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "registry"


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
