"""The fleet simulator's control messages on ``xpumesh.sim.ctl``: dashboards, benchmarks and tests
inject device faults and host losses on demand, list the simulated hosts and read the simulator's counters."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from libs.bus.subjects import TOKEN_PATTERN


class SimControl(BaseModel):
    """A request on ``xpumesh.sim.ctl``: inject a fault or a host loss on demand."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["fault", "repair", "host_down", "host_up", "list", "stats"]
    host_id: str | None = Field(default=None, pattern=TOKEN_PATTERN)
    device_index: int | None = Field(default=None, ge=0, description="Slot of the device (fault/repair).")

    @model_validator(mode="after")
    def _needs(self) -> SimControl:
        if self.action not in ("list", "stats") and self.host_id is None:
            raise ValueError(f"action {self.action!r} needs host_id")
        if self.action in ("fault", "repair") and self.device_index is None:
            raise ValueError(f"action {self.action!r} needs device_index")
        return self


class SimHostInfo(BaseModel):
    host_id: str
    site: str
    up: bool
    devices: int
    faulty: list[int] = Field(default_factory=list)


class SimControlReply(BaseModel):
    ok: bool
    detail: str = ""
    hosts: list[SimHostInfo] = Field(default_factory=list)
    stats: dict[str, float] = Field(default_factory=dict)
