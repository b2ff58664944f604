"""RFC 9457 problem details for every error the gateway returns."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from libs.bus.errors import BusError, Unavailable
from libs.metrics import BUS_REJECTED

log = logging.getLogger(__name__)
PROBLEM_JSON = "application/problem+json"
# A workload priority above the caller's role's ceiling (gateway.max_priority_<role>).
PRIORITY_PROBLEM = "https://xpumesh.dev/problems/priority-not-allowed"


class Problem(BaseModel):
    """An RFC 9457 problem detail object."""

    type: str = Field(default="about:blank", description="URI reference identifying the problem type.")
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    errors: list[dict[str, Any]] = Field(default_factory=list, description="Field-level problems: loc, msg.")


def problem_response(status: int, title: str, detail: str | None = None, *, request: Request | None = None,
                     errors: list[dict[str, Any]] | None = None, headers: dict[str, str] | None = None,
                     type_: str = "about:blank", **extra: Any) -> JSONResponse:
    body: dict[str, Any] = {"type": type_, "title": title, "status": status}
    if detail:
        body["detail"] = detail
    if request is not None:
        body["instance"] = request.url.path
    if errors:
        body["errors"] = errors
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


class ProblemError(Exception):
    """Raise from a route to answer with a problem."""

    def __init__(self, status: int, title: str, detail: str | None = None, *, headers: dict[str, str] | None = None,
                 errors: list[dict[str, Any]] | None = None, **extra: Any) -> None:
        super().__init__(detail or title)
        self.status, self.title, self.detail, self.headers, self.errors, self.extra = status, title, detail, headers, errors, extra


def install(app: FastAPI) -> None:
    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError) -> JSONResponse:
        return problem_response(exc.status, exc.title, exc.detail, request=request, errors=exc.errors,
                                headers=exc.headers, **exc.extra)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        BUS_REJECTED.labels("gateway", request.url.path, "invalid_body").inc()
        errors = [{"loc": ".".join(str(p) for p in e.get("loc", ())), "msg": e.get("msg", "invalid")}
                  for e in exc.errors()[:50]]
        first = errors[0] if errors else {"loc": "body", "msg": "invalid"}
        return problem_response(422, "Invalid request", f"{first['loc']}: {first['msg']}", request=request, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem_response(exc.status_code, str(exc.detail) if exc.status_code < 500 else "Server error",
                                request=request, headers=dict(exc.headers or {}))

    @app.exception_handler(BusError)
    async def _bus(request: Request, exc: BusError) -> JSONResponse:
        # no instance could answer (a leader change, a lost database connection, a timeout): ask again soon
        headers = {"Retry-After": "1"} if isinstance(exc, Unavailable) else None
        return problem_response(exc.http_status, exc.title, exc.detail, request=request, errors=exc.errors,
                                headers=headers, **exc.extra)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return problem_response(500, "Internal server error", request=request)
