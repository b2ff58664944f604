"""Why a workload is pending, in host counts per filter.

Every host is counted once, under the furthest filter stage any of its pools reached
(so "3 hosts: driver too old for cuda>=12.4" means three hosts had the right devices but
an old driver). Hosts that passed every filter and had room at the start of the batch are
reported as taken by other work in the batch. Results are cached per demand shape.
"""

from __future__ import annotations

import numpy as np

from services.scheduler.placement.capacity import cu_need
from services.scheduler.placement.feasibility import (
    CAPACITY,
    CPU_FREE,
    HOST_STAGES,
    MEM_FREE,
    NO_DEVICES,
    NUMA_FREE,
    PASSED,
    PROFILE_STAGES,
    STAGE_NAMES,
    UNHEALTHY,
    Eligibility,
    FeasibilityCache,
    host_stage_texts,
)
from services.scheduler.placement.numa import fitting_nodes
from services.scheduler.placement.snapshot import EPS
from services.scheduler.placement.workloads import SHARE_SCALE, Item, Kind


def _capacity_text(item: Item) -> str:
    if item.cpu_only:
        return f"fewer than {item.n} free CPUs"
    hw = item.sig.hw_type if item.sig.hw_type != "any" else "accelerator"
    if item.kind == Kind.SHARE:
        return f"no {hw} with {item.share / SHARE_SCALE:g} of a device free"
    if item.kind == Kind.CU:
        return f"not enough free {hw}s for {item.cu:g} compute units"
    if item.n == 1:
        return f"no free {hw}"
    return f"fewer than {item.n} free {hw}s"


class Explainer:
    def __init__(self, feas: FeasibilityCache) -> None:
        self.feas = feas
        self.snap = feas.snap
        self._cache: dict[tuple[object, ...], tuple[dict[str, int], int]] = {}

    def host_counts(self, item: Item) -> tuple[dict[str, int], int]:
        """(reason → hosts excluded, hosts that passed every filter with room at batch start)."""
        key = (item.sig, item.kind, item.n, item.share, item.mem_mib, item.cu, len(item.replicas), item.link,
               item.cpu, item.host_mem)
        hit = self._cache.get(key)
        if hit is None:
            hit = self._cache[key] = self._counts(item, self.feas.get(item.sig))
        return hit

    def _counts(self, item: Item, elig: Eligibility) -> tuple[dict[str, int], int]:
        snap = self.snap
        own = host_stage_texts(item.sig)
        texts: list[str] = [own.get(s, STAGE_NAMES.get(s, "")) for s in range(PASSED + 1)]
        text_id = {t: i for i, t in enumerate(texts)}
        stride = 1 << 20
        # per pool: stage * stride + text id; a host keeps its maximum
        hstage = elig.host_stage[snap.pool_host]
        pstage = elig.profile_stage[snap.pool_profile]
        ptext = np.array([text_id.setdefault(r, len(text_id)) if r else 0 for r in elig.profile_reason],
                         dtype=np.int64)
        code = np.where(hstage != PASSED, hstage * stride + hstage,
                        np.where(pstage != PASSED, pstage * stride + ptext[snap.pool_profile], 0))
        rest = (hstage == PASSED) & (pstage == PASSED)
        unusable = rest & (self.feas.pool_usable == 0)
        code[unusable] = UNHEALTHY * stride + UNHEALTHY
        rest &= ~unusable
        cap_text = _capacity_text(item)
        cap_id = text_id.setdefault(cap_text, len(text_id))
        fits = self._fits(item, elig) & rest
        code[rest & ~fits] = CAPACITY * stride + cap_id
        cpu_ok, mem_ok = self._host_fits(item)
        code[fits & ~cpu_ok] = CPU_FREE * stride + CPU_FREE
        code[fits & cpu_ok & ~mem_ok] = MEM_FREE * stride + MEM_FREE
        ok = fits & cpu_ok & mem_ok
        if item.numa:
            numa_ok = np.array([bool(fitting_nodes(snap, item, q)) if ok[q] else False for q in range(snap.n_pools)],
                               dtype=np.bool_)
            code[ok & ~numa_ok] = NUMA_FREE * stride + NUMA_FREE
            ok &= numa_ok
        code[ok] = PASSED * stride
        host_code = np.full(snap.n_hosts, -1, dtype=np.int64)
        np.maximum.at(host_code, snap.pool_host, code)
        down = host_code < 0  # hosts without devices: host filters first, then "no devices"
        host_code[down] = np.where(elig.host_stage[down] != PASSED, elig.host_stage[down] * (stride + 1),
                                   NO_DEVICES * (stride + 1))
        names = {i: t for t, i in text_id.items()}
        counts: dict[str, int] = {}
        passed = 0
        values, nums = np.unique(host_code, return_counts=True)
        for v, c in zip(values.tolist(), nums.tolist(), strict=True):
            stage, tid = divmod(v, stride)
            if stage == PASSED:
                passed += c
                continue
            label = names[tid] if stage == CAPACITY or stage in PROFILE_STAGES else texts[stage] \
                if stage in (*HOST_STAGES, NO_DEVICES, CPU_FREE, MEM_FREE, NUMA_FREE) else STAGE_NAMES[stage]
            counts[label] = counts.get(label, 0) + c
        return counts, passed

    def _host_fits(self, item: Item) -> tuple[np.ndarray, np.ndarray]:
        """Per pool: the host has the CPUs (besides a CPU pool's own) and the memory the item needs free."""
        snap = self.snap
        host = snap.pool_host
        cpu_pool = snap.host_cpu_pool[host]
        cpu_free = np.where(cpu_pool >= 0, snap.pool_free[np.maximum(cpu_pool, 0)], snap.host_cpu_free[host])
        cpu_ok = (cpu_free >= item.cpu) | (np.arange(snap.n_pools) >= snap.n_dev_pools)
        return cpu_ok, snap.host_mem_free[host] >= item.host_mem

    def _fits(self, item: Item, elig: Eligibility) -> np.ndarray:
        snap = self.snap
        fits = np.zeros(snap.n_pools, dtype=np.bool_)
        if item.kind == Kind.SHARE:
            s = item.share / SHARE_SCALE
            devs = np.flatnonzero(snap.dev_usable & elig.pool_ok[snap.dev_pool])
            mem = item.mem_mib if item.mem_mib else np.ceil(item.share * snap.dev_mem[devs] / SHARE_SCALE)
            ok = (snap.dev_free_share[devs] + EPS >= s) & (snap.dev_free_mem[devs] >= mem)
            fits[snap.dev_pool[devs[ok]]] = True
            return fits
        if item.kind == Kind.CU:
            cu = np.array([p.compute_units for p in snap.profiles], dtype=np.float64)[snap.pool_profile]
            need = cu_need(item, cu)
            return (need > 0) & (snap.pool_free >= need)
        return snap.pool_free >= item.n


def format_reason(counts: dict[str, int], extra: list[str]) -> str:
    parts = [f"{n} host{'s' if n != 1 else ''}: {text}" for text, n in
             sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    return "; ".join(extra + parts) if extra or parts else "no hosts in the fleet"
