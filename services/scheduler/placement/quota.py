"""Tenant-quota accounting for placement: every tenant's devices per type stay within its quota.

Quotas come in as tenant → hardware type → most devices (shares count as fractions) and are
turned into what is left after the snapshot's allocations, in integer units
(``UNITS_PER_DEVICE`` per device; a share counts its fraction, at least one unit). The
greedy pass asks the rule ``constraints.TenantQuota`` whether an option fits what is left and tells it what it
took; CP-SAT gets one ``sum units * x <= left`` per *binding* (tenant, type), one that the
sub-problem's candidates could overrun; the engine splits sub-problems along binding
quotas, counts what its final choices leave, and explains a shortfall in pending reasons.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from libs.schemas.devices import HardwareType
from services.scheduler.placement.capacity import Choice, Selected
from services.scheduler.placement.snapshot import FleetSnapshot
from services.scheduler.placement.workloads import SHARE_SCALE, UNITS_PER_DEVICE, Item, Kind

Quotas = Mapping[str, Mapping[HardwareType | str, float]]
QuotaLeft = dict[tuple[str, str], int]  # (tenant, hardware type) → units left


def units(item: Item, n: int) -> int:
    """Quota units an option of ``n`` whole devices (or the item's share) takes."""
    if item.kind == Kind.SHARE:
        return max(1, item.share * UNITS_PER_DEVICE // SHARE_SCALE)
    return n * UNITS_PER_DEVICE


def quotas_left(snap: FleetSnapshot, quotas: Quotas | None) -> QuotaLeft:
    """Units each (tenant, type) may still take, after what the snapshot's allocations hold."""
    if not quotas:
        return {}
    usage = snap.tenant_usage()
    out: QuotaLeft = {}
    for tenant, limits in quotas.items():
        for hw, limit in limits.items():
            key = (tenant, str(hw))
            out[key] = math.floor((limit - usage.get(key, 0.0)) * UNITS_PER_DEVICE + 1e-6)
    return out


def binding(items: Sequence[Item], candidates: Mapping[int, list[Choice]], pool_hw: Mapping[int, str],
            left: QuotaLeft) -> set[tuple[str, str]]:
    """(tenant, type) pairs whose candidates could together take more than is left."""
    demand: dict[tuple[str, str], int] = {}
    for it in items:
        if it.tenant is None:
            continue
        for hw in {pool_hw[c.pool] for c in candidates.get(it.idx, [])}:
            if (it.tenant, hw) in left:
                most = max(c.n for c in candidates[it.idx]) * UNITS_PER_DEVICE if it.kind != Kind.SHARE else 100
                demand[(it.tenant, hw)] = demand.get((it.tenant, hw), 0) + most
    return {key for key, d in demand.items() if d > left[key]}


def left_after(items: Sequence[Item], snap: FleetSnapshot, by_item: Mapping[int, Selected],
               left: QuotaLeft) -> QuotaLeft:
    """What is left once the selected devices are taken."""
    out = dict(left)
    if out:
        for it in items:
            s = by_item.get(it.idx)
            if s is not None and it.tenant is not None:
                if not s.devices:  # CPU-only work: its CPUs count as 'cpu'
                    if (it.tenant, "cpu") in out:
                        out[(it.tenant, "cpu")] -= it.n * UNITS_PER_DEVICE
                    continue
                key = (it.tenant, str(snap.profiles[snap.dev_profile[s.devices[0]]].hardware_type))
                if key in out:
                    out[key] -= round(sum(s.shares) * UNITS_PER_DEVICE)
    return out


def shortfalls(item: Item, left: QuotaLeft) -> list[str]:
    """Pending-reason lines for the item's tenant quotas that leave no room for it."""
    out = []
    if item.tenant is not None:
        for (tenant, hw), units_left in left.items():
            if tenant == item.tenant and units_left < UNITS_PER_DEVICE * max(1, item.n) and item.sig.hw_type in (
                    hw, "any"):
                out.append(f"tenant {tenant} quota for {hw}: {max(0, units_left) / UNITS_PER_DEVICE:g} devices left")
    return out
