"""Tenant quotas and usage: admins set them, a tenant's own keys read them (operators and admins read all).

A quota is elastic: per resource (devices by hardware type, compute units, cpu, memory_gib) a
guaranteed ``min`` and a limit ``max``. Both live in the scheduler (``quotas.get``/``quotas.set``,
``workloads.usage``, ``quotas.usage``), which checks the limits when a workload is submitted and
honours the guarantees when it places; these routes only ask it.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path

from libs.schemas.audit import AuditAction
from libs.schemas.tenancy import (
    TENANT_PATTERN,
    Quota,
    QuotaQuery,
    Role,
    TenantQuota,
    TenantRef,
    TenantUsage,
    TenantUsages,
)
from services.gateway.audit import Audit, audited
from services.gateway.auth import CurrentPrincipal, Principal, ensure_visible, require_role, tenant_filter
from services.gateway.deps import Ctx, call
from services.gateway.openapi import problem
from services.gateway.problems import ProblemError

router = APIRouter(tags=["tenants"])
Tenant = Annotated[str, Path(pattern=TENANT_PATTERN, description="Tenant name.", examples=["acme"])]
QUOTA_EXAMPLES: dict[str, Any] = {
    "elastic": {"summary": "Guarantees and limits", "value": {
        "devices": {"gpu": {"min": 8, "max": 16}}, "cpu": {"min": 64, "max": 512}, "memory_gib": {"max": 4096}}},
    "limits only": {"summary": "The former form: bare numbers are limits (max), nothing guaranteed",
                    "value": {"devices": {"gpu": 16, "npu": 8}, "compute_units": 5000}}}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: problem("No such tenant visible to this key", "Tenant not found", "no tenant 'globex'")}


def _not_found(tenant: str) -> ProblemError:
    return ProblemError(404, "Tenant not found", f"no tenant {tenant!r}")


@router.get("/v1/tenants/{tenant}/quota", summary="A tenant's quota (its own keys, operators, admins)",
            response_model=Quota, responses=NOT_FOUND)
async def get_quota(ctx: Ctx, principal: CurrentPrincipal, tenant: Tenant) -> Quota:
    ensure_visible(principal, tenant, _not_found(tenant))
    return await call(ctx, "scheduler", "quotas.get", TenantRef(tenant=tenant), Quota)


@router.put("/v1/tenants/{tenant}/quota", summary="Set a tenant's elastic quota (admin): per resource a guaranteed "
            "min and a limit max; omitted resources have neither. A bare number is a max (the former form)",
            response_model=Quota)
async def put_quota(ctx: Ctx, principal: Annotated[Principal, Depends(require_role(Role.ADMIN))], tenant: Tenant,
                    body: Annotated[Quota, Body(openapi_examples=QUOTA_EXAMPLES)], audit: Annotated[Audit, Depends(audited(AuditAction.QUOTA_SET))]) -> Quota:
    async with audit.remote(target=tenant, changes=body):
        return await call(ctx, "scheduler", "quotas.set", TenantQuota(tenant=tenant, **body.model_dump()), Quota)


@router.get("/v1/tenants/{tenant}/usage", summary="What a tenant holds now per resource, with its min, max and what "
            "of it is borrowed", response_model=TenantUsage, responses=NOT_FOUND)
async def get_usage(ctx: Ctx, principal: CurrentPrincipal, tenant: Tenant) -> TenantUsage:
    ensure_visible(principal, tenant, _not_found(tenant))
    return await call(ctx, "scheduler", "workloads.usage", TenantRef(tenant=tenant), TenantUsage)


@router.get("/v1/quotas", summary="Quotas and usage of every tenant with a quota or running work (operators, "
            "admins); other keys see their own tenant's", response_model=TenantUsages)
async def list_quota_usage(ctx: Ctx, principal: CurrentPrincipal) -> TenantUsages:
    scope = tenant_filter(principal)
    if scope is not None:
        own = await call(ctx, "scheduler", "workloads.usage", TenantRef(tenant=scope), TenantUsage)
        return TenantUsages(items=[own])
    return await call(ctx, "scheduler", "quotas.usage", QuotaQuery(), TenantUsages)
