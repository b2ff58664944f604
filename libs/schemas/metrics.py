"""What the metrics service answers over the bus (and the gateway serves as JSON).

Aggregates, never raw rows: a city summary, time series at a chosen step, firing alerts,
one city's hosts, one device. The dashboard reads only these.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

_TOKEN = r"^[A-Za-z0-9_-]{1,64}$"


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
    site: str | None = Field(default=None, pattern=_TOKEN, description="With scope hardware_type: only this site.")
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
    items: list[Alert]
    total: int = Field(description="How many matched before the limit.")


class DeviceNow(BaseModel):
    """One device with its metadata and its latest sample."""

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

    site: str = Field(pattern=_TOKEN)
    after: str | None = Field(default=None, max_length=64, description="Cursor: hosts with an id greater than this.")
    limit: int = Field(default=100, ge=1, le=500)


class HostPage(BaseModel):
    items: list[HostNow]
    next_cursor: str | None = None


class DeviceRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host_id: str = Field(pattern=_TOKEN)
    slot: int = Field(ge=0, le=100_000)


class Placement(BaseModel):
    """Where one replica of a workload runs."""

    replica: int = 0
    host_id: str
    site: str | None = None
    devices: list[str] = Field(default_factory=list, description="Device keys '<host>/<slot>' (or the scheduler's ids).")
    shares: list[float] = Field(default_factory=list)


class WorkloadNow(BaseModel):
    id: str
    name: str | None = None
    tenant: str | None = None
    state: str
    updated_at: datetime
    placements: list[Placement]


class DeviceDetail(BaseModel):
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
