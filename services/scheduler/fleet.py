"""The scheduler's own view of the fleet, built from what agents and the registry say.

* capability reports (agents, ``XPUMESH_HOSTS``) give each host's devices, labels and arch;
* ``host.up``/``host.down`` (registry) give liveness;
* ``device.unhealthy``/``device.healthy`` (inventory) and the health field of capability
  reports give device health; whichever was said last wins;
* the catalog gives each device model's compute units; rules and site links come along.

Hosts are persisted (``scheduler.hosts``) so that a restarted scheduler can place at once.
``base()`` turns the view into the placement engine's column model without allocations,
built off the event loop once per fleet version, from per-host inputs that are themselves
made again only for a host that changed; a round only lays its allocations over it
(``FleetSnapshot.with_allocations``, one pass over the allocations), and the
placement caches that live with the fleet (``FleetSnapshot.shared``) carry over between
rounds until the fleet changes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from libs.catalog.loader import match_model
from libs.schemas.catalog import CompatRule, DeviceModel, RuntimeDriverRule
from libs.schemas.devices import Device, Health, device_host, device_id
from libs.schemas.hostevents import CapabilityReport
from libs.topology import link_groups
from services.scheduler.placement import (
    DeviceInfo,
    FleetSnapshot,
    HostInfo,
    PlacementRules,
    SiteLink,
    build_snapshot,
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass
class HostView:
    id: str
    site: str
    generation: int
    report: CapabilityReport
    reported_at: datetime
    up: bool = True
    liveness_at: datetime = _EPOCH
    health: dict[str, tuple[Health, datetime]] = field(default_factory=dict)  # device id → (health, when said)
    devices: dict[str, Device] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.index_devices()

    def index_devices(self) -> None:
        devs = self.report.devices
        groups = link_groups(devs)
        self.devices = {device_id(self.id, d.vendor, d.index): d for d in devs}
        self.links = {device_id(self.id, d.vendor, d.index): groups[i] for i, d in enumerate(devs) if i in groups}

    def usable_devices(self) -> set[str]:
        return {d for d in self.devices if self.device_health(d) != Health.UNHEALTHY}

    def device_health(self, dev_id: str) -> Health:
        dev = self.devices.get(dev_id)
        if dev is None:
            return Health.UNHEALTHY
        said = self.health.get(dev_id)
        if said is not None and said[1] >= self.reported_at:
            return said[0]
        return dev.health

    def to_row(self) -> dict[str, Any]:
        return {"id": self.id, "site": self.site, "generation": self.generation,
                "report": self.report.model_dump(mode="json"), "reported_at": self.reported_at, "up": self.up,
                "liveness_at": self.liveness_at,
                "device_health": {k: [h.value, t.isoformat()] for k, (h, t) in self.health.items()}}

    @classmethod
    def from_row(cls, row: Any) -> HostView:
        health = {k: (Health(v[0]), datetime.fromisoformat(v[1])) for k, v in (row["device_health"] or {}).items()}
        return cls(id=row["id"], site=row["site"], generation=row["generation"],
                   report=CapabilityReport.model_validate(row["report"]), reported_at=row["reported_at"],
                   up=row["up"], liveness_at=row["liveness_at"] or _EPOCH, health=health)


def host_info(host_id: str, site: str, up: bool, report: CapabilityReport) -> HostInfo:
    """A host as placement sees it: its labels, CPU (architecture, vendor, model, features) and what of its CPUs
    and memory replicas may take, per NUMA node too (the agent's reserve is taken from the first nodes)."""
    f = report.facts
    numa: tuple[int, ...] = ()
    if f.cpu_allocatable is not None and f.numa:
        per = [len(n.cpu_ids()) for n in sorted(f.numa, key=lambda n: n.id)]
        reserve = max(0, sum(per) - f.cpu_allocatable)
        left = []
        for n in per:
            take = min(n, reserve)
            reserve -= take
            left.append(n - take)
        numa = tuple(left)
    return HostInfo(host_id, site, up, dict(report.labels), f.arch, cpus=f.cpu_allocatable,
                    memory_mib=f.memory_allocatable_mib, cpu_vendor=f.cpu_vendor, cpu_model=f.cpu_model,
                    cpu_features=frozenset(f.cpu_features), numa_cpus=numa)


class Fleet:
    """Hosts by id plus the reference data placement needs. Not thread-safe: one event loop owns it."""

    def __init__(self) -> None:
        self.hosts: dict[str, HostView] = {}
        self.catalog: list[DeviceModel] = []
        self.compat: list[CompatRule] = []
        self.driver_rules: list[RuntimeDriverRule] = []
        self.rules = PlacementRules()
        self.links: list[SiteLink] = []
        self.reference_source = "none"
        self._cu: dict[tuple[str, str], float] = {}
        self.version = 0
        # snapshot inputs per host (made again when the host changes) and the allocation-free snapshot
        self._inputs: dict[str, tuple[HostInfo, tuple[DeviceInfo, ...]]] = {}
        self._base: tuple[int, FleetSnapshot] | None = None
        self._largest: tuple[int, int | None, int | None] | None = None  # (version, CPUs, memory MiB)

    # -- reference data --------------------------------------------------------------------
    def set_reference(self, catalog: Sequence[DeviceModel], compat: Sequence[CompatRule],
                      driver: Sequence[RuntimeDriverRule], links: Iterable[SiteLink], source: str) -> None:
        """Take new reference data; the same data again (the periodic refresh) keeps the fleet's version,
        so the snapshot and the placement caches kept with it stay."""
        links = list(links)
        if (list(catalog), list(compat), list(driver), links) == (self.catalog, self.compat, self.driver_rules,
                                                                   self.links):
            self.reference_source = source
            return
        self.catalog, self.compat, self.driver_rules = list(catalog), list(compat), list(driver)
        self.rules = PlacementRules.of(compat, driver)
        self.links = links
        self.reference_source = source
        self._cu.clear()
        self._inputs.clear()  # compute units come from the catalog
        self.version += 1

    def compute_units(self, vendor: str, model: str) -> float:
        key = (vendor, model)
        cu = self._cu.get(key)
        if cu is None:
            entry = match_model(vendor, model, self.catalog)
            cu = self._cu[key] = float(entry.device_compute_units) if entry is not None else 0.0
        return cu

    # -- changes -------------------------------------------------------------------------------
    # A change is made in two steps: ``*_view`` works out the host's next view without touching the fleet,
    # the caller writes it to ``scheduler.hosts`` (with whatever else the change implies, in one
    # transaction), and ``apply`` puts the written views in place. Memory never holds what the database
    # lost: a redelivered report whose write failed is worked out again, not skipped as already applied.
    def capability_view(self, report: CapabilityReport, at: datetime, cur: HostView | None = None) -> HostView | None:
        """The host after this report (``cur``: a view not yet applied, e.g. from the same batch), or None
        when an equal or newer generation is known."""
        cur = cur or self.hosts.get(report.host_id)
        if cur is not None and (report.generation < cur.generation
                                or (report.generation == cur.generation and at <= cur.reported_at)):
            return None
        if cur is None:
            return HostView(report.host_id, report.site, report.generation, report, at)
        # a host that just reported is alive, unless the registry said otherwise since
        return replace(cur, site=report.site, generation=report.generation, report=report, reported_at=at,
                       up=True if at > cur.liveness_at else cur.up, health=dict(cur.health))

    def liveness_view(self, host_id: str, up: bool, at: datetime) -> HostView | None:
        """The host after the registry said it is up or down at ``at``; None for an unknown host or older news.
        The time is kept even when the status stays, so an older event arriving later (a redelivery) loses."""
        cur = self.hosts.get(host_id)
        if cur is None or at < cur.liveness_at:
            return None
        return replace(cur, up=up, liveness_at=at, health=dict(cur.health))

    def health_view(self, host_id: str, dev_id: str, health: Health, at: datetime) -> HostView | None:
        """The host after a device's health was said at ``at``; None for an unknown host or older news."""
        cur = self.hosts.get(host_id)
        if cur is None:
            return None
        said = cur.health.get(dev_id)
        if said is not None and said[1] > at:
            return None
        return replace(cur, health={**cur.health, dev_id: (health, at)})

    def apply(self, views: Iterable[HostView]) -> None:
        """Put views in place once they are written."""
        for view in views:
            self.hosts[view.id] = view
            self._changed(view.id)

    # the two steps at once, for a fleet without a database (tools, tests of the snapshot)
    def apply_capability(self, report: CapabilityReport, at: datetime) -> HostView | None:
        view = self.capability_view(report, at)
        if view is not None:
            self.apply([view])
        return view

    def set_liveness(self, host_id: str, up: bool, at: datetime) -> HostView | None:
        was, view = self.host_up(host_id), self.liveness_view(host_id, up, at)
        if view is not None:
            self.apply([view])
        return view if view is not None and view.up != was else None

    def set_device_health(self, host_id: str, dev_id: str, health: Health, at: datetime) -> HostView | None:
        cur, view = self.hosts.get(host_id), self.health_view(host_id, dev_id, health, at)
        if view is None or cur is None:
            return None
        self.apply([view])
        return view if view.device_health(dev_id) != cur.device_health(dev_id) else None

    def _changed(self, host_id: str) -> None:
        # the host's snapshot inputs are made now, a host at a time as reports arrive, rather than all at
        # once on the event loop when the next placement round needs the fleet
        self._inputs[host_id] = self._make_inputs(self.hosts[host_id])
        self.version += 1

    # -- queries -------------------------------------------------------------------------------
    def host_up(self, host_id: str) -> bool:
        cur = self.hosts.get(host_id)
        return cur is not None and cur.up

    def device_usable(self, dev_id: str) -> bool:
        host_id = device_host(dev_id)
        cur = self.hosts.get(host_id)
        return cur is not None and cur.up and cur.device_health(dev_id) != Health.UNHEALTHY

    def largest_allocatable(self) -> tuple[int | None, int | None]:
        """The most CPUs and host memory (MiB) any host reporting them has allocatable (None: no host reports
        it), worked out once per fleet version: every submit's check asks."""
        if self._largest is None or self._largest[0] != self.version:
            cpus = [f.cpu_allocatable for h in self.hosts.values() if (f := h.report.facts).cpu_allocatable is not None]
            mems = [f.memory_allocatable_mib for h in self.hosts.values()
                    if (f := h.report.facts).memory_allocatable_mib is not None]
            self._largest = (self.version, max(cpus, default=None), max(mems, default=None))
        return self._largest[1], self._largest[2]

    def device(self, dev_id: str) -> Device | None:
        cur = self.hosts.get(device_host(dev_id))
        return cur.devices.get(dev_id) if cur is not None else None

    # -- snapshots -----------------------------------------------------------------------------
    def _make_inputs(self, h: HostView) -> tuple[HostInfo, tuple[DeviceInfo, ...]]:
        devices = tuple(DeviceInfo(
            id=dev_id, host_id=h.id, hardware_type=d.hardware_type, vendor=d.vendor, model=d.model,
            memory_mib=d.memory_mib or 0, compute_units=self.compute_units(d.vendor, d.model),
            driver_version=d.driver_version, runtimes=dict(d.runtimes), health=h.device_health(dev_id),
            link_group=h.links.get(dev_id), numa_node=d.numa_node) for dev_id, d in h.devices.items())
        return host_info(h.id, h.site, h.up, h.report), devices

    def _host_inputs(self, h: HostView) -> tuple[HostInfo, tuple[DeviceInfo, ...]]:
        hit = self._inputs.get(h.id)
        if hit is None:
            hit = self._inputs[h.id] = self._make_inputs(h)
        return hit

    def snapshot_inputs(self) -> tuple[int, list[HostInfo], list[DeviceInfo], list[SiteLink]]:
        """(version, hosts, devices, links) as of now: immutable values a worker thread may build from."""
        hosts: list[HostInfo] = []
        devices: list[DeviceInfo] = []
        for h in self.hosts.values():
            info, devs = self._host_inputs(h)
            hosts.append(info)
            devices.extend(devs)
        return self.version, hosts, devices, list(self.links)

    def cached_base(self) -> FleetSnapshot | None:
        """The allocation-free snapshot of the current fleet version, if one was built."""
        return self._base[1] if self._base is not None and self._base[0] == self.version else None

    def keep_base(self, version: int, base: FleetSnapshot) -> None:
        """Remember a snapshot built from ``snapshot_inputs()`` of ``version`` (ignored if older than the kept one)."""
        if self._base is None or version >= self._base[0]:
            self._base = (version, base)

    async def base(self) -> FleetSnapshot:
        """The fleet without allocations, built off the event loop at most once per fleet version."""
        base = self.cached_base()
        if base is None:
            version, hosts, devices, links = self.snapshot_inputs()
            base = await asyncio.to_thread(build_snapshot, hosts, devices, (), links)
            self.keep_base(version, base)
        return base
