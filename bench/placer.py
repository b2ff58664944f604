"""End-to-end placement benchmark: the real scheduler service, from batch submit to every workload placed.

    python bench/placer.py [--hosts 1000,10000] [--workloads 10000] [--batch-size 500] [--clients 4]
                           [--profile FILE]

Per fleet size: a fresh embedded NATS and PostgreSQL, ``prestart``, then the fleet written to
``scheduler.hosts`` as a restarted scheduler finds it (``--hosts`` simulated hosts from the
simulator's own fleet builder, ``agent.sim.fleet.build_fleet``, ``--devices`` accelerators each,
every host up; no agent answers, so placed work stays placed and nothing else competes for the
scheduler), and the scheduler service itself (``services.scheduler.api.app`` under
``libs.service.serve``, its own settings unless overridden) in this process. ``--clients``
tasks then send ``--workloads`` workloads through the scheduler's batch RPC
(``workloads.submit_batch``, ``--batch-size`` per request, one-device and shared-device work
over the fleet's accelerator types) while the placer places them.

Figures, per fleet size:

* placements/s end to end: replicas placed (committed by the placer) / seconds from the first
  submit to the commit that placed the last one; accepted/s: workloads / seconds to the last
  accepted batch;
* the placer's own per-phase seconds summed over its rounds (``placer.PlacerStats``): queue (the
  queued workloads read), held (the active replicas read: what holds devices), snapshot (allocations over the fleet's snapshot), solve
  (``place_alternatives``: feasibility, candidates, CP-SAT or greedy), apply (the decision's
  writes and the commit); their sum is the placer's busy time, the rest of the wall time it
  waited for work (debounce, submits);
* the solver's own timings summed over its decisions (``scheduler.decisions.timings``: feasibility,
  greedy, solve (CP-SAT), select, preempt, explain);
* a check: the replicas the database holds as placed equal the placer's count, and no device
  share is over-committed.

The scheduler, the submitters and the event loop they share run in one process (the submits are
NATS requests and cost the client little). Prints a table, then ONE JSON object on its last line.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from sqlalchemy import func, select

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.sim.fleet import build_fleet
from libs.bus import subjects
from libs.bus.connection import Bus
from libs.config import SchedulerSettings, Settings
from libs.db import make_engine, make_sessionmaker, session_scope
from libs.embedded import EmbeddedNats, EmbeddedPostgres
from libs.schemas.hostevents import CapabilityReport
from libs.schemas.scheduler import WorkloadBatchResult, WorkloadBatchSubmit
from libs.schemas.workload import WorkloadSpec
from libs.service import serve
from services.scheduler import store
from services.scheduler.api import app
from services.scheduler.fleet import HostView
from services.scheduler.orm import decisions, replicas
from services.scheduler.placer import PHASES
from services.scheduler.state import SchedulerState
from xpumesh.prestart import prestart


def fleet_views(n_hosts: int, devices: int, now: datetime) -> tuple[list[HostView], list[str]]:
    """The simulator's fleet as the scheduler's view of it (every host up), and the accelerator type of each of
    its devices."""
    views: list[HostView] = []
    types: list[str] = []
    for h in build_fleet(n_hosts, devices_per_host=devices):
        report = CapabilityReport(host_id=h.host_id, site=h.site, generation=1, facts=h.facts, devices=h.devices,
                                  labels=h.labels)
        views.append(HostView(h.host_id, h.site, 1, report, now, up=True, liveness_at=now))
        types.extend(str(d.hardware_type) for d in h.devices)
    return views, types


def workload(i: int, types: list[str]) -> WorkloadSpec:
    """One device (every fourth a half share of one) of a type picked as the fleet's devices are spread over
    types, so that a trace of half the fleet's devices fits every type."""
    hw: dict[str, Any] = {"type": types[(i * 7919) % len(types)]}
    if i % 4 == 3:
        hw["share"] = 0.5
    return WorkloadSpec.model_validate({"name": f"bench-{i}", "hardware": hw, "duration_s": 3600.0})


async def _until(check: Callable[[], Awaitable[bool] | bool], timeout_s: float, what: str, every: float = 0.01) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if not isinstance(value, bool):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout_s:.0f}s")
        await asyncio.sleep(every)


async def one_fleet(args: argparse.Namespace, n_hosts: int, workdir: Path) -> dict[str, Any]:
    nats = EmbeddedNats(workdir).start()
    pg = EmbeddedPostgres(workdir).start()
    sched = SchedulerSettings()
    overrides = {k: v for k, v in (("batch_max", args.batch_max), ("solver_time_limit_s", args.time_limit),
                                   ("max_candidates", args.candidates)) if v is not None}
    sched = sched.model_copy(update=overrides)
    settings = Settings(nats_url=nats.url, database_url=SecretStr(pg.dsn), data_dir=workdir, scheduler=sched)
    stop = asyncio.Event()
    task: asyncio.Task[None] | None = None
    engine = make_engine(pg.dsn, settings.db, application_name="bench-placer")
    out: dict[str, Any] = {"hosts": n_hosts, "devices": n_hosts * args.devices, "workloads": args.workloads,
                           "batch_size": args.batch_size, "clients": args.clients,
                           "batch_max": sched.batch_max, "solver_time_limit_s": sched.solver_time_limit_s,
                           "max_candidates": sched.max_candidates}
    try:
        await prestart(settings)
        sessions = make_sessionmaker(engine)
        views, types = fleet_views(n_hosts, args.devices, datetime.now(UTC))
        out["types"] = {t: types.count(t) for t in sorted(set(types))}
        if args.workloads > len(types) // 2:
            raise SystemExit(f"{args.workloads} workloads on {len(types)} devices: at most half the fleet's devices, "
                             "so that all of them fit")
        for i in range(0, len(views), 500):
            async with session_scope(sessions) as session:
                await store.update_hosts(session, views[i:i + 500])
        states: list[SchedulerState] = []
        loader = app.state_loader
        assert loader is not None

        async def capture(ctx: Any) -> SchedulerState:
            state: SchedulerState = await loader(ctx)
            states.append(state)
            return state

        app.state_loader = capture
        ready = asyncio.Event()
        try:
            task = asyncio.create_task(serve(app, settings, ready=ready, stop=stop))
            await _until(lambda: ready.is_set() or task.done(), 120, "scheduler ready", every=0.05)
            if task.done():
                task.result()
        finally:
            app.state_loader = loader
        state = states[-1]
        await state.fleet.base()  # the fleet's snapshot, as a running scheduler has it before work arrives
        bus = Bus(settings.bus, name="bench-placer")
        await bus.connect(nats.url)
        specs = [workload(i, types) for i in range(args.workloads)]
        chunks = [specs[i:i + args.batch_size] for i in range(0, len(specs), args.batch_size)]
        queue = iter(chunks)
        accepted_at: list[float] = []
        before = state.placer.stats
        placed0, phases0, rounds0 = before.placed, dict(before.phases_s), before.rounds
        prof = cProfile.Profile() if args.profile else None

        async def client() -> None:
            for chunk in queue:
                await bus.request(subjects.rpc_subject("scheduler", "workloads.submit_batch"),
                                  WorkloadBatchSubmit(specs=chunk), WorkloadBatchResult, timeout=60.0)
                accepted_at.append(time.perf_counter())

        if prof is not None:
            prof.enable()
        t0 = time.perf_counter()
        cpu0 = time.process_time()
        clients = [asyncio.create_task(client()) for _ in range(args.clients)]
        target = args.workloads  # one replica each
        await _until(lambda: state.placer.stats.placed - placed0 >= target, args.timeout,
                     f"{target} replicas placed")
        wall = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        if prof is not None:
            prof.disable()
            prof.dump_stats(f"{args.profile}.{n_hosts}")
            st = pstats.Stats(prof)
            st.sort_stats("cumulative").print_stats(40)
        await asyncio.gather(*clients)
        await bus.close()
        stats = state.placer.stats
        phases = {k: round(stats.phases_s.get(k, 0.0) - phases0.get(k, 0.0), 3) for k in PHASES}
        rounds = stats.rounds - rounds0
        async with session_scope(sessions) as session:
            in_db = (await session.execute(select(func.count()).select_from(replicas)
                                           .where(replicas.c.state == "placed"))).scalar_one()
            rows = await store.list_active_replicas(session)
            solver: dict[str, float] = {}
            for (timings,) in (await session.execute(select(decisions.c.timings))).all():
                for k, v in (timings or {}).items():
                    solver[k] = solver.get(k, 0.0) + float(v)
        load: dict[str, float] = {}
        for r in rows:
            for d in r.devices:
                load[d["id"]] = load.get(d["id"], 0.0) + float(d.get("share", 1.0))
        out.update({
            "placed": stats.placed - placed0, "placed_in_db": in_db,
            "over_committed_devices": sum(1 for v in load.values() if v > 1.0 + 1e-9),
            "wall_s": round(wall, 3), "placements_per_s": round(target / wall, 1),
            "accepted_per_s": round(args.workloads / (max(accepted_at) - t0), 1),
            "process_cpu_s": round(cpu, 2),
            "rounds": rounds, "phases_s": phases, "solver_s": {k: round(v, 3) for k, v in solver.items()}, "placer_busy_s": round(sum(phases.values()), 3),
            "placements_per_busy_s": round(target / sum(phases.values()), 1) if sum(phases.values()) else None,
        })
    finally:
        stop.set()
        if task is not None:
            await asyncio.wait_for(task, 30)
        await engine.dispose()
        pg.stop()
        nats.stop()
    return out


def table(results: list[dict[str, Any]]) -> str:
    lines = [f"{'hosts':>6} {'workloads':>9} {'placed/s':>9} {'accept/s':>9} {'wall s':>7} {'rounds':>6} "
             + " ".join(f"{p + ' s':>9}" for p in PHASES) + f" {'busy/s':>8} {'in db':>6} {'over':>4}"]
    for r in results:
        lines.append(f"{r['hosts']:>6} {r['workloads']:>9} {r['placements_per_s']:>9} {r['accepted_per_s']:>9} "
                     f"{r['wall_s']:>7} {r['rounds']:>6} "
                     + " ".join(f"{r['phases_s'][p]:>9}" for p in PHASES)
                     + f" {r['placements_per_busy_s']!s:>8} {r['placed_in_db']:>6} {r['over_committed_devices']:>4}")
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    for n in (int(x) for x in args.hosts.split(",")):
        with tempfile.TemporaryDirectory(prefix="xpumesh-bench-placer-") as d:
            print(f"  {n} hosts ...", file=sys.stderr, flush=True)
            results.append(await one_fleet(args, n, Path(d)))
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", default="1000,10000")
    ap.add_argument("--devices", type=int, default=8, help="accelerators per host")
    ap.add_argument("--workloads", type=int, default=10_000)
    ap.add_argument("--batch-size", type=int, default=500, help="workloads per workloads.submit_batch request")
    ap.add_argument("--clients", type=int, default=4, help="submitters sending batches back to back")
    ap.add_argument("--batch-max", type=int, default=None, help="override scheduler.batch_max")
    ap.add_argument("--time-limit", type=float, default=None, help="override scheduler.solver_time_limit_s")
    ap.add_argument("--candidates", type=int, default=None, help="override scheduler.max_candidates")
    ap.add_argument("--timeout", type=float, default=600.0, help="give up when not all are placed by then (s)")
    ap.add_argument("--profile", default=None, help="cProfile the measured part into FILE.<hosts>")
    args = ap.parse_args(argv)
    os.environ.setdefault("XPUMESH_LOG_LEVEL", "WARNING")
    results = asyncio.run(main_async(args))
    print(table(results))
    print(json.dumps({"cpus": os.cpu_count(), "results": results}, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
