"""PostgreSQL access: SQLAlchemy 2 async engines on asyncpg, one schema per service.

The caller owns the transaction: API handlers open ``session_scope`` and model
functions take the session and only ``flush``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from libs.config import DatabaseSettings


def async_url(dsn: str) -> str:
    """``postgresql://…`` → ``postgresql+asyncpg://…`` (other drivers are not supported)."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if dsn.startswith(prefix):
            return "postgresql+asyncpg://" + dsn[len(prefix):]
    raise ValueError("database URL must start with postgresql://")


def make_engine(dsn: str, settings: DatabaseSettings, *, application_name: str = "xpumesh") -> AsyncEngine:
    return create_async_engine(
        async_url(dsn),
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
        pool_pre_ping=True,
        connect_args={"timeout": settings.connect_timeout_s,
                      "server_settings": {"application_name": application_name}},
    )


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


@asynccontextmanager
async def session_scope(maker: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """One transaction: commit on success, roll back on error."""
    async with maker() as session, session.begin():
        yield session


# A JSON escape of NUL: ``\u0000`` after an even number of backslashes (``\\u0000`` is text, not NUL).
_JSON_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


def json_has_nul(doc: bytes) -> bool:
    """Whether a JSON document holds a NUL character, which no PostgreSQL text or JSON value can store."""
    return b"\\u0000" in doc and _JSON_NUL.search(doc) is not None
