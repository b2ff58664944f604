"""Event subscriptions (webhooks) and their deliveries, as the API shows them.

Event type patterns are dotted like the types themselves: ``io.xpumesh.workload.*``
(a ``*`` segment matches one segment; a trailing ``*`` matches one or more) or an exact
type such as ``io.xpumesh.device.unhealthy``.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from libs.bus.subjects import TOKEN_PATTERN
from libs.events import EVENT_TYPE_PREFIX
from libs.schemas.devices import HardwareType
from libs.schemas.tenancy import check_tenant

_PATTERN_SEGMENT = re.compile(r"^([a-z0-9_-]{1,64}|\*)$")
_SITE = re.compile(TOKEN_PATTERN)


def check_type_pattern(pattern: str) -> str:
    if not pattern.startswith(EVENT_TYPE_PREFIX) or len(pattern) > 128:
        raise ValueError(f"event type patterns start with {EVENT_TYPE_PREFIX!r} and are at most 128 characters")
    rest = pattern.removeprefix(EVENT_TYPE_PREFIX).split(".")
    if not all(_PATTERN_SEGMENT.match(seg) for seg in rest):
        raise ValueError(f"pattern {pattern[:128]!r}: each segment is lower-case letters, digits, '-', '_' or '*'")
    return pattern


def type_matches(pattern: str, event_type: str) -> bool:
    """``io.xpumesh.workload.*`` matches ``io.xpumesh.workload.placed``; a trailing * takes one or more segments."""
    p, t = pattern.split("."), event_type.split(".")
    for i, seg in enumerate(p):
        if i >= len(t):
            return False
        if seg == "*" and i == len(p) - 1:
            return True
        if seg != "*" and seg != t[i]:
            return False
    return len(p) == len(t)


class SubscriptionStatus(StrEnum):
    ACTIVE = "active"
    DISABLED = "disabled"


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DEAD = "dead"
    CANCELLED = "cancelled"


class SubscriptionFilters(BaseModel):
    """Narrow a subscription beyond event types. Every set filter must match."""

    model_config = ConfigDict(extra="forbid")

    site: str | None = Field(default=None, description="Only events of this site.", examples=["hangzhou"])
    hardware_type: HardwareType | None = Field(default=None, description="Only events about this hardware type.",
                                               examples=["npu"])
    tenant: str | None = Field(default=None, description="Only this tenant's tenant-owned events (admins and "
                               "operators; other keys always get only their own tenant's).", examples=["acme"])

    @field_validator("site")
    @classmethod
    def _site(cls, v: str | None) -> str | None:
        if v is not None and not _SITE.match(v):
            raise ValueError("site must be 1-64 letters, digits, '-' or '_'")
        return v

    @field_validator("tenant")
    @classmethod
    def _tenant(cls, v: str | None) -> str | None:
        return check_tenant(v) if v is not None else v


class SubscriptionCreate(BaseModel):
    """A new webhook subscription."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "url": "https://hooks.example.com/xpumesh", "types": ["io.xpumesh.workload.*", "io.xpumesh.device.unhealthy"],
        "filters": {"site": "hangzhou"}, "description": "on-call pager"}]})

    url: str = Field(min_length=8, max_length=2048, description="http(s) URL that receives the events (POST).",
                     examples=["https://hooks.example.com/xpumesh"])
    types: list[str] = Field(min_length=1, max_length=32, description="Event type patterns.",
                             examples=[["io.xpumesh.workload.*"]])
    filters: SubscriptionFilters = Field(default_factory=SubscriptionFilters)
    description: str = Field(default="", max_length=256)

    @field_validator("types")
    @classmethod
    def _types(cls, v: list[str]) -> list[str]:
        return sorted({check_type_pattern(p) for p in v})

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not (v.startswith("http://") or v.startswith("https://")):
            raise ValueError("url must start with http:// or https://")
        return v


_SUB_EXAMPLE: dict[str, Any] = {"id": "sub_3b9f2a7c1d4e5f60", "tenant": "acme", "url": "https://hooks.example.com/xpumesh",
                "types": ["io.xpumesh.workload.*"], "filters": {"site": "hangzhou"}, "description": "on-call pager",
                "status": "active", "disabled_reason": None, "created_at": "2026-11-22T08:00:00Z"}


class Subscription(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_SUB_EXAMPLE]})

    id: str
    tenant: str
    url: str
    types: list[str]
    filters: SubscriptionFilters
    description: str = ""
    status: SubscriptionStatus
    disabled_reason: str | None = None
    created_at: datetime


class CreatedSubscription(Subscription):
    """A new subscription with its signing secret (shown once; verify deliveries with it)."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {**_SUB_EXAMPLE, "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}]})

    secret: str = Field(description="Standard Webhooks signing secret (whsec_…).")


class Delivery(BaseModel):
    """One event's delivery to one subscription: retried with backoff, then dead-lettered."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": 1042, "event_id": "5f0c2b1e-9a7d-4c1e-8b3a-2d6f7e9a0b1c", "event_type": "io.xpumesh.workload.placed",
        "status": "pending", "attempts": 2, "next_attempt_at": "2026-11-22T08:02:05Z", "last_status_code": 503,
        "last_error": "HTTP 503", "created_at": "2026-11-22T08:00:00Z", "updated_at": "2026-11-22T08:00:35Z"}]})

    id: int
    event_id: str
    event_type: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime | None = None
    last_status_code: int | None = None
    last_error: str | None = None
    created_at: datetime
    updated_at: datetime
