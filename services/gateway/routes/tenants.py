"""Tenant quotas and usage: admins set them, a tenant's own keys read them.

Both live in the scheduler (``quotas.get``/``quotas.set``, ``workloads.usage``), which
checks the quota when a workload is submitted; these routes only ask it.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path

from libs.schemas.audit import AuditAction
from libs.schemas.tenancy import TENANT_PATTERN, Quota, Role, TenantQuota, TenantRef, TenantUsage
from services.gateway.audit import Audit, audited
from services.gateway.auth import CurrentPrincipal, Principal, ensure_visible, require_role
from services.gateway.deps import Ctx, call
from services.gateway.openapi import problem
from services.gateway.problems import ProblemError

router = APIRouter(tags=["tenants"])
Tenant = Annotated[str, Path(pattern=TENANT_PATTERN, description="Tenant name.", examples=["acme"])]
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: problem("No such tenant visible to this key", "Tenant not found", "no tenant 'globex'")}


def _not_found(tenant: str) -> ProblemError:
    return ProblemError(404, "Tenant not found", f"no tenant {tenant!r}")


@router.get("/v1/tenants/{tenant}/quota", summary="A tenant's quota (its own keys, operators, admins)",
            response_model=Quota, responses=NOT_FOUND)
async def get_quota(ctx: Ctx, principal: CurrentPrincipal, tenant: Tenant) -> Quota:
    ensure_visible(principal, tenant, _not_found(tenant))
    return await call(ctx, "scheduler", "quotas.get", TenantRef(tenant=tenant), Quota)


@router.put("/v1/tenants/{tenant}/quota", summary="Set a tenant's quota (admin); omitted types are unlimited",
            response_model=Quota)
async def put_quota(ctx: Ctx, principal: Annotated[Principal, Depends(require_role(Role.ADMIN))], tenant: Tenant,
                    body: Quota, audit: Annotated[Audit, Depends(audited(AuditAction.QUOTA_SET))]) -> Quota:
    async with audit.remote(target=tenant, changes=body):
        return await call(ctx, "scheduler", "quotas.set", TenantQuota(tenant=tenant, **body.model_dump()), Quota)


@router.get("/v1/tenants/{tenant}/usage", summary="What a tenant holds now, by hardware type and in compute units",
            response_model=TenantUsage, responses=NOT_FOUND)
async def get_usage(ctx: Ctx, principal: CurrentPrincipal, tenant: Tenant) -> TenantUsage:
    ensure_visible(principal, tenant, _not_found(tenant))
    return await call(ctx, "scheduler", "workloads.usage", TenantRef(tenant=tenant), TenantUsage)
