"""Database functions of sites and site links (the store's verbs): seeded from configuration, listed, summarised.

Apart from ``store`` (reported hosts and devices) for size; the capability path creates the
sites agents name that configuration did not (``create_reported_sites``).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from libs.schemas.devices import Health
from libs.schemas.inventory import DeviceCounts, Site, SiteLink, SiteSummary
from libs.sites import derive_link
from services.inventory.orm import site_links, sites


async def update_sites(session: AsyncSession, site_list: Sequence[Site], links: Sequence[SiteLink]) -> None:
    """Idempotent upsert of the configured sites and links (sites agents invented are completed)."""
    if site_list:
        stmt = insert(sites).values([{**s.model_dump(), "origin": "config"} for s in site_list])
        await session.execute(stmt.on_conflict_do_update(index_elements=[sites.c.id], set_={
            "city": stmt.excluded.city, "region": stmt.excluded.region, "lat": stmt.excluded.lat,
            "lon": stmt.excluded.lon, "origin": "config", "updated_at": func.now()}))
    if links:
        lstmt = insert(site_links).values([lk.model_dump() for lk in links])
        await session.execute(lstmt.on_conflict_do_update(index_elements=[site_links.c.a, site_links.c.b], set_={
            "bandwidth_gbps": lstmt.excluded.bandwidth_gbps, "latency_ms": lstmt.excluded.latency_ms,
            "updated_at": func.now()}))


async def update_site(session: AsyncSession, site: Site) -> bool:
    """Create or update one site; links it lacks to other sites are derived from distance. True when created."""
    known = {s.id: s for s in await list_sites(session)}
    await update_sites(session, [site], [])
    have = {(lk.a, lk.b) for lk in await list_links(session, site.id)}
    missing = [derive_link(site, other) for other in known.values()
               if other.id != site.id and tuple(sorted((site.id, other.id))) not in have]
    if missing:
        await session.execute(insert(site_links).values([lk.model_dump() for lk in missing]).on_conflict_do_nothing())
    return site.id not in known


async def create_reported_sites(session: AsyncSession, site_ids: Sequence[str]) -> None:
    """Sites named by agents' reports, created (city = id, origin ``auto``) unless they exist."""
    if site_ids:
        await session.execute(insert(sites).values([{"id": s, "city": s, "origin": "auto"} for s in site_ids])
                              .on_conflict_do_nothing())


async def list_sites(session: AsyncSession) -> list[Site]:
    rows = (await session.execute(select(sites.c.id, sites.c.city, sites.c.region, sites.c.lat, sites.c.lon)
                                  .order_by(sites.c.id))).mappings().all()
    return [Site.model_validate(dict(r)) for r in rows]


async def list_links(session: AsyncSession, site: str | None = None) -> list[SiteLink]:
    stmt = select(site_links.c.a, site_links.c.b, site_links.c.bandwidth_gbps, site_links.c.latency_ms).order_by(
        site_links.c.a, site_links.c.b)
    if site:
        stmt = stmt.where((site_links.c.a == site) | (site_links.c.b == site))
    return [SiteLink.model_validate(dict(r)) for r in (await session.execute(stmt)).mappings().all()]


SUMMARY_DEVICES = text("""
SELECT site, hardware_type, health, count(*) AS n, coalesce(sum(compute_units), 0) AS cu
FROM inventory.devices GROUP BY site, hardware_type, health
""")
SUMMARY_HOSTS = text("SELECT site, status, count(*) AS n FROM inventory.hosts GROUP BY site, status")


async def list_site_summaries(session: AsyncSession) -> list[SiteSummary]:
    """Per site: hosts by status, devices by hardware type and health."""
    out = {s.id: SiteSummary(site=s.id, city=s.city, region=s.region, lat=s.lat, lon=s.lon)
           for s in await list_sites(session)}
    for site, status, n in (await session.execute(SUMMARY_HOSTS)).all():
        entry = out.setdefault(site, SiteSummary(site=site, city=site, region=""))
        entry.hosts += n
        if status == "up":
            entry.hosts_up += n
        elif status == "down":
            entry.hosts_down += n
    for site, hardware_type, health, n, cu in (await session.execute(SUMMARY_DEVICES)).all():
        entry = out.setdefault(site, SiteSummary(site=site, city=site, region=""))
        counts = entry.devices.setdefault(hardware_type, DeviceCounts())
        counts.total += n
        if health == Health.HEALTHY.value:
            counts.healthy += n
        elif health == Health.UNHEALTHY.value:
            counts.unhealthy += n
        else:
            counts.unknown += n
        if health != Health.UNHEALTHY.value:
            counts.compute_units = round(counts.compute_units + float(cu), 2)
    return [out[k] for k in sorted(out)]
