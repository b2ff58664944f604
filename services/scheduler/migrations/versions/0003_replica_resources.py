"""What a placed replica holds of its host besides devices, and which alternative it took.

Why: a host's CPUs and memory are capacity the placer must not give twice, so each placed
replica records what it holds (``cpu``, ``memory_mib``), the hardware alternative it was
placed with (``alternative``) and, with ``placement.numa: single``, its NUMA node. The
placer lays these over the fleet like devices; the launch command carries them to the agent,
which pins the CPUs and limits the memory. Rows from before this revision hold ``{}``:
nothing of the host, alternative 0.

Revision ID: scheduler_0003
Revises: scheduler_0002
Create Date: 2027-01-10
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "scheduler_0003"
down_revision: str | None = "scheduler_0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

S = "scheduler"


def upgrade() -> None:
    op.add_column("replicas", sa.Column("resources", JSONB, nullable=False, server_default="{}"), schema=S)


def downgrade() -> None:
    op.drop_column("replicas", "resources", schema=S)
