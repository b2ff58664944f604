"""Checks on agents' reports beyond their schema: what the inventory's columns can hold.

A report that would make PostgreSQL fail (a string longer than its column, a NUL byte in
JSON) is rejected on its own before it reaches a batch, so it cannot fail the batch. Whether
a report speaks for the host its subject names is the kit's check (``libs.bus.identity``, applied
by ``each_valid``), not the envelope's own ``subject`` field, which the sender writes.
"""

from __future__ import annotations

from libs.db import json_has_nul
from libs.schemas.hostevents import CapabilityReport
from libs.versions import SpecifierSet

LIMITS = {"vendor": 40, "model": 128, "driver_version": 64, "firmware_version": 64, "uuid": 128, "pci_bus_id": 64}


def check_capability(report: CapabilityReport) -> None:
    """Raise ValueError (safe to log) when the report cannot be stored as it is."""
    if len(report.facts.hostname) > 256 or len(report.agent_version) > 64:
        raise ValueError("hostname or agent_version too long")
    for i, d in enumerate(report.devices):
        for name, limit in LIMITS.items():
            value = getattr(d, name)
            if value is not None and len(value) > limit:
                raise ValueError(f"devices[{i}].{name} is longer than {limit}")
        if not d.vendor:
            raise ValueError(f"devices[{i}].vendor is empty")
        if d.vendor != d.vendor.lower():
            raise ValueError(f"devices[{i}].vendor must be lower case")
    keys = [(d.vendor, d.index) for d in report.devices]
    if len(set(keys)) != len(keys):
        raise ValueError("two devices share a vendor and index")
    if json_has_nul(report.model_dump_json().encode()):
        raise ValueError("the report contains a NUL character")


def check_specifiers(*specs: str) -> None:
    for spec in specs:
        SpecifierSet.parse(spec)
