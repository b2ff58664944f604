"""Reference data the scheduler asks for over the bus: catalog, rules, site links.

The inventory answers ``catalog.list``, ``rules.list`` and ``sites.links``. Until it
answers (it may start later, or be upgrading), the catalog and rules shipped with the code
(``libs.catalog``, the inventory's seed data too) are used, so submissions can be validated
and placed from the first second; the source in use is logged and kept on the fleet
(``reference_source``).
"""

from __future__ import annotations

import logging

from libs.bus import subjects
from libs.bus.connection import Bus
from libs.bus.errors import BusError
from libs.catalog.loader import load_catalog, load_rules
from libs.schemas.catalog import CompatRule, DeviceModel, RuntimeDriverRule
from libs.schemas.inventory import CatalogPage, CatalogQuery, RuleQuery, RuleSet, SiteLinkList
from services.scheduler.fleet import Fleet
from services.scheduler.placement import SiteLink

log = logging.getLogger(__name__)
_MAX_CATALOG_PAGES = 50


async def _inventory_reference(bus: Bus, timeout: float) -> tuple[list[DeviceModel], RuleSet, list[SiteLink]]:
    catalog: list[DeviceModel] = []
    after: str | None = None
    for _ in range(_MAX_CATALOG_PAGES):
        page = await bus.request(subjects.rpc_subject("inventory", "catalog.list"),
                                 CatalogQuery(after=after, limit=5000), CatalogPage, timeout=timeout)
        catalog.extend(DeviceModel.model_validate(e.model_dump(include=set(DeviceModel.model_fields)))
                       for e in page.items)
        if not page.next_cursor:
            break
        after = page.next_cursor
    rules = await bus.request(subjects.rpc_subject("inventory", "rules.list"), RuleQuery(), RuleSet, timeout=timeout)
    try:
        links = await bus.request(subjects.rpc_subject("inventory", "sites.links"), {}, SiteLinkList, timeout=timeout)
        site_links = [SiteLink(x.a, x.b, x.bandwidth_gbps, x.latency_ms) for x in links.items]
    except BusError:
        site_links = []
    return catalog, rules, site_links


def seed_reference() -> tuple[list[DeviceModel], list[CompatRule], list[RuntimeDriverRule]]:
    compat, driver = load_rules()
    return load_catalog(), compat, driver


async def refresh(fleet: Fleet, bus: Bus, timeout: float) -> bool:
    """Ask the inventory; fall back to the seed files when it does not answer. True when it answered."""
    try:
        catalog, rules, links = await _inventory_reference(bus, timeout)
    except (BusError, ValueError) as exc:
        if fleet.reference_source != "inventory":
            if fleet.reference_source != "seed":
                log.info("inventory does not answer (%s); using the seed catalog and rules", type(exc).__name__)
                catalog, compat, driver = seed_reference()
                fleet.set_reference(catalog, compat, driver, [], "seed")
        else:
            log.warning("inventory does not answer (%s); keeping the reference data it gave last", type(exc).__name__)
        return False
    if not catalog:  # an empty catalog would make every model glob invalid: keep what we have
        log.warning("inventory returned an empty catalog; keeping the current one")
        return False
    fleet.set_reference(catalog, rules.compat, rules.driver, links, "inventory")
    return True
