"""Filters: which pools (host * device profile) a workload may use at all.

Work is done at the coarsest level that decides it: model/runtime/framework checks once
per *profile* (a few hundred in a large fleet), site/label/up checks once per *host*,
capacity per *pool*. Results are cached per ``Signature``, so a batch of a thousand
workloads with a few dozen distinct shapes costs a few dozen filter passes.

Each stage keeps why it excluded what it excluded; ``explain.py`` turns that into
"12 hosts: driver too old for cuda>=12.4; 40 hosts: no free npu".
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import numpy as np

from libs.schemas.devices import HardwareType
from libs.schemas.hardware import normal_arch
from services.scheduler.placement.rules import PlacementRules
from services.scheduler.placement.snapshot import EPS, BoolArray, FleetSnapshot, IntArray, Profile
from services.scheduler.placement.workloads import Signature

# Stage indices, in the order filters run. A host is counted under the first stage that
# removes all of its devices (and its CPU pool).
HOST_DOWN, SITE, HOST_LABELS, CPU_ARCH, CPU_FEATURES, CPU_SIZE, MEM_SIZE, NO_DEVICES = 0, 1, 2, 3, 4, 5, 6, 7
HW_TYPE, VENDOR, MODEL, VARIANT, MEMORY, COMPUTE_UNITS, RUNTIME, FRAMEWORK = 8, 9, 10, 11, 12, 13, 14, 15
UNHEALTHY, CAPACITY, CPU_FREE, MEM_FREE, NUMA_FREE, PASSED = 16, 17, 18, 19, 20, 21
HOST_STAGES = (HOST_DOWN, SITE, HOST_LABELS, CPU_ARCH, CPU_FEATURES, CPU_SIZE, MEM_SIZE)
PROFILE_STAGES = range(HW_TYPE, FRAMEWORK + 1)
STAGE_NAMES = {
    HOST_DOWN: "host down", SITE: "site not allowed", HOST_LABELS: "host labels do not match",
    CPU_ARCH: "CPU architecture", CPU_FEATURES: "CPU features", CPU_SIZE: "fewer CPUs than asked",
    MEM_SIZE: "less host memory than asked",
    NO_DEVICES: "no devices", HW_TYPE: "hardware type", VENDOR: "vendor", MODEL: "model",
    VARIANT: "no variant", MEMORY: "device memory too small", COMPUTE_UNITS: "no compute units in catalog",
    RUNTIME: "runtime", FRAMEWORK: "framework", UNHEALTHY: "unhealthy devices", CAPACITY: "capacity",
    CPU_FREE: "not enough free CPU", MEM_FREE: "not enough free host memory",
    NUMA_FREE: "no NUMA node with room for its devices and CPUs",
}


def host_stage_texts(sig: Signature) -> dict[int, str]:
    """The texts of the host stages for one signature ("CPU architecture not aarch64")."""
    out = {CPU_ARCH: f"CPU architecture not {sig.arch}",
           CPU_FEATURES: f"CPU lacks {'/'.join(sorted(sig.cpu_features))}",
           CPU_SIZE: f"fewer than {sig.host_cpu} allocatable CPUs",
           MEM_SIZE: f"less than {sig.host_mem_mib / 1024:g} GiB allocatable host memory"}
    if sig.hw_type == "cpu":
        out[NO_DEVICES] = "does not report its CPUs"
    return out


@dataclass(slots=True)
class Eligibility:
    """Filter outcome for one signature."""

    sig: Signature
    profile_stage: IntArray  # per profile: first failing stage, or PASSED
    profile_reason: list[str]  # per profile: text of the failing stage ('' when passed)
    host_stage: IntArray  # per host: HOST_DOWN/SITE/HOST_LABELS, or PASSED
    pool_ok: BoolArray  # profile and host passed, and the pool has a usable device
    whole_pools: IntArray  # pool_ok pools with at least one whole free device
    share_devs: IntArray  # usable partially-used devices in pool_ok pools


class FeasibilityCache:
    """Per-``place`` cache of filter results keyed by signature."""

    _profile: dict[tuple[object, ...], tuple[IntArray, list[str]]]
    _host: dict[tuple[object, ...], IntArray]
    _pools: dict[tuple[object, ...], BoolArray]

    def __init__(self, snap: FleetSnapshot, rules: PlacementRules) -> None:
        self.snap = snap
        self.rules = rules
        # Profile and host verdicts (and the pools they leave) depend only on parts a snapshot
        # shares with the snapshots derived from it (with_decision), so they are kept there,
        # per rules object.
        entry = snap.shared.get(("feasibility", id(rules)))
        if isinstance(entry, tuple) and entry[0] is rules:
            self._profile, self._host, self._pools = entry[1], entry[2], entry[3]
        else:
            self._profile = {}
            self._host = {}
            self._pools = {}
            snap.shared[("feasibility", id(rules))] = (rules, self._profile, self._host, self._pools)
        self._sig: dict[Signature, Eligibility] = {}
        self.pool_usable = snap.pool_usable
        self._free = snap.pool_free > 0
        self._partial: IntArray | None = None

    @property
    def partial_devs(self) -> IntArray:
        """Usable devices that are partly taken by shares (free share or memory left)."""
        if self._partial is None:
            snap = self.snap
            partial = snap.dev_usable & (snap.dev_free_share > EPS) & (
                (snap.dev_free_share < 1 - EPS) | (snap.dev_free_mem < snap.dev_mem))
            self._partial = np.flatnonzero(partial)
        return self._partial

    def get(self, sig: Signature) -> Eligibility:
        hit = self._sig.get(sig)
        if hit is None:
            hit = self._sig[sig] = self._compute(sig)
        return hit

    # -- stages ------------------------------------------------------------------------------
    def _compute(self, sig: Signature) -> Eligibility:
        snap = self.snap
        pkey, hkey = self._profile_key(sig), self._host_key(sig)
        pstage, preason = self._profiles(sig, pkey)
        hstage = self._hosts(sig, hkey)
        pool_ok = self._pools.get((pkey, hkey))
        if pool_ok is None:
            pool_ok = (pstage[snap.pool_profile] == PASSED) & (hstage[snap.pool_host] == PASSED) & (snap.pool_usable > 0)
            self._pools[(pkey, hkey)] = pool_ok
        whole_pools = np.flatnonzero(pool_ok & self._free)
        partial = self.partial_devs
        share_devs = partial[pool_ok[snap.dev_pool[partial]]]
        return Eligibility(sig, pstage, preason, hstage, pool_ok, whole_pools, share_devs)

    @staticmethod
    def _profile_key(sig: Signature) -> tuple[object, ...]:
        return (sig.hw_type, sig.vendor, sig.models, sig.min_mem_mib, sig.requires, sig.framework,
                sig.framework_spec, sig.variants, sig.needs_cu)

    @staticmethod
    def _host_key(sig: Signature) -> tuple[object, ...]:
        return (sig.sites, sig.avoid_sites, sig.host_labels, sig.arch, sig.cpu_features, sig.host_cpu,
                sig.host_mem_mib)

    def _profiles(self, sig: Signature, key: tuple[object, ...]) -> tuple[IntArray, list[str]]:
        hit = self._profile.get(key)
        if hit is None:
            stages = np.full(len(self.snap.profiles), PASSED, dtype=np.int64)
            reasons = [""] * len(self.snap.profiles)
            for p, prof in enumerate(self.snap.profiles):
                stage, reason = self._profile_check(sig, prof)
                stages[p] = stage
                reasons[p] = reason
            hit = self._profile[key] = (stages, reasons)
        return hit

    def _profile_check(self, sig: Signature, prof: Profile) -> tuple[int, str]:
        hw = str(prof.hardware_type)
        cpu = prof.hardware_type == HardwareType.CPU
        if sig.hw_type == "any":
            if cpu:
                return HW_TYPE, "no accelerator"
        elif hw != sig.hw_type:
            return HW_TYPE, f"no {sig.hw_type}"
        if sig.vendor is not None and prof.vendor != sig.vendor:
            return VENDOR, f"CPU not {sig.vendor}" if cpu else f"no {sig.vendor} device"
        if sig.models and not any(fnmatch.fnmatchcase(prof.model.lower(), g.lower()) for g in sig.models):
            return MODEL, f"{'CPU ' if cpu else ''}model not {'|'.join(sig.models)}"
        if cpu:  # CPU-only work: variants 'cpu' or 'default'; frameworks and runtimes come with the image
            if sig.variants and not ({"cpu", "default"} & sig.variants):
                return VARIANT, "no variant for cpu"
            return PASSED, ""
        if sig.variants and not ({prof.vendor, hw, "default"} & sig.variants):
            return VARIANT, f"no variant for {prof.vendor} {hw}"
        if prof.memory_mib < sig.min_mem_mib:
            return MEMORY, f"device memory below {sig.min_mem_mib / 1024:g} GiB"
        if sig.needs_cu and prof.compute_units <= 0:
            return COMPUTE_UNITS, "model has no compute units in the catalog"
        for req in sig.requires:
            reason = self.rules.runtime_reason(prof, req.name, req.specifier)
            if reason is not None:
                return RUNTIME, reason
        if sig.framework is not None and sig.framework_spec is not None:
            reason = self.rules.framework_reason(prof, sig.framework, sig.framework_spec)
            if reason is not None:
                return FRAMEWORK, reason
        return PASSED, ""

    def _hosts(self, sig: Signature, key: tuple[object, ...]) -> IntArray:
        hit = self._host.get(key)
        if hit is not None:
            return hit
        snap = self.snap
        stage = np.full(snap.n_hosts, PASSED, dtype=np.int64)
        if sig.host_cpu or sig.host_mem_mib:
            stage[snap.host_mem < sig.host_mem_mib] = MEM_SIZE
            stage[snap.host_cpu < sig.host_cpu] = CPU_SIZE
        if sig.arch is not None or sig.cpu_features:
            for h, host in enumerate(snap.hosts):
                if sig.arch is not None and normal_arch(host.arch) != sig.arch:
                    stage[h] = CPU_ARCH
                elif not sig.cpu_features <= host.cpu_features:
                    stage[h] = CPU_FEATURES
        if sig.host_labels:
            for h, host in enumerate(snap.hosts):
                for k, v in sig.host_labels:
                    if host.labels.get(k, host.arch if k == "arch" else None) != v:
                        stage[h] = HOST_LABELS
                        break
        if sig.sites or sig.avoid_sites:
            allowed = np.ones(len(snap.sites), dtype=np.bool_)
            if sig.sites:
                allowed[:] = False
                allowed[[snap.site_index[s] for s in sig.sites if s in snap.site_index]] = True
            for s in sig.avoid_sites:
                if s in snap.site_index:
                    allowed[snap.site_index[s]] = False
            stage[~allowed[snap.host_site]] = SITE
        stage[~snap.host_up] = HOST_DOWN
        self._host[key] = stage
        return stage
