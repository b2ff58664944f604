"""What a capture file must parse into, and every way a parse can differ from it.

Shared by the test of the shared third-party corpus and the test of the project's own
published-output fixtures (tests/fixtures/probes/published).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from libs.schemas.devices import Device

MODEL_NOT_SHOWN = "device model not shown"
ParseFile = Callable[[Path], tuple[list[Device], list[str]]]


@dataclass(frozen=True)
class Expect:
    count: int
    vendor: str
    hardware: str
    model: str | tuple[str, ...]
    memory: int | tuple[int | None, ...] | None = None
    driver: str | None = None
    runtimes: dict[str, str] = field(default_factory=dict)
    health: str | tuple[str, ...] = "unknown"
    warns: tuple[str, ...] = ()  # substrings; empty means the file must parse without any warning
    first: dict[str, object] = field(default_factory=dict)  # attributes of the first device
    indexes: tuple[int, ...] | None = None


def _per_device(value: object, count: int) -> list[object]:
    return list(value) if isinstance(value, tuple) else [value] * count


def mismatches(devices: list[Device], warnings: list[str], expect: Expect) -> list[str]:
    """Every way the parser's output differs from the expected record (empty when it matches)."""
    problems = []
    if len(devices) != expect.count:
        return [f"{len(devices)} devices, expected {expect.count}"]
    checks = {
        "vendor": [expect.vendor] * expect.count, "hardware_type": [expect.hardware] * expect.count,
        "model": _per_device(expect.model, expect.count), "memory_mib": _per_device(expect.memory, expect.count),
        "driver_version": [expect.driver] * expect.count, "runtimes": [expect.runtimes] * expect.count,
        "health": _per_device(expect.health, expect.count),
    }
    for name, wanted in checks.items():
        got = [getattr(device, name) for device in devices]
        if got != wanted:
            problems.append(f"{name}: got {got}, expected {wanted}")
    if expect.indexes is not None and tuple(d.index for d in devices) != expect.indexes:
        problems.append(f"indexes: got {[d.index for d in devices]}, expected {list(expect.indexes)}")
    for name, wanted in expect.first.items():
        value = getattr(devices[0], name)
        seen = {key: value.get(key) for key in wanted} if isinstance(wanted, dict) else value
        if seen != wanted:
            problems.append(f"first device {name}: got {seen!r}, expected {wanted!r}")
    if not expect.warns and warnings:
        problems.append(f"unexpected warnings: {warnings}")
    for needle in expect.warns:
        if not any(needle in warning for warning in warnings):
            problems.append(f"no warning containing {needle!r} in {warnings}")
    return problems
