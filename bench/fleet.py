"""Fleet benchmark: can registry + inventory keep up with 1,000 and 10,000 hosts?

For each fleet size: a fresh embedded NATS and PostgreSQL, ``xpumesh prestart``, the
registry and inventory as real processes (``xpumesh run``), and the simulator as a real
process (every host with ``--devices`` accelerators, heartbeat and telemetry every
``--interval`` seconds). Once every host is registered, it measures for ``--duration``
seconds while capability changes are injected at ``--capability-rate`` per second (device
faults and repairs through ``xpumesh.sim.ctl``, each re-published by the host as a new
capability generation):

* events/s published (simulator counters; JetStream stream sequence) and consumed
  (services' own counters; consumer ack floors);
* capability-to-inventory lag: ``hosts.updated_at - reported_at`` (the event's time) for
  every host updated in the window, p50/p99; also for the registration burst;
* backlog: JetStream ``num_pending`` of the inventory's consumers sampled over time, and its
  growth per second (least squares);
* CPU% and RSS of the simulator, each service, nats-server and PostgreSQL (psutil).

Prints a table, then ONE JSON object on its last line.

    python bench/fleet.py                       # 1,000 and 10,000 hosts, 60 s each
    python bench/fleet.py --hosts 1000 --duration 20
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import psutil
from pydantic import SecretStr

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.kit import spawn, stop_all  # noqa: E402
from libs.bus import subjects  # noqa: E402
from libs.bus.connection import STREAM_HOSTS, STREAM_TELEMETRY, Bus  # noqa: E402
from libs.bus.subjects import CTL_METRICS  # noqa: E402
from libs.config import Settings  # noqa: E402
from libs.embedded import EmbeddedNats, EmbeddedPostgres  # noqa: E402
from libs.schemas.sim import SimControl, SimControlReply  # noqa: E402
from xpumesh.prestart import prestart  # noqa: E402

SAMPLE_S = 2.0
_BUS_LINE = re.compile(r'^xpumesh_bus_messages_total\{([^}]*)\}\s+([0-9.eE+-]+)$')


@dataclass
class Watched:
    """A process tree whose CPU and memory are measured."""

    name: str
    root: psutil.Process
    cpu0: float = 0.0
    t0: float = 0.0
    rss_max: float = 0.0

    def _tree(self) -> list[psutil.Process]:
        try:
            return [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cpu_seconds(self) -> float:
        total = 0.0
        for p in self._tree():
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    def rss_mib(self) -> float:
        total = 0.0
        for p in self._tree():
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        mib = total / 2**20
        self.rss_max = max(self.rss_max, mib)
        return mib

    def start(self) -> None:
        self.cpu0, self.t0 = self.cpu_seconds(), time.monotonic()

    def cpu_pct(self) -> float:
        return 100.0 * (self.cpu_seconds() - self.cpu0) / max(1e-9, time.monotonic() - self.t0)


@dataclass
class Phase:
    hosts: int
    samples: list[dict[str, Any]] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return round(ordered[k], 3)


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares growth per second."""
    if len(points) < 2:
        return 0.0
    mx = statistics.fmean(t for t, _ in points)
    my = statistics.fmean(v for _, v in points)
    den = sum((t - mx) ** 2 for t, _ in points)
    return 0.0 if den == 0 else sum((t - mx) * (v - my) for t, v in points) / den


async def bus_counters(bus: Bus) -> dict[tuple[str, str, str], float]:
    """(service, handler, outcome) → count, from every service's own metrics."""
    out: dict[tuple[str, str, str], float] = {}
    for msg in await bus.scatter(CTL_METRICS, window_s=0.5):
        for line in msg.data.decode(errors="replace").splitlines():
            m = _BUS_LINE.match(line)
            if not m:
                continue
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
            key = (labels.get("service", ""), labels.get("handler", ""), labels.get("outcome", ""))
            out[key] = out.get(key, 0.0) + float(m.group(2))
    return out


async def sim_stats(bus: Bus) -> dict[str, float]:
    msg = await bus.nc.request(subjects.SIM_CONTROL, SimControl(action="stats").model_dump_json().encode(), timeout=5)
    return SimControlReply.model_validate_json(msg.data).stats


async def consumer(bus: Bus, stream: str, durable: str) -> dict[str, float]:
    info = await bus.js.consumer_info(stream, durable)
    return {"pending": float(info.num_pending or 0), "ack_pending": float(info.num_ack_pending or 0),
            "ack_floor": float(info.ack_floor.stream_seq if info.ack_floor else 0)}


async def wait_health(bus: Bus, service: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            await bus.nc.request(subjects.rpc_subject(service, "health"), b"{}", timeout=1)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{service} did not start; see its log") from None
            await asyncio.sleep(0.3)


async def run_phase(args: argparse.Namespace, hosts: int, workdir: Path) -> Phase:
    phase = Phase(hosts)
    nats = EmbeddedNats(workdir).start()
    pg = EmbeddedPostgres(workdir).start()
    procs: list[subprocess.Popen[bytes]] = []
    settings = Settings(nats_url=nats.url, database_url=SecretStr(pg.dsn), data_dir=workdir)
    try:
        await prestart(settings)
        env = dict(os.environ, XPUMESH_NATS_URL=nats.url, XPUMESH_DATABASE_URL=pg.dsn, XPUMESH_DATA_DIR=str(workdir),
                   XPUMESH_HEARTBEAT_INTERVAL_S=str(args.interval), XPUMESH_TELEMETRY_INTERVAL_S=str(args.interval),
                   XPUMESH_LOG_LEVEL="WARNING",
                   XPUMESH_SIM__DEVICE_FAULT_PER_HOUR="0", XPUMESH_SIM__HOST_LOSS_PER_HOUR="0")
        watched = [Watched("nats", psutil.Process(nats.proc.pid)),  # type: ignore[union-attr]
                   Watched("postgres", psutil.Process(pg.proc.pid))]  # type: ignore[union-attr]
        bus = Bus(settings.bus, name="bench")
        await bus.connect(nats.url)
        await bus.ensure_streams()
        for service in ("registry", "inventory"):
            p = spawn([sys.executable, "-m", "xpumesh", "run", service], env, workdir / f"{service}.log")
            procs.append(p)
            watched.append(Watched(service, psutil.Process(p.pid)))
            await wait_health(bus, service)
        t_sim = time.monotonic()
        sim = spawn([sys.executable, "-m", "agent.sim.main", "--hosts", str(hosts), "--devices-per-host",
                     str(args.devices)], env, workdir / "sim.log")
        procs.append(sim)
        watched.append(Watched("sim", psutil.Process(sim.pid)))
        db = await asyncpg.connect(pg.dsn)
        for w in watched:
            w.start()
        registered = 0
        while registered < hosts:
            if time.monotonic() - t_sim > args.register_timeout:
                break
            await asyncio.sleep(1.0)
            registered = await db.fetchval("SELECT count(*) FROM inventory.hosts")
        phase.result["registration_s"] = round(time.monotonic() - t_sim, 1)
        phase.result["registration_cpu_pct"] = {w.name: round(w.cpu_pct(), 1) for w in watched}
        phase.result["registered"] = registered
        burst = await db.fetch("SELECT extract(epoch FROM updated_at - reported_at) AS lag FROM inventory.hosts")
        phase.result["registration_lag_s"] = {"p50": percentile([float(r["lag"]) for r in burst], 50),
                                              "p99": percentile([float(r["lag"]) for r in burst], 99)}
        # Settle: the registration burst's backlogs drain (or the timeout passes) before measuring.
        while time.monotonic() - t_sim < args.register_timeout:
            tel = await consumer(bus, STREAM_TELEMETRY, "inventory-telemetry")
            cap = await consumer(bus, STREAM_HOSTS, "inventory-capability")
            if cap["pending"] + cap["ack_pending"] == 0 and tel["pending"] < hosts:
                break
            await asyncio.sleep(1.0)
        phase.result["settled_s"] = round(time.monotonic() - t_sim, 1)
        await asyncio.sleep(args.interval)  # one full interval so every slice of the fleet is in flight
        await measure(args, phase, bus, db, watched)
        await db.close()
        await bus.close()
    finally:
        stop_all(procs, pg, nats)
    return phase


async def measure(args: argparse.Namespace, phase: Phase, bus: Bus, db: asyncpg.Connection,
                  watched: list[Watched]) -> None:
    rng = random.Random(1)
    listing = SimControlReply.model_validate_json((await bus.nc.request(
        subjects.SIM_CONTROL, SimControl(action="list").model_dump_json().encode(), timeout=10)).data)
    targets = [h for h in listing.hosts if h.devices]
    window_start = await db.fetchval("SELECT now()")
    for w in watched:
        w.start()
    machine0 = psutil.cpu_times()
    c0, s0 = await bus_counters(bus), await sim_stats(bus)
    tel0 = await consumer(bus, STREAM_TELEMETRY, "inventory-telemetry")
    t0 = time.monotonic()
    next_sample, changes = t0, 0
    faulty: set[str] = set()
    while (now := time.monotonic()) - t0 < args.duration:
        if args.capability_rate > 0:
            h = rng.choice(targets)
            action = "repair" if h.host_id in faulty else "fault"
            await bus.nc.request(subjects.SIM_CONTROL, SimControl(action=action, host_id=h.host_id, device_index=0)
                                 .model_dump_json().encode(), timeout=5)
            faulty.symmetric_difference_update({h.host_id})
            changes += 1
        if now >= next_sample:
            tel = await consumer(bus, STREAM_TELEMETRY, "inventory-telemetry")
            cap = await consumer(bus, STREAM_HOSTS, "inventory-capability")
            phase.samples.append({"t": round(now - t0, 1), "telemetry_pending": tel["pending"] + tel["ack_pending"],
                                  "capability_pending": cap["pending"] + cap["ack_pending"],
                                  **{f"rss_{w.name}": round(w.rss_mib(), 1) for w in watched}})
            next_sample += SAMPLE_S
        await asyncio.sleep(1.0 / args.capability_rate if args.capability_rate > 0 else SAMPLE_S)
    elapsed = time.monotonic() - t0
    cpu = {w.name: round(w.cpu_pct(), 1) for w in watched}
    machine1 = psutil.cpu_times()
    busy = sum(machine1) - sum(machine0) - (machine1.idle - machine0.idle) - (
        getattr(machine1, "iowait", 0.0) - getattr(machine0, "iowait", 0.0))
    machine_pct = 100.0 * busy / elapsed
    c1, s1 = await bus_counters(bus), await sim_stats(bus)
    tel1 = await consumer(bus, STREAM_TELEMETRY, "inventory-telemetry")
    await asyncio.sleep(3.0)  # let the last injected changes land before reading lags
    lags = [float(r["lag"]) for r in await db.fetch(
        "SELECT extract(epoch FROM updated_at - reported_at) AS lag FROM inventory.hosts WHERE updated_at >= $1",
        window_start)]
    fresh = [float(r["age"]) for r in await db.fetch(
        "SELECT extract(epoch FROM now() - ts) AS age FROM inventory.host_telemetry")]

    def rate(after: dict[Any, float], before: dict[Any, float], key: Any) -> float | None:
        if key not in after:  # that process did not answer the scrape in time
            return None
        return round((after[key] - before.get(key, 0.0)) / elapsed, 1)

    def per_event_ms(process: str, events_per_s: float | None) -> float | None:
        if not events_per_s:
            return None
        return round(cpu[process] / 100 * 1000 / events_per_s, 3)

    pts_t = [(s["t"], s["telemetry_pending"]) for s in phase.samples]
    pts_c = [(s["t"], s["capability_pending"]) for s in phase.samples]
    consumed_telemetry = round((tel1["ack_floor"] - tel0["ack_floor"]) / elapsed, 1)
    heartbeats = rate(c1, c0, ("registry", "on_host_heartbeat", "ok"))
    sent_telemetry = rate(s1, s0, "telemetry")
    phase.result.update({
        # CPU per event holds under contention better than rates do: it projects the cost of any fleet size.
        "cpu_ms_per_event": {"inventory_per_telemetry": per_event_ms("inventory", consumed_telemetry),
                             "registry_per_heartbeat": per_event_ms("registry", heartbeats),
                             "sim_per_host_interval": per_event_ms("sim", sent_telemetry)},
        "hosts": phase.hosts, "devices": phase.hosts * args.devices, "duration_s": round(elapsed, 1),
        "events_per_s": {
            "published": {"telemetry": rate(s1, s0, "telemetry"), "heartbeat": rate(s1, s0, "heartbeats"),
                          "capability": rate(s1, s0, "capabilities")},
            "consumed": {
                "inventory_telemetry": consumed_telemetry,
                "inventory_capability_batches": rate(c1, c0, ("inventory", "on_capability", "ok")),
                "registry_heartbeats": heartbeats,
            }},
        "capability_changes_injected": changes,
        "capability_lag_s": {"p50": percentile(lags, 50), "p99": percentile(lags, 99), "n": len(lags)},
        "telemetry_age_s": {"p50": percentile(fresh, 50), "p99": percentile(fresh, 99)},
        "backlog": {
            "telemetry": {"first": pts_t[0][1] if pts_t else None, "last": pts_t[-1][1] if pts_t else None,
                          "max": max((v for _, v in pts_t), default=None), "growth_per_s": round(slope(pts_t), 2)},
            "capability": {"first": pts_c[0][1] if pts_c else None, "last": pts_c[-1][1] if pts_c else None,
                           "max": max((v for _, v in pts_c), default=None), "growth_per_s": round(slope(pts_c), 2)},
        },
        "cpu_pct": cpu, "machine_cpu_pct": round(machine_pct, 1),
        # CPU used on this machine by anything outside the benchmark (other jobs distort every number above).
        "other_processes_cpu_pct": round(max(0.0, machine_pct - sum(cpu.values())), 1),
        "loadavg_1m_at_end": round(os.getloadavg()[0], 2), "rss_mib_max": {w.name: round(w.rss_max, 1) for w in watched},
        "sim_late_ticks": int(s1.get("late_ticks", 0) - s0.get("late_ticks", 0)),
        "sim_skipped_ticks": int(s1.get("skipped_ticks", 0) - s0.get("skipped_ticks", 0)),
        "sim_max_tick_lag_s": round(s1.get("max_lag_s", 0.0), 3),
    })


def _get(group: str, name: str, result: dict[str, Any]) -> Any:
    return result[group].get(name)


def table(phases: list[Phase]) -> str:
    rows = [("hosts", lambda r: f"{r['hosts']:,}"), ("devices", lambda r: f"{r['devices']:,}"),
            ("registration (s)", lambda r: r["registration_s"]),
            ("telemetry published/s", lambda r: r["events_per_s"]["published"]["telemetry"]),
            ("telemetry consumed/s", lambda r: r["events_per_s"]["consumed"]["inventory_telemetry"]),
            ("heartbeats published/s", lambda r: r["events_per_s"]["published"]["heartbeat"]),
            ("heartbeats consumed/s", lambda r: r["events_per_s"]["consumed"]["registry_heartbeats"]),
            ("capability changes/s", lambda r: r["events_per_s"]["published"]["capability"]),
            ("capability lag p50 (s)", lambda r: r["capability_lag_s"]["p50"]),
            ("capability lag p99 (s)", lambda r: r["capability_lag_s"]["p99"]),
            ("telemetry backlog growth/s", lambda r: r["backlog"]["telemetry"]["growth_per_s"]),
            ("telemetry backlog max", lambda r: r["backlog"]["telemetry"]["max"]),
            ("telemetry age p99 (s)", lambda r: r["telemetry_age_s"]["p99"]),
            ("cpu % machine (of 100/core)", lambda r: r["machine_cpu_pct"]),
            ("cpu % other processes", lambda r: r["other_processes_cpu_pct"]),
            ("inventory cpu ms/telemetry", lambda r: r["cpu_ms_per_event"]["inventory_per_telemetry"]),
            ("registry cpu ms/heartbeat", lambda r: r["cpu_ms_per_event"]["registry_per_heartbeat"])]
    for name in ("sim", "registry", "inventory", "nats", "postgres"):
        rows.append((f"cpu % {name}", functools.partial(_get, "cpu_pct", name)))
    for name in ("sim", "registry", "inventory", "nats", "postgres"):
        rows.append((f"rss MiB {name}", functools.partial(_get, "rss_mib_max", name)))
    width = 28
    lines = [f"{'':<{width}}" + "".join(f"{p.hosts:>14,}" for p in phases)]
    for label, get in rows:
        cells = []
        for p in phases:
            try:
                cells.append(f"{get(p.result)!s:>14}")
            except (KeyError, TypeError):
                cells.append(f"{'-':>14}")
        lines.append(f"{label:<{width}}" + "".join(cells))
    return "\n".join(lines)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", default="1000,10000", help="fleet sizes, comma-separated")
    ap.add_argument("--duration", type=float, default=60.0, help="measured seconds per fleet size")
    ap.add_argument("--interval", type=float, default=5.0, help="heartbeat and telemetry interval")
    ap.add_argument("--devices", type=int, default=8, help="accelerators per host")
    ap.add_argument("--capability-rate", type=float, default=5.0, help="capability changes injected per second")
    ap.add_argument("--register-timeout", type=float, default=180.0, help="how long to wait for the fleet to register")
    args = ap.parse_args()
    phases = []
    for n in [int(x) for x in args.hosts.split(",") if x.strip()]:
        with tempfile.TemporaryDirectory(prefix=f"xpumesh-bench-{n}-") as d:
            os.chmod(d, 0o755)
            print(f"fleet of {n:,} hosts: starting…", file=sys.stderr, flush=True)
            phases.append(await run_phase(args, n, Path(d)))
    print(table(phases))
    print(json.dumps({"bench": "fleet", "cpus": psutil.cpu_count(), "interval_s": args.interval,
                      "phases": [p.result for p in phases]}, separators=(",", ":")))


if __name__ == "__main__":
    asyncio.run(main())
