"""Prestart: wait for the database, apply every service's migrations, seed reference data.

Runs apart from service start (``xpumesh prestart``, or the ``prestart`` container in
docker-compose, or the first step of ``xpumesh up``), never from request handlers.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import time

import asyncpg

from libs.config import Settings
from libs.db.migrate import DB_SERVICES, migrations_dir, upgrade

log = logging.getLogger(__name__)


async def wait_for_database(dsn: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    last: str = ""
    while time.monotonic() < deadline:
        try:
            conn = await asyncpg.connect(dsn, timeout=2.0)
            await conn.close()
            return
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            last = type(exc).__name__
            await asyncio.sleep(0.5)
    raise RuntimeError(f"database did not accept connections within {timeout_s:.0f}s (last error: {last})")


def services_with_migrations() -> list[str]:
    return [s for s in DB_SERVICES if (migrations_dir(s) / "versions").is_dir()]


async def migrate_all(dsn: str, only: list[str] | None = None) -> list[str]:
    done = []
    for service in only or services_with_migrations():
        await upgrade(service, dsn)
        done.append(service)
    return done


async def seed_all(settings: Settings) -> None:
    """Each service may ship ``services/<name>/prestart.py`` with ``async def seed(settings)``; it must be idempotent."""
    for service in services_with_migrations():
        try:
            module = importlib.import_module(f"services.{service}.prestart")
        except ModuleNotFoundError as exc:
            if exc.name == f"services.{service}.prestart":
                continue
            raise
        await module.seed(settings)
        log.info("seeded %s", service)


async def prestart(settings: Settings) -> None:
    dsn = settings.database_dsn()
    await wait_for_database(dsn, settings.db.wait_timeout_s)
    await migrate_all(dsn)
    await seed_all(settings)
