"""What agents publish about their host: heartbeat ids, capability, telemetry.

Versioned: every payload carries ``schema_version``; a consumer rejects (and counts) a
version it does not know instead of guessing.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from libs.bus.subjects import TOKEN_CHARS, TOKEN_MAX, Token
from libs.schemas.devices import Device, HostFacts

_SAFE = re.compile(rf"[^{TOKEN_CHARS}]+")


def host_id_for(hostname: str) -> str:
    """A host's id: its hostname made into one NATS subject token."""
    return _SAFE.sub("-", hostname).strip("-")[:TOKEN_MAX] or "host"


class CapabilityReport(BaseModel):
    """Sent at agent start and whenever anything about the host's hardware changes."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = 1
    host_id: Token
    site: Token
    generation: int = Field(ge=0, description="Increases with every change the agent reports; older ones are ignored.")
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
    ts: datetime
    cpu_pct: float = Field(ge=0, le=100)
    mem_used_mib: int = Field(ge=0)
    mem_total_mib: int = Field(ge=0)
    devices: list[DeviceSample] = Field(default_factory=list, max_length=1024)
