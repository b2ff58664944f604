"""The gateway service: the HTTP server runs as one of the service's tasks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from datetime import timedelta

import uvicorn

from libs.aio import wait_event
from libs.bus import subjects
from libs.db import session_scope
from libs.events import CloudEvent
from libs.service import Context, ServiceApp
from services.gateway import models
from services.gateway.auth import auth_state
from services.gateway.http import create_app
from services.gateway.routes.keys import KeyRevoked
from services.gateway.routes.subscriptions import SubscriptionChanged
from services.gateway.webhooks import store as webhook_store
from services.gateway.webhooks.engine import WebhookEngine

log = logging.getLogger(__name__)
app = ServiceApp("gateway")


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the service's lifecycle owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@app.on_startup
async def start_webhooks(ctx: Context) -> None:
    ctx.state["webhooks"] = WebhookEngine(ctx)


@app.on_shutdown
async def stop_webhooks(ctx: Context) -> None:
    engine: WebhookEngine | None = ctx.state.get("webhooks")
    if engine is not None:
        await engine.close()


@app.task
async def webhook_sync(ctx: Context) -> None:
    await ctx.state["webhooks"].sync_loop()


@app.task
async def webhook_worker(ctx: Context) -> None:
    await ctx.state["webhooks"].worker()


@app.task
async def maintenance(ctx: Context) -> None:
    """Prune finished deliveries and expired idempotency records."""
    settings = ctx.settings.gateway
    while True:
        await asyncio.sleep(300)
        try:
            async with session_scope(ctx.db) as session:
                await webhook_store.prune(session, timedelta(days=settings.webhook_keep_days))
                await models.prune_idempotency(session, timedelta(seconds=settings.idempotency_ttl_s))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("gateway maintenance failed; retrying later")


@app.task
async def http_server(ctx: Context) -> None:
    config = uvicorn.Config(create_app(ctx), host=ctx.settings.gateway_host, port=ctx.settings.gateway_port,
                            log_level="warning", access_log=False, lifespan="off",
                            timeout_graceful_shutdown=max(1, int(ctx.settings.bus.drain_timeout_s)))
    server = _Server(config)
    done = asyncio.Event()
    ctx.state["http"], ctx.state["http_done"] = server, done
    try:
        await server.serve()
    except asyncio.CancelledError:
        server.should_exit = True
        raise
    finally:
        done.set()


@app.on_shutdown
async def stop_http(ctx: Context) -> None:
    """Stop accepting requests, end event streams, let in-flight requests finish."""
    ctx.state.setdefault("closing", asyncio.Event()).set()
    server: uvicorn.Server | None = ctx.state.get("http")
    if server is not None:
        server.should_exit = True
        await wait_event(ctx.state["http_done"], ctx.settings.bus.drain_timeout_s)


@app.subscribe(subjects.GATEWAY_KEY_REVOKED)
async def on_key_revoked(event: CloudEvent, ctx: Context) -> None:
    """Another gateway instance revoked a key: stop trusting it here at once too."""
    auth_state(ctx).forget_key(KeyRevoked.model_validate(event.data).key_id)


@app.subscribe(subjects.GATEWAY_SUBSCRIPTIONS_CHANGED)
async def on_subscriptions_changed(event: CloudEvent, ctx: Context) -> None:
    """A subscription was created or deleted on some instance: reconcile intake loops now."""
    SubscriptionChanged.model_validate(event.data)
    engine: WebhookEngine | None = ctx.state.get("webhooks")
    if engine is not None:
        engine.resync.set()
