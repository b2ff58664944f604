"""The gateway's FastAPI application: middleware, problem+json, routers."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

from fastapi import Depends, FastAPI, Request, Response
from opentelemetry import trace
from starlette.middleware.base import BaseHTTPMiddleware

from libs import __version__
from libs.service import Context
from libs.tracing import tracer
from services.gateway import problems
from services.gateway.auth import gate
from services.gateway.routes import hosts, system

MAX_BODY_BYTES = 1024 * 1024
_tracer = tracer("xpumesh.gateway.http")


class RequestContext(BaseHTTPMiddleware):
    """A request id on every response, a body size cap, and a server span per request."""

    async def dispatch(self, request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > MAX_BODY_BYTES:
            resp: Response = problems.problem_response(413, "Request body too large",
                                                       f"the limit is {MAX_BODY_BYTES} bytes", request=request)
        else:
            with _tracer.start_as_current_span(f"{request.method} {request.url.path}", kind=trace.SpanKind.SERVER):
                resp = await call_next(request)
        resp.headers["X-Request-Id"] = request_id
        return resp


def create_app(ctx: Context) -> FastAPI:
    app = FastAPI(
        title="xpumesh API",
        version=__version__,
        description="One API for heterogeneous compute: ask for a kind and amount of hardware; "
                    "xpumesh finds it in any city and runs the work there.",
        openapi_url="/openapi.json",
        dependencies=[Depends(gate)],
    )
    app.state.ctx = ctx
    app.add_middleware(RequestContext)
    problems.install(app)
    app.include_router(system.router)
    app.include_router(hosts.router)
    return app
