"""Endpoint benchmark: requests through /v1/endpoints/ against calling the replicas directly, in one run.

A fresh embedded NATS and PostgreSQL, ``prestart``, the registry, scheduler and gateway as real
processes (``xpumesh run``) and one real agent of this machine (``xpumesh agent run`` with its CPUs
as one device of type cpu). For each replica count (``--replicas``, default 1, 4 and 16) a service
of ``xpumesh/examples/echo.py`` with that many replicas is submitted and waited for until every
replica is ready; then for each ``--concurrency`` (default 50 and 200) bare keep-alive HTTP/1.1
clients (``bench.api.RawClient``, one connection each) send ``GET`` back to back for ``--duration``
seconds, first through the gateway (``/v1/endpoints/<name>/ping``), then straight to the replicas'
own URLs (each client bound to one replica, round robin): the baseline, in the same process, on
the same machine. Reported per run: requests/s, p50/p99 latency, errors; and the gateway's added
p50/p99 (through minus direct).

``--simulated N`` (default 16) adds a row of N simulated replicas: a fleet simulator (``xpumesh
sim``) whose built-in responder answers for every simulated replica, through the gateway only
(they have no socket of their own to call directly). Then two faults under ``--fault-clients``
clients on a three-replica service of real processes: one replica's process killed with SIGKILL
(errors counted, and the time until the service is back to three ready replicas), and a rolling
update (``PATCH`` with a changed spec; errors counted, and the time until the old version has
stopped). The goal is 0 failed requests that could be retried: a request a replica was already
answering when it was killed cannot be retried by the gateway (it may have had effects), so such
a loss is shown, not hidden.

Everything shares the machine with the load generator, and the echo replicas are the standard
library's threading HTTP server, so on a small machine the replicas themselves are the ceiling:
compare the two rows of one run, not runs on different machines. Prints a table, then ONE JSON
object on its last line.

    python bench/endpoints.py
    python bench/endpoints.py --replicas 4 --concurrency 50 --duration 5 --simulated 0 --no-faults
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.api import RawClient, until  # noqa: E402
from bench.kit import spawn, start_mesh, stop_all  # noqa: E402
from libs.bus import subjects  # noqa: E402
from libs.bus.connection import Bus  # noqa: E402
from xpumesh.prestart import prestart  # noqa: E402

ADMIN_KEY = "xpm_bench_" + uuid.uuid4().hex
SERVICES = ("registry", "scheduler", "gateway")
ECHO = REPO / "xpumesh" / "examples" / "echo.py"


def replica_python() -> str:
    """A Python every replica uid can run (as root the agent runs each replica under a uid of its own)."""
    system = shutil.which("python3", path="/usr/bin:/bin")
    return system if os.geteuid() == 0 and system else sys.executable


async def load(port: int, paths: list[str], concurrency: int, duration: float,
               during: Callable[[], Coroutine[Any, Any, Any]] | None = None) -> dict[str, Any]:
    """``concurrency`` clients, client ``i`` sending ``paths[i % len(paths)]`` to 127.0.0.1:``port``s;
    ``during`` runs beside the measured phase (a fault), and what it returns is reported as ``fault``."""
    auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
    latencies: list[float] = []
    errors: dict[str, int] = {}
    stop_at = 0.0
    fault: asyncio.Task[Any] | None = None

    async def worker(raw: RawClient, path: str) -> None:
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            try:
                status = await raw.request("GET", path, auth)
            except (OSError, asyncio.IncompleteReadError) as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                continue
            if status < 300:
                latencies.append((time.perf_counter() - started) * 1000)
            else:
                errors[str(status)] = errors.get(str(status), 0) + 1

    targets = [(int(p.split(":", 1)[0]), p.split(":", 1)[1]) for p in paths]
    clients = [(RawClient(targets[i % len(targets)][0] or port), targets[i % len(targets)][1])
               for i in range(concurrency)]
    try:
        for i in range(0, concurrency, 16):
            await asyncio.gather(*(c.connect() for c, _ in clients[i:i + 16]))
        stop_at = time.monotonic() + min(2.0, duration / 4)
        await asyncio.gather(*(worker(c, p) for c, p in clients))  # warm-up
        latencies.clear()
        errors.clear()
        started = time.monotonic()
        stop_at = started + duration
        fault = asyncio.create_task(during()) if during is not None else None
        await asyncio.gather(*(worker(c, p) for c, p in clients))
        elapsed = time.monotonic() - started
        happened = await fault if fault is not None else None
    finally:
        for c, _ in clients:
            await c.close()
    ordered = sorted(latencies)

    def q(x: float) -> float | None:
        return round(ordered[min(len(ordered) - 1, int(x * len(ordered)))], 2) if ordered else None

    out = {"requests": len(ordered), "rps": round(len(ordered) / elapsed, 1) if elapsed else 0.0,
           "p50_ms": q(0.5), "p99_ms": q(0.99), "errors": errors}
    if fault is not None:
        out["fault"] = happened
    return out


async def ready_urls(api: httpx.AsyncClient, wid: str, n: int, timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    view: dict[str, Any] = {}
    while time.monotonic() < deadline:
        view = (await api.get(f"/v1/workloads/{wid}")).json()
        urls = [p["endpoint"] for p in view["placement"] if p.get("ready") and p.get("endpoint")]
        listed = (await api.get("/v1/endpoints")).json()["items"]
        known = next((i["replicas_ready"] for i in listed if i["workloads"] == [wid]), 0)
        if len(urls) == n and known == n:
            return urls
        await asyncio.sleep(0.5)
    raise RuntimeError(f"{wid}: {n} replicas not ready within {timeout} s: state {view.get('state')}, "
                       f"{view.get('explanation') or view.get('message')}, placement {view.get('placement')}")


def listener_pid(port: int) -> int:
    """The process listening on 127.0.0.1:``port`` (a replica of this machine's agent)."""
    for c in psutil.net_connections(kind="tcp"):
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
            return c.pid
    raise RuntimeError(f"nothing listens on port {port}")


def echo_spec(name: str, replicas: int, **env: str) -> dict[str, Any]:
    return {"name": name, "kind": "service", "replicas": replicas, "hardware": {"type": "cpu"},
            "service": {"port": 8000, "readiness_path": "/healthz"},
            "variants": {"cpu": {"command": [replica_python(), str(ECHO)], "env": env}}}


def show(label: str, r: dict[str, Any]) -> None:
    print(f"{label} | {r['rps']:>8} req/s p50 {r['p50_ms']} p99 {r['p99_ms']} ms errors {r['errors']}"
          + (f" | {r['fault']}" if "fault" in r else ""), flush=True)


async def faults(api: httpx.AsyncClient, port: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    """A three-replica service under load: one replica killed -9, then a rolling update."""
    spec = echo_spec("echo-faults", 3, VERSION="1")
    r = await api.post("/v1/workloads", json=spec)
    r.raise_for_status()
    wid = r.json()["id"]
    urls = await ready_urls(api, wid, 3, args.ready_timeout)
    rows: list[dict[str, Any]] = []

    async def kill() -> dict[str, Any]:
        await asyncio.sleep(args.fault_duration / 4)
        os.kill(listener_pid(int(urls[0].rsplit(":", 1)[1])), 9)
        killed = time.monotonic()
        await ready_urls(api, wid, 3, args.ready_timeout)
        return {"killed": urls[0], "back_to_3_ready_s": round(time.monotonic() - killed, 2)}

    through = ["0:/v1/endpoints/echo-faults/ping"]
    rows.append({"fault": "replica killed", "clients": args.fault_clients,
                 **await load(port, through, args.fault_clients, args.fault_duration, kill)})
    show(f"replica kill -9 {args.fault_clients:>4} clients", rows[-1])

    async def update() -> dict[str, Any]:
        await asyncio.sleep(args.fault_duration / 6)
        started = time.monotonic()
        r = await api.patch(f"/v1/workloads/{wid}", json={"spec": echo_spec("echo-faults", 3, VERSION="2")})
        r.raise_for_status()
        new = r.json()["id"]
        deadline = started + args.ready_timeout
        while time.monotonic() < deadline:
            old = (await api.get(f"/v1/workloads/{wid}")).json()
            if old["state"] in ("stopped", "succeeded", "failed", "cancelled"):
                break
            await asyncio.sleep(0.2)
        return {"new": new, "old_state": old["state"], "old_stopped_after_s": round(time.monotonic() - started, 2)}

    rows.append({"fault": "rolling update", "clients": args.fault_clients,
                 **await load(port, through, args.fault_clients, args.fault_duration, update)})
    show(f"rolling update  {args.fault_clients:>4} clients", rows[-1])
    new_id = rows[-1]["fault"]["new"]
    (await api.delete(f"/v1/workloads/{new_id}")).raise_for_status()
    return rows


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    mesh = start_mesh(workdir, ADMIN_KEY, XPUMESH_SITE="hangzhou", XPUMESH_AGENT__CPU_ALLOCATION_RATIO="32",
                      XPUMESH_AGENT__STOP_REPLICAS_ON_EXIT="true", XPUMESH_AGENT__STATE_INTERVAL_S="2")
    settings, env = mesh.settings, mesh.env
    procs: list[subprocess.Popen[bytes]] = []
    out: dict[str, Any] = {"duration_s": args.duration, "cpus": os.cpu_count(), "results": []}
    try:
        await prestart(settings)
        bus = Bus(settings.bus, name="bench")
        await bus.connect(mesh.nats.url)
        await bus.ensure_streams()
        for service in SERVICES:
            procs.append(spawn([sys.executable, "-m", "xpumesh", "run", service], env, workdir / f"{service}.log"))
            await until(lambda s=service: bus.nc.request(subjects.rpc_subject(s, "health"), b"{}", timeout=1), 60,
                        f"{service} up")
        await bus.close()
        procs.append(spawn([sys.executable, "-m", "xpumesh", "agent", "run"], env, workdir / "agent.log"))
        async with httpx.AsyncClient(base_url=mesh.base_url, timeout=30,
                                     headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as api:
            for n in args.replicas:
                spec = echo_spec(f"echo-{n}", n)
                r = await api.post("/v1/workloads", json=spec)
                r.raise_for_status()
                wid = r.json()["id"]
                urls = await ready_urls(api, wid, n, args.ready_timeout)
                direct = [f"{u.rsplit(':', 1)[1]}:/ping" for u in urls]
                for c in args.concurrency:
                    through = await load(mesh.port, [f"0:/v1/endpoints/echo-{n}/ping"], c, args.duration)
                    base = await load(mesh.port, direct, c, args.duration)
                    row = {"replicas": n, "clients": c, "gateway": through, "direct": base}
                    if through["p50_ms"] is not None and base["p50_ms"] is not None:
                        row["added_p50_ms"] = round(through["p50_ms"] - base["p50_ms"], 2)
                        row["added_p99_ms"] = round(through["p99_ms"] - base["p99_ms"], 2)
                    out["results"].append(row)
                    print(f"{n:>3} replicas {c:>4} clients | gateway {through['rps']:>8} req/s p50 "
                          f"{through['p50_ms']} p99 {through['p99_ms']} ms errors {through['errors']} | direct "
                          f"{base['rps']:>8} req/s p50 {base['p50_ms']} p99 {base['p99_ms']} ms errors "
                          f"{base['errors']} | added p50 {row.get('added_p50_ms')} p99 {row.get('added_p99_ms')} ms",
                          flush=True)
                (await api.delete(f"/v1/workloads/{wid}")).raise_for_status()
            if args.simulated:
                out["simulated"] = await simulated(api, mesh.port, args, env, workdir, procs)
            if args.faults:
                out["faults"] = await faults(api, mesh.port, args)
    finally:
        stop_all(procs, mesh.nats, mesh.pg)
    return out


async def simulated(api: httpx.AsyncClient, port: int, args: argparse.Namespace, env: dict[str, str],
                    workdir: Path, procs: list[subprocess.Popen[bytes]]) -> list[dict[str, Any]]:
    """N simulated replicas (a share of a simulated GPU each), answered by the simulator's responder."""
    procs.append(spawn([sys.executable, "-m", "xpumesh", "sim", "--hosts", str(max(8, args.simulated // 4))],
                       env, workdir / "sim.log"))
    n = args.simulated
    spec = echo_spec("echo-sim", n)
    spec.update(hardware={"type": "gpu", "share": 0.25}, variants={"default": spec["variants"]["cpu"]})
    deadline = time.monotonic() + args.ready_timeout
    while True:  # the simulated hosts take a moment to report in
        r = await api.post("/v1/workloads", json=spec)
        if r.status_code == 201 or time.monotonic() > deadline:
            break
        await asyncio.sleep(1.0)
    r.raise_for_status()
    wid = r.json()["id"]
    await ready_urls(api, wid, n, args.ready_timeout)
    rows = []
    for c in args.concurrency:
        row = {"replicas": n, "simulated": True, "clients": c,
               "gateway": await load(port, ["0:/v1/endpoints/echo-sim/ping"], c, args.duration)}
        rows.append(row)
        show(f"{n:>3} simulated {c:>4} clients | gateway", row["gateway"])
    (await api.delete(f"/v1/workloads/{wid}")).raise_for_status()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--ready-timeout", type=float, default=120.0)
    parser.add_argument("--simulated", type=int, default=16, help="simulated replicas for one more row (0: none)")
    parser.add_argument("--faults", action=argparse.BooleanOptionalAction, default=True,
                        help="a replica kill and a rolling update under load")
    parser.add_argument("--fault-clients", type=int, default=50)
    parser.add_argument("--fault-duration", type=float, default=20.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="xpumesh-bench-endpoints-") as tmp:
        out = asyncio.run(run(args, Path(tmp)))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
