"""scheduler_0004 on real PostgreSQL: quotas stored before guarantees existed become limits (max, min 0), and
downgrading gives the former columns back from the limits."""

from __future__ import annotations

import asyncio
import json

from alembic import command
from sqlalchemy import text

from libs.config import DatabaseSettings
from libs.db import make_engine
from libs.db.migrate import alembic_config, upgrade


async def _downgrade(dsn: str, revision: str) -> None:
    await asyncio.to_thread(command.downgrade, alembic_config("scheduler", dsn), revision)


async def test_quota_migration_turns_former_quotas_into_limits_and_back(database_url: str) -> None:
    await _downgrade(database_url, "scheduler_0003")
    engine = make_engine(database_url, DatabaseSettings())
    try:
        async with engine.begin() as conn:
            await conn.execute(text(
                "INSERT INTO scheduler.tenant_quotas (tenant, devices, compute_units) VALUES "
                "('acme', CAST(:d AS jsonb), 1000), ('globex', '{}', NULL)"), {"d": json.dumps({"gpu": 4, "npu": 2.5})})
        await upgrade("scheduler", database_url)
        async with engine.begin() as conn:
            rows = {r.tenant: r.limits for r in (await conn.execute(text(
                "SELECT tenant, limits FROM scheduler.tenant_quotas"))).all()}
            assert rows == {"acme": {"gpu": {"min": 0, "max": 4}, "npu": {"min": 0, "max": 2.5},
                                     "compute_units": {"min": 0, "max": 1000}}, "globex": {}}
            await conn.execute(text(
                "UPDATE scheduler.tenant_quotas SET limits = CAST(:l AS jsonb) WHERE tenant = 'globex'"),
                {"l": json.dumps({"gpu": {"min": 2, "max": None}, "cpu": {"min": 0, "max": 64},
                                  "memory_gib": {"min": 0, "max": 512}})})
        await _downgrade(database_url, "scheduler_0003")
        async with engine.begin() as conn:
            back = {r.tenant: (r.devices, r.compute_units) for r in (await conn.execute(text(
                "SELECT tenant, devices, compute_units FROM scheduler.tenant_quotas"))).all()}
        # a guarantee and a memory limit have no former column; unlimited gpus stay unlimited
        assert back == {"acme": ({"gpu": 4, "npu": 2.5}, 1000.0), "globex": ({"cpu": 64}, None)}
    finally:
        await engine.dispose()
