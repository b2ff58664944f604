"""Runtime and framework requirements against a device profile.

The rule (documented once, applied everywhere):

* **Runtimes** (``cuda>=12.4``). When ``RuntimeDriverRule`` rows exist for the device's
  vendor and that runtime, and the device reports a parseable driver version, *the driver
  decides*: the requirement holds if some row whose ``min_driver_version`` the driver meets
  covers a runtime version inside the requirement (the workload's container brings its own
  runtime; the driver caps which ones can run). If rows exist but only rows needing a newer
  driver cover the range, the device fails with "driver too old for cuda>=12.4".
  Otherwise (no rows, rows that do not cover the range, or no driver version) the runtime
  version the device reports in ``runtimes`` must satisfy the requirement; a device without
  that runtime fails with "no cuda runtime".
* **Frameworks** (``pytorch`` + ``2.4``). ``CompatRule`` rows for the framework, the device's
  hardware type and vendor, and an overlapping framework version range are looked up; the
  device passes if one row's runtime range passes the runtime rule above. No row at all for
  the framework fails with "no compatibility rule for pytorch".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from libs.schemas.catalog import CompatRule, RuntimeDriverRule
from libs.versions import SpecifierSet, Version
from services.scheduler.placement.snapshot import Profile


@dataclass(frozen=True, slots=True)
class _DriverRow:
    runtimes: SpecifierSet
    min_driver: Version


@dataclass(frozen=True, slots=True)
class _CompatRow:
    framework_versions: SpecifierSet
    hardware_type: str
    vendor: str
    runtime: str
    runtime_versions: SpecifierSet


@dataclass(frozen=True)
class PlacementRules:
    """Compatibility data passed to ``place``; specifiers are parsed once, here."""

    compat: tuple[CompatRule, ...] = ()
    runtime_driver: tuple[RuntimeDriverRule, ...] = ()
    _driver: dict[tuple[str, str], list[_DriverRow]] = field(init=False, repr=False, compare=False)
    _compat: dict[str, list[_CompatRow]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        driver: dict[tuple[str, str], list[_DriverRow]] = {}
        for r in self.runtime_driver:
            driver.setdefault((r.vendor, r.runtime), []).append(
                _DriverRow(SpecifierSet.parse(r.runtime_versions), Version.parse(r.min_driver_version)))
        compat: dict[str, list[_CompatRow]] = {}
        for c in self.compat:
            compat.setdefault(c.framework, []).append(_CompatRow(
                SpecifierSet.parse(c.framework_versions), str(c.hardware_type), c.vendor, c.runtime,
                SpecifierSet.parse(c.runtime_versions)))
        object.__setattr__(self, "_driver", driver)
        object.__setattr__(self, "_compat", compat)

    @classmethod
    def of(cls, compat: Iterable[CompatRule] = (), runtime_driver: Iterable[RuntimeDriverRule] = ()) -> PlacementRules:
        return cls(tuple(compat), tuple(runtime_driver))

    def runtime_reason(self, profile: Profile, runtime: str, spec: SpecifierSet) -> str | None:
        """None when ``runtime spec`` can run on the profile, else a stable reason text."""
        label = f"{runtime}{spec}"
        rows = self._driver.get((profile.vendor, runtime))
        if rows and profile.driver_version:
            driver: Version | None
            try:
                driver = Version.parse(profile.driver_version)
            except ValueError:
                driver = None
            if driver is not None:
                covering = [r for r in rows if r.runtimes.overlaps(spec)]
                if any(driver >= r.min_driver for r in covering):
                    return None
                if covering:
                    return f"driver too old for {label}"
        reported = dict(profile.runtimes).get(runtime)
        if reported is None:
            return f"no {runtime} runtime"
        try:
            ok = spec.contains(reported)
        except ValueError:
            ok = False
        return None if ok else f"{runtime} version does not satisfy {label}"

    def framework_reason(self, profile: Profile, framework: str, spec: SpecifierSet) -> str | None:
        rows = self._compat.get(framework)
        label = f"{framework}{spec}"
        if not rows:
            return f"no compatibility rule for {framework}"
        hw = str(profile.hardware_type)
        matching = [r for r in rows if r.hardware_type == hw and r.vendor == profile.vendor
                    and r.framework_versions.overlaps(spec)]
        if not matching:
            return f"{label} not supported on {profile.vendor} {hw}"
        first: str | None = None
        for r in matching:
            reason = self.runtime_reason(profile, r.runtime, r.runtime_versions)
            if reason is None:
                return None
            first = first or reason
        return f"{label}: {first}"
