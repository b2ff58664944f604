"""Elastic tenant quotas: stored here, beside what tenants hold; limits checked at submit, guarantees
honoured by the placer.

A quota gives per resource (devices per hardware type, shares as fractions; compute units;
logical CPUs ``cpu``; host memory ``memory_gib``) a guaranteed ``min`` and a limit ``max``
(``libs.schemas.tenancy.Quota``). ``QuotaBook`` keeps every tenant's quota in memory: the submit
handler checks ``max`` against it (``check``), the placer places within the device limits
(``QuotaBook.placement_limits``), reclaims borrowed work for tenants within their guarantee and
orders its queue fairly (``QuotaBook.guarantees``; ``placement.elastic``). The book is loaded from
``tenant_quotas`` at start and on every reference refresh (so several scheduler instances
converge), and updated at once by the instance that answers ``quotas.set``.

What a submission asks for comes from the spec's ``Demand`` per hardware alternative
(``elastic.spec_amounts``): the first alternative that fits the limits is the one counted (a
batch counts its workloads one after the other); a submission none of whose alternatives fits
is refused with ``QuotaExceeded`` carrying the numbers (``quota``, ``usage``, ``requested``) and
the problem type ``QUOTA_PROBLEM``; the gateway answers it as a 403 problem as is. What the
tenant holds, and which of its work is borrowed, comes from its active replicas laid over the
fleet (``usage_views``). A tenant without a quota is not limited.
"""

from __future__ import annotations

import builtins
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from libs.bus.errors import QuotaExceeded
from libs.schemas.tenancy import (
    COMPUTE_UNITS,
    CPU,
    MEMORY_GIB,
    QUOTA_PROBLEM,
    Limit,
    Quota,
    ResourceUsage,
    TenantQuota,
    TenantUsage,
)
from libs.schemas.workload import WorkloadSpec
from services.scheduler import store
from services.scheduler.fleet import Fleet
from services.scheduler.orm import tenant_quotas
from services.scheduler.placement import FleetSnapshot, Quotas
from services.scheduler.placement.elastic import (
    Amounts,
    Guarantees,
    add,
    capacity,
    classify,
    dominant_share,
    guaranteed,
    spec_amounts,
)
from services.scheduler.placer import allocations_of

_EPS = 1e-9


# -- store -----------------------------------------------------------------------------------------
async def list_quotas(session: AsyncSession) -> list[TenantQuota]:
    rows = (await session.execute(select(tenant_quotas).order_by(tenant_quotas.c.tenant))).all()
    return [TenantQuota(tenant=r.tenant, **Quota.of({k: Limit.model_validate(v) for k, v in r.limits.items()})
                        .model_dump()) for r in rows]


async def update_quota(session: AsyncSession, tenant: str, quota: Quota) -> None:
    """Set (insert or replace) a tenant's quota."""
    values = {"limits": {k: v.model_dump(mode="json") for k, v in quota.limits().items()}, "updated_at": func.now()}
    stmt = insert(tenant_quotas).values(tenant=tenant, **values)
    await session.execute(stmt.on_conflict_do_update(index_elements=[tenant_quotas.c.tenant], set_=values))


# -- in memory -------------------------------------------------------------------------------------
class QuotaBook:
    """Every tenant's quota, as the submit check and the placer read it."""

    def __init__(self) -> None:
        self.by_tenant: dict[str, Quota] = {}

    def replace(self, items: list[TenantQuota]) -> None:
        self.by_tenant = {q.tenant: Quota.model_validate(q.model_dump(exclude={"tenant"})) for q in items}

    def set(self, tenant: str, quota: Quota) -> None:
        self.by_tenant[tenant] = quota

    def get(self, tenant: str) -> Quota:
        """The tenant's quota; an empty one (no guarantee, no limit) when none is set."""
        return self.by_tenant.get(tenant) or Quota()

    def placement_limits(self) -> Quotas:
        """Tenant → hardware type → most devices: the device part placement enforces."""
        out = {t: {str(hw): lim.max for hw, lim in q.devices.items() if lim.max is not None}
               for t, q in self.by_tenant.items()}
        return {t: limits for t, limits in out.items() if limits}

    def guarantees(self) -> Guarantees:
        """Tenant → resource → guaranteed amount (only the positive ones)."""
        out = {t: {r: lim.min for r, lim in q.limits().items() if lim.min > 0} for t, q in self.by_tenant.items()}
        return {t: mins for t, mins in out.items() if mins}

    def named(self) -> dict[str, builtins.set[str]]:
        """Tenant → the resources its quota names."""
        return {t: set(q.limits()) for t, q in self.by_tenant.items()}


# -- usage -----------------------------------------------------------------------------------------
def views(snap: FleetSnapshot, book: QuotaBook, tenants: Sequence[str]) -> list[TenantUsage]:
    """Each tenant's quota and usage per resource, its borrowed work and its dominant share, from the
    allocations of ``snap`` (its active replicas, laid over the fleet)."""
    mins = book.guarantees()
    named = book.named()
    b = classify(snap, mins, named)
    cap = capacity(snap)
    looked = guaranteed(mins)
    borrowing: dict[str, list[str]] = {}
    for ai in sorted(b.borrowed):
        a = snap.allocations[ai]
        borrowing.setdefault(a.tenant or "", []).append(a.workload_id)
    out = []
    for t in tenants:
        used = b.used.get(t, {})
        limits = book.get(t).limits()
        resources = {}
        for r in sorted(set(limits) | {k for k, v in used.items() if v > 0}):
            lim = limits.get(r, Limit())
            u = round(used.get(r, 0.0), 3)
            lent = max(0.0, u - lim.min) if r in looked or r in limits else 0.0
            resources[r] = ResourceUsage(min=lim.min, max=lim.max, used=u, borrowed=round(lent, 3))
        devices = {r: round(v, 3) for r, v in used.items() if r not in (COMPUTE_UNITS, CPU, MEMORY_GIB)}
        out.append(TenantUsage(
            tenant=t, devices=devices, compute_units=round(used.get(COMPUTE_UNITS, 0.0), 3),
            cpu=round(used.get(CPU, 0.0), 3), memory_gib=round(used.get(MEMORY_GIB, 0.0), 3),
            resources=resources, borrowing=sorted(set(borrowing.get(t, []))),
            dominant_share=round(dominant_share(used, mins.get(t, {}), cap), 4)))
    return out


async def usage_views(session: AsyncSession, fleet: Fleet, book: QuotaBook,
                      tenant: str | None = None) -> list[TenantUsage]:
    """``views`` from the database: one tenant's, or every tenant's with a quota or active work."""
    rows = await store.list_active_replicas(session, tenant=tenant)
    snap = (await fleet.base()).with_allocations(allocations_of(rows))
    if tenant is not None:
        tenants = [tenant]
    else:
        tenants = sorted(set(book.by_tenant) | {r.tenant for r in rows if r.tenant is not None})
    return views(snap, book, tenants)


def held(usage: TenantUsage) -> Amounts:
    """What a usage view says the tenant holds, per resource."""
    out: Amounts = dict(usage.devices)
    out.update({COMPUTE_UNITS: usage.compute_units, CPU: usage.cpu, MEMORY_GIB: usage.memory_gib})
    return out


# -- the check -------------------------------------------------------------------------------------
_NOUN = {COMPUTE_UNITS: "compute units", CPU: "CPUs", MEMORY_GIB: "GiB of host memory"}


def _over(have: Amounts, extra: Amounts, limits: dict[str, float], takes_devices: bool) -> str | None:
    """The first resource whose limit ``have + extra`` exceeds, else None. A device request whose compute
    units are not known before placement does not fit a compute-unit limit already reached."""
    for r in sorted(limits):
        want = extra.get(r, 0.0)
        if want > 0 and have.get(r, 0.0) + want > limits[r] + _EPS:
            return r
    if (COMPUTE_UNITS in limits and takes_devices and COMPUTE_UNITS not in extra
            and have.get(COMPUTE_UNITS, 0.0) >= limits[COMPUTE_UNITS] - _EPS):
        return COMPUTE_UNITS
    return None


async def check(specs: Sequence[WorkloadSpec], tenant: str, quota: Quota,
                usage: Callable[[], Awaitable[TenantUsage]]) -> None:
    """Raise QuotaExceeded with the numbers if these submissions together (one workload, or a batch) would
    take the tenant over a limit with every hardware alternative; ``usage`` is awaited only when a limit is set."""
    limits = {r: lim.max for r, lim in quota.limits().items() if lim.max is not None}
    if not limits:
        return
    now = await usage()
    base = held(now)
    running = dict(base)
    what = "this workload asks" if len(specs) == 1 else f"these {len(specs)} workloads ask"
    for spec in specs:
        tried: list[tuple[int, str, Amounts]] = []
        for alt, hw in enumerate(spec.alternatives):
            extra = spec_amounts(spec, alt)
            over = _over(running, extra, limits, not hw.is_cpu)
            if over is None:
                add(running, extra)
                break
            tried.append((alt, over, extra))
        else:
            raise _refusal(tenant, spec, tried, quota, now, base, running, limits, what)


def _refusal(tenant: str, spec: WorkloadSpec, tried: list[tuple[int, str, Amounts]], quota: Quota,
             now: TenantUsage, base: Amounts, running: Amounts, limits: dict[str, float], what: str
             ) -> QuotaExceeded:
    lines = []
    for alt, r, extra in tried:
        have, want = base.get(r, 0.0), running.get(r, 0.0) - base.get(r, 0.0) + extra.get(r, 0.0)
        noun = _NOUN.get(r, f"{r} devices")
        line = f"tenant {tenant!r} may hold {limits[r]:g} {noun}; it holds {have:g}"
        if r in extra:
            line += f" and {what} for {want:g}"
        if len(spec.alternatives) > 1:
            line = f"alternative {alt} ({spec.alternatives[alt].describe()}): {line}"
        lines.append(line)
    alt0, _r0, extra0 = tried[0]
    hw_type = spec.demand(alt0).hardware_type
    asked: Amounts = {k: running.get(k, 0.0) - base.get(k, 0.0) for k in running}  # the batch's earlier ones
    add(asked, extra0)  # and this one with its first alternative
    requested: dict[str, Any] = {
        "hardware_type": hw_type if hw_type != CPU else None,
        "devices": round(sum(v for k, v in asked.items() if k not in (COMPUTE_UNITS, CPU, MEMORY_GIB)), 6),
        "compute_units": asked.get(COMPUTE_UNITS) or None, "cpu": asked.get(CPU, 0.0),
        "memory_gib": asked.get(MEMORY_GIB, 0.0), "alternative": alt0}
    numbers: dict[str, Any] = {"type": QUOTA_PROBLEM, "quota": quota.model_dump(mode="json"),
                               "usage": now.model_dump(mode="json", exclude={"tenant"}), "requested": requested}
    prefix = "no hardware alternative fits the quota: " if len(spec.alternatives) > 1 else ""
    return QuotaExceeded(prefix + "; ".join(lines), extra=numbers)
