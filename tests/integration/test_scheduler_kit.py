"""Helpers for scheduler, execution and workload-API tests (no tests here).

``TestHost`` is a host as the scheduler sees one: it publishes a capability report with
simulated devices (there are no accelerators here) and runs an ``Executor`` that executes
for real, through the process driver, on this machine.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

from agent.drivers import ProcessDriver, SimDriver
from agent.drivers.base import Driver
from agent.execution import HostExecution, start_execution
from agent.executor import Executor
from agent.publisher import HostPublisher
from libs.bus import subjects
from libs.bus.connection import Bus
from libs.config import AgentSettings, SchedulerSettings, Settings
from libs.events import CloudEvent
from libs.schemas.commands import ActualStateReport
from libs.schemas.devices import Device, HardwareType, Health, HostFacts, device_id
from libs.schemas.hostevents import CapabilityReport
from libs.schemas.scheduler import WorkloadRef, WorkloadState, WorkloadSubmit, WorkloadView
from tests.conftest import assert_eventually, stream_events

FAST = SchedulerSettings(batch_debounce_s=0.05, retry_interval_s=0.5, solver_time_limit_s=0.5, resend_after_s=0.5,
                         orphan_stop_interval_s=0.5, inventory_timeout_s=0.3)
FAST_AGENT = AgentSettings(state_interval_s=0.3, stop_grace_s=1.0)


def fast(settings: Settings, **overrides: Any) -> Settings:
    return settings.model_copy(update={"scheduler": FAST.model_copy(update=overrides), "agent": FAST_AGENT})


def gpu(index: int, *, vendor: str = "nvidia", model: str = "A100-SXM4-80GB", driver: str = "550.54.15",
        runtimes: dict[str, str] | None = None, memory_mib: int = 81920, hardware_type: str = "gpu",
        health: Health = Health.HEALTHY) -> Device:
    return Device(index=index, hardware_type=HardwareType(hardware_type), vendor=vendor, model=model,
                  memory_mib=memory_mib, driver_version=driver,
                  runtimes=runtimes if runtimes is not None else {"cuda": "12.4"}, health=health)


class TestHost:
    """A host with simulated devices whose executor runs real processes."""

    __test__ = False  # not a test class

    def __init__(self, bus: Bus, settings: Settings, host_id: str, devices: list[Device], root: Path, *,
                 site: str = "hangzhou", driver: str = "process", arch: str = "x86_64", cpus: int | None = None,
                 memory_gib: int | None = None) -> None:
        self.bus, self.settings, self.host_id, self.site, self.devices = bus, settings, host_id, site, devices
        self.arch, self.cpus, self.memory_gib = arch, cpus, memory_gib  # allocatable; None: not reported
        self.root = root / host_id
        self.driver = driver
        self.publisher = HostPublisher(bus, host_id, site, host_id, interval_s=settings.heartbeat_interval_s)
        self.generation = 0
        self.execution: HostExecution | None = None

    @property
    def executor(self) -> Executor:
        assert self.execution is not None
        return self.execution.executor

    def device_id(self, index: int, vendor: str = "nvidia") -> str:
        return device_id(self.host_id, vendor, index)

    def device_ids(self) -> Collection[str]:
        return {self.device_id(d.index, d.vendor) for d in self.devices}

    async def report_state(self, report: ActualStateReport) -> None:
        await self.publisher.state(report)

    async def publish_capability(self) -> None:
        self.generation += 1
        facts = HostFacts(hostname=self.host_id, arch=self.arch, os="Ubuntu 22.04.4 LTS", kernel="6.5.0",
                          cpu_model="Xeon", cpu_sockets=2, cpu_cores=32, cpu_threads=64, memory_mib=512 * 1024,
                          cpu_allocatable=self.cpus,
                          memory_allocatable_mib=None if self.memory_gib is None else self.memory_gib * 1024)
        await self.publisher.capability(CapabilityReport(host_id=self.host_id, site=self.site,
                                                         generation=self.generation, facts=facts,
                                                         devices=self.devices))

    async def start(self, *, commands: bool = True) -> TestHost:
        """Publish capability and start executing (``commands=False``: commands sent now are lost)."""
        await self.publish_capability()
        await self.publisher.heartbeat()
        drivers: dict[str, Driver] = {"process": ProcessDriver(poll_s=0.05), "sim": SimDriver()}
        self.execution = await start_execution(self.bus, self, drivers=drivers, settings=self.settings.agent,
                                               state_dir=self.root,
                                               default_driver="sim" if self.driver == "sim" else None, listen=commands)
        return self

    async def listen_for_commands(self) -> None:
        """Start taking commands after starting without them."""
        assert self.execution is not None
        await self.execution.listen()

    async def stop(self, *, kill: bool = True) -> None:
        if self.execution is not None:
            if kill:
                await self.executor.stop_all("test over")
            await self.execution.close()
            self.execution = None


async def submit(bus: Bus, spec: dict[str, Any], *, tenant: str | None = None, key: str | None = None) -> WorkloadView:
    return await bus.request(subjects.rpc_subject("scheduler", "workloads.submit"),
                             WorkloadSubmit.model_validate({"spec": spec, "tenant": tenant, "idempotency_key": key}),
                             WorkloadView)


async def get(bus: Bus, wid: str) -> WorkloadView:
    return await bus.request(subjects.rpc_subject("scheduler", "workloads.get"), WorkloadRef(id=wid), WorkloadView)


async def wait_state(bus: Bus, wid: str, *states: WorkloadState | str, timeout: float = 15.0) -> WorkloadView:
    wanted = {str(s) for s in states}

    async def check() -> WorkloadView | None:
        view = await get(bus, wid)
        return view if view.state.value in wanted else None

    try:
        return await assert_eventually(check, timeout=timeout, interval=0.1)
    except AssertionError:
        view = await get(bus, wid)
        raise AssertionError(f"{wid} is {view.state.value}, not {sorted(wanted)}; history: "
                             f"{[(h.replica, h.to_state, h.reason) for h in view.history]}; "
                             f"explanation: {view.explanation}") from None


async def workload_events(bus: Bus, wid: str | None = None) -> list[CloudEvent]:
    """Every workload event in the durable stream (optionally of one workload), in order."""
    return [e for _, e in await stream_events(bus, subjects.WORKLOAD_EVENTS_ALL) if wid is None or e.subject == wid]
