"""Runs what the scheduler asks on this host, and says what actually runs.

``Executor`` takes launch/stop commands for *its own host only* (others are rejected and
counted), picks the variant matching the devices' vendor/type (else ``default``), runs it
through a driver (``sim`` on simulated hosts; else ``docker`` when the variant names an
image, ``process`` otherwise), watches it to its end and reports every replica's state
(``ActualStateReport``) on change and every ``state_interval_s``. Launches are idempotent
per (workload, replica, attempt); a newer attempt replaces an older one.

With a ``state_dir`` every run is written to ``executor.json``; a restarted agent reads it
back and adopts whatever still runs (the scheduler sees the same attempts running and keeps
them). ``agent.execution`` wires an executor to the bus for its host.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from pydantic import TypeAdapter, ValidationError

from agent.cpusets import CpuAllocator, host_numa, usable_cpus
from agent.drivers.base import Driver, LaunchError, LaunchPlan, RunHandle, ServicePort
from agent.services import PortBook, Readiness, base_url
from agent.shares import DeviceFacts, ShareMechanisms
from libs.bus.errors import NotFound
from libs.config import AgentSettings
from libs.events import CloudEvent, EventTypes
from libs.metrics import BUS_MESSAGES, BUS_REJECTED
from libs.schemas.commands import (
    ActualStateReport,
    AgentCommand,
    LaunchCommand,
    LogsReply,
    LogsRequest,
    ReplicaReport,
    ReplicaState,
    StopCommand,
)
from libs.schemas.devices import ShareEnforcement, format_cpu_list, parse_cpu_list
from libs.service import SeenIds

log = logging.getLogger(__name__)
Publish = Callable[[ActualStateReport], Awaitable[None]]
_COMMAND = TypeAdapter(AgentCommand)
STATE_FILE = "executor.json"


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Run:
    workload_id: str
    replica: int
    attempt: int
    driver: str
    device_ids: list[str]
    shares: list[float]
    state: ReplicaState = ReplicaState.STARTING
    handle: RunHandle | None = None
    exit_code: int | None = None
    message: str = ""
    started_at: datetime | None = None
    finished_at: datetime | None = None
    changed_at: datetime = field(default_factory=_now)
    stopping: bool = False
    task: asyncio.Task[None] | None = None
    # a service replica: its host port, base URL, readiness (None for a job) and probe
    port: int | None = None
    endpoint: str | None = None
    ready: bool | None = None
    simulated: bool = False
    readiness_path: str | None = None
    probe: Readiness | None = None

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.workload_id, self.replica, self.attempt)

    def report(self) -> ReplicaReport:
        return ReplicaReport(workload_id=self.workload_id, replica=self.replica, attempt=self.attempt, state=self.state,
                             driver=self.driver, device_ids=self.device_ids, shares=self.shares,
                             share_enforcement=self.handle.share_enforcement if self.handle else None,
                             exit_code=self.exit_code, message=self.message[:500], started_at=self.started_at,
                             finished_at=self.finished_at, changed_at=self.changed_at,
                             ready=self.ready if self.state.live else None,
                             endpoint=self.endpoint if self.state.live else None, simulated=self.simulated)

    def record(self) -> dict[str, Any]:
        return {"report": self.report().model_dump(mode="json"),
                "handle": self.handle.model_dump(mode="json") if self.handle else None,
                "service": {"port": self.port, "path": self.readiness_path, "endpoint": self.endpoint}
                if self.endpoint else None}


class Executor:
    def __init__(self, host_id: str, site: str, *, drivers: Mapping[str, Driver], settings: AgentSettings,
                 state_dir: Path | None = None, publish: Publish | None = None, default_driver: str | None = None,
                 known_devices: Callable[[], Collection[str]] | None = None, cpus: CpuAllocator | None = None,
                 share_facts: Callable[[], Mapping[str, DeviceFacts]] | None = None,
                 responder: str | None = None) -> None:
        self.host_id, self.site, self.drivers, self.settings = host_id, site, dict(drivers), settings
        self.state_dir = state_dir
        self._scratch = None if state_dir else Path(tempfile.mkdtemp(prefix=f"xpumesh-{host_id}-"))
        if self._scratch is not None:
            self._scratch.chmod(0o711)  # replicas under their own uids reach their own directories, list nothing
        self.publish, self.default_driver, self.known_devices = publish, default_driver, known_devices
        self.boot_id = uuid.uuid4().hex[:16]
        self.seq = 0
        self.runs: dict[tuple[str, int, int], Run] = {}
        self._seen = SeenIds(10_000)
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._reporter: asyncio.Task[None] | None = None
        self.cpus = cpus  # None: this host's, made at the first pin
        self.share_facts = share_facts
        self.shares = ShareMechanisms(mps_pipe_directory=settings.mps_pipe_directory,
                                      hami_core_library=settings.hami_core_library,
                                      ascend_vnpu=settings.ascend_vnpu)
        self.ports = PortBook(settings.service_address)
        self.responder = responder  # base URL of the simulator's responder (simulated service replicas)
        self._probe_client: httpx.AsyncClient | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    @property
    def root(self) -> Path:
        root = self.state_dir or self._scratch
        assert root is not None
        return root

    async def start(self) -> None:
        """Adopt what a previous agent left running, then report periodically and on change."""
        if self._reporter is not None:
            return
        await self._restore()
        self._reporter = asyncio.create_task(self._report_loop(), name=f"state:{self.host_id}")
        self._changed.set()

    async def close(self) -> None:
        """Stop watching (replicas keep running: a restarted agent adopts them)."""
        tasks = [t for t in [self._reporter, *(r.task for r in self.runs.values())] if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for run in self.runs.values():
            if run.probe is not None:
                await run.probe.stop()
        if self._probe_client is not None:
            await self._probe_client.aclose()
        self._save()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)

    async def stop_all(self, reason: str) -> None:
        """Stop every live replica (decommissioning the host)."""
        async with self._lock:
            for run in [r for r in self.runs.values() if r.state.live]:
                await self._stop_run(run, reason)
            self._save()
        self._changed.set()

    async def _restore(self) -> None:
        if self.state_dir is None:
            return
        try:
            data = json.loads((self.state_dir / STATE_FILE).read_text())
        except (OSError, ValueError):
            return
        for rec in data.get("runs", []):
            try:
                rep = ReplicaReport.model_validate(rec["report"])
                handle = RunHandle.model_validate(rec["handle"]) if rec.get("handle") else None
            except (ValidationError, KeyError, TypeError):
                continue
            run = Run(rep.workload_id, rep.replica, rep.attempt, rep.driver, rep.device_ids, rep.shares, rep.state,
                      handle, rep.exit_code, rep.message, rep.started_at, rep.finished_at, rep.changed_at,
                      simulated=rep.simulated)
            service = rec.get("service") or {}
            if isinstance(service, dict) and rep.state.live:
                run.port, run.readiness_path = service.get("port"), service.get("path")
                run.endpoint = service.get("endpoint")
                run.ready = rep.ready
            self.runs[run.key] = run
            driver = self.drivers.get(run.driver)
            if run.state.live and (handle is None or driver is None):
                self._finish(run, ReplicaState.FAILED, None, "lost across an agent restart")
            elif run.state.live and handle is not None:
                adopted = await driver.alive(handle)  # type: ignore[union-attr]
                log.info("%s %s/%d attempt %d after restart", "adopted" if adopted else "collecting",
                         run.workload_id, run.replica, run.attempt)
                run.state = ReplicaState.RUNNING
                if run.port is not None:
                    self.ports.claim(run.port)
                self._start_probe(run)
                run.task = asyncio.create_task(self._watch(run))

    def _save(self) -> None:
        if self.state_dir is None:
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_dir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps({"host_id": self.host_id, "runs": [r.record() for r in self.runs.values()]}))
        tmp.replace(self.state_dir / STATE_FILE)

    # -- commands --------------------------------------------------------------------------------
    def _count(self, outcome: str, reject: str | None = None) -> str:
        if reject is not None:
            BUS_REJECTED.labels("agent", "commands", reject).inc()
        BUS_MESSAGES.labels("agent", "commands", outcome).inc()
        return outcome

    async def handle_event(self, event: CloudEvent) -> str:
        """One command envelope; returns the outcome (also counted)."""
        if event.type not in (EventTypes.AGENT_LAUNCH, EventTypes.AGENT_STOP):
            return self._count("rejected", "unknown_command")
        try:
            cmd = _COMMAND.validate_python(event.data)
        except ValidationError:
            return self._count("rejected", "invalid_command")
        return await self.handle(cmd)

    async def handle(self, cmd: LaunchCommand | StopCommand) -> str:
        if cmd.host_id != self.host_id or cmd.site != self.site:
            log.warning("rejected a command for %s/%s on %s/%s", cmd.site, cmd.host_id, self.site, self.host_id)
            return self._count("rejected", "wrong_host")
        if cmd.expires_at < _now():
            return self._count("expired", "expired")
        if self._seen.seen(cmd.command_id):
            return self._count("duplicate")
        async with self._lock:
            outcome = await (self._launch(cmd) if isinstance(cmd, LaunchCommand) else self._stop(cmd))
        self._changed.set()
        return self._count(outcome)

    async def _launch(self, cmd: LaunchCommand) -> str:
        same = [r for r in self.runs.values() if (r.workload_id, r.replica) == (cmd.workload_id, cmd.replica)]
        if any(r.attempt > cmd.attempt for r in same):
            return "stale"
        if any(r.attempt == cmd.attempt for r in same):
            return "duplicate"
        for old in same:
            if old.state.live:
                await self._stop_run(old, f"replaced by attempt {cmd.attempt}")
        run = Run(cmd.workload_id, cmd.replica, cmd.attempt, "?", [d.id for d in cmd.devices],
                  [d.share for d in cmd.devices])
        self.runs[run.key] = run
        try:
            plan, driver = self._plan(cmd)
            run.driver = driver.name
            self._serve(run, plan, driver)
            self._save()
            handle = await driver.start(plan)
            run.handle = handle.model_copy(update={"cpus": format_cpu_list(plan.cpus) if plan.cpus else None,
                                                   "share_enforcement": plan.share.enforcement,
                                                   "mig_uuid": plan.share.mig_uuid})
        except LaunchError as exc:
            self._finish(run, ReplicaState.FAILED, None, str(exc))
            return "failed"
        except Exception as exc:
            log.exception("launch of %s/%d failed", cmd.workload_id, cmd.replica)
            self._finish(run, ReplicaState.FAILED, None, f"could not start ({type(exc).__name__})")
            return "failed"
        run.state, run.started_at, run.changed_at = ReplicaState.RUNNING, _now(), _now()
        if run.simulated:
            run.ready = True  # the simulator's responder answers for it at once
        self._start_probe(run)
        run.task = asyncio.create_task(self._watch(run))
        self._prune()
        self._save()
        return "launched"

    def _plan(self, cmd: LaunchCommand) -> tuple[LaunchPlan, Driver]:
        if self.known_devices is not None:
            known = self.known_devices()
            for d in cmd.devices:
                if d.id not in known:
                    raise LaunchError(f"device {d.id} is not on this host")
        first = cmd.devices[0] if cmd.devices else None
        variant = cmd.spec.variant_for(*cmd.spec.placed_on((first.vendor, str(first.hardware_type)) if first else None,
                                                           cmd.resources.alternative))
        if variant is None:
            raise LaunchError(f"no variant for {first.vendor if first else 'this host'}; "
                              f"the spec has {sorted(cmd.spec.variants)}")
        name = self.default_driver or ("docker" if variant.image else "process")
        driver = self.drivers.get(name)
        if driver is None:
            raise LaunchError(f"this host has no {name} driver")
        workdir = self.root / "runs" / f"{cmd.workload_id}-{cmd.replica}-{cmd.attempt}"
        if self.share_facts is not None:
            self.shares.facts = dict(self.share_facts())
        held = {r.handle.mig_uuid for r in self.runs.values() if r.state.live and r.handle and r.handle.mig_uuid}
        share = self.shares.handoff(cmd.devices, workdir, container=name == "docker", mig_busy=held)
        if share.enforcement is not None:
            log.info("%s/%d: its device share is %s", cmd.workload_id, cmd.replica,
                     "advisory only (this host has no mechanism that holds it to it)"
                     if share.enforcement == ShareEnforcement.ADVISORY else f"enforced by {share.enforcement}")
        service = None
        if cmd.spec.service is not None and driver.name != "sim":
            try:
                port = self.ports.allocate()
            except OSError as exc:
                raise LaunchError(f"no free port for the service: {exc}") from None
            inside = cmd.spec.service.port if driver.name == "docker" else port
            service = ServicePort(self.ports.address, port, inside)
        return LaunchPlan(cmd.workload_id, cmd.replica, cmd.attempt, cmd.replicas, self.host_id, self.site,
                          cmd.devices, variant, cmd.spec, workdir,
                          {"XPUMESH_PEERS": ",".join(cmd.peers)} if cmd.replicas > 1 else {},
                          cpus=self._pin(cmd), memory_mib=cmd.resources.memory_mib or None, share=share,
                          service=service), driver

    def _pin(self, cmd: LaunchCommand) -> tuple[int, ...]:
        """The CPUs for a replica (``agent.cpusets``): none when it holds none, when this host overcommits its CPUs
        (``agent.cpu_allocation_ratio``), or when it has fewer free."""
        want = cmd.resources.cpu
        if want <= 0 or self.settings.cpu_allocation_ratio > 1:  # overcommitted CPUs are shared, never pinned
            return ()
        if self.cpus is None:
            self.cpus = CpuAllocator(usable_cpus(self.settings.reserved_cpus), host_numa())
        busy = {c for r in self.runs.values() if r.state.live and r.handle is not None and r.handle.cpus
                for c in parse_cpu_list(r.handle.cpus)}
        picked = self.cpus.pick(want, busy, cmd.resources.numa_node)
        if picked is None:
            log.warning("%s/%d holds %d CPUs but this host has fewer free to pin (of %d): it runs unpinned",
                        cmd.workload_id, cmd.replica, want, len(self.cpus.cpus))
            return ()
        return tuple(picked)

    # -- service replicas ------------------------------------------------------------------------
    def _serve(self, run: Run, plan: LaunchPlan, driver: Driver) -> None:
        """Record where a service replica answers: its host port, or the simulator's responder."""
        svc = plan.spec.service
        if svc is None:
            return
        run.ready, run.readiness_path = False, svc.readiness_path
        if plan.service is not None:
            run.port = plan.service.host_port
            run.endpoint = base_url(plan.service.address, plan.service.host_port)
        elif driver.name == "sim":
            run.simulated = True
            if self.responder is not None:
                run.endpoint = f"{self.responder}/{self.host_id}/{run.workload_id}/{run.replica}/{run.attempt}"

    def _start_probe(self, run: Run) -> None:
        if run.endpoint is None or run.readiness_path is None or run.simulated or run.probe is not None:
            return
        if self._probe_client is None:
            self._probe_client = httpx.AsyncClient(trust_env=False, follow_redirects=False)

        def changed(ready: bool) -> None:
            if run.state.live:
                run.ready, run.changed_at = ready, _now()
                self._changed.set()

        run.probe = Readiness(self._probe_client, run.endpoint + run.readiness_path,
                              interval_s=self.settings.readiness_interval_s,
                              timeout_s=self.settings.readiness_timeout_s, changed=changed)
        run.probe.start()

    async def _stop(self, cmd: StopCommand) -> str:
        targets = [r for r in self.runs.values() if (r.workload_id, r.replica) == (cmd.workload_id, cmd.replica)
                   and (cmd.attempt is None or r.attempt == cmd.attempt) and r.state.live]
        for run in targets:
            await self._stop_run(run, cmd.reason or "stopped by the scheduler")
        self._save()
        return "stopped" if targets else "nothing_to_stop"

    async def _stop_run(self, run: Run, reason: str) -> None:
        run.stopping = True
        if run.probe is not None:  # out of rotation before it gets SIGTERM
            await run.probe.stop()
            run.probe = None
            if run.ready:
                run.ready = False
        driver = self.drivers.get(run.driver)
        if driver is not None and run.handle is not None:
            try:
                await driver.stop(run.handle, self.settings.stop_grace_s)
            except Exception:
                log.exception("stopping %s/%d failed", run.workload_id, run.replica)
        if run.task is not None and not run.task.done():
            run.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await run.task
        if run.state.live:
            self._finish(run, ReplicaState.STOPPED, run.exit_code, reason)

    async def _watch(self, run: Run) -> None:
        driver = self.drivers.get(run.driver)
        if driver is None or run.handle is None:
            return
        try:
            code, message = await driver.wait(run.handle)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("watching %s/%d failed", run.workload_id, run.replica)
            code, message = None, "the agent lost track of it"
        if run.stopping:
            self._finish(run, ReplicaState.STOPPED, code, "stopped")
        else:
            self._finish(run, ReplicaState.SUCCEEDED if code == 0 else ReplicaState.FAILED, code, message)
        self._save()
        self._changed.set()

    def _finish(self, run: Run, state: ReplicaState, code: int | None, message: str) -> None:
        run.state, run.exit_code, run.message = state, code, message
        run.finished_at = run.changed_at = _now()
        run.ready = False if run.ready is not None else None
        if run.probe is not None:
            if run.probe.task is not None:
                run.probe.task.cancel()
            run.probe = None
        self.ports.release(run.port)

    def _prune(self) -> None:
        done = sorted((r for r in self.runs.values() if not r.state.live), key=lambda r: r.changed_at)
        for run in done[: max(0, len(done) - self.settings.finished_keep)]:
            del self.runs[run.key]
            if run.handle is not None and run.handle.workdir:
                shutil.rmtree(run.handle.workdir, ignore_errors=True)

    # -- reports and logs ------------------------------------------------------------------------
    def report_soon(self) -> None:
        """Send a state report now rather than at the next interval (after a reconnect, say)."""
        self._changed.set()

    def report(self) -> ActualStateReport:
        self.seq += 1
        return ActualStateReport(host_id=self.host_id, site=self.site, boot_id=self.boot_id, seq=self.seq, ts=_now(),
                                 replicas=[r.report() for r in self.runs.values()])

    async def _report_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):  # asyncio.timeout, not wait_for: a cancel is never swallowed
                async with asyncio.timeout(self.settings.state_interval_s):
                    await self._changed.wait()
            await asyncio.sleep(0.02)  # coalesce bursts of changes into one report
            self._changed.clear()
            if self.publish is None:
                continue
            try:
                await self.publish(self.report())
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("state report of %s not sent: %s", self.host_id, type(exc).__name__)

    async def logs(self, req: LogsRequest) -> LogsReply:
        runs = [r for r in self.runs.values() if (r.workload_id, r.replica) == (req.workload_id, req.replica)]
        if not runs:
            raise NotFound(f"no replica {req.replica} of {req.workload_id} on {self.host_id}")
        run = max(runs, key=lambda r: r.attempt)
        driver = self.drivers.get(run.driver)
        text, more = ("", False)
        if driver is not None and run.handle is not None:
            text, more = await driver.logs(run.handle, req.tail_bytes)
        elif run.message:
            text = run.message
        return LogsReply(workload_id=run.workload_id, replica=run.replica, attempt=run.attempt, state=run.state,
                         exit_code=run.exit_code, text=text, truncated=more)
