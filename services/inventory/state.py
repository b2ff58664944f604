"""The inventory's state in memory: the device-model catalog and the health cache, and their loader.

Every instance holds both; PostgreSQL is the record. The catalog is small (tens of models)
and read on every capability report, so it is kept here with a bounded cache of name
matches, and replaced after an edit and every ``inventory.catalog_refresh_s``. The health
cache only filters telemetry (a device whose health this instance already knows needs no
write); the database decides what really flipped.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession

from libs.catalog.loader import match_model
from libs.db import session_scope
from libs.db.outbox import OutboxRelay
from libs.schemas.catalog import DeviceModel
from libs.schemas.devices import Health
from libs.service import Context
from services.inventory import store
from services.inventory.orm import outbox
from services.inventory.store import catalog

SERVICE = "inventory"


class Catalog:
    """The catalog in memory, with a bounded cache of (vendor, printed name) → match."""

    def __init__(self, models: Sequence[DeviceModel], *, cache_size: int = 4096) -> None:
        self.models = list(models)
        self._cache: OrderedDict[tuple[str, str], DeviceModel | None] = OrderedDict()
        self._cache_size = cache_size

    def match(self, vendor: str, name: str) -> DeviceModel | None:
        key = (vendor, name)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        found = match_model(vendor, name, self.models)
        self._cache[key] = found
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return found


async def read_catalog(session: AsyncSession) -> Catalog:
    return Catalog(await catalog.list_models(session))


@dataclass
class HealthCache:
    """What this instance last knew of each host's devices: health by slot, and the host's site."""

    health: dict[str, list[Health]] = field(default_factory=dict)
    sites: dict[str, str] = field(default_factory=dict)

    def put(self, host_id: str, site: str, health: list[Health]) -> None:
        self.health[host_id] = health
        self.sites[host_id] = site

    def apply(self, updates: Sequence[tuple[str, int, Health]]) -> None:
        """Record health values after the transaction that wrote them committed."""
        for host_id, slot, health in updates:
            known = self.health.get(host_id)
            if known is not None and slot < len(known):
                known[slot] = health

    async def load(self, session: AsyncSession, host_ids: Sequence[str] | None = None) -> None:
        """Fill the cache from PostgreSQL (every host, or only those named)."""
        grouped: dict[str, list[Health]] = {}
        for host_id, site, slot, health in await store.list_device_health(session, host_ids):
            slots = grouped.setdefault(host_id, [])
            slots.extend([Health.UNKNOWN] * (slot + 1 - len(slots)))
            slots[slot] = health
            self.sites[host_id] = site
        self.health.update(grouped)
        if host_ids is not None:  # known hosts without devices (CPU-only)
            for host_id, site in await store.list_host_sites(session, [h for h in host_ids if h not in grouped]):
                self.put(host_id, site, [])


@dataclass
class InventoryState:
    catalog: Catalog
    health: HealthCache
    relay: OutboxRelay


async def load_state(ctx: Context[InventoryState]) -> InventoryState:
    health = HealthCache()
    async with session_scope(ctx.db) as session:
        cat = await read_catalog(session)
        await health.load(session)
    # Large batches: a fleet registering at once emits one device.added per device.
    return InventoryState(catalog=cat, health=health, relay=OutboxRelay(SERVICE, ctx.db, outbox, ctx.bus, batch=1024))
