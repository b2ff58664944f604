"""A point-in-time telemetry reading of one device, as a vendor tool prints it.

Kept apart from :class:`libs.schemas.devices.Device` on purpose: devices are facts that
change rarely (model, memory, driver), readings change every second.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from libs.schemas.devices import Health


class DeviceReading(BaseModel):
    model_config = ConfigDict(extra="forbid")

    index: int = Field(ge=0, description="Same index as the Device this reading belongs to.")
    vendor: str
    utilization_pct: float | None = None
    memory_used_mib: int | None = None
    temperature_c: float | None = None
    power_w: float | None = None
    health: Health = Health.UNKNOWN
