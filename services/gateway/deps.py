"""FastAPI dependencies shared by the gateway's routes."""

from __future__ import annotations

import asyncio
import random
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from pydantic import BaseModel

from libs.bus import subjects
from libs.bus.errors import BusTimeout, Unavailable
from libs.metrics import BUS_RETRIES
from libs.service import Context
from services.gateway.state import GatewayState

T = TypeVar("T")


def get_ctx(request: Request) -> Context[GatewayState]:
    ctx: Context[GatewayState] = request.app.state.ctx
    return ctx


Ctx = Annotated[Context[GatewayState], Depends(get_ctx)]


async def call(ctx: Context[GatewayState], service: str, endpoint: str, payload: BaseModel | dict[str, Any] | None,
               response: type[T], *, timeout: float | None = None) -> T:
    """Ask a service over the bus; its typed errors become problem+json via the exception handlers."""
    result: T = await ctx.bus.request(subjects.rpc_subject(service, endpoint), payload, response, timeout=timeout)
    return result


RETRY_FIRST_S = 0.05  # back-off of call_retrying: doubling from this up to RETRY_MAX_S, with jitter
RETRY_MAX_S = 1.0


async def call_retrying(ctx: Context[GatewayState], service: str, endpoint: str, payload: BaseModel,
                        response: type[T], *, budget_s: float, timeout: float | None = None,
                        after_timeout: bool = True) -> T:
    """``call`` for a request that is safe to repeat: asked again with back-off while no instance answers it
    (no responders, a deposed leader's 503, and with ``after_timeout`` a timed-out attempt, for requests that
    carry an idempotency key), for at most ``budget_s`` in all; then the last 503 stands. Errors the service
    answered with stand at once."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget_s
    delay = RETRY_FIRST_S
    while True:
        left = deadline - loop.time()
        try:
            return await call(ctx, service, endpoint, payload, response,
                              timeout=max(0.1, min(timeout or ctx.settings.bus.request_timeout_s, left)))
        except Unavailable as exc:
            if isinstance(exc, BusTimeout) and not after_timeout:
                raise
            pause = delay * random.uniform(0.5, 1.0)
            if deadline - loop.time() <= pause:
                raise
            BUS_RETRIES.labels(service, endpoint, exc.code).inc()
            await asyncio.sleep(pause)
            delay = min(delay * 2, RETRY_MAX_S)
