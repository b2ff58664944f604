"""The leader fence: the highest fencing token any leader of the metrics has claimed.

Why: several metrics instances may run; one leads (libs/election.py) and records its token
here when it takes the lead. The metrics store writes through asyncpg, not fenced sessions:
its writes are telemetry and rollups, which a deposed leader's last batch duplicates harmlessly.

Revision ID: metrics_0003
Revises: metrics_0002
Create Date: 2026-12-07
"""
from collections.abc import Sequence

from libs.db.fencing import create_fence_table, drop_fence_table

revision: str = "metrics_0003"
down_revision: str | None = "metrics_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "metrics"


def upgrade() -> None:
    create_fence_table(S)


def downgrade() -> None:
    drop_fence_table(S)
