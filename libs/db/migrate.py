"""Alembic migrations, one history per service, each in its own PostgreSQL schema.

Migrations run in the prestart step (``xpumesh prestart`` / ``xpumesh db upgrade``),
never from request handlers. A service refuses to start on a schema that is not at head.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from libs.db import async_url

log = logging.getLogger(__name__)

# Services that own tables, in the order their migrations run.
DB_SERVICES = ("registry", "inventory", "scheduler", "metrics", "gateway")


def migrations_dir(service: str) -> Path:
    spec = importlib.util.find_spec(f"services.{service}")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"unknown service {service!r}")
    return Path(next(iter(spec.submodule_search_locations))) / "migrations"


def alembic_config(service: str, dsn: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir(service)))
    cfg.set_main_option("sqlalchemy.url", async_url(dsn).replace("%", "%%"))
    cfg.attributes["schema"] = service
    return cfg


def _upgrade_sync(service: str, dsn: str, revision: str) -> None:
    command.upgrade(alembic_config(service, dsn), revision)


async def upgrade(service: str, dsn: str, revision: str = "head") -> None:
    """Apply a service's migrations (Alembic runs its own event loop, so in a thread)."""
    await asyncio.to_thread(_upgrade_sync, service, dsn, revision)
    log.info("migrated %s to %s", service, revision)


def head_revision(service: str) -> str | None:
    return ScriptDirectory(str(migrations_dir(service))).get_current_head()


async def current_revision(engine: AsyncEngine, service: str) -> str | None:
    async with engine.connect() as conn:
        exists = await conn.scalar(text("SELECT to_regclass(:t)"), {"t": f"{service}.alembic_version"})
        if exists is None:
            return None

        def read(sync_conn: object) -> str | None:
            ctx = MigrationContext.configure(sync_conn, opts={"version_table_schema": service})  # type: ignore[arg-type]
            return ctx.get_current_revision()

        return await conn.run_sync(read)


async def check_at_head(engine: AsyncEngine, service: str) -> None:
    current, head = await current_revision(engine, service), head_revision(service)
    if current != head:
        raise RuntimeError(
            f"database schema {service!r} is at {current or 'nothing'}, code expects {head}; "
            "run `xpumesh db upgrade` (or `xpumesh prestart`) first"
        )
