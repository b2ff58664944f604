"""Soak: the whole mesh as processes under steady load, host losses and device faults, for a long time.

The five services, nats-server, PostgreSQL and ``--sims`` fleet simulators (``--hosts`` hosts in
all, split between them, ``--devices`` accelerators each) run as real processes, started by the
fault suite's launcher (``tests.faults.mesh.FaultMesh``, without its TCP proxies: no link is cut
here). The simulators lose hosts and fault devices at random (``--host-loss-per-hour`` per host,
back after ``--host-return-s``; ``--device-fault-per-hour`` per device, repaired after
``--device-repair-s``). Clients submit a workload every ``--submit-interval`` seconds and stop one
in four (``tests.faults.mesh.Load``); a webhook receiver and an SSE reader record every workload
event id. Every ``--sample-s`` seconds the soak samples each process's RSS (PostgreSQL: the
postmaster and its backends together), every JetStream consumer's lag (messages not yet delivered
plus delivered and unacknowledged) and the backlogs (outbox rows not yet published, webhook
deliveries pending, workloads queued), printing a line to stderr.

After ``--duration`` seconds the load stops, the mesh gets up to ``--settle-s`` to settle, and
ONE JSON line goes to stdout: RSS per process (first sample after the fleet is up, last, growth),
the worst and final consumer lag, the backlogs, ``loss`` (accepted workloads missing, or neither
terminal, placed/running nor queued with an explanation) and events committed to the scheduler's
outbox but not delivered to the webhook receiver or the SSE reader.

    python bench/soak.py                       # 2,000 hosts, 30 minutes
    python bench/soak.py --duration 600        # 10 minutes
    python bench/soak.py --hosts 200 --duration 120 --sample-s 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from libs.aio import cancel_all  # noqa: E402
from libs.bus import subjects  # noqa: E402
from libs.events import EventTypes  # noqa: E402
from tests.faults.checks import committed_events, unsent_events, unsettled  # noqa: E402
from tests.faults.mesh import ADMIN, QUEUED, EventLog, FaultMesh, Load  # noqa: E402
from tests.integration.test_api_kit import webhook_receiver  # noqa: E402

MIB = 1024 * 1024


@dataclass
class Sample:
    at: float
    rss_mib: dict[str, float]
    lag: dict[str, int]  # "stream/consumer" -> undelivered + unacknowledged
    backlog: dict[str, int]


@dataclass
class Soak:
    mesh: FaultMesh
    samples: list[Sample] = field(default_factory=list)

    def rss(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, proc in self.mesh.procs.items():
            if proc.popen is not None and proc.popen.poll() is None:
                with contextlib.suppress(psutil.Error):
                    out[name] = psutil.Process(proc.popen.pid).memory_info().rss / MIB
        if self.mesh.nats.proc is not None:
            with contextlib.suppress(psutil.Error):
                out["nats-server"] = psutil.Process(self.mesh.nats.proc.pid).memory_info().rss / MIB
        if self.mesh.pg.proc is not None:
            with contextlib.suppress(psutil.Error):
                pg = psutil.Process(self.mesh.pg.proc.pid)  # PSS: each backend's share of the shared buffers once
                total = pg.memory_full_info().pss
                for child in pg.children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        total += child.memory_full_info().pss
                out["postgres"] = total / MIB
        return out

    async def lag(self) -> dict[str, int]:
        js = self.mesh.bus.js
        out: dict[str, int] = {}
        for stream in await js.streams_info():
            name = stream.config.name or ""
            for c in await js.consumers_info(name):
                out[f"{name}/{c.name}"] = int(c.num_pending or 0) + int(c.num_ack_pending or 0)
        return out

    async def backlog(self) -> dict[str, int]:
        rows = await self.mesh.sql(
            "SELECT (SELECT count(*) FROM scheduler.outbox WHERE sent_at IS NULL) AS outbox_unsent, "
            "(SELECT count(*) FROM gateway.deliveries WHERE status = 'pending') AS webhook_pending, "
            "(SELECT count(*) FROM scheduler.workloads WHERE state = ANY($1)) AS workloads_queued",
            list(QUEUED))
        return {k: int(v) for k, v in dict(rows[0]).items()}

    async def sample(self) -> Sample:
        s = Sample(time.monotonic(), self.rss(), await self.lag(), await self.backlog())
        self.samples.append(s)
        return s


async def event_count(mesh: FaultMesh, event_type: str) -> int:
    info = await mesh.bus.js.stream_info("XPUMESH_EVENTS", subjects_filter=subjects.event_subject(event_type, "*"))
    return sum((info.state.subjects or {}).values()) if info.state else 0


async def settle(check: Any, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        wrong = await check()
        if not wrong or time.monotonic() > deadline:
            return wrong
        await asyncio.sleep(1.0)


def report(soak: Soak, load: Load, events: EventLog, args: argparse.Namespace, *, bad: dict[str, str],
           missing: tuple[set[str], set[str]], unsent: int, counts: dict[str, int], started: float) -> dict[str, Any]:
    first, last = soak.samples[0], soak.samples[-1]
    rss = {name: {"first_mib": round(first.rss_mib.get(name, 0.0), 1), "last_mib": round(v, 1),
                  "growth_mib": round(v - first.rss_mib.get(name, v), 1),
                  "max_mib": round(max(s.rss_mib.get(name, 0.0) for s in soak.samples), 1)}
           for name, v in sorted(last.rss_mib.items())}
    worst = max(((v, k, s.at) for s in soak.samples for k, v in s.lag.items()), default=(0, "", 0.0))
    return {
        "hosts": args.hosts, "sims": args.sims, "devices_per_host": args.devices,
        "duration_s": round(time.monotonic() - started, 1), "samples": len(soak.samples),
        "accepted": len(load.accepted), "stopped": len(load.stopped), "refused": dict(load.refused),
        "host_losses": counts["host_down"], "device_faults": counts["device_unhealthy"],
        "rss": rss,
        "lag": {"max": worst[0], "max_consumer": worst[1], "final_max": max(last.lag.values(), default=0),
                "final_total": sum(last.lag.values())},
        "backlog": {"max": {k: max(s.backlog[k] for s in soak.samples) for k in last.backlog},
                    "final": last.backlog},
        "loss": {"missing": sum(1 for v in bad.values() if v == "missing"),
                 "unsettled": sum(1 for v in bad.values() if v != "missing"),
                 "examples": dict(list(bad.items())[:5])},
        "events_not_delivered": {"webhook": len(missing[0]), "sse": len(missing[1]), "outbox_unsent": unsent},
        "duplicates": {"webhook": len(events.webhook) - len(set(events.webhook)),
                       "sse": len(events.sse) - len(set(events.sse))},
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="xpumesh-soak-"))
    env = {
        "XPUMESH_HEARTBEAT_INTERVAL_S": str(args.heartbeat_s),
        "XPUMESH_TELEMETRY_INTERVAL_S": str(args.telemetry_s),
        "XPUMESH_SIM__HOST_LOSS_PER_HOUR": str(args.host_loss_per_hour),
        "XPUMESH_SIM__HOST_RETURN_S": str(args.host_return_s),
        "XPUMESH_SIM__DEVICE_FAULT_PER_HOUR": str(args.device_fault_per_hour),
        "XPUMESH_SIM__DEVICE_REPAIR_S": str(args.device_repair_s),
        "XPUMESH_AGENT__STATE_INTERVAL_S": "10",
    }
    mesh = FaultMesh(workdir, env=env, proxied=False)
    soak = Soak(mesh)
    tasks: list[asyncio.Task[None]] = []
    try:
        await mesh.start_services()
        per = [args.hosts // args.sims + (1 if k < args.hosts % args.sims else 0) for k in range(args.sims)]
        for k, n in enumerate(per):
            (await mesh.add_sim(f"sim-{k}", n, args.devices, prefix=f"s{k}-", seed=100 + k)).start()
        deadline = time.monotonic() + args.startup_s
        while (up := await mesh.hosts_up()) < args.hosts * 0.98:
            if time.monotonic() > deadline:
                raise SystemExit(f"soak: only {up} of {args.hosts} hosts up after {args.startup_s:.0f} s; "
                                 f"see {workdir / 'logs'}")
            await asyncio.sleep(2)
        print(f"soak: {up} hosts up; logs in {workdir / 'logs'}", file=sys.stderr)
        async with webhook_receiver() as rx:
            async with httpx.AsyncClient(base_url=mesh.base_url, headers=ADMIN, timeout=10) as c:
                r = await c.post("/v1/subscriptions", json={"url": rx.url, "types": ["io.xpumesh.workload.*"]})
                r.raise_for_status()
            events = EventLog(rx.ids)
            load = Load(mesh.base_url, interval_s=args.submit_interval)
            tasks = [asyncio.create_task(load.run()), asyncio.create_task(events.read_sse(mesh.base_url))]
            started = time.monotonic()
            while time.monotonic() - started < args.duration:
                s = await soak.sample()
                top = max(s.lag.items(), key=lambda kv: kv[1], default=("-", 0))
                print(f"soak: {time.monotonic() - started:6.0f} s  accepted {len(load.accepted)}  "
                      f"rss {', '.join(f'{k} {v:.0f}' for k, v in sorted(s.rss_mib.items()))} MiB  "
                      f"lag max {top[1]} ({top[0]})  backlog {s.backlog}", file=sys.stderr)
                await asyncio.sleep(min(args.sample_s, max(0.0, args.duration - (time.monotonic() - started))))
            tasks[0].cancel()  # the load stops; the readers go on while the mesh settles
            with contextlib.suppress(asyncio.CancelledError):
                await tasks[0]
            bad = await settle(lambda: unsettled(mesh, load.accepted), args.settle_s)

            async def undelivered() -> tuple[set[str], set[str]] | None:
                want = await committed_events(mesh)
                m = (want - set(events.webhook), want - set(events.sse))
                return m if (m[0] or m[1] or await unsent_events(mesh)) else None

            gaps: tuple[set[str], set[str]] = await settle(undelivered, args.settle_s) or (set(), set())
            await soak.sample()
            counts = {"host_down": await event_count(mesh, EventTypes.HOST_DOWN),
                      "device_unhealthy": await event_count(mesh, EventTypes.DEVICE_UNHEALTHY)}
            return report(soak, load, events, args, bad=bad, missing=gaps, unsent=await unsent_events(mesh),
                          counts=counts, started=started)
    finally:
        await cancel_all(tasks)
        await mesh.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=1800.0, help="seconds of load (default 30 minutes)")
    p.add_argument("--hosts", type=int, default=2000)
    p.add_argument("--sims", type=int, default=2, help="simulator processes sharing the hosts")
    p.add_argument("--devices", type=int, default=4, help="accelerators per host")
    p.add_argument("--sample-s", type=float, default=30.0, help="seconds between samples")
    p.add_argument("--submit-interval", type=float, default=0.4, help="seconds between two submits")
    p.add_argument("--heartbeat-s", type=float, default=5.0)
    p.add_argument("--telemetry-s", type=float, default=10.0)
    p.add_argument("--host-loss-per-hour", type=float, default=0.1, help="chance per host per hour of going silent")
    p.add_argument("--host-return-s", type=float, default=60.0)
    p.add_argument("--device-fault-per-hour", type=float, default=0.05, help="chance per device per hour")
    p.add_argument("--device-repair-s", type=float, default=120.0)
    p.add_argument("--startup-s", type=float, default=300.0, help="how long the fleet may take to come up")
    p.add_argument("--settle-s", type=float, default=120.0, help="how long the mesh may take to settle at the end")
    p.add_argument("--workdir", default=None, help="where the mesh keeps its data and logs (default: a temp dir)")
    args = p.parse_args()
    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
    print(json.dumps(asyncio.run(run(args)), separators=(",", ":")))


if __name__ == "__main__":
    main()
