"""The gateway service: the HTTP server runs as one of the service's tasks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

import uvicorn

from libs.db import session_scope
from libs.events import CloudEvent
from libs.schemas.tenancy import QuotaQuery, TenantQuotas
from libs.service import Context, ServiceApp
from services.gateway import models
from services.gateway.auth import auth_state
from services.gateway.http import create_app
from services.gateway.routes.keys import KEY_REVOKED_SUBJECT, KeyRevoked

log = logging.getLogger(__name__)
app = ServiceApp("gateway")


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the service's lifecycle owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@app.task
async def http_server(ctx: Context) -> None:
    config = uvicorn.Config(create_app(ctx), host=ctx.settings.gateway_host, port=ctx.settings.gateway_port,
                            log_level="warning", access_log=False, lifespan="off")
    server = _Server(config)
    ctx.state["http"] = server
    try:
        await server.serve()
    except asyncio.CancelledError:
        server.should_exit = True
        raise


@app.on_shutdown
async def stop_http(ctx: Context) -> None:
    server: uvicorn.Server | None = ctx.state.get("http")
    if server is not None:
        server.should_exit = True
        for _ in range(50):
            if not server.started:
                break
            await asyncio.sleep(0.05)


@app.endpoint("quotas.list")
async def list_quotas(req: QuotaQuery, ctx: Context) -> TenantQuotas:
    """Every tenant's quota (or one tenant's): the scheduler's input for placement."""
    async with session_scope(ctx.db) as session:
        items = await models.all_quotas(session)
    if req.tenant is not None:
        items = [q for q in items if q.tenant == req.tenant]
    return TenantQuotas(items=items)


@app.subscribe(KEY_REVOKED_SUBJECT)
async def on_key_revoked(event: CloudEvent, ctx: Context) -> None:
    """Another gateway instance revoked a key: stop trusting it here at once too."""
    auth_state(ctx).forget_key(KeyRevoked.model_validate(event.data).key_id)
