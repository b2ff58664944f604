"""Tenants, roles, API keys and quotas: the models the gateway, the CLI and the scheduler share.

A tenant owns workloads and event subscriptions; an API key belongs to one tenant and
carries one role. Quotas are elastic: per resource (devices by hardware type, shares count as
fractions; vendor-neutral compute units; logical CPUs; host memory) a guaranteed ``min`` and a
limit ``max``; ``TenantUsage`` says what a tenant holds of each and how much of it is borrowed.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

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


#: Resource names of a quota besides the hardware types of ``Quota.devices``.
COMPUTE_UNITS, CPU, MEMORY_GIB = "compute_units", "cpu", "memory_gib"


class Limit(BaseModel):
    """An elastic quota on one resource: ``min`` guaranteed (reclaimed from borrowers when needed), ``max`` the
    most held at once (null: no limit). A bare number is read as ``{"min": 0, "max": number}``, the meaning a
    quota had before guarantees existed."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"min": 8, "max": 16}]})

    min: float = Field(default=0.0, ge=0, description="Guaranteed: held whenever the tenant asks for it, if need "
                       "be by reclaiming other tenants' preemptible borrowed work.", examples=[8])
    max: float | None = Field(default=None, ge=0, description="Most held at once, borrowing included; null: no "
                              "limit.", examples=[16])

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min:g} is above max {self.max:g}")
        return self


def _bare_number(v: Any) -> Any:
    if isinstance(v, int | float) and not isinstance(v, bool):
        return {"min": 0.0, "max": v}
    return v


#: A ``Limit`` as given: the object, or a bare number meaning the max.
LimitIn = Annotated[Limit, BeforeValidator(_bare_number, json_schema_input_type=Annotated[float, Field(ge=0)] | Limit)]


class Quota(BaseModel):
    """A tenant's elastic quota, per resource: devices per hardware type (shares count as fractions),
    vendor-neutral compute units, logical CPUs and host memory. An absent resource has no guarantee and no
    limit. Each value is a ``Limit`` ({min, max}) or a bare number (the limit, as before guarantees)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"devices": {"gpu": {"min": 8, "max": 16}, "npu": {"min": 0, "max": 8}},
         "compute_units": {"min": 0, "max": 5000}, "cpu": {"min": 64, "max": 512}, "memory_gib": None}]})

    devices: dict[HardwareType, LimitIn] = Field(
        default_factory=dict, description="Hardware type → {min, max} devices (shares count as fractions); a bare "
        "number is the max. 'cpu' here is read as the cpu field (logical CPUs).",
        examples=[{"gpu": {"min": 8, "max": 16}}])
    compute_units: LimitIn | None = Field(default=None, description="Compute units (1 CU = 1 dense FP16 TFLOPS) "
                                        "held at once; null: no guarantee, no limit.", examples=[{"max": 5000}])
    cpu: LimitIn | None = Field(default=None, description="Logical CPUs of hosts held at once (every replica's "
                              "resources.cpu).", examples=[{"min": 64, "max": 512}])
    memory_gib: LimitIn | None = Field(default=None, description="Host memory (GiB) held at once (every replica's "
                                     "resources.memory_gib).", examples=[{"max": 2048}])

    @model_validator(mode="before")
    @classmethod
    def _cpu_devices(cls, v: Any) -> Any:
        """Before CPUs were a resource of their own, CPU-only work counted its CPUs as devices of type 'cpu'."""
        if isinstance(v, dict) and isinstance(v.get("devices"), dict) and "cpu" in v["devices"]:
            devices = dict(v["devices"])
            cpu = devices.pop("cpu")
            if v.get("cpu") is not None:
                raise ValueError("give logical CPUs once: in cpu, not also in devices.cpu")
            v = {**v, "devices": devices, "cpu": cpu}
        return v

    def limits(self) -> dict[str, Limit]:
        """Resource name (a hardware type, 'compute_units', 'cpu', 'memory_gib') → its limit, where one is set."""
        out: dict[str, Limit] = {str(hw): lim for hw, lim in self.devices.items()}
        for name, lim in ((COMPUTE_UNITS, self.compute_units), (CPU, self.cpu), (MEMORY_GIB, self.memory_gib)):
            if lim is not None:
                out[name] = lim
        return out

    @classmethod
    def of(cls, limits: dict[str, Limit]) -> Quota:
        """The quota of ``limits()``'s form."""
        named = {k: limits[k] for k in (COMPUTE_UNITS, CPU, MEMORY_GIB) if k in limits}
        return cls.model_validate({"devices": {k: v for k, v in limits.items() if k not in named}, **named})


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


class ResourceUsage(BaseModel):
    """One resource of a tenant: its limits, what it holds and how much of that is above its guarantee."""

    min: float = Field(default=0.0, description="Guaranteed amount (0: none).")
    max: float | None = Field(default=None, description="Most held at once; null: no limit.")
    used: float = Field(default=0.0, ge=0, description="Held now by the tenant's active replicas.")
    borrowed: float = Field(default=0.0, ge=0, description="Of ``used``, the part above ``min``: idle capacity "
                            "lent by others, reclaimable while the work on it is preemptible.")


_USAGE_EXAMPLE: dict[str, Any] = {
    "tenant": "acme", "devices": {"gpu": 12, "npu": 0.5}, "compute_units": 3744.0, "cpu": 96, "memory_gib": 768.0,
    "resources": {"gpu": {"min": 8, "max": 16, "used": 12, "borrowed": 4},
                  "cpu": {"min": 0, "max": None, "used": 96, "borrowed": 96}},
    "borrowing": ["wl_18ea52ab2dac349aa6915d61"], "dominant_share": 0.125}


class TenantUsage(BaseModel):
    """What a tenant holds now: the reply of the scheduler's ``workloads.usage`` endpoint."""

    model_config = ConfigDict(json_schema_extra={"examples": [_USAGE_EXAMPLE]})

    tenant: str
    devices: dict[str, float] = Field(default_factory=dict, description="Hardware type → devices held (shares as fractions).")
    compute_units: float = Field(default=0.0, ge=0, description="Compute units held.")
    cpu: float = Field(default=0.0, ge=0, description="Logical CPUs held.")
    memory_gib: float = Field(default=0.0, ge=0, description="Host memory held (GiB).")
    resources: dict[str, ResourceUsage] = Field(
        default_factory=dict, description="Per resource with a quota or in use: min, max, used and borrowed "
        "(hardware types, 'compute_units', 'cpu', 'memory_gib').")
    borrowing: list[str] = Field(default_factory=list, description="Workloads running above the tenant's "
                                 "guarantee (borrowed); the preemptible ones may be reclaimed.")
    dominant_share: float = Field(default=0.0, ge=0, description="Largest share of the fleet's capacity of any "
                                  "resource the tenant holds above its guarantee: the order among borrowers.")


class TenantUsages(BaseModel):
    """Every tenant's usage and quota: the reply of the scheduler's ``quotas.usage``."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"items": [
        _USAGE_EXAMPLE, {"tenant": "globex", "devices": {}, "compute_units": 0.0, "cpu": 0, "memory_gib": 0.0,
                         "resources": {"gpu": {"min": 4, "max": 8, "used": 0, "borrowed": 0}}, "borrowing": [],
                         "dominant_share": 0.0}]}]})

    items: list[TenantUsage]
