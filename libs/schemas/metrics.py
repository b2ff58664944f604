"""What the metrics service answers over the bus (and the gateway serves as JSON).

Aggregates, never raw rows: a city summary, time series at a chosen step, firing alerts,
one city's hosts, one device. The dashboard reads only these.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from libs.bus.subjects import TOKEN_PATTERN

# Examples for the API documentation: one A100 host of the demo fleet in Hangzhou.
_POINT_EXAMPLE: dict[str, Any] = {
    "t": "2025-06-03T08:00:00Z", "samples": 60, "util_avg": 86.4, "util_max": 99.0, "mem_used_avg_mib": 40512.0,
    "temp_avg_c": 60.8, "temp_max_c": 66.0, "power_avg_w": 338.5, "unhealthy_samples": 0}
_GPU_SUMMARY_EXAMPLE: dict[str, Any] = {
    "hardware_type": "gpu", "total": 416, "healthy": 413, "unhealthy": 3, "reporting": 412, "allocated": 301.5,
    "utilization_pct": 71.3, "memory_used_mib": 17825792, "memory_total_mib": 30670848, "power_w": 104312.0}
_SITE_SUMMARY_EXAMPLE: dict[str, Any] = {
    "site": "hangzhou", "hosts": 96, "hosts_up": 95, "hosts_down": 1, "devices": 416, "healthy": 413,
    "unhealthy": 3, "allocated": 301.5, "utilization_pct": 71.3, "memory_used_mib": 17825792,
    "memory_total_mib": 30670848, "power_w": 104312.0, "running_workloads": 58,
    "alerts": {"critical": 1, "warning": 2}, "by_type": [_GPU_SUMMARY_EXAMPLE]}
_ALERT_EXAMPLE: dict[str, Any] = {
    "id": "device_hot/hz-a100-03/5", "rule": "device_hot", "severity": "warning", "state": "firing",
    "site": "hangzhou", "host_id": "hz-a100-03", "device": "hz-a100-03/5",
    "summary": "Device hz-a100-03/5 at hangzhou is at 91.0 °C (threshold 85 °C)", "value": 91.0,
    "started_at": "2025-06-03T08:11:30Z"}
_DEVICE_NOW_EXAMPLE: dict[str, Any] = {
    "key": "hz-a100-03/0", "slot": 0, "hardware_type": "gpu", "vendor": "nvidia", "model": "A100-SXM4-80GB",
    "memory_total_mib": 81920, "healthy": True, "fresh": True, "util": 87.5, "mem_used_mib": 40960.0,
    "temp_c": 61.0, "power_w": 342.8, "allocated": 1.0, "sample_at": "2025-06-03T08:14:02Z"}
_WORKLOAD_NOW_EXAMPLE: dict[str, Any] = {
    "id": "wl_18ea52ab2dac349aa6915d69", "name": "llama-finetune", "tenant": "acme", "state": "running",
    "updated_at": "2025-06-03T08:02:17Z", "placements": [
        {"replica": 0, "host_id": "hz-a100-03", "site": "hangzhou",
         "devices": [f"hz-a100-03/{slot}" for slot in range(8)], "shares": [1.0] * 8}]}


class Scope(StrEnum):
    """What a time series is about."""

    DEVICE = "device"  # key: "<host_id>/<slot>"
    HOST = "host"  # key: host id
    SITE = "site"  # key: site
    HARDWARE_TYPE = "hardware_type"  # key: hardware type, fleet-wide; with ``site``: within that site


class SeriesQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scope: Scope
    key: str = Field(min_length=1, max_length=140, description="Device '<host>/<slot>', host id, site or hardware type.")
    site: str | None = Field(default=None, pattern=TOKEN_PATTERN, description="With scope hardware_type: only this site.")
    start: datetime
    end: datetime
    step_s: int = Field(ge=1, le=7 * 24 * 3600, description="Seconds per point.")

    @model_validator(mode="after")
    def _window(self) -> Self:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("start and end must carry a time zone")
        if self.end <= self.start:
            raise ValueError("end must be after start")
        if self.site is not None and self.scope != Scope.HARDWARE_TYPE:
            raise ValueError("site filters only a hardware_type series")
        return self


class SeriesPoint(BaseModel):
    """One step. Averages are over every device sample in the step (and in the scope)."""

    t: datetime = Field(description="Start of the step.")
    samples: int
    util_avg: float
    util_max: float
    mem_used_avg_mib: float
    temp_avg_c: float
    temp_max_c: float
    power_avg_w: float
    unhealthy_samples: int


class Series(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "scope": "device", "key": "hz-a100-03/0", "step_s": 60, "resolution": "1m",
        "points": [_POINT_EXAMPLE, {**_POINT_EXAMPLE, "t": "2025-06-03T08:01:00Z", "util_avg": 88.1}]}]})

    scope: Scope
    key: str
    site: str | None = None
    step_s: int
    resolution: str = Field(description="Where the points come from: raw, 1m or 1h.")
    points: list[SeriesPoint]


class SummaryQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sites: list[str] | None = Field(default=None, max_length=1000, description="Only these sites; unset: every site.")


class HardwareSummary(BaseModel):
    hardware_type: str
    total: int = Field(description="Devices known (reported by capability or telemetry).")
    healthy: int
    unhealthy: int
    reporting: int = Field(description="Devices with a fresh telemetry sample.")
    allocated: float = Field(description="Devices held by placed or running workloads (shares count as fractions).")
    utilization_pct: float | None = Field(description="Mean utilisation of reporting devices; null when none report.")
    memory_used_mib: int
    memory_total_mib: int
    power_w: float


class AlertCounts(BaseModel):
    critical: int = 0
    warning: int = 0


class SiteSummary(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_SITE_SUMMARY_EXAMPLE]})

    site: str
    hosts: int
    hosts_up: int
    hosts_down: int
    devices: int
    healthy: int
    unhealthy: int
    allocated: float
    utilization_pct: float | None
    memory_used_mib: int
    memory_total_mib: int
    power_w: float
    running_workloads: int
    alerts: AlertCounts
    by_type: list[HardwareSummary]


class FleetSummary(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "generated_at": "2025-06-03T08:14:05Z", "sites": [_SITE_SUMMARY_EXAMPLE],
        "totals": {**_SITE_SUMMARY_EXAMPLE, "site": "*"}}]})

    generated_at: datetime
    sites: list[SiteSummary]
    totals: SiteSummary = Field(description="The whole fleet (site '*'), by hardware type as well.")


class AlertSeverity(StrEnum):
    CRITICAL = "critical"
    WARNING = "warning"


class AlertState(StrEnum):
    FIRING = "firing"
    RESOLVED = "resolved"


class Alert(BaseModel):
    """One alert. ``id`` is stable for what it is about (rule + site + host + device)."""

    model_config = ConfigDict(json_schema_extra={"examples": [_ALERT_EXAMPLE]})

    id: str
    rule: str = Field(description="device_unhealthy, device_hot, host_down, site_utilization_high, telemetry_missing.")
    severity: AlertSeverity
    state: AlertState
    site: str
    host_id: str | None = None
    device: str | None = Field(default=None, description="'<host>/<slot>' for device alerts.")
    summary: str
    value: float | None = None
    started_at: datetime
    resolved_at: datetime | None = None


class AlertQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    state: AlertState = AlertState.FIRING
    sites: list[str] | None = Field(default=None, max_length=1000)
    severity: AlertSeverity | None = None
    limit: int = Field(default=500, ge=1, le=5000)


class AlertList(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"items": [_ALERT_EXAMPLE], "total": 1}]})

    items: list[Alert]
    total: int = Field(description="How many matched before the limit.")


class DeviceNow(BaseModel):
    """One device with its metadata and its latest sample."""

    model_config = ConfigDict(json_schema_extra={"examples": [_DEVICE_NOW_EXAMPLE]})

    key: str = Field(description="'<host>/<slot>'.")
    slot: int
    hardware_type: str
    vendor: str
    model: str
    memory_total_mib: int | None = None
    healthy: bool | None = Field(description="Latest known health (telemetry, else capability); null when unknown.")
    fresh: bool = Field(description="True when the latest sample is recent enough to count.")
    util: float | None = None
    mem_used_mib: float | None = None
    temp_c: float | None = None
    power_w: float | None = None
    allocated: float = 0.0
    sample_at: datetime | None = None


class HostNow(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "host_id": "hz-a100-03", "site": "hangzhou", "hostname": "hz-a100-03", "status": "up", "cpu_pct": 41.2,
        "mem_used_mib": 612400, "mem_total_mib": 2063600, "telemetry_at": "2025-06-03T08:14:02Z",
        "devices": [_DEVICE_NOW_EXAMPLE]}]})

    host_id: str
    site: str
    hostname: str | None = None
    status: str = Field(description="up, down or unknown (from registry events).")
    cpu_pct: float | None = None
    mem_used_mib: int | None = None
    mem_total_mib: int | None = None
    telemetry_at: datetime | None = None
    devices: list[DeviceNow]


class HostsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    site: str = Field(pattern=TOKEN_PATTERN)
    after: str | None = Field(default=None, max_length=64, description="Cursor: hosts with an id greater than this.")
    limit: int = Field(default=100, ge=1, le=500)


class HostPage(BaseModel):
    items: list[HostNow]
    next_cursor: str | None = None


class DeviceRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host_id: str = Field(pattern=TOKEN_PATTERN)
    slot: int = Field(ge=0, le=100_000)


class Placement(BaseModel):
    """Where one replica of a workload runs."""

    replica: int = 0
    host_id: str
    site: str | None = None
    devices: list[str] = Field(default_factory=list, description="Device keys '<host>/<slot>' (or the scheduler's ids).")
    shares: list[float] = Field(default_factory=list)


class WorkloadNow(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_WORKLOAD_NOW_EXAMPLE]})

    id: str
    name: str | None = None
    tenant: str | None = None
    state: str
    updated_at: datetime
    placements: list[Placement]


class DeviceDetail(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "site": "hangzhou", "host_id": "hz-a100-03", "hostname": "hz-a100-03", "device": _DEVICE_NOW_EXAMPLE,
        "driver_version": "550.90.07", "runtimes": {"cuda": "12.4"}, "firmware_version": "92.00.45.00.06",
        "uuid": "GPU-5e3b2c1a-8f4d-4e6b-9a7c-0d1e2f3a4b5c", "workloads": [_WORKLOAD_NOW_EXAMPLE], "alerts": []}]})

    site: str
    host_id: str
    hostname: str | None = None
    device: DeviceNow
    driver_version: str | None = None
    runtimes: dict[str, str] = Field(default_factory=dict)
    firmware_version: str | None = None
    uuid: str | None = None
    workloads: list[WorkloadNow]
    alerts: list[Alert]


class WorkloadQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sites: list[str] | None = Field(default=None, max_length=1000)
    tenant: str | None = Field(default=None, max_length=128, description="Only this tenant's workloads.")
    state: str | None = Field(default=None, max_length=32)
    after: str | None = Field(default=None, max_length=128)
    limit: int = Field(default=100, ge=1, le=500)


class WorkloadPage(BaseModel):
    items: list[WorkloadNow]
    next_cursor: str | None = None


class IngestStats(BaseModel):
    """What the ingest path did since the process started (and over its recent window)."""

    samples_total: int
    reports_total: int
    rejected_reports_total: int
    rejected_samples_total: int
    batches_total: int
    lag_p50_s: float | None = Field(description="Sample time → committed, over the recent window.")
    lag_p99_s: float | None
    window_samples: int
    devices: int
    hosts: int
