"""The scheduler's reference-data loop: seed data until the inventory answers, asked again sooner meanwhile."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from libs.bus.errors import BusError, Unavailable
from libs.catalog.loader import load_catalog, load_rules
from libs.config import SchedulerSettings
from libs.schemas.inventory import CatalogEntry, CatalogPage, RuleSet, SiteLinkList
from services.scheduler.api import reference_data
from services.scheduler.fleet import Fleet


class _Inventory:
    """A bus on which the inventory answers the scheduler's reference requests, or does not."""

    def __init__(self) -> None:
        self.answers = False

    async def request(self, subject: str, req: Any, model: type, *, timeout: float) -> Any:
        if not self.answers:
            raise Unavailable("no responders")
        if subject.endswith("catalog.list"):
            return CatalogPage(items=[CatalogEntry.model_validate(m.model_dump()) for m in load_catalog()])
        if subject.endswith("rules.list"):
            compat, driver = load_rules()
            return RuleSet(compat=compat, driver=driver)
        if subject.endswith("sites.links"):
            return SiteLinkList(items=[])
        raise BusError(f"unexpected request on {subject}")


class _Placer:
    def __init__(self) -> None:
        self.pokes = 0

    def poke(self) -> None:
        self.pokes += 1


async def test_scheduler_reference_data_retries_sooner_until_the_inventory_answers() -> None:
    bus, placer, fleet = _Inventory(), _Placer(), Fleet()
    settings = SimpleNamespace(scheduler=SchedulerSettings(reference_refresh_s=60.0, inventory_timeout_s=0.1))
    ctx: Any = SimpleNamespace(settings=settings, bus=bus, state=SimpleNamespace(fleet=fleet, placer=placer))

    assert await reference_data(ctx) == 5.0
    assert fleet.reference_source == "seed" and fleet.catalog and placer.pokes == 0

    bus.answers = True
    assert await reference_data(ctx) is None  # the regular interval
    assert fleet.reference_source == "inventory" and placer.pokes == 1

    bus.answers = False
    assert await reference_data(ctx) == 5.0
    assert fleet.reference_source == "inventory"  # what it gave last is kept
