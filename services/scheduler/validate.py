"""Checks of a submitted spec against the catalog and the compatibility rules.

The spec's own model (``WorkloadSpec``) already rejects malformed values (count 0, share
outside (0, 1], unknown hardware types…). Here we reject what is well-formed but can never
run anywhere: a model glob that matches no catalog model, a vendor the catalog does not
know, more memory than any matching model has, a runtime requirement no known runtime
version satisfies, a framework (version) no rule supports. Each problem names the field
(``body.<path>``, as the gateway reports body errors) and the reason.
"""

from __future__ import annotations

import fnmatch
from typing import Any

from libs.bus.errors import InvalidRequest
from libs.schemas.catalog import DeviceModel
from libs.schemas.workload import HardwareRequest, WorkloadSpec, framework_specifier
from libs.versions import SpecifierSet
from services.scheduler.fleet import Fleet


def _names(m: DeviceModel) -> list[str]:
    return [m.model.lower(), *(a.lower() for a in m.aliases)]


def _hardware_errors(hw: HardwareRequest, loc: str, catalog: list[DeviceModel]
                     ) -> tuple[list[dict[str, Any]], list[DeviceModel]]:
    errors: list[dict[str, Any]] = []
    if hw.is_cpu:  # vendor and model name the host's CPU, which the catalog does not list
        return errors, []
    models = catalog
    if hw.type != "any":
        models = [m for m in models if str(m.hardware_type) == str(hw.type)]
    if hw.vendor is not None:
        if not any(m.vendor == hw.vendor for m in catalog):
            errors.append({"loc": f"{loc}.vendor", "msg": f"no device model from vendor {hw.vendor!r} is in the catalog"})
            return errors, []
        of_vendor = [m for m in models if m.vendor == hw.vendor]
        if not of_vendor and models:
            errors.append({"loc": f"{loc}.vendor",
                           "msg": f"vendor {hw.vendor!r} makes no {hw.type} in the catalog"})
            return errors, []
        models = of_vendor
    if hw.models:
        globs = [g.lower() for g in hw.models]
        matched = [m for m in models if any(fnmatch.fnmatchcase(n, g) for n in _names(m) for g in globs)]
        if not matched:
            scope = " ".join(x for x in (hw.vendor, str(hw.type) if hw.type != "any" else None) if x)
            shown = hw.models[0] if len(hw.models) == 1 else "|".join(hw.models)
            errors.append({"loc": f"{loc}.model",
                           "msg": f"{shown!r} matches no {scope + ' ' if scope else ''}model in the catalog"})
            return errors, []
        models = matched
    demand = hw.demand
    if demand.memory_gib is not None and models:
        biggest = max(m.device_memory_gib for m in models)
        if biggest + 1e-9 < demand.memory_gib:
            what = "reserved on a shared device" if demand.shared else "per device"
            errors.append({"loc": f"{loc}.memory_gib",
                           "msg": f"{demand.memory_gib:g} GiB {what} is more than any matching model has "
                                  f"(largest: {biggest:g} GiB)"})
    return errors, models


def _resource_errors(spec: WorkloadSpec, i: int, loc: str, fleet: Fleet) -> list[dict[str, Any]]:
    """A replica asking more CPUs or host memory than any host that reports them has allocatable can never run
    (hosts that report nothing are not counted; with none reporting, nothing is checked)."""
    cpus, mems = fleet.largest_allocatable()
    demand, own = spec.demand(i), spec.alternatives[i].resources
    where = f"{loc}.resources" if own is not None else "body.resources"
    errors: list[dict[str, Any]] = []
    if cpus is not None and demand.cpu > cpus:
        errors.append({"loc": f"{where}.cpu", "msg": f"{demand.cpu} CPUs per replica is more than any host has "
                                                     f"allocatable (largest: {cpus})"})
    if mems is not None and demand.host_memory_mib > mems:
        errors.append({"loc": f"{where}.memory_gib",
                       "msg": f"{demand.host_memory_mib / 1024:g} GiB of host memory per replica is more than any "
                              f"host has allocatable (largest: {mems / 1024:g} GiB)"})
    return errors


def _runtime_errors(spec: WorkloadSpec, hw: HardwareRequest, loc: str, fleet: Fleet, models: list[DeviceModel]
                    ) -> list[dict[str, Any]]:
    errors: list[dict[str, Any]] = []
    rt = spec.runtime
    asked = [(f"body.runtime.requires.{i}", r) for i, r in enumerate(rt.requirements())] + [
        (f"{loc}.requires.{i}", r) for i, r in enumerate(hw.requirements())]
    for where, req in asked:
        # The driver table lists concrete runtime releases; without one, the framework rules' ranges.
        known = [SpecifierSet.parse(r.runtime_versions) for r in fleet.driver_rules if r.runtime == req.name] or [
            SpecifierSet.parse(c.runtime_versions) for c in fleet.compat if c.runtime == req.name]
        if known and not any(k.overlaps(req.specifier) for k in known):
            errors.append({"loc": where, "msg": f"no known {req.name} version satisfies {req.name}{req.specifier}"})
    if rt.framework is None or hw.is_cpu:  # CPU-only work brings its framework in its image
        return errors
    rows = [c for c in fleet.compat if c.framework == rt.framework]
    if not rows:
        errors.append({"loc": "body.runtime.framework", "msg": f"no compatibility rule knows framework {rt.framework!r}"})
        return errors
    if hw.type != "any":
        rows = [c for c in rows if str(c.hardware_type) == str(hw.type)]
    if hw.vendor is not None:
        rows = [c for c in rows if c.vendor == hw.vendor]
    if models and (hw.type != "any" or hw.vendor is not None):
        pairs = {(str(m.hardware_type), m.vendor) for m in models}
        rows = [c for c in rows if (str(c.hardware_type), c.vendor) in pairs]
    if not rows:
        target = " ".join(x for x in (hw.vendor, str(hw.type) if hw.type != "any" else None) if x) or "this hardware"
        errors.append({"loc": "body.runtime.framework", "msg": f"no compatibility rule runs {rt.framework} on {target}"})
        return errors
    if rt.framework_version is not None:
        wanted = framework_specifier(rt.framework_version)
        if not any(SpecifierSet.parse(c.framework_versions).overlaps(wanted) for c in rows):
            errors.append({"loc": "body.runtime.framework_version",
                           "msg": f"no compatibility rule supports {rt.framework} {rt.framework_version} on the "
                                  "requested hardware"})
    return errors


def check_spec(spec: WorkloadSpec, fleet: Fleet) -> None:
    """Raise InvalidRequest naming every field that can never be satisfied (in any hardware alternative:
    one that can never be placed is a mistake, not a fallback)."""
    errors: list[dict[str, Any]] = []
    alts = spec.alternatives
    for i, hw in enumerate(alts):
        loc = f"body.hardware.{i}" if isinstance(spec.hardware, list) else "body.hardware"
        hw_errors, models = _hardware_errors(hw, loc, fleet.catalog)
        errors += hw_errors + _runtime_errors(spec, hw, loc, fleet, models) + _resource_errors(spec, i, loc, fleet)
    if errors:
        first = errors[0]
        raise InvalidRequest(f"{first['loc']}: {first['msg']}", title="Workload cannot run anywhere", errors=errors)
