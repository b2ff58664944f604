"""The fleet as the metrics service sees it now: device metadata, latest samples, and each device's health
as the inventory decided it (``health.py``).

Per-device values live in numpy arrays indexed by the device's integer id (the
``metrics.devices`` identity), so that a batch of 16,000 samples updates the state with a
handful of vectorised assignments, and a city summary over 80,000 devices is a few
``bincount`` calls. Metadata (strings) lives in plain dicts beside the arrays.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from libs.schemas.devices import Device, Health, device_id

#: A device's health as the inventory decided it (``health`` array values); anything else is unknown (-1).
HEALTH_CODE: dict[str, int] = {Health.HEALTHY.value: 1, Health.UNHEALTHY.value: 0}
STATUS_UNKNOWN, STATUS_UP, STATUS_DOWN = 0, 1, 2
STATUS_NAMES = {STATUS_UNKNOWN: "unknown", STATUS_UP: "up", STATUS_DOWN: "down"}


def slots_for(devices: list[Device]) -> list[int]:
    """The slot of each device on its host: its position in the capability report.

    Telemetry samples name a device by this slot (``libs.schemas.inventory``: one numbering
    for every service, unambiguous on hosts that mix vendors).
    """
    return list(range(len(devices)))


@dataclass
class DeviceMeta:
    id: int
    host_id: str
    slot: int
    site: str
    hardware_type: str = "unknown"
    vendor: str = "unknown"
    model: str = "unknown"
    memory_mib: int | None = None
    driver_version: str | None = None
    runtimes: dict[str, str] = field(default_factory=dict)
    firmware_version: str | None = None
    uuid: str | None = None
    vendor_index: int | None = None

    @property
    def key(self) -> str:
        return f"{self.host_id}/{self.slot}"

    @property
    def inventory_id(self) -> str | None:
        """The inventory's (and scheduler's) id of this device: '<host>:<vendor>:<index>'."""
        return None if self.vendor_index is None else device_id(self.host_id, self.vendor, self.vendor_index)


@dataclass
class HostMeta:
    idx: int
    host_id: str
    site: str
    hostname: str | None = None
    generation: int = -1
    status: int = STATUS_UNKNOWN
    labels: dict[str, str] = field(default_factory=dict)
    slots: dict[int, int] = field(default_factory=dict)  # slot → device id
    cpu_pct: float | None = None
    mem_used_mib: int | None = None
    mem_total_mib: int | None = None
    telemetry_at: float = 0.0  # wall clock of the latest report's sample time
    seen_mono: float = 0.0  # monotonic time the latest report arrived (0: never)


class Interner:
    """Strings ↔ small dense integers (sites, hardware types)."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.index: dict[str, int] = {}

    def __call__(self, name: str) -> int:
        i = self.index.get(name)
        if i is None:
            i = self.index[name] = len(self.names)
            self.names.append(name)
        return i

    def __len__(self) -> int:
        return len(self.names)


class Fleet:
    """Devices and hosts with their latest values."""

    present: np.ndarray  # bool: the device exists now
    host_idx: np.ndarray  # int32 index into host_list (-1: none)
    site_idx: np.ndarray  # int32 index into sites
    hw_idx: np.ndarray  # int32 index into hw
    health: np.ndarray  # int8 the inventory's decision (device.added/healthy/unhealthy): 1, 0, -1 unknown
    last_ts: np.ndarray  # float64 Unix time of the latest sample (0: none)
    util: np.ndarray  # float32 %
    mem: np.ndarray  # float32 MiB used
    temp: np.ndarray  # float32 °C
    power: np.ndarray  # float32 W
    mem_total: np.ndarray  # float64 MiB (capability)

    def __init__(self, capacity: int = 1024) -> None:
        self.devices: dict[int, DeviceMeta] = {}
        self.by_key: dict[str, int] = {}
        self.aliases: dict[str, int] = {}  # inventory device id → device id
        self.hosts: dict[str, HostMeta] = {}
        self.host_list: list[HostMeta] = []
        self.sites = Interner()
        self.hw = Interner()
        self.version = 0  # bumped on every metadata change
        self.cap = 0
        self._alloc(capacity)

    # --- storage ----------------------------------------------------------------------
    def _alloc(self, cap: int) -> None:
        old = self.cap
        arrays: dict[str, Any] = {
            "present": (bool, False), "host_idx": (np.int32, -1), "site_idx": (np.int32, -1), "hw_idx": (np.int32, -1),
            "health": (np.int8, -1), "last_ts": (np.float64, 0.0),
            "util": (np.float32, 0.0), "mem": (np.float32, 0.0), "temp": (np.float32, 0.0), "power": (np.float32, 0.0),
            "mem_total": (np.float64, 0.0),
        }
        for name, (dtype, fill) in arrays.items():
            new = np.full(cap, fill, dtype=dtype)
            if old:
                new[:old] = getattr(self, name)
            setattr(self, name, new)
        self.cap = cap

    def ensure(self, device_id: int) -> None:
        if device_id >= self.cap:
            cap = self.cap
            while cap <= device_id:
                cap *= 2
            self._alloc(cap)

    # --- metadata ---------------------------------------------------------------------
    def host(self, host_id: str, site: str) -> HostMeta:
        h = self.hosts.get(host_id)
        if h is None:
            h = HostMeta(len(self.host_list), host_id, site)
            self.hosts[host_id] = h
            self.host_list.append(h)
            self.sites(site)
            self.version += 1
        elif h.site != site:
            h.site = site
            sidx = self.sites(site)
            for dev_id in h.slots.values():
                self.site_idx[dev_id] = sidx
                self.devices[dev_id].site = site
            self.version += 1
        return h

    def put_device(self, meta: DeviceMeta) -> None:
        """Add or replace one device's metadata (from capability, or a bare telemetry-only device).

        Its health is left alone: only ``set_health`` (the inventory's events, or the stored value at start)
        writes it, so a capability report applied late never overwrites a newer decision."""
        self.ensure(meta.id)
        h = self.host(meta.host_id, meta.site)
        old = self.devices.get(meta.id)
        if old is not None:
            if old.key != meta.key:
                self.by_key.pop(old.key, None)
            if old.inventory_id:
                self.aliases.pop(old.inventory_id, None)
        self.devices[meta.id] = meta
        self.by_key[meta.key] = meta.id
        if meta.inventory_id:
            self.aliases[meta.inventory_id] = meta.id
        h.slots[meta.slot] = meta.id
        self.present[meta.id] = True
        self.host_idx[meta.id] = h.idx
        self.site_idx[meta.id] = self.sites(meta.site)
        self.hw_idx[meta.id] = self.hw(meta.hardware_type)
        self.mem_total[meta.id] = float(meta.memory_mib or 0)
        self.version += 1

    def remove_device(self, device_id: int) -> None:
        meta = self.devices.get(device_id)
        if meta is None:
            return
        self.present[device_id] = False
        self.last_ts[device_id] = 0.0
        h = self.hosts.get(meta.host_id)
        if h is not None and h.slots.get(meta.slot) == device_id:
            del h.slots[meta.slot]
        self.version += 1

    def set_status(self, host_id: str, site: str, status: int) -> HostMeta:
        h = self.host(host_id, site)
        h.status = status
        return h

    def set_health(self, device_id: int, health: str) -> None:
        """The device's health as the inventory decided it (``healthy``, ``unhealthy``, else unknown)."""
        self.ensure(device_id)
        self.health[device_id] = HEALTH_CODE.get(health, -1)

    # --- samples ----------------------------------------------------------------------
    def apply_samples(self, ids: np.ndarray, ts: np.ndarray, vals: np.ndarray) -> None:
        """``vals`` columns: util, mem, temp, power, healthy. Older samples never overwrite newer ones.

        The samples' healthy bit is raw data (stored, counted in rollups); it does not decide the device's
        health here: the inventory does, and says so in its device events (``set_health``)."""
        newer = ts >= self.last_ts[ids]
        if not newer.all():
            ids, ts, vals = ids[newer], ts[newer], vals[newer]
        self.last_ts[ids] = ts
        self.util[ids] = vals[:, 0]
        self.mem[ids] = vals[:, 1]
        self.temp[ids] = vals[:, 2]
        self.power[ids] = vals[:, 3]

    def fresh_mask(self, stale_s: float, now: float | None = None) -> np.ndarray:
        now = time.time() if now is None else now
        n = self.cap
        mask: np.ndarray = self.present[:n] & (self.last_ts[:n] > 0) & ((now - self.last_ts[:n]) <= stale_s)
        return mask

    def effective_health(self) -> np.ndarray:
        """Each device's health as the inventory decided it: 1 healthy, 0 unhealthy, -1 unknown."""
        return self.health

    def device_by_key(self, key: str) -> DeviceMeta | None:
        dev_id = self.by_key.get(key)
        return self.devices.get(dev_id) if dev_id is not None else None
