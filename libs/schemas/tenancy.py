"""Tenants, roles, API keys and quotas: the models the gateway, the CLI and the scheduler share.

A tenant owns workloads and event subscriptions; an API key belongs to one tenant and
carries one role. Quotas bound what a tenant may hold at once, by hardware type (devices,
shares count as fractions) and in vendor-neutral compute units.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator

from libs.schemas.devices import HardwareType

TENANT_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
_TENANT = re.compile(TENANT_PATTERN)
SYSTEM_TENANT = "system"


def check_tenant(value: str) -> str:
    if not _TENANT.match(value):
        raise ValueError(f"tenant must be 1-63 lower-case letters, digits, '-' or '_' (got {value[:80]!r})")
    return value


class Role(StrEnum):
    """What a key may do. admin: everything; operator: the fleet (inventory, catalog, rules) and every
    tenant's workloads read-only; user: its own tenant's workloads and subscriptions; viewer: read-only;
    invoker: only calls services through /v1/endpoints/ (its tenant's, and those open to it)."""

    ADMIN = "admin"
    OPERATOR = "operator"
    USER = "user"
    VIEWER = "viewer"
    INVOKER = "invoker"


class KeyCreate(BaseModel):
    """A request for a new API key (admin only)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"tenant": "acme", "role": "user", "name": "ci pipeline"}]})

    tenant: str = Field(description="Tenant the key acts for.", examples=["acme"])
    role: Role = Field(description="Role of the key.", examples=["user"])
    name: str = Field(default="", max_length=128, description="What the key is for (shown in listings).",
                      examples=["ci pipeline"])

    @field_validator("tenant")
    @classmethod
    def _tenant(cls, v: str) -> str:
        return check_tenant(v)


class ApiKey(BaseModel):
    """An API key as listed: never the secret, only its non-secret prefix."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": "key_5f2c9a1b7d3e", "prefix": "xpm_Q2x9fB3a", "tenant": "acme", "role": "user", "name": "ci pipeline",
        "created_at": "2026-11-22T08:00:00Z", "created_by": "key_0a1b2c3d4e5f", "revoked_at": None}]})

    id: str = Field(description="Key id (use it to revoke).")
    prefix: str = Field(description="The key's first characters, to recognise it.")
    tenant: str
    role: Role
    name: str = ""
    created_at: datetime
    created_by: str | None = None
    revoked_at: datetime | None = None


class CreatedKey(ApiKey):
    """A new key: the only time the secret is shown."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": "key_5f2c9a1b7d3e", "prefix": "xpm_Q2x9fB3a", "tenant": "acme", "role": "user", "name": "ci pipeline",
        "created_at": "2026-11-22T08:00:00Z", "created_by": "key_0a1b2c3d4e5f", "revoked_at": None,
        "key": "xpm_Q2x9fB3aV0lW1c4kS7mN8pR2tY5uZ6wX9yA0bC3dE"}]})

    key: str = Field(description="The secret key. Store it now: it is never shown again.")


#: The problem type of a submission refused because it would exceed the tenant's quota.
QUOTA_PROBLEM = "https://xpumesh.dev/problems/quota-exceeded"


class Quota(BaseModel):
    """Most a tenant may hold at once. An absent hardware type or compute_units null means no limit."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"devices": {"gpu": 16, "npu": 8}, "compute_units": 5000}]})

    devices: dict[HardwareType, float] = Field(default_factory=dict,
                                               description="Hardware type → most devices (shares count as fractions).",
                                               examples=[{"gpu": 16, "npu": 8}])
    compute_units: float | None = Field(default=None, ge=0, description="Most compute units (1 CU = 1 dense FP16 "
                                        "TFLOPS) held at once; null: no limit.", examples=[5000])

    @field_validator("devices")
    @classmethod
    def _non_negative(cls, v: dict[HardwareType, float]) -> dict[HardwareType, float]:
        for hw, n in v.items():
            if n < 0:
                raise ValueError(f"devices[{hw}] must be >= 0")
        return v


class TenantQuota(Quota):
    tenant: str


class TenantQuotas(BaseModel):
    """Every tenant's quota: the reply of the scheduler's ``quotas.list``."""

    items: list[TenantQuota]


class QuotaQuery(BaseModel):
    """Ask the scheduler's ``quotas.list`` for every tenant's quota, or one tenant's."""

    tenant: str | None = None


class TenantRef(BaseModel):
    tenant: str

    @field_validator("tenant")
    @classmethod
    def _tenant(cls, v: str) -> str:
        return check_tenant(v)


class TenantUsage(BaseModel):
    """What a tenant holds now: the reply of the scheduler's ``workloads.usage`` endpoint."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"tenant": "acme", "devices": {"gpu": 12, "npu": 0.5}, "compute_units": 3744.0}]})

    tenant: str
    devices: dict[str, float] = Field(default_factory=dict, description="Hardware type → devices held (shares as fractions).")
    compute_units: float = Field(default=0.0, ge=0, description="Compute units held.")
