"""Telemetry ingest benchmark: the metrics service under a simulated fleet.

    python bench/telemetry.py [--hosts 10000] [--devices 8] [--intervals 5,1,0.8] [--duration-s 120]
                              [--warmup-s 20] [--generators 1]

One embedded nats-server and one embedded PostgreSQL (durable, fsync on) in a temporary
directory; the metrics service runs as its own process (``xpumesh run metrics``), exactly
as in production. ``--hosts`` hosts with ``--devices`` devices each first send a capability
report, then telemetry (one CloudEvent per host per interval, core NATS into the
JetStream telemetry stream, as agents do) from ``--generators`` separate processes, spread
evenly over each interval. Each interval in ``--intervals`` is one phase of
``--duration-s`` seconds (after ``--warmup-s`` whose numbers are not counted).

Per phase:
* offered and ingested device samples/s (ingested: written to PostgreSQL by COPY), and the
  mean samples per write (COPY transaction);
* ingest lag p50/p99: sample time → committed, as the service measures it (p99: the worst
  of the windowed p99s sampled every 2 s; p50: their median);
* backlog: telemetry messages in the durable consumer not yet acknowledged (max, and at end);
* CPU (% of one core) and RSS of the metrics service, CPU of PostgreSQL and NATS, and the
  WAL PostgreSQL wrote (MiB/s);
* city summary query latency p50/p99 (``xpumesh.rpc.metrics.summary``, 5 requests/s);
* latency of a device's raw series (the last 15 minutes at a 10 s step: raw samples, as the
  dashboard's device view asks) every 10 s, for a random device (median and max);
* the machine's 1-minute load average at the end (anything else running competes for the cores).

After the phases, with the generators stopped, the rate at which the service works off any
backlog left (``drain``; only when the phases left one). Then the service's own ingest
capacity (``capacity``): with the service stopped, ``--backlog-rounds`` rounds of telemetry
from every host are published at once; the service is started again and the time it takes
to work that backlog off gives samples/s with only NATS and PostgreSQL beside it. The phases'
``ingested_samples_per_s`` can never exceed what the generator offers; ``capacity`` can.

A human table is printed, then ONE JSON object on the last line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydantic import SecretStr

from libs.bus import subjects
from libs.bus.connection import STREAM_TELEMETRY, Bus
from libs.config import Settings
from libs.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from libs.events import CloudEvent, EventTypes
from libs.schemas.devices import Device, HardwareType, Health, HostFacts
from libs.schemas.hostevents import CapabilityReport
from libs.schemas.metrics import FleetSummary, IngestStats, Scope, Series, SeriesQuery, SummaryQuery
from libs.sites import DEMO_SITES

MODELS = [(HardwareType.GPU, "nvidia", "A100-SXM4-80GB", 81920), (HardwareType.NPU, "huawei", "Ascend910B3", 65536),
          (HardwareType.DCU, "hygon", "K100_AI", 65536), (HardwareType.MLU, "cambricon", "MLU370-X8", 24576)]
DURABLE = "metrics-telemetry"


def host_ids(n: int) -> list[tuple[str, str]]:
    sites = [s.id for s in DEMO_SITES]
    return [(f"bench-{i:05d}", sites[i % len(sites)]) for i in range(n)]


# --- the generator (a separate process) -----------------------------------------------------
def _templates(host: str, site: str, devices: int, rng: random.Random) -> list[tuple[bytes, bytes, bytes, bytes]]:
    """Four payload variants per host, split where the event id and the two timestamps go."""
    out = []
    base = rng.uniform(20, 90)
    for _ in range(4):
        samples = [[d, round(min(100.0, max(0.0, base + rng.uniform(-10, 10))), 1), rng.randint(1000, 60000),
                    round(rng.uniform(40, 75), 1), round(rng.uniform(100, 400), 1), 1] for d in range(devices)]
        data = json.dumps({"schema_version": 1, "host_id": host, "site": site, "ts": "@TS@", "cpu_pct": 20.0,
                           "mem_used_mib": 100000, "mem_total_mib": 1000000, "devices": samples}, separators=(",", ":"))
        head = (f'{{"specversion":"1.0","id":"@ID@","source":"/agent/{site}/{host}",'
                f'"type":"{EventTypes.HOST_TELEMETRY}","time":"@TS@","subject":"{host}",'
                f'"datacontenttype":"application/json","data":{data}}}')
        a, rest = head.split("@ID@")
        b, rest = rest.split("@TS@", 1)
        c, d = rest.split("@TS@", 1)
        out.append((a.encode(), b.encode(), c.encode(), d.encode()))
    return out


async def generate(nats_url: str, hosts: list[tuple[str, str]], devices: int, interval: float, duration: float,
                   seed: int, burst: int = 0) -> dict[str, Any]:
    """Publish every ``interval`` for ``duration``; with ``burst``, that many rounds over all hosts at once."""
    from libs.config import BusSettings

    bus = Bus(BusSettings(), name="bench-gen")
    await bus.connect(nats_url)
    rng = random.Random(seed)
    tpl = [(h, s, subjects.host_subject(s, h, "telemetry"), _templates(h, s, devices, rng)) for h, s in hosts]
    nc = bus.nc
    loop = asyncio.get_running_loop()
    start = loop.time()
    rate = len(tpl) / interval if not burst else float("inf")  # messages per second, spread evenly
    sent, seq, i = 0, 0, 0
    while burst and seq < burst:
        ts = datetime.now(UTC).isoformat().replace("+00:00", "Z").encode()
        for host, _site, subject, variants in tpl:
            a, b, c, d = variants[seq % 4]
            msg_id = f"{host}-b{seq}"
            await nc.publish(subject, a + msg_id.encode() + b + ts + c + ts + d, headers={"Nats-Msg-Id": msg_id})
            sent += 1
        seq += 1
        await nc.flush()
    while not burst and (now := loop.time() - start) < duration:
        ts = datetime.now(UTC).isoformat().replace("+00:00", "Z").encode()
        while sent < now * rate:  # catch up on whatever a slow loop owes
            host, _site, subject, variants = tpl[i]
            a, b, c, d = variants[seq % 4]
            msg_id = f"{host}-{seq}"
            await nc.publish(subject, a + msg_id.encode() + b + ts + c + ts + d, headers={"Nats-Msg-Id": msg_id})
            sent += 1
            i += 1
            if i == len(tpl):
                i, seq = 0, seq + 1
        await asyncio.sleep(0.005)
    await nc.flush()
    await bus.close()
    return {"sent": sent, "elapsed_s": loop.time() - start}


def generator_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--nats")
    p.add_argument("--first", type=int)
    p.add_argument("--count", type=int)
    p.add_argument("--devices", type=int)
    p.add_argument("--interval", type=float)
    p.add_argument("--duration", type=float)
    p.add_argument("--burst", type=int, default=0)
    a = p.parse_args(argv)
    hosts = host_ids(a.first + a.count)[a.first:]
    print(json.dumps(asyncio.run(generate(a.nats, hosts, a.devices, a.interval, a.duration, a.first, a.burst))),
          flush=True)
    return 0


# --- the harness ----------------------------------------------------------------------------
async def announce(bus: Bus, hosts: list[tuple[str, str]], devices: int) -> None:
    facts = HostFacts(hostname="bench", arch="x86_64", os="Ubuntu 22.04", kernel="5.15", cpu_model="Xeon", cpu_sockets=2,
                      cpu_cores=64, cpu_threads=128, memory_mib=1_000_000)
    for k in range(0, len(hosts), 500):
        chunk = []
        for n, (host, site) in enumerate(hosts[k:k + 500], start=k):
            hw, vendor, model, mem = MODELS[n % len(MODELS)]
            devs = [Device(index=d, hardware_type=hw, vendor=vendor, model=model, memory_mib=mem, health=Health.HEALTHY,
                           driver_version="1.0", runtimes={"rt": "1.0"}) for d in range(devices)]
            report = CapabilityReport(host_id=host, site=site, generation=1, facts=facts, devices=devs)
            event = CloudEvent.new(EventTypes.HOST_CAPABILITY, f"/agent/{site}/{host}", report, subject=host,
                                   id=f"cap-{host}-1")
            chunk.append(bus.publish_event(event, subject=subjects.host_subject(site, host, "capability")))
        await asyncio.gather(*chunk)


async def rpc(bus: Bus, endpoint: str, response: type[Any]) -> Any:
    return await bus.request(subjects.rpc_subject("metrics", endpoint), SummaryQuery(), response, timeout=10)


def cpu_of(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def postgres_procs(pg: EmbeddedPostgres) -> list[psutil.Process]:
    assert pg.proc is not None
    root = psutil.Process(pg.proc.pid)
    return [root, *root.children(recursive=True)]


async def wal_bytes(pg: EmbeddedPostgres) -> int:
    conn = await asyncpg.connect(pg.dsn)
    try:
        return int(await conn.fetchval("SELECT pg_current_wal_lsn() - '0/0'"))
    finally:
        await conn.close()


async def phase(bus: Bus, args: argparse.Namespace, interval: float, nats_url: str, metrics: psutil.Process,
                pg: EmbeddedPostgres, nats: EmbeddedNats) -> dict[str, Any]:
    n = args.hosts
    per = -(-n // args.generators)
    gens = [subprocess.Popen([sys.executable, __file__, "--generate", "--nats", nats_url, "--first", str(g * per),
                              "--count", str(min(per, n - g * per)), "--devices", str(args.devices), "--interval",
                              str(interval), "--duration", str(args.warmup_s + args.duration_s)],
                             stdout=subprocess.PIPE, text=True)
            for g in range(args.generators)]
    gen_procs = [psutil.Process(g.pid) for g in gens]
    await asyncio.sleep(args.warmup_s)
    assert nats.proc is not None
    pg_procs, nats_proc = postgres_procs(pg), [psutil.Process(nats.proc.pid)]
    wal0 = await wal_bytes(pg)
    t0 = time.monotonic()
    s0 = await rpc(bus, "ingest.stats", IngestStats)
    cpu0 = {"metrics": cpu_of([metrics]), "postgres": cpu_of(pg_procs), "nats": cpu_of(nats_proc),
            "generator": cpu_of(gen_procs)}
    lat: list[float] = []
    p50s: list[float] = []
    p99s: list[float] = []
    backlog: list[int] = []
    rss: list[float] = []
    raw: list[float] = []
    rng = random.Random(int(interval * 1000))
    next_stats = next_raw = time.monotonic()
    while time.monotonic() - t0 < args.duration_s:
        t = time.perf_counter()
        await rpc(bus, "summary", FleetSummary)
        lat.append(time.perf_counter() - t)
        if time.monotonic() >= next_stats:
            next_stats += 2.0
            st: IngestStats = await rpc(bus, "ingest.stats", IngestStats)
            if st.lag_p99_s is not None and st.lag_p50_s is not None:
                p99s.append(st.lag_p99_s)
                p50s.append(st.lag_p50_s)
            info = await bus.js.consumer_info(STREAM_TELEMETRY, DURABLE)
            backlog.append(int(info.num_pending or 0) + int(info.num_ack_pending or 0))
            rss.append(metrics.memory_info().rss / 2**20)
        if time.monotonic() >= next_raw:
            next_raw += 10.0
            end = datetime.now(UTC)
            q = SeriesQuery(scope=Scope.DEVICE, key=f"bench-{rng.randrange(n):05d}/{rng.randrange(args.devices)}",
                            start=end - timedelta(minutes=15), end=end, step_s=10)
            t = time.perf_counter()
            await bus.request(subjects.rpc_subject("metrics", "series"), q, Series, timeout=30)
            raw.append(time.perf_counter() - t)
        await asyncio.sleep(0.2)
    elapsed = time.monotonic() - t0
    s1 = await rpc(bus, "ingest.stats", IngestStats)
    wal1 = await wal_bytes(pg)
    pg_procs = postgres_procs(pg)
    cpu1 = {"metrics": cpu_of([metrics]), "postgres": cpu_of(pg_procs), "nats": cpu_of(nats_proc),
            "generator": cpu_of(gen_procs)}
    sent = 0
    for g in gens:
        out, _ = g.communicate(timeout=args.warmup_s + args.duration_s + 60)
        sent += json.loads(out.strip().splitlines()[-1])["sent"]
    lat.sort()
    return {
        "interval_s": interval, "hosts": n, "devices_per_host": args.devices, "duration_s": round(elapsed, 1),
        "offered_samples_per_s": round(n * args.devices / interval),
        "published_messages": sent,
        "ingested_samples_per_s": round((s1.samples_total - s0.samples_total) / elapsed),
        "samples_per_write": round((s1.samples_total - s0.samples_total) / max(s1.batches_total - s0.batches_total, 1)),
        "lag_p50_s": round(statistics.median(p50s), 3) if p50s else None,
        "lag_p99_s": round(max(p99s), 3) if p99s else None,
        "backlog_max": max(backlog) if backlog else None, "backlog_end": backlog[-1] if backlog else None,
        "summary_p50_ms": round(lat[len(lat) // 2] * 1000, 1),
        "summary_p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000, 1),
        "summary_queries": len(lat),
        "device_raw_series_p50_ms": round(statistics.median(raw) * 1000, 1) if raw else None,
        "device_raw_series_max_ms": round(max(raw) * 1000, 1) if raw else None,
        "metrics_cpu_pct": round(100 * (cpu1["metrics"] - cpu0["metrics"]) / elapsed, 1),
        "metrics_rss_mib_max": round(max(rss), 1) if rss else None,
        "postgres_cpu_pct": round(100 * (cpu1["postgres"] - cpu0["postgres"]) / elapsed, 1),
        "nats_cpu_pct": round(100 * (cpu1["nats"] - cpu0["nats"]) / elapsed, 1),
        "postgres_wal_mib_per_s": round((wal1 - wal0) / 2**20 / elapsed, 1),
        "generator_cpu_pct": round(100 * (cpu1["generator"] - cpu0["generator"]) / elapsed, 1),
        "rejected_samples": s1.rejected_samples_total - s0.rejected_samples_total,
        "load_avg_1m_end": round(os.getloadavg()[0], 2),  # other work on the machine competes for the same cores
    }


async def drain_rate(bus: Bus, metrics: psutil.Process, limit_s: float) -> dict[str, Any]:
    """With the generators stopped: how fast the service works off the backlog (its ingest capacity)."""
    info = await bus.js.consumer_info(STREAM_TELEMETRY, DURABLE)
    backlog0 = int(info.num_pending or 0) + int(info.num_ack_pending or 0)
    s0, c0, t0 = await rpc(bus, "ingest.stats", IngestStats), cpu_of([metrics]), time.monotonic()
    backlog = backlog0
    while backlog > 1000 and time.monotonic() - t0 < limit_s:
        await asyncio.sleep(2.0)
        info = await bus.js.consumer_info(STREAM_TELEMETRY, DURABLE)
        backlog = int(info.num_pending or 0) + int(info.num_ack_pending or 0)
    elapsed = max(time.monotonic() - t0, 1e-6)
    s1 = await rpc(bus, "ingest.stats", IngestStats)
    return {"backlog_start": backlog0, "backlog_end": backlog, "duration_s": round(elapsed, 1),
            "samples_per_s": round((s1.samples_total - s0.samples_total) / elapsed) if backlog0 > 1000 else None,
            "metrics_cpu_pct": round(100 * (cpu_of([metrics]) - c0) / elapsed, 1) if backlog0 > 1000 else None,
            "load_avg_1m_end": round(os.getloadavg()[0], 2)}


async def capacity(bus: Bus, args: argparse.Namespace, nats_url: str, start_service: Any) -> dict[str, Any]:
    """The service's own ingest capacity: with the service stopped, ``--backlog-rounds`` telemetry rounds of every
    host are published at once; the service is started again and the time it takes to work the backlog off
    is measured (nothing else publishes meanwhile)."""
    gen = subprocess.run([sys.executable, __file__, "--generate", "--nats", nats_url, "--first", "0", "--count",
                          str(args.hosts), "--devices", str(args.devices), "--interval", "1", "--duration", "0",
                          "--burst", str(args.backlog_rounds)], capture_output=True, text=True, check=True)
    sent = json.loads(gen.stdout.strip().splitlines()[-1])["sent"]
    info = await bus.js.consumer_info(STREAM_TELEMETRY, DURABLE)
    backlog0 = int(info.num_pending or 0) + int(info.num_ack_pending or 0)
    proc = start_service()
    metrics = psutil.Process(proc.pid)
    await wait_ready(bus)
    s0, c0, t0 = await rpc(bus, "ingest.stats", IngestStats), cpu_of([metrics]), time.monotonic()
    backlog = backlog0
    while backlog > 0 and time.monotonic() - t0 < args.drain_s:
        await asyncio.sleep(0.25)
        info = await bus.js.consumer_info(STREAM_TELEMETRY, DURABLE)
        backlog = int(info.num_pending or 0) + int(info.num_ack_pending or 0)
    s1 = await rpc(bus, "ingest.stats", IngestStats)
    elapsed = max(time.monotonic() - t0, 1e-6)
    return {"published_messages": sent, "backlog_start": backlog0, "backlog_end": backlog, "duration_s": round(elapsed, 2),
            "samples_per_s": round((s1.samples_total - s0.samples_total) / elapsed),
            "metrics_cpu_pct": round(100 * (cpu_of([metrics]) - c0) / elapsed, 1),
            "load_avg_1m_end": round(os.getloadavg()[0], 2)}


async def wait_ready(bus: Bus) -> None:
    for _ in range(300):
        try:
            await rpc(bus, "ingest.stats", IngestStats)
            return
        except Exception:
            await asyncio.sleep(0.2)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from xpumesh.prestart import migrate_all

    intervals = [float(x) for x in args.intervals.split(",")]
    with tempfile.TemporaryDirectory(prefix="xpumesh-bench-") as d:
        os.chmod(d, 0o755)
        root = Path(d)
        nats = EmbeddedNats(root).start()
        pg = EmbeddedPostgres(root, durable=True).start()
        proc: subprocess.Popen[bytes] | None = None
        try:
            await migrate_all(pg.dsn, ["metrics"])
            settings = Settings(nats_url=nats.url, database_url=SecretStr(pg.dsn), metrics_port=free_port(),
                                telemetry_interval_s=max(intervals))
            env = dict(os.environ, XPUMESH_NATS_URL=nats.url, XPUMESH_DATABASE_URL=pg.dsn,
                       XPUMESH_METRICS_PORT=str(settings.metrics_port), XPUMESH_TELEMETRY_INTERVAL_S=str(max(intervals)),
                       XPUMESH_LOG_LEVEL="WARNING")
            log = open(os.environ.get("BENCH_LOG") or root / "metrics.log", "wb")
            profile = ["-m", "cProfile", "-o", args.profile] if args.profile else []

            def start_service() -> subprocess.Popen[bytes]:
                nonlocal proc
                proc = subprocess.Popen([sys.executable, *profile, "-m", "xpumesh", "run", "metrics"], env=env, stdout=log,
                                        stderr=subprocess.STDOUT)
                return proc

            start_service()
            assert proc is not None
            bus = Bus(settings.bus, name="bench")
            await bus.connect(nats.url)
            await bus.ensure_streams()
            await wait_ready(bus)
            hosts = host_ids(args.hosts)
            t = time.monotonic()
            await announce(bus, hosts, args.devices)
            for _ in range(1200):  # the service has every device (or ten minutes passed)
                if (await rpc(bus, "ingest.stats", IngestStats)).devices >= args.hosts * args.devices:
                    break
                await asyncio.sleep(0.5)
            print(f"{args.hosts} hosts x {args.devices} devices announced in {time.monotonic() - t:.1f} s", file=sys.stderr)
            metrics = psutil.Process(proc.pid)
            results = []
            for interval in intervals:
                print(f"phase: interval {interval:g} s ({args.hosts * args.devices / interval:,.0f} samples/s offered)…",
                      file=sys.stderr)
                results.append(await phase(bus, args, interval, nats.url, metrics, pg, nats))
            drain = await drain_rate(bus, metrics, args.drain_s)
            cap = None
            if args.backlog_rounds:
                proc.terminate()
                proc.wait(timeout=60)
                cap = await capacity(bus, args, nats.url, start_service)
            await bus.close()
            return {"bench": "telemetry", "cpus": os.cpu_count(), "phases": results, "drain": drain, "capacity": cap}
        finally:
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            pg.stop()
            nats.stop()


def main() -> int:
    if "--generate" in sys.argv:
        return generator_main([a for a in sys.argv[1:] if a != "--generate"])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hosts", type=int, default=10_000)
    p.add_argument("--devices", type=int, default=8)
    p.add_argument("--intervals", default="5,1,0.8",
                   help="telemetry interval of each phase, seconds (0.8: 100,000 samples/s from 10,000 x 8)")
    p.add_argument("--duration-s", type=float, default=120.0)
    p.add_argument("--warmup-s", type=float, default=20.0)
    p.add_argument("--generators", type=int, default=1, help="telemetry generator processes")
    p.add_argument("--drain-s", type=float, default=60.0, help="after the phases: time to watch the backlog drain")
    p.add_argument("--backlog-rounds", type=int, default=10,
                   help="capacity: telemetry rounds of every host published while the service is stopped (0: skip)")
    p.add_argument("--profile", default=None, help="run the metrics service under cProfile, writing this file")
    args = p.parse_args()
    if args.profile:
        args.profile = str(Path(args.profile).resolve())
    result = asyncio.run(run(args))
    cols = [("interval_s", "interval s"), ("offered_samples_per_s", "offered/s"), ("ingested_samples_per_s", "ingested/s"),
            ("samples_per_write", "samples/write"),
            ("lag_p50_s", "lag p50 s"), ("lag_p99_s", "lag p99 s"), ("backlog_max", "backlog max"),
            ("backlog_end", "backlog end"), ("summary_p50_ms", "summary p50 ms"), ("summary_p99_ms", "summary p99 ms"),
            ("device_raw_series_p50_ms", "raw series p50 ms"), ("device_raw_series_max_ms", "raw series max ms"),
            ("metrics_cpu_pct", "metrics CPU %"), ("metrics_rss_mib_max", "metrics RSS MiB"),
            ("postgres_cpu_pct", "postgres CPU %"), ("postgres_wal_mib_per_s", "postgres WAL MiB/s"), ("nats_cpu_pct", "nats CPU %"), ("generator_cpu_pct", "generator CPU %"),
            ("load_avg_1m_end", "load avg (1 min)")]
    print(f"telemetry ingest, {result['cpus']} CPUs, {args.hosts} hosts x {args.devices} devices")
    for key, label in cols:
        print(f"  {label:<18}" + "".join(f"{ph[key]!s:>14}" for ph in result["phases"]))
    d = result["drain"]
    if d["samples_per_s"] is not None:
        print(f"  backlog drain (generators stopped): {d['samples_per_s']:,} samples/s at {d['metrics_cpu_pct']}% CPU "
              f"({d['backlog_start']:,} → {d['backlog_end']:,} messages in {d['duration_s']} s)")
    c = result["capacity"]
    if c is not None:
        print(f"  capacity (a pre-built backlog, nothing else publishing): {c['samples_per_s']:,} samples/s at "
              f"{c['metrics_cpu_pct']}% CPU ({c['backlog_start']:,} → {c['backlog_end']:,} messages in {c['duration_s']} s)")
    print(json.dumps(result, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
