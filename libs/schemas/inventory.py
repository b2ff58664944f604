"""What the inventory answers over the bus: sites, hosts, devices, catalog, rules, summaries."""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from libs.bus.subjects import TOKEN_PATTERN
from libs.schemas.catalog import CompatRule, DeviceModel, RuntimeDriverRule
from libs.schemas.devices import HardwareType, Health, HostFacts, Link

LABEL_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,252}$")
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)?$")
MAX_LIST = 5000


def hardware_type_or_error(value: str) -> HardwareType:
    """Parse a hardware type; the error names every valid one."""
    try:
        return HardwareType(value.strip().lower())
    except ValueError:
        valid = ", ".join(t.value for t in HardwareType)
        raise ValueError(f"hardware_type {value[:40]!r} is not one of: {valid}") from None


def check_labels(labels: dict[str, str]) -> dict[str, str]:
    if len(labels) > 64:
        raise ValueError("at most 64 labels")
    for key, value in labels.items():
        if not LABEL_KEY.match(key):
            raise ValueError(f"label key {key[:80]!r} must be letters, digits, '.', '_', '-', '/' (at most 253)")
        if not LABEL_VALUE.match(value):
            raise ValueError(f"label value {value[:80]!r} of {key[:80]!r} must be at most 63 letters, digits, "
                             "'.', '_', '-', starting and ending alphanumeric")
    return labels


# ------------------------------------------------------------------ sites


class Site(BaseModel):
    """A city (or data centre) the fleet spans."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"id": "hangzhou", "city": "Hangzhou", "region": "zhejiang", "lat": 30.2741, "lon": 120.1551}]})

    id: str = Field(pattern=TOKEN_PATTERN, description="Site token, as agents report it.")
    city: str = Field(min_length=1, max_length=128)
    region: str = Field(default="", max_length=128)
    lat: float | None = Field(default=None, ge=-90, le=90)
    lon: float | None = Field(default=None, ge=-180, le=180)


class SiteLink(BaseModel):
    """The network between two sites (symmetric; ``a`` < ``b``)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"a": "hangzhou", "b": "ningbo", "bandwidth_gbps": 400.0, "latency_ms": 2.6}]})

    a: str = Field(pattern=TOKEN_PATTERN)
    b: str = Field(pattern=TOKEN_PATTERN)
    bandwidth_gbps: float = Field(gt=0)
    latency_ms: float = Field(ge=0, description="Round-trip time.")

    @model_validator(mode="after")
    def _ordered(self) -> SiteLink:
        if self.a == self.b:
            raise ValueError("a link joins two different sites")
        if self.a > self.b:
            a, b = self.b, self.a
            object.__setattr__(self, "a", a)
            object.__setattr__(self, "b", b)
        return self


class SiteList(BaseModel):
    items: list[Site]


class SiteLinkList(BaseModel):
    items: list[SiteLink]


class Empty(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DeviceCounts(BaseModel):
    total: int = 0
    healthy: int = 0
    unhealthy: int = 0
    unknown: int = 0
    compute_units: float = Field(default=0.0, description="Sum of catalog compute units of the healthy-or-unknown devices.")


class SiteSummary(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "site": "ningbo", "city": "Ningbo", "region": "zhejiang", "lat": 29.8683, "lon": 121.544, "hosts": 24,
        "hosts_up": 23, "hosts_down": 1, "devices": {
            "npu": {"total": 64, "healthy": 63, "unhealthy": 1, "unknown": 0, "compute_units": 19719.0}}}]})

    site: str
    city: str
    region: str
    lat: float | None = None
    lon: float | None = None
    hosts: int = 0
    hosts_up: int = 0
    hosts_down: int = 0
    devices: dict[str, DeviceCounts] = Field(default_factory=dict, description="By hardware type.")


class SiteSummaryList(BaseModel):
    items: list[SiteSummary]


# ------------------------------------------------------------------ hosts and devices


class HostStatus(StrEnum):
    UP = "up"
    DOWN = "down"
    UNKNOWN = "unknown"


class DeviceTelemetry(BaseModel):
    utilization_pct: float
    memory_used_mib: int
    temperature_c: float
    power_w: float
    at: datetime


_DEVICE_EXAMPLE: dict[str, Any] = {
    "id": "hz-a100-03:nvidia:0", "host_id": "hz-a100-03", "site": "hangzhou", "host_status": "up", "slot": 0,
    "index": 0, "hardware_type": "gpu", "vendor": "nvidia", "model": "A100-SXM4-80GB",
    "catalog_model": "A100-SXM4-80GB", "compute_units": 312.0, "memory_mib": 81920, "memory_free_mib": 40960,
    "driver_version": "550.90.07", "runtimes": {"cuda": "12.4"}, "firmware_version": "92.00.45.00.06",
    "uuid": "GPU-5e3b2c1a-8f4d-4e6b-9a7c-0d1e2f3a4b5c", "pci_bus_id": "0000:18:00.0", "numa_node": 0,
    "links": [{"peer_index": 1, "kind": "NV12"}], "health": "healthy", "health_changed_at": "2025-06-01T02:10:44Z",
    "telemetry": {"utilization_pct": 87.5, "memory_used_mib": 40960, "temperature_c": 61.0, "power_w": 342.8,
                  "at": "2025-06-03T08:14:02Z"}}
_HOST_EXAMPLE: dict[str, Any] = {
    "id": "hz-a100-03", "site": "hangzhou", "hostname": "hz-a100-03", "status": "up", "generation": 3,
    "arch": "x86_64", "os": "Ubuntu 22.04.4 LTS", "cpu_model": "AMD EPYC 7763 64-Core Processor", "cpu_threads": 256,
    "memory_mib": 2063600, "agent_version": "0.1.0", "device_count": 8, "hardware_types": {"gpu": 8},
    "labels": {"xpumesh.io/gpu.model": "A100-SXM4-80GB", "team": "vision"}, "first_seen": "2025-05-12T09:30:00Z",
    "updated_at": "2025-06-03T08:14:02Z", "reported_at": "2025-06-03T08:00:00Z",
    "status_changed_at": "2025-06-01T02:09:58Z"}


class InventoryDevice(BaseModel):
    """One device as the inventory knows it: reported facts, catalog match, health, last readings."""

    model_config = ConfigDict(json_schema_extra={"examples": [_DEVICE_EXAMPLE]})

    id: str = Field(description="'<host>:<vendor>:<index>', stable while the device stays.")
    host_id: str
    site: str
    host_status: HostStatus
    slot: int = Field(description="Position in the host's capability report; telemetry samples use it as their index.")
    index: int
    hardware_type: HardwareType
    vendor: str
    model: str
    catalog_model: str | None = Field(default=None, description="Canonical catalog model, when the name matched one.")
    compute_units: float | None = Field(default=None, description="From the catalog (1 CU = 1 TFLOPS dense FP16).")
    memory_mib: int | None = None
    memory_free_mib: int | None = Field(default=None, description="Total minus used at the last telemetry.")
    driver_version: str | None = None
    runtimes: dict[str, str] = Field(default_factory=dict)
    firmware_version: str | None = None
    uuid: str | None = None
    pci_bus_id: str | None = None
    numa_node: int | None = None
    links: list[Link] = Field(default_factory=list)
    health: Health
    health_changed_at: datetime | None = None
    telemetry: DeviceTelemetry | None = None


class HostTelemetry(BaseModel):
    cpu_pct: float
    mem_used_mib: int
    mem_total_mib: int
    at: datetime


class HostSummary(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_HOST_EXAMPLE]})

    id: str
    site: str
    hostname: str
    status: HostStatus
    generation: int
    arch: str
    os: str
    cpu_model: str
    cpu_threads: int
    memory_mib: int
    agent_version: str = ""
    device_count: int = 0
    hardware_types: dict[str, int] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict, description="Discovered labels overlaid with operator labels.")
    first_seen: datetime
    updated_at: datetime
    reported_at: datetime = Field(description="When the agent sent the capability report in force.")
    status_changed_at: datetime | None = None


class HostDetail(HostSummary):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        **_HOST_EXAMPLE,
        "facts": {"hostname": "hz-a100-03", "arch": "x86_64", "os": "Ubuntu 22.04.4 LTS",
                  "kernel": "5.15.0-105-generic", "cpu_model": "AMD EPYC 7763 64-Core Processor", "cpu_sockets": 2,
                  "cpu_cores": 128, "cpu_threads": 256, "cpu_mhz": 2450.0, "memory_mib": 2063600, "numa_nodes": 2},
        "discovered_labels": {"xpumesh.io/gpu.model": "A100-SXM4-80GB"}, "operator_labels": {"team": "vision"},
        "devices": [_DEVICE_EXAMPLE],
        "telemetry": {"cpu_pct": 41.2, "mem_used_mib": 612400, "mem_total_mib": 2063600,
                      "at": "2025-06-03T08:14:02Z"}}]})

    facts: HostFacts
    discovered_labels: dict[str, str] = Field(default_factory=dict)
    operator_labels: dict[str, str] = Field(default_factory=dict)
    devices: list[InventoryDevice] = Field(default_factory=list)
    telemetry: HostTelemetry | None = None


class _Query(BaseModel):
    model_config = ConfigDict(extra="forbid")

    site: str | None = Field(default=None, pattern=TOKEN_PATTERN)
    labels: dict[str, str] = Field(default_factory=dict, description="Every one must match (discovered or operator).")
    limit: int = Field(default=100, ge=1, le=MAX_LIST)

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        return check_labels(v)


class HostQuery(_Query):
    status: HostStatus | None = None
    after: str | None = Field(default=None, max_length=64, description="Cursor: hosts with an id greater than this.")


class HostRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=TOKEN_PATTERN)


class HostPage(BaseModel):
    items: list[HostSummary]
    next_cursor: str | None = None


class HostLabels(BaseModel):
    """Set or remove operator labels; discovered labels are never touched."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=TOKEN_PATTERN)
    set: dict[str, str] = Field(default_factory=dict)
    remove: list[str] = Field(default_factory=list, max_length=64)

    @field_validator("set")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        return check_labels(v)


class DeviceCursor(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host_id: str = Field(pattern=TOKEN_PATTERN)
    slot: int = Field(ge=0)


class DeviceQuery(_Query):
    hardware_type: str | None = Field(default=None, max_length=40, description="cpu, gpu, npu, dcu, mlu, xpu, gcu, fpga.")
    vendor: str | None = Field(default=None, max_length=40)
    model: str | None = Field(default=None, max_length=128, description="Glob over the reported or catalog model: '*910B*'.")
    host_id: str | None = Field(default=None, pattern=TOKEN_PATTERN)
    healthy: bool | None = Field(default=None, description="true: healthy only; false: unhealthy only.")
    min_free_memory_mib: int | None = Field(default=None, ge=0)
    status: HostStatus | None = Field(default=None, description="Status of the device's host.")
    after: DeviceCursor | None = None

    @field_validator("hardware_type")
    @classmethod
    def _hardware_type(cls, v: str | None) -> str | None:
        return None if v is None else hardware_type_or_error(v).value


class DevicePage(BaseModel):
    items: list[InventoryDevice]
    next_cursor: DeviceCursor | None = None


class DeviceEvent(BaseModel):
    """Data of io.xpumesh.device.added/removed/unhealthy/healthy."""

    id: str
    host_id: str
    site: str
    slot: int
    index: int
    hardware_type: HardwareType
    vendor: str
    model: str
    uuid: str | None = None
    health: Health
    reason: str = Field(description="capability | telemetry")


# ------------------------------------------------------------------ catalog and rules


class CatalogEntry(DeviceModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "vendor": "huawei", "model": "Ascend910B3", "aliases": ["910B3", "Ascend 910B3"], "hardware_type": "npu",
        "memory_gib": 64, "fp16_tflops": 313, "compute_units": 313, "source": "Huawei Atlas 800T A2 datasheet",
        "origin": "seed"}]})

    origin: Literal["seed", "operator"] = "seed"
    updated_at: datetime | None = None


class CatalogQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    vendor: str | None = Field(default=None, max_length=40)
    hardware_type: str | None = Field(default=None, max_length=40)
    after: str | None = Field(default=None, max_length=300, description="Cursor: '<vendor>/<model>' of the last entry.")
    limit: int = Field(default=500, ge=1, le=MAX_LIST)

    @field_validator("hardware_type")
    @classmethod
    def _hardware_type(cls, v: str | None) -> str | None:
        return None if v is None else hardware_type_or_error(v).value


class CatalogRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    vendor: str = Field(min_length=1, max_length=40)
    model: str = Field(min_length=1, max_length=128)


class CatalogPage(BaseModel):
    items: list[CatalogEntry]
    next_cursor: str | None = None


class RuleKind(StrEnum):
    COMPAT = "compat"
    DRIVER = "driver"


class RuleQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: RuleKind | None = None
    vendor: str | None = Field(default=None, max_length=40)


class RuleSet(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "compat": [{"id": "pytorch-2.4-cann", "framework": "pytorch", "framework_versions": ">=2.4,<2.5",
                    "hardware_type": "npu", "vendor": "huawei", "runtime": "cann",
                    "runtime_versions": ">=8.0.RC3,<=8.1.RC1", "source": "Ascend Extension for PyTorch README"}],
        "driver": [{"id": "cuda-12.4", "vendor": "nvidia", "runtime": "cuda", "runtime_versions": ">=12.4,<12.4.1",
                    "min_driver_version": "550.54.14", "source": "NVIDIA CUDA Toolkit Release Notes, Table 3"}]}]})

    compat: list[CompatRule] = Field(default_factory=list)
    driver: list[RuntimeDriverRule] = Field(default_factory=list)


class RuleUpsert(BaseModel):
    """Exactly one of ``compat`` or ``driver``."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"compat": {"id": "pytorch-2.4-cuda", "framework": "pytorch", "framework_versions": ">=2.4,<2.5",
                    "hardware_type": "gpu", "vendor": "nvidia", "runtime": "cuda", "runtime_versions": ">=11.8,<12.5",
                    "source": "PyTorch 2.4 release notes, https://github.com/pytorch/pytorch/releases/tag/v2.4.0"}},
        {"driver": {"id": "cuda-12.4", "vendor": "nvidia", "runtime": "cuda", "runtime_versions": ">=12.4,<12.4.1",
                    "min_driver_version": "550.54.14", "source": "NVIDIA CUDA Toolkit Release Notes, Table 3"}}]})

    compat: CompatRule | None = None
    driver: RuntimeDriverRule | None = None

    @model_validator(mode="after")
    def _one(self) -> RuleUpsert:
        if (self.compat is None) == (self.driver is None):
            raise ValueError("give exactly one of 'compat' or 'driver'")
        return self


class Upserted(BaseModel):
    created: bool
