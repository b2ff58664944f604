"""One simulated host: its reports, its load, its faults, and the seam for commands.

A ``SimHost`` is the simulator's counterpart of ``agent.main.Agent``: it builds the same
``CapabilityReport``/``TelemetryReport`` and publishes them through the same
``HostPublisher``. The simulator drives it from one loop; nothing here starts a task.
"""

from __future__ import annotations

import json
import math
import random
import uuid
import zlib
from datetime import UTC, datetime
from typing import Any

from agent.main import CommandHook, next_generation, publish_state
from agent.publisher import HostPublisher
from agent.sim.fleet import HostSpec
from libs import __version__
from libs.bus.connection import Bus
from libs.bus.subjects import host_subject
from libs.events import CloudEvent, EventTypes
from libs.schemas.commands import ActualStateReport
from libs.schemas.devices import Device, Health
from libs.schemas.hostevents import CapabilityReport, DeviceSample, TelemetryReport

CHINA_UTC_OFFSET_S = 8 * 3600


def diurnal(now: float, day_s: float) -> float:
    """Fleet-wide load factor in [0.15, 0.95]: low at 04:00, high mid-afternoon (China time)."""
    phase = ((now + CHINA_UTC_OFFSET_S * day_s / 86400.0) % day_s) / day_s
    return 0.55 + 0.4 * math.sin(2 * math.pi * (phase - 0.375))


_ID = "__xpumesh_id__"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DATA = {"__xpumesh_data__": 0}


class _Template:
    """An event serialized once, split where its id, time and (optionally) data go."""

    def __init__(self, event: CloudEvent) -> None:
        raw = event.model_copy(update={"id": _ID, "time": _EPOCH}).to_bytes()
        time_json = json.dumps(_EPOCH.isoformat().replace("+00:00", "Z")).encode()
        self.parts = raw.replace(b'"' + _ID.encode() + b'"', b"\x00").replace(time_json, b"\x01").replace(
            json.dumps(_DATA, separators=(",", ":")).encode(), b"\x02")
        if self.parts.count(b"\x00") != 1 or self.parts.count(b"\x01") != 1:
            raise ValueError("event template: id or time not found once")

    def fill(self, data: bytes | None) -> tuple[bytes, str]:
        event_id = str(uuid.uuid4())
        out = self.parts.replace(b"\x00", b'"' + event_id.encode() + b'"', 1).replace(
            b"\x01", b'"' + datetime.now(UTC).isoformat().encode() + b'"', 1)
        if data is not None:
            out = out.replace(b"\x02", data, 1)
        return out, event_id


class SimHost:
    """A simulated host. ``running`` and ``on_command`` are the seam for launch/stop handling."""

    def __init__(self, spec: HostSpec, bus: Bus, *, interval_s: float) -> None:
        self.spec = spec
        self.host_id = spec.host_id
        self.site = spec.site
        self.publisher = HostPublisher(bus, spec.host_id, spec.site, spec.facts.hostname, interval_s=interval_s)
        self.generation = 0
        self.up = True
        self.down_until: float | None = None  # monotonic; None with up=False: down until told otherwise
        self.faults: dict[int, float | None] = {}  # slot -> monotonic repair time (None: until repaired)
        self.on_command: CommandHook | None = None
        self.running: dict[str, Any] = {}  # work id -> whatever the launch handler keeps
        self._rng = random.Random(zlib.crc32(spec.host_id.encode()))
        self._subjects = (host_subject(self.site, self.host_id, "heartbeat"),
                          host_subject(self.site, self.host_id, "telemetry"))
        self._heartbeat: _Template | None = None
        self._telemetry: _Template | None = None

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
                "ts": datetime.fromtimestamp(now, UTC).isoformat(),
                "cpu_pct": round(min(100.0, 5 + base * 60 + rng.uniform(0, 5)), 1),
                "mem_used_mib": int(mem_total * (0.1 + base * 0.5)), "mem_total_mib": mem_total, "devices": samples}

    def telemetry_report(self, now: float, load: float) -> TelemetryReport:
        return TelemetryReport.model_validate(self.telemetry_data(now, load))

    # -------------------------------------------------------------- the hot path
    async def send_heartbeat(self) -> None:
        """What ``HostPublisher.heartbeat`` sends, from a template: only the id and time change."""
        if self._heartbeat is None:
            self._heartbeat = _Template(self.publisher.heartbeat_event())
        payload, _ = self._heartbeat.fill(None)
        await self.publisher.bus.publish(self._subjects[0], payload)

    async def send_telemetry(self, now: float, load: float) -> None:
        """What ``HostPublisher.telemetry`` sends, without building pydantic models per interval."""
        if self._telemetry is None:
            self._telemetry = _Template(CloudEvent(id=_ID, source=self.publisher.source, type=EventTypes.HOST_TELEMETRY,
                                                   time=_EPOCH, subject=self.host_id, data=_DATA))
        data = json.dumps(self.telemetry_data(now, load), separators=(",", ":")).encode()
        payload, event_id = self._telemetry.fill(data)
        await self.publisher.bus.publish(self._subjects[1], payload, msg_id=event_id)

    async def report_state(self, report: ActualStateReport) -> None:
        await publish_state(self.publisher, report)

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

    def due_repairs(self, now_mono: float) -> list[int]:
        return [slot for slot, until in self.faults.items() if until is not None and until <= now_mono]

    def go_down(self, until: float | None) -> None:
        self.up, self.down_until = False, until

    def come_up(self) -> None:
        self.up, self.down_until = True, None
