"""Collecting partial device facts from several outputs and merging them into Devices.

A probe often reads the same device from several outputs (a table, a detailed query, a
topology matrix). Each parser adds what it saw as a partial record; records that share a
PCI address, a UUID or a vendor-specific key are merged, earlier outputs winning, and the
result is validated into :class:`Device` objects at the end.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

from pydantic import ValidationError

from agent.probes.readings import DeviceReading
from agent.probes.util import UNKNOWN_MODEL
from libs.schemas.devices import Device, HardwareType, Health, Link, ProbeReport

_READING_FIELDS = ("utilization_pct", "memory_used_mib", "temperature_c", "power_w")
_DICT_FIELDS = ("runtimes", "extra")


def _empty(value: Any) -> bool:
    return value is None or value == "" or value == UNKNOWN_MODEL


class Collector:
    """Accumulates partial device records, readings and warnings for one probe run."""

    def __init__(self, probe: str, vendor: str, hardware_type: HardwareType) -> None:
        self.probe = probe
        self.vendor = vendor
        self.hardware_type = hardware_type
        self.records: list[dict[str, Any]] = []
        self.warnings: list[str] = []
        self.common: dict[str, Any] = {"runtimes": {}}
        self.outputs: Sequence[Any] = ()  # every output of this run, for parsers that need context

    # -- building

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)

    def set_common(self, *, driver_version: str | None = None, runtimes: dict[str, str] | None = None,
                   firmware_version: str | None = None) -> None:
        """Facts that hold for every device of this probe (from a header line or a version file)."""
        if driver_version and not self.common.get("driver_version"):
            self.common["driver_version"] = driver_version
        if firmware_version and not self.common.get("firmware_version"):
            self.common["firmware_version"] = firmware_version
        for name, value in (runtimes or {}).items():
            if value:
                self.common["runtimes"].setdefault(name, value)

    def add(self, *, keys: tuple[Hashable, ...] = (), **fields: Any) -> dict[str, Any]:
        """Add one partial device; merged into an existing record that shares a strong key."""
        record: dict[str, Any] = {k: v for k, v in fields.items() if v is not None and v != {} and v != []}
        strong = set(keys)
        if record.get("pci_bus_id"):
            strong.add(("pci", record["pci_bus_id"]))
        if record.get("uuid"):
            strong.add(("uuid", record["uuid"]))
        record["_keys"] = strong
        target = self._match(record)
        if target is None:
            self.records.append(record)
            return record
        _merge(target, record)
        return target

    def _match(self, record: dict[str, Any]) -> dict[str, Any] | None:
        for existing in self.records:
            if existing["_keys"] & record["_keys"] and not _conflict(existing, record):
                return existing
        index = record.get("index")
        if index is None:
            return None
        for existing in self.records:
            if existing.get("index") != index:
                continue
            if _conflict(existing, record) or (existing.get("pci_bus_id") and record.get("pci_bus_id")):
                continue  # same index but a different PCI address or vendor: another device
            return existing
        return None

    # -- finishing

    def finish(self, *, available: bool = True) -> tuple[ProbeReport, list[DeviceReading]]:
        devices: list[Device] = []
        readings: list[DeviceReading] = []
        used = {r["index"] for r in self.records if isinstance(r.get("index"), int)}
        next_free = 0
        no_model: list[str] = []
        for record in self.records:
            if not isinstance(record.get("index"), int):
                while next_free in used:
                    next_free += 1
                record["index"] = next_free
                used.add(next_free)
            if _empty(record.get("model")):
                if not record.get("_model_note"):
                    no_model.append(str(record["index"]))
                record["model"] = UNKNOWN_MODEL
            fields = self._device_fields(record)
            try:
                device = Device(**fields)
            except ValidationError as exc:
                self.warn(f"device {record['index']}: dropped, invalid facts ({exc.error_count()} errors)")
                continue
            devices.append(device)
            reading = {k: record.get(k) for k in _READING_FIELDS}
            if any(v is not None for v in reading.values()):
                readings.append(DeviceReading(index=device.index, vendor=device.vendor,
                                              health=device.health, **reading))
        if no_model:
            self.warn(f"device model not shown in this output (device {', '.join(no_model)}); "
                      "model reported as 'unknown'")
        devices.sort(key=lambda d: (d.vendor, d.index))
        readings.sort(key=lambda r: (r.vendor, r.index))
        report = ProbeReport(probe=self.probe, available=available, devices=devices, warnings=self.warnings)
        return report, readings

    def _device_fields(self, record: dict[str, Any]) -> dict[str, Any]:
        fields = {k: v for k, v in record.items() if not k.startswith("_") and k not in _READING_FIELDS}
        fields.setdefault("vendor", self.vendor)
        fields.setdefault("hardware_type", self.hardware_type)
        for name in ("driver_version", "firmware_version"):
            if not fields.get(name) and self.common.get(name):
                fields[name] = self.common[name]
        runtimes = dict(self.common["runtimes"])
        runtimes.update(fields.get("runtimes", {}))
        fields["runtimes"] = runtimes
        fields["extra"] = {k: str(v) for k, v in fields.get("extra", {}).items() if v is not None}
        return fields


def _conflict(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two records that cannot be one device: different vendors, or different keys of one kind."""
    if a.get("vendor") and b.get("vendor") and a["vendor"] != b["vendor"]:
        return True
    kinds_a: dict[Hashable, set[Hashable]] = {}
    for key in a["_keys"]:
        kinds_a.setdefault(key[0] if isinstance(key, tuple) else key, set()).add(key)
    kinds_b: dict[Hashable, set[Hashable]] = {}
    for key in b["_keys"]:
        kinds_b.setdefault(key[0] if isinstance(key, tuple) else key, set()).add(key)
    return any(kinds_a[kind].isdisjoint(keys) for kind, keys in kinds_b.items() if kind in kinds_a)


def _merge(target: dict[str, Any], source: dict[str, Any]) -> None:
    target["_keys"] |= source["_keys"]
    for name, value in source.items():
        if name == "_keys":
            continue
        if name in _DICT_FIELDS:
            merged = dict(value)
            merged.update(target.get(name, {}))
            target[name] = merged
        elif name == "links":
            seen = {(link.peer_index, link.kind) for link in target.get("links", [])}
            target["links"] = list(target.get("links", [])) + [
                link for link in value if (link.peer_index, link.kind) not in seen
            ]
        elif name == "health":
            target["health"] = worst_health(target.get("health", Health.UNKNOWN), value)
        elif _empty(target.get(name)):
            target[name] = value


def worst_health(a: Health, b: Health) -> Health:
    order = {Health.UNKNOWN: 0, Health.HEALTHY: 1, Health.UNHEALTHY: 2}
    return a if order[a] >= order[b] else b


def links_from(peers: dict[int, str]) -> list[Link]:
    return [Link(peer_index=peer, kind=kind) for peer, kind in sorted(peers.items())]
