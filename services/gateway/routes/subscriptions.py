"""Event subscriptions: webhooks that receive signed CloudEvents, with their delivery log."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Response
from pydantic import BaseModel

from libs.bus import subjects
from libs.db import session_scope
from libs.events import CloudEvent, EventTypes
from libs.schemas.audit import AuditAction
from libs.schemas.subscriptions import (
    CreatedSubscription,
    Delivery,
    DeliveryStatus,
    Subscription,
    SubscriptionCreate,
    SubscriptionStatus,
)
from libs.service import Context
from services.gateway.audit import Audit, audited
from services.gateway.auth import CurrentPrincipal, Principal
from services.gateway.deps import Ctx
from services.gateway.openapi import problem
from services.gateway.pagination import MAX_PAGE, Page, decode_cursor, encode_cursor
from services.gateway.problems import ProblemError
from services.gateway.state import GatewayState
from services.gateway.webhooks import store
from services.gateway.webhooks.ssrf import UnsafeTarget, check_target

router = APIRouter(tags=["subscriptions"])
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: problem(
    "No such subscription visible to this key", "Subscription not found", "no subscription 'sub_3b9f2a7c1d4e5f60'")}
SubscriptionId = Annotated[str, Path(examples=["sub_3b9f2a7c1d4e5f60"])]
CreateAudit = Annotated[Audit, Depends(audited(AuditAction.SUBSCRIPTION_CREATE))]
DeleteAudit = Annotated[Audit, Depends(audited(AuditAction.SUBSCRIPTION_DELETE))]


class SubscriptionChanged(BaseModel):
    subscription_id: SubscriptionId


def _owner_filter(principal: Principal) -> str | None:
    """Subscriptions are the tenant's own: only admins see every tenant's."""
    return None if principal.is_admin else principal.tenant


def _not_found(sid: str) -> ProblemError:
    return ProblemError(404, "Subscription not found", f"no subscription {sid[:64]!r}")


async def _visible(ctx: Context[GatewayState], principal: Principal, sid: str) -> store.SubscriptionRow:
    async with session_scope(ctx.db) as session:
        sub = await store.read_subscription_row(session, sid)
    owner = _owner_filter(principal)
    if sub is None or (owner is not None and sub.tenant != owner):
        raise _not_found(sid)
    return sub


async def _announce(ctx: Context[GatewayState], sid: str) -> None:
    event = CloudEvent.new(EventTypes.GATEWAY_SUBSCRIPTION_CHANGED, f"/gateway/{ctx.instance}",
                           SubscriptionChanged(subscription_id=sid))
    await ctx.bus.publish(subjects.GATEWAY_SUBSCRIPTIONS_CHANGED, event.to_bytes())


@router.post("/v1/subscriptions", summary="Subscribe a webhook to events; the signing secret is shown once",
             status_code=201, response_model=CreatedSubscription,
             responses={404: problem("A tenant filter names a tenant this key cannot see", "Tenant not found",
                                     "no tenant 'globex'"),
                        409: problem("The tenant has reached its subscription limit", "Too many subscriptions",
                                     "a tenant may hold 100 subscriptions")})
async def create_subscription(ctx: Ctx, principal: CurrentPrincipal, body: SubscriptionCreate,
                              audit: CreateAudit) -> CreatedSubscription:
    wanted = body.filters.tenant
    if principal.sees_all_tenants:
        scope = wanted
    elif wanted is not None and wanted != principal.tenant:
        raise ProblemError(404, "Tenant not found", f"no tenant {wanted!r}")
    else:
        scope = principal.tenant
    try:
        await check_target(body.url, ctx.settings.gateway.webhook_allow_hosts)
    except UnsafeTarget as exc:
        raise ProblemError(422, "Webhook target not allowed", str(exc)) from None
    eng = ctx.state.webhooks
    limit = ctx.settings.gateway.max_subscriptions_per_tenant
    async with audit.local(changes=body) as session:
        if await store.count_subscriptions(session, tenant=principal.tenant) >= limit:
            raise ProblemError(409, "Too many subscriptions", f"a tenant may hold {limit} subscriptions")
        sub, secret = await store.create_subscription(session, tenant=principal.tenant, created_by=principal.key_id, body=body,
                                         scope_tenant=scope)
        audit.target = sub.id
        row = await store.read_subscription_row(session, sub.id)
        assert row is not None
        await eng.create_consumer(row)  # before commit: no consumer, no subscription
    await eng.start_intake(row)
    await _announce(ctx, sub.id)
    return CreatedSubscription(**sub.model_dump(), secret=secret)


@router.get("/v1/subscriptions", summary="Subscriptions of the key's tenant (admins: all)",
            response_model=Page[Subscription])
async def list_subscriptions(ctx: Ctx, principal: CurrentPrincipal, cursor: str | None = None,
                             limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100) -> Page[Subscription]:
    after = decode_cursor(cursor)
    if after is not None and not isinstance(after, str):
        raise ProblemError(400, "Invalid cursor", "the cursor is not one this API returned")
    async with session_scope(ctx.db) as session:
        items, last = await store.list_subscriptions(session, tenant=_owner_filter(principal), after=after, limit=limit)
    return Page[Subscription](items=items, next_cursor=encode_cursor(last) if last else None)


@router.get("/v1/subscriptions/{subscription_id}", summary="One subscription", response_model=Subscription,
            responses=NOT_FOUND)
async def get_subscription(ctx: Ctx, principal: CurrentPrincipal, subscription_id: SubscriptionId) -> Subscription:
    await _visible(ctx, principal, subscription_id)
    async with session_scope(ctx.db) as session:
        sub = await store.read_subscription(session, subscription_id)
    if sub is None:
        raise _not_found(subscription_id)
    return sub


@router.delete("/v1/subscriptions/{subscription_id}", summary="Delete a subscription and its delivery log",
               status_code=204, response_class=Response, responses=NOT_FOUND)
async def delete_subscription(ctx: Ctx, principal: CurrentPrincipal, subscription_id: SubscriptionId,
                              audit: DeleteAudit) -> Response:
    await _visible(ctx, principal, subscription_id)
    async with audit.local(target=subscription_id) as session:
        await store.delete_subscription(session, subscription_id)
    await ctx.state.webhooks.delete_consumer(subscription_id)
    await _announce(ctx, subscription_id)
    return Response(status_code=204)


@router.get("/v1/subscriptions/{subscription_id}/deliveries", summary="A subscription's deliveries, newest first",
            response_model=Page[Delivery], responses=NOT_FOUND)
async def list_deliveries(ctx: Ctx, principal: CurrentPrincipal, subscription_id: SubscriptionId,
                          status: DeliveryStatus | None = None, cursor: str | None = None,
                          limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100) -> Page[Delivery]:
    await _visible(ctx, principal, subscription_id)
    before = decode_cursor(cursor)
    if before is not None and not isinstance(before, int):
        raise ProblemError(400, "Invalid cursor", "the cursor is not one this API returned")
    async with session_scope(ctx.db) as session:
        items, last = await store.list_deliveries(session, subscription_id, status=status, before=before,
                                                  limit=limit)
    return Page[Delivery](items=items, next_cursor=encode_cursor(last) if last is not None else None)


@router.post("/v1/subscriptions/{subscription_id}/ping",
             summary="Send a signed io.xpumesh.webhook.ping now and report how the target answered",
             response_model=Delivery,
             responses={**NOT_FOUND, 409: problem("The subscription is disabled", "Subscription disabled",
                                                  "a disabled subscription receives nothing")})
async def ping_subscription(ctx: Ctx, principal: CurrentPrincipal, subscription_id: SubscriptionId) -> Delivery:
    sub = await _visible(ctx, principal, subscription_id)
    if sub.status != SubscriptionStatus.ACTIVE:
        raise ProblemError(409, "Subscription disabled", "a disabled subscription receives nothing")
    did = await ctx.state.webhooks.ping(sub)
    async with session_scope(ctx.db) as session:
        return await store.read_delivery(session, did)
