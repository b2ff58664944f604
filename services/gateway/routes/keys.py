"""API keys (admin): create, list, revoke; and ``/v1/me``, the caller's own identity."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel, ConfigDict

from libs.bus import subjects
from libs.db import session_scope
from libs.events import CloudEvent, EventTypes
from libs.schemas.audit import AuditAction
from libs.schemas.tenancy import ApiKey, CreatedKey, KeyCreate, Role
from services.gateway import store
from services.gateway.audit import Audit, audited
from services.gateway.auth import CurrentPrincipal, Principal, require_role
from services.gateway.deps import Ctx
from services.gateway.openapi import problem
from services.gateway.pagination import MAX_PAGE, Page, decode_cursor, encode_cursor
from services.gateway.problems import ProblemError

router = APIRouter(tags=["keys"])
Admin = Annotated[Principal, Depends(require_role(Role.ADMIN))]
ADMIN_ONLY: dict[int | str, dict[str, Any]] = {403: problem("Not an admin key", "Forbidden", "this needs one of the roles: admin")}
CreateAudit = Annotated[Audit, Depends(audited(AuditAction.KEY_CREATE))]
RevokeAudit = Annotated[Audit, Depends(audited(AuditAction.KEY_REVOKE))]


class Me(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"key_id": "key_5f2c9a1b7d3e", "tenant": "acme",
                                                               "role": "user"}]})

    key_id: str
    tenant: str
    role: Role


class KeyRevoked(BaseModel):
    key_id: str


@router.get("/v1/me", summary="The calling key: its id, tenant and role", response_model=Me)
async def me(principal: CurrentPrincipal) -> Me:
    return Me(key_id=principal.key_id, tenant=principal.tenant, role=principal.role)


@router.post("/v1/keys", summary="Create an API key (admin); the secret is shown once", status_code=201,
             response_model=CreatedKey)
async def create_key(ctx: Ctx, principal: Admin, body: KeyCreate, audit: CreateAudit) -> CreatedKey:
    async with audit.local(changes=body) as session:
        key, secret = await store.create_key(session, tenant=body.tenant, role=body.role, name=body.name,
                                              created_by=principal.key_id)
        audit.target = key.id
    return CreatedKey(**key.model_dump(), key=secret)


@router.get("/v1/keys", summary="List API keys (admin)", response_model=Page[ApiKey], responses=ADMIN_ONLY)
async def list_keys(ctx: Ctx, principal: Admin, tenant: str | None = None, include_revoked: bool = False,
                    cursor: str | None = None,
                    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100) -> Page[ApiKey]:
    after = decode_cursor(cursor)
    if after is not None and not isinstance(after, str):
        raise ProblemError(400, "Invalid cursor", "the cursor is not one this API returned")
    async with session_scope(ctx.db) as session:
        items, last = await store.list_keys(session, tenant=tenant, after=after, limit=limit,
                                             include_revoked=include_revoked)
    return Page[ApiKey](items=items, next_cursor=encode_cursor(last) if last else None)


@router.delete("/v1/keys/{key_id}", summary="Revoke an API key (admin); it stops working at once",
               response_model=ApiKey,
               responses={404: problem("No such key", "Key not found", "no key 'key_5f2c9a1b7d3e'"),
                          409: problem("The last admin key", "Last admin key",
                                       "create another admin key before revoking this one")})
async def revoke_key(ctx: Ctx, principal: Admin, key_id: Annotated[str, Path(examples=["key_5f2c9a1b7d3e"])],
                     audit: RevokeAudit) -> ApiKey:
    async with audit.local(target=key_id[:64]) as session:
        key = await store.update_key_revoked(session, key_id)
        if key is None:
            raise ProblemError(404, "Key not found", f"no key {key_id[:64]!r}")
        if key.role == Role.ADMIN and await store.count_live_admin_keys(session) == 0:
            raise ProblemError(409, "Last admin key", "create another admin key before revoking this one")
    ctx.state.auth.forget_key(key_id)
    event = CloudEvent.new(EventTypes.GATEWAY_KEY_REVOKED, f"/gateway/{ctx.instance}", KeyRevoked(key_id=key_id))
    await ctx.bus.publish(subjects.GATEWAY_KEY_REVOKED, event.to_bytes())
    return key
