"""The scheduler's fleet view: the snapshot kept across rounds decides as a freshly built one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from libs.schemas.devices import Health
from libs.schemas.workload import WorkloadSpec
from services.scheduler import reference
from services.scheduler.fleet import Fleet
from services.scheduler.placement import (
    AllocatedDevice,
    Allocation,
    FleetSnapshot,
    PendingWorkload,
    build_snapshot,
    place,
)
from tests.integration.test_inventory import capability, gpu

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def _fleet(hosts: int = 6) -> Fleet:
    fleet = Fleet()
    catalog, compat, driver = reference.seed_reference()
    fleet.set_reference(catalog, compat, driver, [], "seed")
    for i in range(hosts):
        fleet.apply_capability(capability(f"h{i}", "bj" if i % 2 else "sh", [gpu(j) for j in range(4)]), T0)
    return fleet


def _fresh(fleet: Fleet, allocations: list[Allocation]) -> FleetSnapshot:
    _, hosts, devices, links = fleet.snapshot_inputs()
    return build_snapshot(hosts, devices, allocations, links)


def _same(a: FleetSnapshot, b: FleetSnapshot) -> None:
    assert a.dev_ids == b.dev_ids and [h.id for h in a.hosts] == [h.id for h in b.hosts]
    for name in ("dev_free_share", "dev_free_mem", "dev_usable", "host_up", "pool_free", "pool_usable", "host_free"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert a.dev_allocs == b.dev_allocs and a.allocations == b.allocations
    assert a.tenant_usage() == b.tenant_usage()


def _allocs(fleet: Fleet) -> list[Allocation]:
    return [Allocation("wl_a", 10, True, "acme", (AllocatedDevice("h0:nvidia:0"), AllocatedDevice("h0:nvidia:1"))),
            Allocation("wl_b", 50, False, "acme", (AllocatedDevice("h1:nvidia:2", 0.5, 1024),)),
            Allocation("wl_c", 50, False, None, (AllocatedDevice("h1:nvidia:2", 0.25),
                                                 AllocatedDevice("gone:nvidia:0")))]


async def test_scheduler_fleet_snapshot_with_allocations_equals_a_fresh_build() -> None:
    fleet = _fleet()
    allocs = _allocs(fleet)
    kept = (await fleet.base()).with_allocations(allocs)
    _same(kept, _fresh(fleet, allocs))
    assert kept.dev_free_share[kept.dev_index["h1:nvidia:2"]] == 0.25


async def test_scheduler_fleet_base_is_kept_until_the_fleet_changes() -> None:
    fleet = _fleet()
    base = await fleet.base()
    first, second = (await fleet.base()).with_allocations([]), (await fleet.base()).with_allocations(_allocs(fleet))
    assert await fleet.base() is base and first.shared is base.shared and second.shared is base.shared
    assert base.allocations == [] and float(base.dev_free_share.min()) == 1.0  # rounds never write into the base

    fleet.set_device_health("h3", "h3:nvidia:1", Health.UNHEALTHY, T0 + timedelta(seconds=1))
    changed = await fleet.base()
    assert changed is not base and not changed.dev_usable[changed.dev_index["h3:nvidia:1"]]
    _same((await fleet.base()).with_allocations(_allocs(fleet)), _fresh(fleet, _allocs(fleet)))

    fleet.set_liveness("h5", False, T0 + timedelta(seconds=2))
    down = await fleet.base()
    assert down is not changed and not down.host_up[down.host_index["h5"]]
    fleet.apply_capability(capability("h6", "bj", [gpu(0)]), T0 + timedelta(seconds=3))
    grown = await fleet.base()
    assert "h6:nvidia:0" in grown.dev_index and grown.n_hosts == down.n_hosts + 1
    _same((await fleet.base()).with_allocations(_allocs(fleet)), _fresh(fleet, _allocs(fleet)))


async def test_scheduler_fleet_kept_snapshot_places_like_a_fresh_one() -> None:
    fleet = _fleet(8)
    allocs = _allocs(fleet)
    batch = [PendingWorkload(f"wl_{i}", WorkloadSpec.model_validate(
        {"name": f"w{i}", "tenant": "acme", "replicas": 1 + i % 3,
         "hardware": {"type": "gpu", "count": 1 + i % 2} if i % 4 else {"type": "gpu", "share": 0.5}}))
        for i in range(12)]
    # an earlier round on other allocations fills the caches kept with the fleet
    place(batch[:6], (await fleet.base()).with_allocations(allocs[:1]), rules=fleet.rules, time_limit_s=1.0)
    assert (await fleet.base()).shared, "the earlier round left caches with the fleet"
    kept = place(batch, (await fleet.base()).with_allocations(allocs), rules=fleet.rules, time_limit_s=1.0)
    fresh = place(batch, _fresh(fleet, allocs), rules=fleet.rules, time_limit_s=1.0)
    assert kept.assignments == fresh.assignments and kept.pending == fresh.pending
    assert len(kept.assignments) > 0


async def test_scheduler_fleet_keep_base_ignores_an_older_build() -> None:
    fleet = _fleet(2)
    version, hosts, devices, links = fleet.snapshot_inputs()
    old = build_snapshot(hosts, devices, (), links)
    fleet.set_liveness("h1", False, T0 + timedelta(seconds=1))
    newer = await fleet.base()
    fleet.keep_base(version, old)
    assert fleet.cached_base() is newer
    assert newer.with_allocations([]).n_devices == newer.n_devices


async def test_scheduler_fleet_same_reference_again_keeps_the_snapshot() -> None:
    fleet = _fleet(2)
    base, rules = await fleet.base(), fleet.rules
    catalog, compat, driver = reference.seed_reference()
    fleet.set_reference(catalog, compat, driver, [], "inventory")  # the periodic refresh, nothing new
    assert await fleet.base() is base and fleet.rules is rules and fleet.reference_source == "inventory"
    fleet.set_reference(catalog[1:], compat, driver, [], "inventory")
    assert await fleet.base() is not base and fleet.rules is not rules


async def test_scheduler_fleet_inventory_refresh_without_changes_keeps_the_version(settings: Any, running_service: Any,
                                                                                  bus: Any) -> None:
    from services.inventory.api import app as inventory_app

    await running_service(inventory_app)
    fleet = _fleet(2)
    assert await reference.refresh(fleet, bus, 2.0) and fleet.reference_source == "inventory"
    version, base = fleet.version, await fleet.base()
    assert await reference.refresh(fleet, bus, 2.0)
    assert fleet.version == version and await fleet.base() is base
