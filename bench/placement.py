"""Placement benchmark, solve-only: CP-SAT placer vs first-fit and best-fit on the same synthetic trace.

    python bench/placement.py [--hosts 1000,10000] [--workloads 1000] [--seed N | --seeds 7..11]
                              [--batch B] [--time-limit S] [--candidates K]

Solve-only: every figure is one ``place`` call on an in-memory snapshot, without the
database reads, the snapshot of the live fleet or the commit a scheduler round adds (those
are measured end to end by ``bench/placer.py``). The placer runs with the scheduler
service's own settings unless told otherwise: ``--candidates`` defaults to
``SchedulerSettings().max_candidates``, ``--time-limit`` to ``solver_time_limit_s`` and
``--batch`` to ``batch_max``.

Fleets: N hosts x 8 devices, mixed vendors and types over six sites, some hosts down,
some devices unhealthy, some partially used by running (non-preemptible) work. Two
scenarios per fleet size:

* ``contended``: running work is added until the free devices are ``--contention`` (1.1) x
  what the trace asks for: enough in total, but only with good packing (and the mix of
  types asked for differs from the mix that is free);
* ``open``: about half the fleet is busy, so nearly everything fits.

The trace (same for every placer): mixed types, counts 1-8, fractional shares, compute-unit
requests, gangs, spread, site constraints, data sites, runtime requirements, priorities.
Workloads arrive in batches of ``--batch``; each batch is placed once (pending work is
not retried) and its decision is applied before the next batch.

Metrics per placer:
* placements/s (solve-only): workloads fully placed / total ``place`` wall time (decisions/s counts all);
* solve p50/p99: wall time of one ``place`` call per batch (fastest of ``--repeat`` identical
  calls, to keep other processes on the machine out of the numbers); the same per CPU
  second of this process (``placements_per_cpu_s``, ``cpu_p50_ms``), which other load on a
  shared machine disturbs far less than wall time;
* placed, device-hours placed (devices x share x duration; compute-unit requests count the
  devices they got, so CU-hours are reported too), preemptions;
* stranded devices: after the last batch, free healthy devices on an up, partially used
  pool (host x device model) whose free count is below the smallest whole-device request
  still pending that could use that pool. A request can use a pool when it passes the same
  filters as in placement (the same driver rules) and needs no more devices than the pool
  has usable ones (a 2,000-CU request does not want an 8 x 96-CU host). Pools no pending
  request can use are idle, not stranded.

A human table is printed, then ONE JSON object on the last line. With ``--seeds`` (a list
``7,9`` or a range ``7..11``) every seed gets its own fleet and trace; the JSON object then
holds the per-seed results under ``per_seed`` and, per fleet/scenario and placer, the worst
case over the seeds against best-fit under ``worst_vs_best_fit``: the lowest placed ratio and
difference, the highest stranded ratio and difference (the ratio is null where best-fit
stranded nothing), the lowest placements/s, and placed and stranded summed over the seeds
for the placer and for best-fit.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.placement_world import DRIVER_RULES, SITES, busy_allocations, make_fleet, make_trace
from libs.config import SchedulerSettings
from libs.schemas.workload import WorkloadSpec
from services.scheduler.placement import (
    FleetSnapshot,
    PendingWorkload,
    PlacementDecision,
    PlacementRules,
    SiteLink,
    build_snapshot,
    place,
    place_greedy,
)
from services.scheduler.placement.capacity import cu_need
from services.scheduler.placement.feasibility import FeasibilityCache
from services.scheduler.placement.workloads import Kind, expand


def demand_devices(trace: Sequence[PendingWorkload]) -> float:
    total = 0.0
    for w in trace:
        hw = w.spec.primary
        per = hw.share if hw.is_shared else (hw.compute_units / 400 if hw.compute_units else hw.count)
        total += (per or 1) * w.spec.replicas
    return total


# -- metrics -------------------------------------------------------------------------------------
def hours_placed(decision: PlacementDecision, specs: dict[str, WorkloadSpec], snap: FleetSnapshot
                 ) -> tuple[float, float, float]:
    """(device-hours, device-hours of requests that name a device count or share, CU-hours).

    A compute-unit request counts the devices it was given, so it adds fewer device-hours on
    big chips; CU-hours (device CU x share x hours) measure delivered compute instead."""
    dev, fixed, cu = 0.0, 0.0, 0.0
    for a in decision.assignments:
        spec = specs[a.workload_id]
        h = (spec.duration_s or 0) / 3600
        dh = sum(a.shares) * h
        dev += dh
        if spec.primary.compute_units is None:
            fixed += dh
        cu += sum(float(snap.dev_cu[snap.dev_index[d]]) * s for d, s in zip(a.device_ids, a.shares, strict=True)) * h
    return dev, fixed, cu


def stranded(snap: FleetSnapshot, pending: Sequence[PendingWorkload], rules: PlacementRules = DRIVER_RULES) -> int:
    if not pending:
        return 0
    feas = FeasibilityCache(snap, rules)
    min_need = np.full(snap.n_pools, 1 << 30, dtype=np.int64)
    cu = np.array([p.compute_units for p in snap.profiles])[snap.pool_profile]
    for it in expand(pending):
        if it.kind == Kind.SHARE:
            continue  # shares can use any free device: they never strand whole ones
        ok = feas.get(it.sig).pool_ok
        if it.kind == Kind.CU:
            need = cu_need(it, cu)
            need[need == 0] = 1 << 30
        else:
            need = np.full(snap.n_pools, it.n, dtype=np.int64)
        np.minimum(min_need, np.where(ok & (need <= snap.pool_usable), need, 1 << 30), out=min_need)
    size = np.diff(snap.pool_start)
    free = snap.pool_free
    partial = (free > 0) & (free < size) & snap.host_up[snap.pool_host]
    wanted = min_need < (1 << 30)  # pools no pending request can use are idle, not stranded
    return int(free[partial & wanted & (free < min_need)].sum())


Placer = Callable[[Sequence[PendingWorkload], FleetSnapshot], PlacementDecision]


class Run:
    """One placer's walk through the trace, batch by batch, on its own copy of the fleet."""

    def __init__(self, name: str, placer: Placer, snap: FleetSnapshot, trace: Sequence[PendingWorkload]) -> None:
        self.name, self.placer, self.snap = name, placer, snap
        self.specs = {w.id: w.spec for w in trace}
        self.n = len(trace)
        self.walls: list[float] = []
        self.cpus: list[float] = []
        self.placed = self.replicas = self.preemptions = 0
        self.hours = [0.0, 0.0, 0.0]
        self.pending: list[PendingWorkload] = []
        self.statuses: dict[str, int] = {}
        self.apply_s = 0.0

    def step(self, chunk: Sequence[PendingWorkload], repeat: int) -> None:
        best, best_cpu = float("inf"), float("inf")
        for _ in range(repeat):  # placers are pure and deterministic: keep the least disturbed run
            t, c = time.perf_counter(), time.process_time()
            d = self.placer(chunk, self.snap)
            best = min(best, time.perf_counter() - t)
            best_cpu = min(best_cpu, time.process_time() - c)
        self.walls.append(best)
        self.cpus.append(best_cpu)
        self.statuses[d.solver_status] = self.statuses.get(d.solver_status, 0) + 1
        self.placed += len(d.placed_workloads())
        self.replicas += len(d.assignments)
        self.hours = [x + y for x, y in zip(self.hours, hours_placed(d, self.specs, self.snap), strict=True)]
        self.preemptions += len(d.preemptions)
        left = {p.workload_id for p in d.pending}
        self.pending.extend(w for w in chunk if w.id in left)
        t = time.perf_counter()
        self.snap = self.snap.with_decision(d, chunk)
        self.apply_s += time.perf_counter() - t

    def result(self) -> dict[str, Any]:
        total, cpu = sum(self.walls), sum(self.cpus)
        ms = sorted(w * 1000 for w in self.walls)
        cpu_ms = sorted(c * 1000 for c in self.cpus)
        return {
            "placements_per_s": round(self.placed / total, 1) if total else None,
            "decisions_per_s": round(self.n / total, 1) if total else None,
            "solve_p50_ms": round(statistics.median(ms), 1),
            "solve_p99_ms": round(float(np.percentile(ms, 99)), 1),
            "total_s": round(total, 3),
            "placements_per_cpu_s": round(self.placed / cpu, 1) if cpu else None,
            "cpu_p50_ms": round(statistics.median(cpu_ms), 1),
            "cpu_p99_ms": round(float(np.percentile(cpu_ms, 99)), 1),
            "placed": self.placed,
            "replicas_placed": self.replicas,
            "device_hours": round(self.hours[0], 1),
            "device_hours_count_or_share_requests": round(self.hours[1], 1),
            "cu_hours": round(self.hours[2]),
            "stranded_devices": stranded(self.snap, self.pending),
            "free_devices_left": int(self.snap.pool_free.sum()),
            "preemptions": self.preemptions,
            "statuses": self.statuses,
            "apply_s": round(self.apply_s, 3),
        }


def parse_seeds(text: str) -> list[int]:
    """``7,9,12`` or ``7..11`` (inclusive), or a mix: ``1..3,9``."""
    out: list[int] = []
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("..")
        out.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
    return out


def run_seed(args: argparse.Namespace, seed: int) -> tuple[dict[str, Any], list[str]]:
    """Every fleet size and scenario for one seed: (results, table rows)."""
    placers: list[tuple[str, Placer]] = [
        ("cpsat", lambda b, s: place(b, s, rules=DRIVER_RULES, time_limit_s=args.time_limit,
                                     max_candidates=args.candidates)),
        ("best_fit", lambda b, s: place_greedy(b, s, rules=DRIVER_RULES, strategy="best_fit")),
        ("first_fit", lambda b, s: place_greedy(b, s, rules=DRIVER_RULES, strategy="first_fit")),
    ]
    results: dict[str, Any] = {"measure": "solve-only", "seed": seed, "workloads": args.workloads, "batch": args.batch,
                               "repeat": args.repeat,
                               "time_limit_s": args.time_limit, "max_candidates": args.candidates, "runs": {}}
    rows: list[str] = []
    for n_hosts in (int(x) for x in args.hosts.split(",")):
        for scenario in args.scenarios.split(","):
            rng = random.Random(seed * 1_000_003 + n_hosts)
            hosts, devices = make_fleet(n_hosts, rng)
            trace = make_trace(args.workloads, random.Random(seed))
            need = demand_devices(trace)
            target_free = int(need * args.contention) if scenario == "contended" else len(devices) // 2
            allocs = busy_allocations(hosts, devices, target_free, rng)
            t = time.perf_counter()
            snap = build_snapshot(hosts, devices, allocs, [
                SiteLink(a, b, 10.0 if {a, b} <= {"bj", "sh", "hz"} else 2.0, 20.0)
                for i, a in enumerate(SITES) for b in SITES[i + 1:]])
            build_s = time.perf_counter() - t
            # The fleet model is long-lived: keep it out of full collections, as a scheduler that
            # loads its fleet once would (otherwise a 100 ms gen-2 pass lands in some batch).
            gc.collect()
            gc.freeze()
            key = f"{n_hosts}/{scenario}"
            run: dict[str, Any] = {"hosts": n_hosts, "devices": len(devices), "demand_devices": round(need),
                                   "free_devices_at_start": int(snap.pool_free.sum()),
                                   "snapshot_build_s": round(build_s, 3), "placers": {}}
            runs = [Run(name, placer, snap, trace) for name, placer in placers]
            for start in range(0, len(trace), args.batch):  # interleaved, so machine noise hits all alike
                for r in runs:
                    r.step(trace[start:start + args.batch], args.repeat)
            for r in runs:
                run["placers"][r.name] = r.result()
            gc.unfreeze()
            bf = run["placers"]["best_fit"]
            for name, r in run["placers"].items():
                r["vs_best_fit"] = {
                    "placed": round(r["placed"] / bf["placed"], 3) if bf["placed"] else None,
                    "device_hours": round(r["device_hours"] / bf["device_hours"], 3) if bf["device_hours"] else None,
                    "cu_hours": round(r["cu_hours"] / bf["cu_hours"], 3) if bf["cu_hours"] else None,
                    "stranded": round(r["stranded_devices"] / bf["stranded_devices"], 3)
                    if bf["stranded_devices"] else None,
                    "placements_per_s": round(r["placements_per_s"] / bf["placements_per_s"], 3)
                    if bf["placements_per_s"] else None,
                    "placements_per_cpu_s": round(r["placements_per_cpu_s"] / bf["placements_per_cpu_s"], 3)
                    if bf["placements_per_cpu_s"] else None,
                }
                rows.append(f"{key:<16} {name:<10} {r['placements_per_s']:>9} {r['placements_per_cpu_s']:>9} "
                            f"{r['solve_p50_ms']:>8} "
                            f"{r['solve_p99_ms']:>8} {r['placed']:>6} {r['device_hours']:>9} {r['cu_hours']:>8} "
                            f"{r['stranded_devices']:>8} {r['preemptions']:>5}  {r['statuses']}")
            results["runs"][key] = run
    return results, rows


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def worst_vs_best_fit(per_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Per fleet/scenario and placer, the worst case over the seeds against best-fit."""
    out: dict[str, Any] = {}
    for res in per_seed.values():
        for key, run in res["runs"].items():
            bf = run["placers"]["best_fit"]
            for name, r in run["placers"].items():
                if name == "best_fit":
                    continue
                placed_d = r["placed"] - bf["placed"]
                stranded_d = r["stranded_devices"] - bf["stranded_devices"]
                placed_r = _ratio(r["placed"], bf["placed"])
                stranded_r = _ratio(r["stranded_devices"], bf["stranded_devices"])
                w = out.setdefault(key, {}).setdefault(name, {
                    "placed_ratio_min": placed_r, "placed_diff_min": placed_d,
                    "stranded_ratio_max": stranded_r, "stranded_diff_max": stranded_d,
                    "placements_per_s_min": r["placements_per_s"], "seeds": 0, "placed_total": 0,
                    "best_fit_placed_total": 0, "stranded_total": 0, "best_fit_stranded_total": 0})
                w["seeds"] += 1
                w["placed_total"] += r["placed"]
                w["best_fit_placed_total"] += bf["placed"]
                w["stranded_total"] += r["stranded_devices"]
                w["best_fit_stranded_total"] += bf["stranded_devices"]
                if placed_r is not None and (w["placed_ratio_min"] is None or placed_r < w["placed_ratio_min"]):
                    w["placed_ratio_min"] = placed_r
                w["placed_diff_min"] = min(w["placed_diff_min"], placed_d)
                if stranded_r is not None and (w["stranded_ratio_max"] is None
                                               or stranded_r > w["stranded_ratio_max"]):
                    w["stranded_ratio_max"] = stranded_r
                w["stranded_diff_max"] = max(w["stranded_diff_max"], stranded_d)
                if r["placements_per_s"] is not None:
                    w["placements_per_s_min"] = min(w["placements_per_s_min"] or r["placements_per_s"],
                                                    r["placements_per_s"])
    return out


def main(argv: list[str] | None = None) -> int:
    service = SchedulerSettings()  # the service's own placement settings are the defaults
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", default="1000,10000")
    ap.add_argument("--workloads", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--seeds", default=None,
                    help="several seeds, e.g. 7..11 or 7,9: per-seed figures plus the worst case vs best-fit")
    ap.add_argument("--batch", type=int, default=service.batch_max,
                    help="workloads per place call (default: scheduler.batch_max)")
    ap.add_argument("--time-limit", type=float, default=service.solver_time_limit_s,
                    help="CP-SAT placer budget per batch in s (default: scheduler.solver_time_limit_s)")
    ap.add_argument("--candidates", type=int, default=service.max_candidates,
                    help="max_candidates per replica (default: scheduler.max_candidates)")
    ap.add_argument("--scenarios", default="contended,open")
    ap.add_argument("--repeat", type=int, default=3,
                    help="time each batch this many times and keep the fastest (the machine is shared)")
    ap.add_argument("--contention", type=float, default=1.1,
                    help="contended scenario: free devices at start = this x the devices the trace asks for")
    args = ap.parse_args(argv)
    seeds = parse_seeds(args.seeds) if args.seeds else [args.seed]
    per_seed: dict[int, dict[str, Any]] = {}
    rows: list[str] = []
    for seed in seeds:
        per_seed[seed], seed_rows = run_seed(args, seed)
        rows.extend(f"{seed:>4}  {row}" for row in seed_rows)
    print(f"solve-only (one place call per batch of {args.batch}, {args.candidates} candidates, "
          f"{args.time_limit} s budget; no database, snapshot or commit: see bench/placer.py for end to end)")
    print(f"{'seed':>4}  {'fleet/scenario':<16} {'placer':<10} {'placed/s':>9} {'/cpu-s':>9} {'p50 ms':>8} "
          f"{'p99 ms':>8} {'placed':>6} {'dev-hours':>9} {'CU-hours':>8} {'stranded':>8} {'preempt':>5}  statuses")
    for row in rows:
        print(row)
    if args.seeds:
        worst = worst_vs_best_fit(per_seed)
        for key, by_placer in worst.items():
            for name, w in by_placer.items():
                print(f"worst over {w['seeds']} seeds, {key} {name}: placed {w['placed_diff_min']:+d} "
                      f"(ratio {w['placed_ratio_min']}), stranded {w['stranded_diff_max']:+d} "
                      f"(ratio {w['stranded_ratio_max']}), {w['placements_per_s_min']} placements/s; "
                      f"in total placed {w['placed_total']} vs {w['best_fit_placed_total']}, "
                      f"stranded {w['stranded_total']} vs {w['best_fit_stranded_total']}")
        out: dict[str, Any] = {"seeds": seeds, "per_seed": {str(k): v for k, v in per_seed.items()},
                               "worst_vs_best_fit": worst}
    else:
        out = per_seed[seeds[0]]
    print(json.dumps(out, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
