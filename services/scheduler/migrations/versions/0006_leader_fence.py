"""The leader fence: the highest fencing token any leader of the scheduler has claimed.

Why: several scheduler instances may run; one leads (libs/election.py). Every transaction of
the leader checks this row first (libs/db/fencing.py), so a deposed leader that has not yet
noticed cannot commit after its successor claimed a higher token.

Revision ID: scheduler_0006
Revises: scheduler_0005
Create Date: 2026-12-07
"""
from collections.abc import Sequence

from libs.db.fencing import create_fence_table, drop_fence_table

revision: str = "scheduler_0006"
down_revision: str | None = "scheduler_0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "scheduler"


def upgrade() -> None:
    create_fence_table(S)


def downgrade() -> None:
    drop_fence_table(S)
