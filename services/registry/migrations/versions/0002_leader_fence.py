"""The leader fence: the highest fencing token any leader of the registry has claimed.

Why: several registry instances may run; one leads (libs/election.py). Every transaction of
the leader checks this row first (libs/db/fencing.py), so a deposed leader that has not yet
noticed cannot commit after its successor claimed a higher token.

Revision ID: registry_0002
Revises: registry_0001
Create Date: 2026-12-07
"""
from collections.abc import Sequence

from libs.db.fencing import create_fence_table, drop_fence_table

revision: str = "registry_0002"
down_revision: str | None = "registry_0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "registry"


def upgrade() -> None:
    create_fence_table(S)


def downgrade() -> None:
    drop_fence_table(S)
