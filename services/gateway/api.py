"""The gateway service: the public HTTP API (``http.py``) served by the framework, the webhook engine's
loops, housekeeping, and the broadcasts other gateway instances send."""

from __future__ import annotations

from datetime import timedelta

from libs.bus import subjects
from libs.db import session_scope
from libs.events import CloudEvent, EventTypes
from libs.service import Context, ServiceApp
from services.gateway import store
from services.gateway.http import create_app
from services.gateway.routes.keys import KeyRevoked
from services.gateway.routes.subscriptions import SubscriptionChanged
from services.gateway.state import GatewayState, load_state
from services.gateway.webhooks import store as webhook_store

app: ServiceApp[GatewayState] = ServiceApp("gateway", state=load_state)
Ctx = Context[GatewayState]
MAINTENANCE_S = 300.0

app.http(create_app, host=lambda s: s.gateway_host, port=lambda s: s.gateway_port,
         tls=lambda s: (s.gateway.tls_cert_file, s.gateway.tls_key_file)
         if s.gateway.tls_cert_file and s.gateway.tls_key_file else None)


@app.on_shutdown
async def stop_webhooks(ctx: Ctx) -> None:
    await ctx.state.webhooks.close()
    await ctx.state.proxy.aclose()


@app.every(lambda s: s.gateway.endpoint_load_sample_s)
async def sample_endpoint_load(ctx: Ctx) -> None:
    """Requests in flight per service, sampled for the next load report."""
    ctx.state.load.sample()


@app.every(lambda s: s.gateway.endpoint_load_interval_s, first_run="after")
async def report_endpoint_load(ctx: Ctx) -> None:
    """This instance's mean requests in flight per service, to the scheduler's autoscaler (core NATS: a lost
    report is superseded by the next)."""
    report = ctx.state.load.report()
    event = CloudEvent.new(EventTypes.ENDPOINT_LOAD, f"/gateway/{ctx.instance}", report)
    await ctx.bus.publish(subjects.gateway_endpoint_load_subject(ctx.instance), event.to_bytes())


@app.task
async def follow_endpoints(ctx: Ctx) -> None:
    """Keep the routing table of /v1/endpoints/: every service's ready replicas, from the scheduler's
    snapshot and its endpoint.changed events."""
    await ctx.state.follower.run(ctx.settings.gateway.endpoint_resync_s)


@app.every(lambda s: s.gateway.sync_interval_s, wake=lambda ctx: ctx.state.webhooks.resync)
async def sync_subscriptions(ctx: Ctx) -> None:
    """Run an intake consumer for every active subscription (and none for the rest)."""
    await ctx.state.webhooks.reconcile()


@app.every(lambda s: s.gateway.webhook_poll_s, wake=lambda ctx: ctx.state.webhooks.wake)
async def deliver_webhooks(ctx: Ctx) -> float | None:
    """Start attempts for due deliveries (woken when deliveries are recorded or an attempt ends)."""
    return await ctx.state.webhooks.deliver_due()


@app.every(MAINTENANCE_S, first_run="after")
async def maintenance(ctx: Ctx) -> None:
    """Prune finished deliveries, expired idempotency records and long-expired enrollment tokens."""
    settings = ctx.settings.gateway
    async with session_scope(ctx.db) as session:
        await webhook_store.delete_finished_deliveries(session, timedelta(days=settings.webhook_keep_days))
        await store.delete_expired_idempotency(session, timedelta(seconds=settings.idempotency_ttl_s))
        await store.delete_expired_enrollment_tokens(session, timedelta(days=1))


@app.every(lambda s: s.enroll.revocation_resync_s)
async def push_revocations(ctx: Ctx) -> None:
    """Push the host-credential revocation list to the NATS server again (when this gateway enrolls hosts)."""
    if ctx.state.enrollment.trust is not None:
        await ctx.state.enrollment.push(ctx)


@app.subscribe(subjects.GATEWAY_KEY_REVOKED)
async def on_key_revoked(event: CloudEvent, ctx: Ctx) -> None:
    """Another gateway instance revoked a key: stop trusting it here at once too."""
    ctx.state.auth.forget_key(KeyRevoked.model_validate(event.data).key_id)


@app.subscribe(subjects.GATEWAY_SUBSCRIPTIONS_CHANGED)
async def on_subscriptions_changed(event: CloudEvent, ctx: Ctx) -> None:
    """A subscription was created or deleted on some instance: reconcile intake consumers now."""
    SubscriptionChanged.model_validate(event.data)
    ctx.state.webhooks.resync.set()
