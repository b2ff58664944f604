"""``xpumesh agent``: the host agent. Discovers, reports, heartbeats, sends telemetry, drains.

One ``Agent`` is one host. It publishes a capability report at start and whenever what it
reports changes (a device appears or disappears, health flips, a driver is upgraded, a
label changes); discovery is re-run every ``agent.rediscover_interval_s``. The last report
goes out again every ``agent.capability_resend_s`` and after a reconnect to NATS (with a
state report), for any consumer that lost it. It heartbeats
every ``heartbeat_interval_s`` and sends one telemetry message per ``telemetry_interval_s``
with every device's readings and the host's CPU and memory (psutil).

Work runs through ``agent.execution``: the agent is its ``ExecutionHost`` (``agent.ports``),
giving it the host's devices and publishing what runs as ``io.xpumesh.host.state``; the
execution takes the launch/stop commands of ``xpumesh.agent.<site>.<host>.cmd`` and keeps
its runs under ``<data_dir>/agent/<host>``, so that a restarted agent adopts them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import signal
import time
from collections.abc import Collection
from datetime import UTC, datetime
from pathlib import Path

import psutil

from agent.discover import collect_readings, discover
from agent.execution import host_drivers, start_execution
from agent.facts import local_hostname
from agent.ports import Execution
from agent.probes.readings import DeviceReading
from agent.publisher import HostPublisher, Reconnects
from agent.shares import DeviceFacts, ShareMechanisms, device_facts
from libs import __version__
from libs.bus import subjects
from libs.bus.connection import Bus
from libs.config import Settings
from libs.periodic import Every
from libs.schemas.commands import ActualStateReport
from libs.schemas.devices import Device, Discovery, Health, device_id
from libs.schemas.hostevents import CapabilityReport, DeviceSample, TelemetryReport, host_id_for

log = logging.getLogger(__name__)
MIB = 1024 * 1024

def next_generation(previous: int) -> int:
    """Capability generations: milliseconds since the epoch, strictly increasing, so a restart never goes back."""
    return max(previous + 1, time.time_ns() // 1_000_000)


def fingerprint(d: Discovery) -> str:
    """What, if changed, needs a new capability report (not volatile facts such as CPU MHz)."""
    facts = d.host.model_dump(exclude={"cpu_mhz"})
    return json.dumps([facts, [x.model_dump(mode="json") for x in d.devices], d.labels], sort_keys=True)


def samples_for(devices: list[Device], readings: list[DeviceReading]) -> list[DeviceSample]:
    """One sample per device, by slot (its position in the capability report)."""
    by_key = {(r.vendor, r.index): r for r in readings}
    out: list[DeviceSample] = []
    for slot, d in enumerate(devices):
        r = by_key.get((d.vendor, d.index))
        health = r.health if r is not None and r.health != Health.UNKNOWN else d.health
        out.append((slot, float(r.utilization_pct or 0.0) if r else 0.0, int(r.memory_used_mib or 0) if r else 0,
                    float(r.temperature_c or 0.0) if r else 0.0, float(r.power_w or 0.0) if r else 0.0,
                    0 if health == Health.UNHEALTHY else 1))
    return out


class Agent:
    """The agent of this host."""

    def __init__(self, settings: Settings, bus: Bus, *, probe_dir: Path | None = None) -> None:
        self.settings = settings
        self.bus = bus
        self.probe_dir = probe_dir
        self.discovery: Discovery | None = None
        self.publisher: HostPublisher | None = None
        self.generation = 0
        self._published: str | None = None  # fingerprint of the last report JetStream acknowledged
        self._publishing = asyncio.Lock()

    @property
    def host_id(self) -> str:
        return self._pub().host_id

    @property
    def site(self) -> str:
        return self._pub().site

    def device_ids(self) -> Collection[str]:
        devices = self.discovery.devices if self.discovery is not None else []
        return {device_id(self.host_id, d.vendor, d.index) for d in devices}

    def share_facts(self) -> dict[str, DeviceFacts]:
        """What shares need of the devices discovered last (memory, MIG instances), by device id."""
        return device_facts(self.host_id, self.discovery.devices if self.discovery is not None else [])

    def _pub(self) -> HostPublisher:
        if self.publisher is None:
            raise RuntimeError("the agent has not discovered its host yet")
        return self.publisher

    async def discover(self) -> Discovery:
        a = self.settings.agent
        d = await discover(self.probe_dir, timeout_s=a.probe_timeout_s, reserved_cpus=a.reserved_cpus,
                           reserved_memory_mib=round(a.reserved_memory_gib * 1024))
        mechanisms = ShareMechanisms(mps_pipe_directory=a.mps_pipe_directory, hami_core_library=a.hami_core_library,
                                     ascend_vnpu=a.ascend_vnpu)
        d = d.model_copy(update={"host": d.host.model_copy(
            update={"share_enforcement": mechanisms.summary(d.devices)})})
        if a.cpu_allocation_ratio > 1 and d.host.cpu_allocatable:
            d = d.model_copy(update={"host": d.host.model_copy(
                update={"cpu_allocatable": math.floor(d.host.cpu_allocatable * a.cpu_allocation_ratio)})})
        if a.labels:
            d = d.model_copy(update={"labels": {**d.labels, **a.labels}})
        if self.publisher is None:
            self.publisher = HostPublisher(self.bus, host_id_for(d.host.hostname), self.settings.site, d.host.hostname,
                                           interval_s=self.settings.heartbeat_interval_s)
        self.discovery = d
        return d

    async def publish_capability_if_changed(self) -> bool:
        """Publish when what would be reported differs from what JetStream last acknowledged (one at a time:
        the loops that call this start together)."""
        async with self._publishing:
            return await self._publish_if_changed()

    async def _publish_if_changed(self) -> bool:
        d = self.discovery
        if d is None:
            return False
        fp = fingerprint(d)
        if fp == self._published:
            return False
        self.generation = next_generation(self.generation)
        report = CapabilityReport(host_id=self.host_id, site=self.site, generation=self.generation,
                                  agent_version=__version__, facts=d.host, devices=d.devices, labels=d.labels)
        await self._pub().capability(report)
        self._published = fp
        log.info("capability generation %d published (%d devices)", self.generation, len(d.devices))
        return True

    async def resend_capability(self) -> None:
        """The last acknowledged report again, or a new one when what would be reported changed meanwhile."""
        if not await self.publish_capability_if_changed():
            await self._pub().resend_capability()

    async def telemetry_once(self) -> None:
        d = self.discovery
        if d is None:
            return
        readings = await collect_readings(self.probe_dir, timeout_s=self.settings.agent.probe_timeout_s)
        samples = samples_for(d.devices, readings)
        flipped = [dev.model_copy(update={"health": Health.UNHEALTHY if s[5] == 0 else Health.HEALTHY})
                   if (s[5] == 0) != (dev.health == Health.UNHEALTHY) else dev
                   for dev, s in zip(d.devices, samples, strict=True)]
        if flipped != d.devices:  # health flipped: the capability report follows
            self.discovery = d.model_copy(update={"devices": flipped})
        mem = psutil.virtual_memory()
        report = TelemetryReport(host_id=self.host_id, site=self.site, ts=datetime.now(UTC),
                                 cpu_pct=min(100.0, max(0.0, psutil.cpu_percent(interval=None))),
                                 mem_used_mib=int((mem.total - mem.available) // MIB), mem_total_mib=int(mem.total // MIB),
                                 devices=samples)
        await self._pub().telemetry(report)

    async def report_state(self, report: ActualStateReport) -> None:
        await self._pub().state(report)

    # ------------------------------------------------------------------ loops
    async def _rediscover(self) -> None:
        await self.discover()
        await self.publish_capability_if_changed()

    async def run(self, stop: asyncio.Event) -> None:
        await self.discover()
        pub = self._pub()
        s = self.settings
        execution: Execution = await start_execution(self.bus, self, drivers=host_drivers(s.agent), settings=s.agent,
                                                     state_dir=s.data_dir / "agent" / pub.host_id,
                                                     share_facts=self.share_facts)
        reconnects = Reconnects(self.bus)

        async def heartbeat(_: object) -> None:
            await pub.heartbeat()
            if reconnects.happened():  # what was sent while the connection was down may be lost
                execution.report_soon()
                await self.resend_capability()

        loops = [Every("heartbeat", heartbeat, s.heartbeat_interval_s),
                 Every("discovery", lambda _: self._rediscover(), s.agent.rediscover_interval_s),
                 Every("telemetry", lambda _: self._telemetry(), s.telemetry_interval_s),
                 Every("capability", lambda _: self.resend_capability(), s.agent.capability_resend_s,
                       first_run="after")]
        tasks = [asyncio.create_task(loop.run("agent", self), name=loop.name) for loop in loops]
        log.info("agent for %s at %s running", pub.host_id, pub.site)
        await stop.wait()
        log.info("agent stopping")
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if s.agent.stop_replicas_on_exit:
            await execution.stop_all("the agent stopped")
        await execution.close()

    async def _telemetry(self) -> None:
        await self.telemetry_once()
        await self.publish_capability_if_changed()


def agent_bus(settings: Settings) -> Bus:
    """The agent's connection (not yet connected): its replies arrive under its own host's inbox
    prefix, the only one deploy/nats/nats.conf lets it subscribe to. The host id is the one
    discovery reports (``host_id_for`` of this hostname)."""
    host = host_id_for(local_hostname())
    return Bus(settings.bus, name=f"agent.{settings.site}",
               inbox_prefix=subjects.inbox_prefix("host", settings.site, host))


def run_agent(settings: Settings, *, probe_dir: str | Path | None) -> int:
    """Run the agent until SIGTERM/SIGINT; 2 for bad arguments, 1 when the bus is unreachable."""
    directory = Path(probe_dir) if probe_dir else None
    if directory is not None and not directory.is_dir():
        print(f"xpumesh agent: probe dir not found: {probe_dir}")
        return 2
    if not settings.nats_url:
        print("xpumesh agent: XPUMESH_NATS_URL is not set")
        return 2
    try:
        subjects.check_token(settings.site, "site")
    except ValueError as exc:
        print(f"xpumesh agent: XPUMESH_SITE: {exc}")
        return 2

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        bus = agent_bus(settings)
        try:
            await bus.connect(settings.nats_url or "")
        except Exception as exc:  # nats raises its own errors for unreachable servers
            print(f"xpumesh agent: cannot connect to NATS ({type(exc).__name__})")
            return 1
        lost = bus.lost or asyncio.Event()

        async def stop_when_lost() -> None:
            await lost.wait()
            stop.set()
        watcher = asyncio.create_task(stop_when_lost())
        try:
            await Agent(settings, bus, probe_dir=directory).run(stop)
        finally:
            watcher.cancel()
            await bus.close()  # drains: what was published is flushed before exit
        if lost.is_set():
            print(f"xpumesh agent: {bus.lost_reason()}; enroll this host again (`xpumesh agent enroll`)")
            return 1
        return 0

    return asyncio.run(main())
