"""What agents publish about their host: heartbeat ids, capability, telemetry.

Versioned: every payload carries ``schema_version``; a consumer rejects (and counts) a
version it does not know instead of guessing.

Time-like values an agent chooses are bounded by the receiver's clock: a report's ``ts``
(``ReportTime``) and a capability ``generation`` (``Generation``, epoch milliseconds) may be at
most ``ReportBounds.max_skew_s`` ahead of now, so a report cannot claim a future that every
later, honest report would lose against. Consumers validate with
``model_validate(data, context=ReportBounds(...).context())``; without that context (an agent
building its own reports) nothing is bounded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo

from libs.bus.subjects import TOKEN_CHARS, TOKEN_MAX, Token
from libs.schemas.devices import Device, HostFacts

_SAFE = re.compile(rf"[^{TOKEN_CHARS}]+")


_BOUNDS = "report_bounds"  # the validation-context key


@dataclass(frozen=True)
class ReportBounds:
    """How far ahead of the receiver's clock (``now``, default the current time) an agent's report may be."""

    max_skew_s: float
    now: datetime | None = None

    def latest(self) -> datetime:
        return (self.now or datetime.now(UTC)) + timedelta(seconds=self.max_skew_s)

    def context(self) -> dict[str, Any]:
        return {_BOUNDS: self}


def _bounds(info: ValidationInfo) -> ReportBounds | None:
    ctx = info.context
    bounds = ctx.get(_BOUNDS) if isinstance(ctx, dict) else None
    return bounds if isinstance(bounds, ReportBounds) else None


def _not_ahead(ts: datetime, info: ValidationInfo) -> datetime:
    bounds = _bounds(info)
    if bounds is not None and (ts if ts.tzinfo else ts.replace(tzinfo=UTC)) > bounds.latest():
        raise ValueError(f"is more than {bounds.max_skew_s:g} s ahead of the receiver's clock")
    return ts


def _generation_not_ahead(generation: int, info: ValidationInfo) -> int:
    bounds = _bounds(info)
    if bounds is not None and generation > bounds.latest().timestamp() * 1000:
        raise ValueError(f"is more than {bounds.max_skew_s:g} s ahead of the receiver's clock (epoch milliseconds)")
    return generation


#: A report's time: bounded ahead of the receiver's clock (see ``ReportBounds``).
ReportTime = Annotated[datetime, AfterValidator(_not_ahead)]
#: A capability generation: epoch milliseconds, bounded like ``ReportTime``.
Generation = Annotated[int, Field(ge=0), AfterValidator(_generation_not_ahead)]


def host_id_for(hostname: str) -> str:
    """A host's id: its hostname made into one NATS subject token."""
    return _SAFE.sub("-", hostname).strip("-")[:TOKEN_MAX] or "host"


class CapabilityReport(BaseModel):
    """Sent at agent start and whenever anything about the host's hardware changes."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    host_id: Token
    site: Token
    generation: Generation = Field(description="Increases with every change the agent reports (epoch milliseconds); "
                                               "older ones are ignored.")
    agent_version: str = ""
    facts: HostFacts
    devices: list[Device] = Field(max_length=1024)
    labels: dict[str, str] = Field(default_factory=dict)


# One device sample, compact: [slot (position in the capability report), utilization %, memory used MiB, temperature °C, power W, healthy 1/0]
DeviceSample = tuple[int, float, int, float, float, int]


class TelemetryReport(BaseModel):
    """One message per host per interval, carrying all of its devices."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    host_id: Token
    site: Token
    ts: ReportTime
    cpu_pct: float = Field(ge=0, le=100)
    mem_used_mib: int = Field(ge=0)
    mem_total_mib: int = Field(ge=0)
    devices: list[DeviceSample] = Field(default_factory=list, max_length=1024)
