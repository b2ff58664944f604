"""Typed errors of service calls over the bus.

A handler raises one of these; the endpoint wrapper turns it into a reply
``{"error": {...}}``; the caller's ``Bus.request`` turns that back into the same class.
Only ``title``/``detail`` written by our own code cross the wire, never exception text
from a library.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    code: str
    title: str
    detail: str | None = None
    errors: list[dict[str, Any]] = Field(default_factory=list, description="Field-level problems: loc, msg.")
    extra: dict[str, Any] = Field(default_factory=dict, description="Machine-readable facts (quota numbers…).")


class BusError(Exception):
    """Base of every error a service call can end in."""

    code: ClassVar[str] = "internal"
    http_status: ClassVar[int] = 500
    default_title: ClassVar[str] = "Internal error"

    def __init__(self, detail: str | None = None, *, title: str | None = None,
                 errors: list[dict[str, Any]] | None = None, extra: dict[str, Any] | None = None) -> None:
        super().__init__(detail or title or self.default_title)
        self.title = title or self.default_title
        self.detail = detail
        self.errors = errors or []
        self.extra = extra or {}

    def body(self) -> ErrorBody:
        return ErrorBody(code=self.code, title=self.title, detail=self.detail, errors=self.errors, extra=self.extra)


class InvalidRequest(BusError):
    code = "invalid"
    http_status = 422
    default_title = "Invalid request"


class NotFound(BusError):
    code = "not_found"
    http_status = 404
    default_title = "Not found"


class Conflict(BusError):
    code = "conflict"
    http_status = 409
    default_title = "Conflict"


class QuotaExceeded(BusError):
    code = "quota_exceeded"
    http_status = 403
    default_title = "Quota exceeded"


class Unavailable(BusError):
    code = "unavailable"
    http_status = 503
    default_title = "Service unavailable"


class BusTimeout(Unavailable):
    code = "timeout"
    http_status = 504
    default_title = "Service did not answer in time"


_BY_CODE: dict[str, type[BusError]] = {
    cls.code: cls for cls in (BusError, InvalidRequest, NotFound, Conflict, QuotaExceeded, Unavailable, BusTimeout)
}


def error_from_body(body: ErrorBody) -> BusError:
    cls = _BY_CODE.get(body.code, BusError)
    return cls(body.detail, title=body.title, errors=body.errors, extra=body.extra)
