"""Per-tenant quotas, checked when a workload is submitted.

The workloads route calls ``await check_quota(ctx, principal, spec)`` before accepting a
submission. It compares what the spec asks for with the tenant's quota and what the tenant
holds now (the scheduler's ``workloads.usage``), and raises a 403 problem carrying the
numbers (``quota``, ``usage``, ``requested``) when the submission would exceed it. A tenant
without a quota is not limited, and then the scheduler is not asked.
"""

from __future__ import annotations

import time
from typing import Any

from libs.db import session_scope
from libs.schemas.tenancy import Quota, TenantRef, TenantUsage
from libs.schemas.workload import WorkloadSpec
from libs.service import Context
from services.gateway import models
from services.gateway.auth import Principal
from services.gateway.deps import call
from services.gateway.problems import ProblemError

QUOTA_PROBLEM = "https://xpumesh.dev/problems/quota-exceeded"
_EPS = 1e-9


async def quota_for(ctx: Context, tenant: str) -> Quota:
    """A tenant's quota, reused for ``gateway.read_cache_s``."""
    cache: dict[str, tuple[float, Quota]] = ctx.state.setdefault("quota_cache", {})
    hit = cache.get(tenant)
    now = time.monotonic()
    if hit is not None and hit[0] > now:
        return hit[1]
    async with session_scope(ctx.db) as session:
        quota = await models.get_quota(session, tenant)
    if len(cache) > 10_000:
        cache.clear()
    cache[tenant] = (now + ctx.settings.gateway.read_cache_s, quota)
    return quota


def forget_quota(ctx: Context, tenant: str) -> None:
    ctx.state.setdefault("quota_cache", {}).pop(tenant, None)


def requested(spec: WorkloadSpec) -> tuple[str | None, float, float | None]:
    """(hardware type or None for 'any', devices, compute units or None when only placement knows)."""
    hw = spec.hardware
    if hw.type == "any":
        cu = spec.replicas * hw.compute_units if hw.compute_units is not None else None
        return None, 0.0, cu
    per_replica = hw.share if hw.share is not None and hw.share < 1 else float(hw.count)
    return str(hw.type), spec.replicas * per_replica, None


async def tenant_usage(ctx: Context, tenant: str) -> TenantUsage:
    return await call(ctx, "scheduler", "workloads.usage", TenantRef(tenant=tenant), TenantUsage)


async def check_quota(ctx: Context, principal: Principal, spec: WorkloadSpec) -> None:
    """Raise a 403 problem with the numbers if this submission would take the tenant over its quota."""
    tenant = spec.tenant or principal.tenant
    quota = await quota_for(ctx, tenant)
    hw_type, devices, cu = requested(spec)
    limits = {str(k): v for k, v in quota.devices.items()}
    device_limit = limits.get(hw_type) if hw_type is not None else None
    if device_limit is None and quota.compute_units is None:
        return
    usage = await tenant_usage(ctx, tenant)
    numbers: dict[str, Any] = {
        "quota": quota.model_dump(mode="json"), "usage": usage.model_dump(mode="json", exclude={"tenant"}),
        "requested": {"hardware_type": hw_type, "devices": devices, "compute_units": cu}}
    if hw_type is not None and device_limit is not None:
        held = usage.devices.get(hw_type, 0.0)
        if held + devices > device_limit + _EPS:
            raise ProblemError(403, "Quota exceeded",
                               f"tenant {tenant!r} may hold {device_limit:g} {hw_type} devices; it holds {held:g} "
                               f"and this workload asks for {devices:g}", type=QUOTA_PROBLEM, **numbers)
    if quota.compute_units is not None:
        want = cu or 0.0
        if usage.compute_units + want > quota.compute_units + _EPS or (cu is None and
                                                                        usage.compute_units >= quota.compute_units):
            raise ProblemError(403, "Quota exceeded",
                               f"tenant {tenant!r} may hold {quota.compute_units:g} compute units; it holds "
                               f"{usage.compute_units:g}" + (f" and this workload asks for {want:g}" if cu else ""),
                               type=QUOTA_PROBLEM, **numbers)
