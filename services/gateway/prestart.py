"""Gateway prestart: the first admin key, from ``XPUMESH_BOOTSTRAP_ADMIN_KEY``, if no admin key exists."""

from __future__ import annotations

import logging

from libs.config import Settings
from libs.db import make_engine, make_sessionmaker, session_scope
from libs.schemas.tenancy import SYSTEM_TENANT, Role
from services.gateway import store

log = logging.getLogger(__name__)


async def seed(settings: Settings) -> None:
    """Idempotent: creates the bootstrap admin key only when no live admin key exists and this one is unknown."""
    if settings.bootstrap_admin_key is None:
        return
    secret = settings.bootstrap_admin_key.get_secret_value()
    if len(secret) < store.MIN_KEY_LEN:
        raise RuntimeError(f"XPUMESH_BOOTSTRAP_ADMIN_KEY must be at least {store.MIN_KEY_LEN} characters")
    engine = make_engine(settings.database_dsn(), settings.db, application_name="xpumesh-prestart")
    try:
        async with session_scope(make_sessionmaker(engine)) as session:
            if await store.count_live_admin_keys(session) or await store.count_keys_with_secret(session, secret):
                return
            key, _ = await store.create_key(session, tenant=SYSTEM_TENANT, role=Role.ADMIN, name="bootstrap admin",
                                             secret=secret)
            log.info("created the bootstrap admin key %s (%s…)", key.id, key.prefix)
    finally:
        await engine.dispose()
