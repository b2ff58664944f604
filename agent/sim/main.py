"""``xpumesh sim``: a whole fleet of simulated hosts in one process.

Every host publishes exactly what a real agent publishes, through the same
``HostPublisher``. One scheduler loop ticks every ``TICK_S`` and serves the slice of hosts
due in that tick, so heartbeats and telemetry are spread evenly over their intervals and
10,000 hosts need no task per host. Capability reports (JetStream, acknowledged) go
through one pump that publishes them concurrently in batches.

Faults: random device faults and host losses at the configured rates, and on demand
through ``xpumesh.sim.ctl`` (``SimControl``: fault, repair, host_down, host_up, list, stats).
Each host's last capability report goes out again every ``agent.capability_resend_s`` (spread
over the interval) and, for every host, after a reconnect to NATS, as a real agent's does.
Commands to hosts (``xpumesh.agent.<site>.<host>.cmd``) arrive by one subscription for the
whole fleet and go through the same ``agent.execution`` path as a real agent's; a host gets
its execution (sim driver: replicas that run for a while) on its first command, so hosts
that never get work cost nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import logging
import math
import random
import signal
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from nats.aio.msg import Msg
from pydantic import ValidationError

from agent.drivers.sim import SimDriver
from agent.execution import HostExecution, start_execution
from agent.ports import Execution
from agent.publisher import Reconnects
from agent.services import base_url
from agent.sim.fleet import build_fleet
from agent.sim.host import SimHost, diurnal
from agent.sim.responder import Responder
from libs.aio import wait_event
from libs.bus import subjects
from libs.bus.connection import Bus
from libs.config import Settings
from libs.embedded import free_port
from libs.httpserve import HttpServer
from libs.schemas.commands import ActualStateReport
from libs.schemas.sim import SimControl, SimControlReply, SimHostInfo

log = logging.getLogger(__name__)
TICK_S = 0.1
CAPABILITY_BATCH = 256


@dataclass
class SimStats:
    heartbeats: int = 0
    telemetry: int = 0
    capabilities: int = 0
    capability_failures: int = 0
    faults: int = 0
    losses: int = 0
    ticks: int = 0
    late_ticks: int = 0
    skipped_ticks: int = 0
    max_lag_s: float = 0.0
    started: float = field(default_factory=time.monotonic)

    def as_dict(self) -> dict[str, float]:
        out = {k: float(v) for k, v in self.__dict__.items() if k != "started"}
        out["uptime_s"] = round(time.monotonic() - self.started, 1)
        return out


def _poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    if lam > 30:  # normal approximation; exactness does not matter here
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    k, p, limit = 0, 1.0, math.exp(-lam)
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


class Simulator:
    def __init__(self, settings: Settings, bus: Bus, hosts: list[SimHost], *, seed: int = 7) -> None:
        self.settings = settings
        self.bus = bus
        self.hosts = hosts
        self.by_id = {h.host_id: h for h in hosts}
        self.rng = random.Random(seed)
        self.stats = SimStats()
        self.executions: dict[str, Execution] = {}  # host id -> its execution, from its first command
        self._pending: dict[str, bool] = {}  # hosts whose capability must go out, in order: True a new report,
        # False the last one again (``HostPublisher.resend_capability``)
        self._wake = asyncio.Event()
        self._timers: list[tuple[float, int, str, str, int]] = []  # (due, seq, action, host, slot)
        self._seq = 0
        self._unreported = {h.host_id for h in hosts}  # hosts that have not yet said what they run since this start
        self._boot_id = uuid.uuid4().hex[:16]
        self.device_count = sum(len(h.spec.devices) for h in hosts)
        self.responder_url: str | None = None  # base URL of the responder for simulated service replicas
        self._responder: asyncio.Task[None] | None = None

    # -------------------------------------------------------------- capability pump
    def want_capability(self, host: SimHost) -> None:
        self._pending[host.host_id] = True
        self._wake.set()

    def want_resend(self, host: SimHost) -> None:
        self._pending.setdefault(host.host_id, False)
        self._wake.set()

    async def _publish_capability(self, host: SimHost, fresh: bool) -> None:
        timeout = self.settings.sim.publish_timeout_s
        if fresh or not await asyncio.wait_for(host.publisher.resend_capability(), timeout=timeout):
            await asyncio.wait_for(host.publisher.capability(host.capability_report()), timeout=timeout)

    async def capability_pump(self) -> None:
        while True:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
            batch = [(self.by_id[h], self._pending.pop(h)) for h in list(self._pending)[:CAPABILITY_BATCH]]
            up = [(h, fresh) for h, fresh in batch if h.up]
            results = await asyncio.gather(*(self._publish_capability(h, fresh) for h, fresh in up),
                                           return_exceptions=True)
            failed = [(h, fresh) for (h, fresh), r in zip(up, results, strict=True) if isinstance(r, BaseException)]
            self.stats.capabilities += len(results) - len(failed)
            if failed:
                self.stats.capability_failures += len(failed)
                for h, fresh in failed:
                    self._pending[h.host_id] = fresh or self._pending.get(h.host_id, False)
                await asyncio.sleep(0.5)

    async def _report_nothing(self, h: SimHost) -> None:
        """A host's first state report of this start, with its first heartbeat, when it has no work yet: what
        the scheduler last heard of it (from a killed simulator) ran before, and would hold its devices until a
        report said otherwise; a host without work sends no other."""
        self._unreported.discard(h.host_id)
        if h.host_id not in self.executions:
            await h.report_state(ActualStateReport(host_id=h.host_id, site=h.site, boot_id=self._boot_id, seq=0,
                                                   ts=datetime.now(UTC), replicas=[]))

    def resend_all(self) -> None:
        """Every host's last capability again and a state report from every host with work."""
        for h in self.hosts:
            self.want_resend(h)
        for execution in self.executions.values():
            execution.report_soon()

    # -------------------------------------------------------------- faults
    def _timer(self, due: float, action: str, host: SimHost, slot: int = -1) -> None:
        self._seq += 1
        heapq.heappush(self._timers, (due, self._seq, action, host.host_id, slot))

    async def fault(self, host: SimHost, slot: int, until: float | None) -> None:
        if host.fault(slot, until):
            self.stats.faults += 1
            self.want_capability(host)
            if host.up:  # telemetry says so at once, not at the host's next turn
                await host.send_telemetry(time.time(), self._load())
        if until is not None:
            self._timer(until, "repair", host, slot)

    async def repair(self, host: SimHost, slot: int) -> None:
        if host.repair(slot):
            self.want_capability(host)
            if host.up:
                await host.send_telemetry(time.time(), self._load())

    def host_down(self, host: SimHost, until: float | None) -> None:
        if host.up:
            self.stats.losses += 1
        host.go_down(until)
        if until is not None:
            self._timer(until, "host_up", host)

    async def host_up(self, host: SimHost) -> None:
        if not host.up:
            host.come_up()
            await host.publisher.heartbeat()
            self.want_capability(host)  # a host that comes back re-registers, like a restarted agent

    async def _random_events(self, now_mono: float) -> None:
        sim = self.settings.sim
        for _ in range(_poisson(self.rng, self.device_count * sim.device_fault_per_hour / 3600 * TICK_S)):
            host = self.rng.choice(self.hosts)
            if host.spec.devices:
                await self.fault(host, self.rng.randrange(len(host.spec.devices)), now_mono + sim.device_repair_s)
        for _ in range(_poisson(self.rng, len(self.hosts) * sim.host_loss_per_hour / 3600 * TICK_S)):
            self.host_down(self.rng.choice(self.hosts), now_mono + sim.host_return_s)
        while self._timers and self._timers[0][0] <= now_mono:
            _, _, action, host_id, slot = heapq.heappop(self._timers)
            host = self.by_id[host_id]
            if action == "repair" and host.faults.get(slot, -1.0) is not None:
                await self.repair(host, slot)
            elif action == "host_up" and host.down_until is not None:
                await self.host_up(host)

    def _load(self) -> float:
        return diurnal(time.time(), self.settings.sim.day_s)

    # -------------------------------------------------------------- the loop
    async def run(self, stop: asyncio.Event) -> None:
        for h in self.hosts:
            self.want_capability(h)
        pump = asyncio.create_task(self.capability_pump(), name="sim-capability")
        hb_slices = max(1, round(self.settings.heartbeat_interval_s / TICK_S))
        tm_slices = max(1, round(self.settings.telemetry_interval_s / TICK_S))
        cap_slices = max(1, round(self.settings.agent.capability_resend_s / TICK_S))
        hb_groups = [self.hosts[i::hb_slices] for i in range(hb_slices)]
        tm_groups = [self.hosts[i::tm_slices] for i in range(tm_slices)]
        cap_groups = [self.hosts[i::cap_slices] for i in range(cap_slices)]  # empty slices when there are few hosts
        reconnects = Reconnects(self.bus)
        loop = asyncio.get_running_loop()
        start = loop.time()
        tick = 0
        try:
            while not stop.is_set():
                now, now_mono = time.time(), time.monotonic()
                load = self._load()
                for h in hb_groups[tick % hb_slices]:
                    if h.up:
                        await h.publisher.heartbeat()
                        self.stats.heartbeats += 1
                        if h.host_id in self._unreported:
                            await self._report_nothing(h)
                for h in tm_groups[tick % tm_slices]:
                    if h.up:
                        await h.send_telemetry(now, load)
                        self.stats.telemetry += 1
                for h in cap_groups[tick % cap_slices]:
                    self.want_resend(h)
                if reconnects.happened():  # what went out while the connection was down may be lost
                    self.resend_all()
                await self._random_events(now_mono)
                tick += 1
                self.stats.ticks = tick
                delay = start + tick * TICK_S - loop.time()
                if delay < 0:
                    self.stats.late_ticks += 1
                    self.stats.max_lag_s = max(self.stats.max_lag_s, -delay)
                if delay < -TICK_S * tm_slices:
                    # More than a whole interval behind (the machine is starved): drop the missed ticks
                    # instead of bursting, so the fleet never sends faster than its configured rate.
                    missed = int(-delay / TICK_S)
                    start += missed * TICK_S
                    self.stats.skipped_ticks += missed
                    delay = 0.0
                await wait_event(stop, delay)
        finally:
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)

    # -------------------------------------------------------------- control and commands
    async def control(self, req: SimControl) -> SimControlReply:
        if req.action == "stats":
            return SimControlReply(ok=True, stats=self.stats.as_dict())
        if req.action == "list":
            return SimControlReply(ok=True, hosts=[self.info(h) for h in self.hosts])
        host = self.by_id.get(req.host_id or "")
        if host is None:
            return SimControlReply(ok=False, detail=f"no simulated host {req.host_id!r}")
        if req.action in ("fault", "repair"):
            slot = req.device_index or 0
            if slot >= len(host.spec.devices):
                return SimControlReply(ok=False, detail=f"{host.host_id} has {len(host.spec.devices)} devices")
            await (self.fault(host, slot, None) if req.action == "fault" else self.repair(host, slot))
        elif req.action == "host_down":
            self.host_down(host, None)
        else:
            await self.host_up(host)
        return SimControlReply(ok=True, hosts=[self.info(host)])

    @staticmethod
    def info(h: SimHost) -> SimHostInfo:
        return SimHostInfo(host_id=h.host_id, site=h.site, up=h.up, devices=len(h.spec.devices),
                           faulty=sorted(h.faults))

    async def _on_ctl(self, msg: Msg) -> None:
        try:
            reply = await self.control(SimControl.model_validate_json(msg.data))
        except ValidationError as exc:
            first = exc.errors()[0]
            reply = SimControlReply(ok=False, detail=f"invalid request: {'.'.join(map(str, first['loc']))}: {first['msg']}")
        if msg.reply:
            await self.bus.nc.publish(msg.reply, reply.model_dump_json().encode())

    async def _on_command(self, msg: Msg) -> None:
        parts = msg.subject.split(".")
        host = self.by_id.get(parts[3]) if len(parts) == 5 else None
        if host is None or not host.up:  # a lost host hears nothing either: its work runs on, unaware
            return
        execution = self.executions.get(host.host_id)
        if execution is None:
            execution = self.executions[host.host_id] = await start_execution(
                self.bus, host, drivers={"sim": SimDriver()}, settings=self.settings.agent, default_driver="sim",
                listen=False, responder=self.responder_url)
        await execution.command(msg.data)

    async def subscribe(self) -> None:
        await self.bus.nc.subscribe(subjects.SIM_CONTROL, cb=self._on_ctl)
        await self.bus.nc.subscribe(subjects.AGENT_COMMAND_ALL, cb=self._on_command)
        await self.bus.nc.flush()

    def replica_live(self, host_id: str, workload_id: str, replica: int, attempt: int) -> bool:
        """Whether a simulated replica runs now (on a host that is up): the responder answers only for those."""
        host, execution = self.by_id.get(host_id), self.executions.get(host_id)
        if host is None or not host.up or not isinstance(execution, HostExecution):
            return False
        run = execution.executor.runs.get((workload_id, replica, attempt))
        return run is not None and run.state.live

    async def serve_responder(self) -> HttpServer:
        s = self.settings.sim
        port = s.responder_port or free_port(s.responder_host)
        server = HttpServer(Responder(self.replica_live), host=s.responder_host, port=port,
                            drain_timeout_s=self.settings.bus.drain_timeout_s)
        self._responder = asyncio.create_task(server.run(), name="sim-responder")
        self.responder_url = base_url(s.responder_host, port)
        log.info("simulated service replicas answer at %s", self.responder_url)
        return server

    async def close(self) -> None:
        """Stop every host's execution (its replicas are simulated: they end with the simulator)."""
        for execution in self.executions.values():
            await execution.close()
        self.executions.clear()


async def simulate(settings: Settings, hosts: int | None, seed: int, stop: asyncio.Event, *,
                   devices_per_host: int | None = None, ready: asyncio.Event | None = None,
                   prefix: str = "", sites: Sequence[str] = ()) -> Simulator:
    if not settings.nats_url:
        raise RuntimeError("XPUMESH_NATS_URL is not set")
    specs = await asyncio.to_thread(build_fleet, hosts, seed, devices_per_host, prefix, sites)
    bus = Bus(settings.bus, name="sim", inbox_prefix=subjects.inbox_prefix("sim"))
    await bus.connect(settings.nats_url)
    await bus.wait_for_streams()  # the services create them; the simulator may not
    sim = Simulator(settings, bus, [SimHost(s, bus, interval_s=settings.heartbeat_interval_s) for s in specs],
                    seed=seed)
    responder = await sim.serve_responder()
    await sim.subscribe()
    log.info("simulating %d hosts with %d devices over %d sites", len(sim.hosts), sim.device_count,
             len({h.site for h in sim.hosts}))
    if ready is not None:
        ready.set()
    try:
        await sim.run(stop)
    finally:
        await sim.close()
        await responder.stop(settings.bus.drain_timeout_s)
        await bus.close()
    return sim


def run_sim(settings: Settings, *, hosts: int | None, seed: int, devices_per_host: int | None = None,
            prefix: str = "", sites: Sequence[str] = ()) -> int:
    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await simulate(settings, hosts, seed, stop, devices_per_host=devices_per_host, prefix=prefix,
                           sites=sites)
        except Exception as exc:  # one clear line for the supervisor's log
            print(f"xpumesh sim: {type(exc).__name__}: {str(exc)[:200]}", file=sys.stderr)
            return 1
        return 0

    return asyncio.run(main())


def main(argv: list[str] | None = None) -> int:
    """``python -m agent.sim.main``: the simulator with options the CLI does not expose (benchmarks)."""
    from libs.logging import setup_logging

    p = argparse.ArgumentParser(prog="python -m agent.sim.main")
    p.add_argument("--hosts", type=int, default=None)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--devices-per-host", type=int, default=None, help="give every host this many accelerators")
    p.add_argument("--host-prefix", default="", help="start every host id with this (several simulators, one mesh)")
    p.add_argument("--sites", default="", help="comma-separated demo sites to put the hosts on (default: all)")
    args = p.parse_args(argv)
    settings = Settings()
    setup_logging(settings.log_level, json_lines=settings.log_json)
    return run_sim(settings, hosts=args.hosts, seed=args.seed, devices_per_host=args.devices_per_host,
                   prefix=args.host_prefix, sites=[x for x in args.sites.split(",") if x])


if __name__ == "__main__":
    raise SystemExit(main())
