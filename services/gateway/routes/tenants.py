"""Tenant quotas and usage: admins set them, a tenant's own keys read them."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path

from libs.db import session_scope
from libs.schemas.tenancy import TENANT_PATTERN, Quota, Role, TenantUsage
from services.gateway import models
from services.gateway.auth import CurrentPrincipal, Principal, ensure_visible, require_role
from services.gateway.deps import Ctx
from services.gateway.openapi import problem
from services.gateway.problems import ProblemError
from services.gateway.quotas import forget_quota, quota_for, tenant_usage

router = APIRouter(tags=["tenants"])
Tenant = Annotated[str, Path(pattern=TENANT_PATTERN, description="Tenant name.", examples=["acme"])]
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: problem("No such tenant visible to this key", "Tenant not found", "no tenant 'globex'")}


def _not_found(tenant: str) -> ProblemError:
    return ProblemError(404, "Tenant not found", f"no tenant {tenant!r}")


@router.get("/v1/tenants/{tenant}/quota", summary="A tenant's quota (its own keys, operators, admins)",
            response_model=Quota, responses=NOT_FOUND)
async def get_quota(ctx: Ctx, principal: CurrentPrincipal, tenant: Tenant) -> Quota:
    ensure_visible(principal, tenant, _not_found(tenant))
    return await quota_for(ctx, tenant)


@router.put("/v1/tenants/{tenant}/quota", summary="Set a tenant's quota (admin); omitted types are unlimited",
            response_model=Quota)
async def put_quota(ctx: Ctx, principal: Annotated[Principal, Depends(require_role(Role.ADMIN))], tenant: Tenant,
                    body: Quota) -> Quota:
    async with session_scope(ctx.db) as session:
        await models.put_quota(session, tenant, body)
    forget_quota(ctx, tenant)
    return body


@router.get("/v1/tenants/{tenant}/usage", summary="What a tenant holds now, by hardware type and in compute units",
            response_model=TenantUsage, responses=NOT_FOUND)
async def get_usage(ctx: Ctx, principal: CurrentPrincipal, tenant: Tenant) -> TenantUsage:
    ensure_visible(principal, tenant, _not_found(tenant))
    return await tenant_usage(ctx, tenant)
