"""Membership and liveness: what agents and services send the registry, and what it answers."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, model_validator


class MemberKind(StrEnum):
    HOST = "host"
    SERVICE = "service"


class MemberStatus(StrEnum):
    UP = "up"
    DOWN = "down"


class Heartbeat(BaseModel):
    """Sent every ``heartbeat_interval_s`` by each agent (kind host) and service instance (kind service)."""

    model_config = ConfigDict(extra="forbid")

    kind: MemberKind
    id: str = Field(min_length=1, max_length=160, description="Host id, or '<service>.<instance>'.")
    name: str = Field(min_length=1, max_length=128, description="Hostname, or service name.")
    site: str | None = Field(default=None, max_length=64)
    version: str = Field(default="", max_length=64)
    interval_s: float = Field(gt=0, le=3600, description="The sender's heartbeat interval; down after missing 3.")
    address: str | None = Field(default=None, max_length=256)
    meta: dict[str, str] = Field(default_factory=dict, max_length=32,
                                 description="At most 32 entries; keys of at most 64, values of at most 256 characters.")

    @model_validator(mode="after")
    def _storable(self) -> Heartbeat:
        """What the registry stores must fit PostgreSQL: no NUL anywhere (no text column holds one), a bounded meta."""
        texts = [self.id, self.name, self.site or "", self.version, self.address or "", *self.meta, *self.meta.values()]
        if any("\x00" in t for t in texts):
            raise ValueError("heartbeat fields must not contain NUL characters")
        if any(len(k) > 64 for k in self.meta) or any(len(v) > 256 for v in self.meta.values()):
            raise ValueError("meta keys are at most 64 and values at most 256 characters")
        return self


class Member(BaseModel):
    kind: MemberKind
    id: str
    name: str
    site: str | None
    version: str
    status: MemberStatus
    interval_s: float
    address: str | None = None
    meta: dict[str, str] = Field(default_factory=dict)
    first_seen: datetime
    last_seen: datetime
    status_changed_at: datetime


class MemberQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: MemberKind | None = None
    status: MemberStatus | None = None
    site: str | None = None
    name: str | None = None
    after: str | None = Field(default=None, description="Cursor: return members with id greater than this.")
    limit: int = Field(default=500, ge=1, le=5000)


class MemberPage(BaseModel):
    items: list[Member]
    next_cursor: str | None = None


class ServiceHealth(BaseModel):
    service: str
    instance: str
    version: str
    status: str
    checks: dict[str, bool]
    uptime_s: float
    role: str | None = Field(default=None, description="For a singleton service: 'leader' or 'standby'.")


class MemberRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=160)
