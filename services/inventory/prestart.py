"""Seed the inventory: sites and links from configuration, the catalog and rules from ``libs/catalog``.

Idempotent: run by every ``xpumesh prestart``; entries an operator edited are left alone.
"""

from __future__ import annotations

from libs.catalog.loader import load_catalog, load_rules
from libs.config import Settings
from libs.db import make_engine, make_sessionmaker, session_scope
from libs.sites import load_sites
from services.inventory.store import catalog, sites


async def seed(settings: Settings) -> None:
    site_list, links = load_sites(settings.inventory.sites_file)
    models = load_catalog()
    compat, driver = load_rules()
    engine = make_engine(settings.database_dsn(), settings.db, application_name="xpumesh-prestart")
    try:
        async with session_scope(make_sessionmaker(engine)) as session:
            await sites.update_sites(session, site_list, links)
            await catalog.update_seed(session, models, compat, driver)
    finally:
        await engine.dispose()
