"""Tenant quotas: stored here, beside what tenants hold, and checked once, at submit.

A quota bounds what a tenant may hold at once: devices per hardware type (shares count as
fractions) and compute units. ``QuotaBook`` keeps every tenant's quota in memory; the
submit handler checks against it (``check``) and the placer places within it
(``QuotaBook.placement_limits``). The book is loaded from ``tenant_quotas`` at start and on
every reference refresh (so several scheduler instances converge), and updated at once by
the instance that answers ``quotas.set``.

What a submission asks for comes from the spec's ``Demand``; what the tenant holds from its
active replicas (``tenant_usage``). A submission over the quota is refused with
``QuotaExceeded`` carrying the numbers (``quota``, ``usage``, ``requested``) and the problem
type ``QUOTA_PROBLEM``; the gateway answers it as a 403 problem as is. A tenant without a
quota is not limited, and then its usage is not read.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from libs.bus.errors import QuotaExceeded
from libs.schemas.tenancy import QUOTA_PROBLEM, Quota, TenantQuota, TenantUsage
from libs.schemas.workload import WorkloadSpec
from services.scheduler import store
from services.scheduler.fleet import Fleet
from services.scheduler.orm import tenant_quotas
from services.scheduler.placement import Quotas

_EPS = 1e-9


# -- store -----------------------------------------------------------------------------------------
async def list_quotas(session: AsyncSession) -> list[TenantQuota]:
    rows = (await session.execute(select(tenant_quotas).order_by(tenant_quotas.c.tenant))).all()
    return [TenantQuota(tenant=r.tenant, devices=r.devices, compute_units=r.compute_units) for r in rows]


async def update_quota(session: AsyncSession, tenant: str, quota: Quota) -> None:
    """Set (insert or replace) a tenant's quota."""
    values = {"devices": {str(k): v for k, v in quota.devices.items()}, "compute_units": quota.compute_units,
              "updated_at": func.now()}
    stmt = insert(tenant_quotas).values(tenant=tenant, **values)
    await session.execute(stmt.on_conflict_do_update(index_elements=[tenant_quotas.c.tenant], set_=values))


async def tenant_usage(session: AsyncSession, fleet: Fleet, tenant: str) -> TenantUsage:
    """Devices (per hardware type, shares as fractions) and compute units the tenant's active replicas hold."""
    devices: dict[str, float] = {}
    cu = 0.0
    for row in await store.list_tenant_devices(session, tenant):
        for d in row.devices:
            share = float(d.get("share", 1.0))
            devices[d["hardware_type"]] = devices.get(d["hardware_type"], 0.0) + share
            dev = fleet.device(d["id"])
            if dev is not None:
                cu += share * fleet.compute_units(dev.vendor, dev.model)
    return TenantUsage(tenant=tenant, devices=devices, compute_units=round(cu, 3))


# -- in memory -------------------------------------------------------------------------------------
class QuotaBook:
    """Every tenant's quota, as the submit check and the placer read it."""

    def __init__(self) -> None:
        self.by_tenant: dict[str, Quota] = {}

    def replace(self, items: list[TenantQuota]) -> None:
        self.by_tenant = {q.tenant: Quota(devices=q.devices, compute_units=q.compute_units) for q in items}

    def set(self, tenant: str, quota: Quota) -> None:
        self.by_tenant[tenant] = quota

    def get(self, tenant: str) -> Quota:
        """The tenant's quota; an empty one (no limit) when none is set."""
        return self.by_tenant.get(tenant) or Quota()

    def placement_limits(self) -> Quotas:
        """Tenant → hardware type → most devices: the device part placement enforces."""
        return {t: {str(hw): n for hw, n in q.devices.items()} for t, q in self.by_tenant.items() if q.devices}


# -- the check -------------------------------------------------------------------------------------
async def check(specs: Sequence[WorkloadSpec], tenant: str, quota: Quota,
                usage: Callable[[], Awaitable[TenantUsage]]) -> None:
    """Raise QuotaExceeded with the numbers if these submissions together (one workload, or a batch)
    would take the tenant over its quota; ``usage`` is awaited only when some limit applies to them."""
    devices: dict[str, float] = {}
    cu: float | None = 0.0
    for spec in specs:
        demand = spec.demand()  # the first alternative: the one asked for first
        if demand.hardware_type is not None:
            devices[demand.hardware_type] = devices.get(demand.hardware_type, 0.0) + demand.devices_for(spec.replicas)
        one = demand.compute_units_for(spec.replicas)
        cu = None if one is None or cu is None else cu + one
    limits = {str(k): v for k, v in quota.devices.items()}
    limited = {hw: limits[hw] for hw in devices if hw in limits}
    if not limited and quota.compute_units is None:
        return
    held = await usage()
    what = "this workload asks" if len(specs) == 1 else f"these {len(specs)} workloads ask"
    numbers: dict[str, Any] = {
        "type": QUOTA_PROBLEM, "quota": quota.model_dump(mode="json"),
        "usage": held.model_dump(mode="json", exclude={"tenant"})}
    for hw_type, device_limit in sorted(limited.items()):
        have, want = held.devices.get(hw_type, 0.0), devices[hw_type]
        if have + want > device_limit + _EPS:
            numbers["requested"] = {"hardware_type": hw_type, "devices": want, "compute_units": cu}
            raise QuotaExceeded(f"tenant {tenant!r} may hold {device_limit:g} {hw_type} devices; it holds {have:g} "
                                f"and {what} for {want:g}", extra=numbers)
    if quota.compute_units is not None:
        hw_one = next(iter(devices), None) if len(devices) == 1 else None
        numbers["requested"] = {"hardware_type": hw_one, "devices": sum(devices.values(), 0.0), "compute_units": cu}
        want_cu = cu or 0.0
        if held.compute_units + want_cu > quota.compute_units + _EPS or (
                cu is None and held.compute_units >= quota.compute_units):
            raise QuotaExceeded(f"tenant {tenant!r} may hold {quota.compute_units:g} compute units; it holds "
                                f"{held.compute_units:g}" + (f" and {what} for {want_cu:g}" if cu else ""),
                                extra=numbers)
