"""One simulated host: its reports, its load, its faults.

A ``SimHost`` is the simulator's counterpart of ``agent.main.Agent``: it builds the same
``CapabilityReport`` and telemetry and publishes them through the same ``HostPublisher``
(its telemetry as JSON written without a model per message, for speed), and it is the
``ExecutionHost`` of the work the scheduler sends it. The simulator drives it from one
loop; nothing here starts a task.
"""

from __future__ import annotations

import json
import math
import random
import zlib
from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any

from agent.main import next_generation
from agent.publisher import HostPublisher, utc_json
from agent.sim.fleet import HostSpec
from libs import __version__
from libs.bus.connection import Bus
from libs.schemas.commands import ActualStateReport
from libs.schemas.devices import Device, Health, device_id
from libs.schemas.hostevents import CapabilityReport, DeviceSample

CHINA_UTC_OFFSET_S = 8 * 3600


def diurnal(now: float, day_s: float) -> float:
    """Fleet-wide load factor in [0.15, 0.95]: low at 04:00, high mid-afternoon (China time)."""
    phase = ((now + CHINA_UTC_OFFSET_S * day_s / 86400.0) % day_s) / day_s
    return 0.55 + 0.4 * math.sin(2 * math.pi * (phase - 0.375))


class SimHost:
    """A simulated host."""

    def __init__(self, spec: HostSpec, bus: Bus, *, interval_s: float) -> None:
        self.spec = spec
        self.host_id = spec.host_id
        self.site = spec.site
        self.publisher = HostPublisher(bus, spec.host_id, spec.site, spec.facts.hostname, interval_s=interval_s)
        self.generation = 0
        self.up = True
        self.down_until: float | None = None  # monotonic; None with up=False: down until told otherwise
        self.faults: dict[int, float | None] = {}  # slot -> monotonic repair time (None: until repaired)
        self._rng = random.Random(zlib.crc32(spec.host_id.encode()))

    # -------------------------------------------------------------- reports
    def devices(self) -> list[Device]:
        if not self.faults:
            return self.spec.devices
        return [d.model_copy(update={"health": Health.UNHEALTHY}) if slot in self.faults else d
                for slot, d in enumerate(self.spec.devices)]

    def capability_report(self) -> CapabilityReport:
        self.generation = next_generation(self.generation)
        return CapabilityReport(host_id=self.host_id, site=self.site, generation=self.generation,
                                agent_version=f"{__version__}-sim", facts=self.spec.facts, devices=self.devices(),
                                labels=self.spec.labels)

    def device_ids(self) -> Collection[str]:
        return {device_id(self.host_id, d.vendor, d.index) for d in self.spec.devices}

    def telemetry_data(self, now: float, load: float) -> dict[str, Any]:
        """This interval's ``TelemetryReport`` as plain data: diurnal load, host bias, noise, faults."""
        rng = self._rng
        p = self.spec.profile
        base = min(1.0, load * self.spec.load_bias)
        samples: list[DeviceSample] = []
        for slot in range(len(self.spec.devices)):
            busy = max(0.0, min(1.0, base + rng.uniform(-0.15, 0.15)))
            if slot in self.faults:
                samples.append((slot, 0.0, 0, round(30 + rng.uniform(0, 3), 1), round(p.tdp_w * 0.1, 1), 0))
                continue
            util = round(busy * 100, 1)
            used = int(p.memory_mib * min(0.97, 0.05 + busy * 0.85))
            temp = round(32 + busy * 45 + rng.uniform(-2, 2), 1)
            power = round(p.tdp_w * (0.15 + 0.85 * busy), 1)
            samples.append((slot, util, used, temp, power, 1))
        mem_total = self.spec.facts.memory_mib
        return {"schema_version": 1, "host_id": self.host_id, "site": self.site,
                "ts": utc_json(datetime.fromtimestamp(now, UTC)),
                "cpu_pct": round(min(100.0, 5 + base * 60 + rng.uniform(0, 5)), 1),
                "mem_used_mib": int(mem_total * (0.1 + base * 0.5)), "mem_total_mib": mem_total, "devices": samples}

    def telemetry_json(self, now: float, load: float) -> bytes:
        """``telemetry_data`` as the JSON ``TelemetryReport.model_dump_json`` writes for the same values."""
        return json.dumps(self.telemetry_data(now, load), separators=(",", ":")).encode()

    async def send_telemetry(self, now: float, load: float) -> None:
        await self.publisher.telemetry_json(self.telemetry_json(now, load))

    async def report_state(self, report: ActualStateReport) -> None:
        """What runs here; nothing while the host is down (a lost host is silent)."""
        if self.up:
            await self.publisher.state(report)

    # -------------------------------------------------------------- faults and losses
    def fault(self, slot: int, until: float | None) -> bool:
        """Mark a device unhealthy; True when its health changed."""
        if slot >= len(self.spec.devices):
            raise IndexError(slot)
        changed = slot not in self.faults
        self.faults[slot] = until
        return changed

    def repair(self, slot: int) -> bool:
        return self.faults.pop(slot, -1.0) != -1.0

    def go_down(self, until: float | None) -> None:
        self.up, self.down_until = False, until

    def come_up(self) -> None:
        self.up, self.down_until = True, None
