"""Batch input: pending workloads, and the items placement decides on, built from each spec's
``Demand`` (``HardwareRequest.demand``) in placement's integer units."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

from libs.schemas.workload import WorkloadSpec, framework_specifier
from libs.versions import Requirement, SpecifierSet

SHARE_SCALE = 1000  # share fractions become integers in 1/1000 of a device
UNITS_PER_DEVICE = 100  # reward and quota units: one whole device
CU_PER_DEVICE_WEIGHT = 300.0  # weighs a compute-unit request against whole-device ones in the objective
CPUS_PER_DEVICE_WEIGHT = 16  # weighs CPU-only work against devices in the objective: 16 CPUs ~ one device


@dataclass(frozen=True, slots=True)
class PendingWorkload:
    """A workload waiting for placement; ``id`` is the scheduler's workload id, ``alternative`` the index of
    the hardware alternative (``WorkloadSpec.alternatives``) to place it with."""

    id: str
    spec: WorkloadSpec
    alternative: int = 0


class Kind(IntEnum):
    WHOLE = 0  # n whole devices from one pool
    SHARE = 1  # a fraction of one device
    CU = 2  # enough devices of one pool to reach compute_units


@dataclass(frozen=True, slots=True)
class Signature:
    """The feasibility-relevant part of a spec; workloads with equal signatures share filter work."""

    hw_type: str  # a HardwareType value or 'any'
    vendor: str | None
    models: tuple[str, ...]  # globs, any may match (empty: any model)
    min_mem_mib: int  # whole devices: device memory must be at least this
    requires: tuple[Requirement, ...]
    framework: str | None
    framework_spec: SpecifierSet | None
    variants: frozenset[str]
    sites: frozenset[str]
    avoid_sites: frozenset[str]
    host_labels: tuple[tuple[str, str], ...]
    needs_cu: bool
    arch: str | None = None
    cpu_features: frozenset[str] = frozenset()
    host_cpu: int = 0  # CPUs one replica needs of its host (hosts with fewer allocatable never fit)
    host_mem_mib: int = 0


@dataclass(slots=True)
class Item:
    """One unit the placer decides on: a replica, or all replicas of a 'same_host' workload."""

    idx: int
    workload: int  # index into the batch
    replicas: tuple[int, ...]
    kind: Kind
    n: int  # devices for WHOLE (n per replica * replicas for same_host); 1 for SHARE
    share: int  # SHARE: share * SHARE_SCALE
    mem_mib: int  # SHARE: reserved memory; 0 = share * device memory
    cu: float  # CU: compute units per replica
    link: bool  # devices must share a link group
    priority: int
    tenant: str | None
    gang: bool
    spread: str
    sig: Signature
    data_site: str | None
    data_gib: float
    units: int  # reward size: devices * UNITS_PER_DEVICE (share: fraction thereof)
    cpu: int = 0  # logical CPUs taken from the host's CPU pool besides devices (CPU-only work: 0, n is its CPUs)
    host_mem: int = 0  # MiB of host memory, for all of the item's replicas
    cpu_only: bool = False  # takes n CPUs of a CPU pool and no device
    numa: bool = False  # placement.numa 'single'
    uniform: bool = False  # a gang whose replicas need one device model (and one site unless spread is 'site')
    alternative: int = 0

    @property
    def cpu_per_replica(self) -> int:
        return (self.n if self.cpu_only else self.cpu) // max(1, len(self.replicas))

    @property
    def mem_per_replica(self) -> int:
        return self.host_mem // max(1, len(self.replicas))


def signature_of(spec: WorkloadSpec, alternative: int = 0) -> Signature:
    hw, rt, pl = spec.alternatives[alternative], spec.runtime, spec.placement
    demand = spec.demand(alternative)
    return Signature(
        hw_type=str(hw.type),
        vendor=hw.vendor,
        models=hw.models,
        min_mem_mib=math.ceil(demand.memory_gib * 1024) if demand.memory_gib and not demand.shared else 0,
        requires=tuple(rt.requirements()) + tuple(hw.requirements()),
        framework=rt.framework,
        framework_spec=framework_specifier(rt.framework_version) if rt.framework_version else (
            SpecifierSet() if rt.framework else None),
        variants=frozenset() if hw.variant is not None else frozenset(spec.variants),  # a named variant runs anywhere
        sites=frozenset(pl.sites),
        avoid_sites=frozenset(pl.avoid_sites),
        host_labels=tuple(sorted(pl.host_labels.items())),
        needs_cu=demand.compute_units is not None,
        arch=hw.arch,
        cpu_features=frozenset(hw.cpu_features),
        host_cpu=demand.cpu,
        host_mem_mib=demand.host_memory_mib,
    )


def expand(batch: Sequence[PendingWorkload]) -> list[Item]:
    """Items in queue order: priority (high first), then batch order; replicas consecutive."""
    order = sorted(range(len(batch)), key=lambda w: -batch[w].spec.priority)
    sigs: dict[Signature, Signature] = {}
    items: list[Item] = []
    for w in order:
        spec, alt = batch[w].spec, batch[w].alternative
        pl = spec.placement
        demand = spec.demand(alt)
        sig = signature_of(spec, alt)
        sig = sigs.setdefault(sig, sig)
        cpu_only = spec.alternatives[alt].is_cpu
        if cpu_only:
            kind, n, share = Kind.WHOLE, demand.cpu, 0
            units = max(1, demand.cpu * UNITS_PER_DEVICE // CPUS_PER_DEVICE_WEIGHT)
        elif demand.compute_units is not None:
            # Reward weight only: one device is taken as ~CU_PER_DEVICE_WEIGHT compute units.
            kind, n, share = Kind.CU, 0, 0
            units = UNITS_PER_DEVICE * max(1, math.ceil(demand.compute_units / CU_PER_DEVICE_WEIGHT))
        elif demand.shared:
            kind, n = Kind.SHARE, 1
            share = max(1, round(demand.devices * SHARE_SCALE))
            units = max(1, share * UNITS_PER_DEVICE // SHARE_SCALE)
        else:
            kind, n, share = Kind.WHOLE, int(demand.devices), 0
            units = n * UNITS_PER_DEVICE
        mem = math.ceil(demand.memory_gib * 1024) if demand.memory_gib and kind == Kind.SHARE else 0
        groups: list[tuple[int, ...]]
        if pl.topology == "same_host" and spec.replicas > 1 and kind != Kind.SHARE:
            groups = [tuple(range(spec.replicas))]
        else:
            groups = [(r,) for r in range(spec.replicas)]
        gang = spec.gang and spec.replicas > 1
        for reps in groups:
            items.append(Item(
                idx=len(items), workload=w, replicas=reps, kind=kind, n=n * len(reps), share=share, mem_mib=mem,
                cu=float(demand.compute_units or 0.0), link=pl.topology == "same_link_group" and not cpu_only,
                priority=spec.priority, tenant=spec.tenant, gang=gang, spread=pl.spread, sig=sig,
                data_site=pl.data_site, data_gib=pl.data_gib, units=units * len(reps),
                cpu=0 if cpu_only else demand.cpu * len(reps), host_mem=demand.host_memory_mib * len(reps),
                cpu_only=cpu_only, numa=pl.numa == "single",
                uniform=gang and len(groups) > 1 and not pl.mixed_models and not cpu_only, alternative=alt,
            ))
    return items
