"""FastAPI dependencies shared by the gateway's routes."""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from pydantic import BaseModel

from libs.bus import subjects
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
