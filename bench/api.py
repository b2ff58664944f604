"""API benchmark: requests/s and latency of the gateway against a 10,000-host fleet.

A fresh embedded NATS and PostgreSQL, ``prestart``, then the registry, inventory,
scheduler and gateway as real processes (``xpumesh run``) and the fleet simulator as a real
process (``--hosts`` hosts with ``--devices`` accelerators each; heartbeats and telemetry
slowed to ``--interval`` so the fleet idles during the measurement). Once the inventory
holds every host, ``--concurrency`` async httpx clients on loopback each send requests
back to back for ``--duration`` seconds, per endpoint:

* ``GET /v1/devices?hardware_type=gpu`` (one page of 100);
* ``POST /v1/workloads`` (a one-GPU workload, a fresh ``Idempotency-Key`` each), when the
  gateway has that route;
* ``POST /v1/workloads/batch`` (``--batch-size`` such workloads per request, one transaction);
  its ``wl/s`` column is workloads accepted per second, beside the single submit's. After each submit run, ``--latency-sample`` of the workloads it
  created (spread over the run) are followed until they run: submit→placed and
  submit→running come from each workload's history (scheduler time, so the load generator's
  own delays are not in them), reported as p50/p99/max with how many had not run within
  ``--latency-wait`` seconds.

The load generator shares the machine with everything it measures. By default it is a bare
asyncio HTTP/1.1 keep-alive client (one connection per simulated client): a pooled
``httpx.AsyncClient`` (``--client httpx``) spends its time in its own pool bookkeeping above
a few dozen concurrent requests and measures itself rather than the gateway. Prints a
table, then ONE JSON object on its last line.

    python bench/api.py                                   # 10,000 hosts, 50 and 200 clients, 10 s each
    python bench/api.py --hosts 1000 --duration 5 --concurrency 50
    python bench/api.py --endpoints post                  # only the submit runs
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.kit import spawn, start_mesh, stop_all  # noqa: E402
from libs.bus import subjects  # noqa: E402
from libs.bus.connection import Bus  # noqa: E402
from xpumesh.prestart import prestart  # noqa: E402

ADMIN_KEY = "xpm_bench_" + uuid.uuid4().hex
SERVICES = ("registry", "inventory", "scheduler", "gateway")


@dataclass
class Result:
    endpoint: str
    concurrency: int
    per_request: int = 1  # workloads each request submits (a batch submits many)
    latencies_ms: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    cpu_pct: dict[str, float] = field(default_factory=dict)

    def quantile(self, q: float) -> float | None:
        if not self.latencies_ms:
            return None
        ordered = sorted(self.latencies_ms)
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

    def summary(self) -> dict[str, Any]:
        ok = len(self.latencies_ms)
        return {"endpoint": self.endpoint, "concurrency": self.concurrency, "requests": ok + sum(self.errors.values()),
                "ok": ok, "errors": self.errors, "rps": round(ok / self.elapsed_s, 1) if self.elapsed_s else 0.0,
                "workloads_per_s": round(ok * self.per_request / self.elapsed_s, 1)
                if self.elapsed_s and self.endpoint.startswith("POST") else None,
                "p50_ms": self.quantile(0.50), "p99_ms": self.quantile(0.99),
                "cpu_pct": {k: round(v, 1) for k, v in sorted(self.cpu_pct.items(), key=lambda kv: -kv[1])}}


def _cpu(proc: psutil.Process) -> float:
    """CPU % since the previous call (100 = one core)."""
    try:
        return float(proc.cpu_percent())
    except psutil.Error:
        return 0.0


async def until(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):
            value = await check()
            if value:
                return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout:.0f}s (see the logs in the work folder)")
        await asyncio.sleep(0.5)


async def fleet_size(api: httpx.AsyncClient) -> int:
    r = await api.get("/v1/sites", params={"limit": 500})
    r.raise_for_status()
    return sum(int(s.get("hosts", 0)) for s in r.json()["items"])


def workload_body(i: int) -> dict[str, Any]:
    return {"name": f"bench-{i}", "hardware": {"type": "gpu", "count": 1}, "duration_s": 30.0}


class RawClient:
    """A bare HTTP/1.1 keep-alive client on asyncio streams: one connection, one request at a time."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def request(self, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> int:
        await self.connect()
        assert self.reader is not None and self.writer is not None
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        self.writer.write(head.encode() + body)
        try:
            status_line = await self.reader.readuntil(b"\r\n")
            raw = await self.reader.readuntil(b"\r\n\r\n")
            fields = dict(line.split(b":", 1) for line in raw.split(b"\r\n") if b":" in line)
            lowered = {k.strip().lower(): v.strip() for k, v in fields.items()}
            if b"content-length" in lowered:
                await self.reader.readexactly(int(lowered[b"content-length"]))
            else:  # chunked
                while True:
                    size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
                    await self.reader.readexactly(size + 2)
                    if size == 0:
                        break
        except (asyncio.IncompleteReadError, ConnectionError):
            self.writer = None
            raise
        return int(status_line.split()[1])

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def load(base: str, endpoint: str, concurrency: int, duration: float, watched: dict[str, psutil.Process],
               client_kind: str, batch_size: int = 1) -> Result:
    method, path = endpoint.split(" ", 1)
    batch = path.endswith("/batch")
    result = Result(endpoint, concurrency, per_request=batch_size if batch else 1)
    counter = iter(range(10**9))
    auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
    port = int(base.rsplit(":", 1)[1])
    pooled = httpx.AsyncClient(base_url=base, timeout=30.0, headers=auth, limits=httpx.Limits(
        max_connections=concurrency, max_keepalive_connections=concurrency)) if client_kind == "httpx" else None
    stop_at = 0.0

    async def send(raw: RawClient, i: int) -> int:
        if batch:
            body = json.dumps({"workloads": [workload_body(i * batch_size + j) for j in range(batch_size)]}).encode()
        else:
            body = json.dumps(workload_body(i)).encode() if method == "POST" else b""
        headers = {**auth, "Content-Type": "application/json", "Idempotency-Key": uuid.uuid4().hex} \
            if method == "POST" else auth
        if pooled is not None:
            r = await pooled.request(method, path, content=body or None, headers=headers)
            return r.status_code
        return await raw.request(method, path, headers, body)

    async def worker(raw: RawClient) -> None:
        while time.monotonic() < stop_at:
                i = next(counter)
                started = time.perf_counter()
                try:
                    status = await send(raw, i)
                except (httpx.HTTPError, OSError, asyncio.IncompleteReadError) as exc:
                    result.errors[type(exc).__name__] = result.errors.get(type(exc).__name__, 0) + 1
                    continue
                if status < 300:
                    result.latencies_ms.append((time.perf_counter() - started) * 1000)
                else:
                    result.errors[str(status)] = result.errors.get(str(status), 0) + 1

    # Connections are opened a few at a time before anything is measured and kept for the whole run:
    # hundreds of simultaneous connects overflow the listen queue, and SYN retries would be measured.
    clients = [RawClient(port) for _ in range(concurrency)]
    try:
        for i in range(0, concurrency, 16):
            await asyncio.gather(*(c.connect() for c in clients[i:i + 16]))
        stop_at = time.monotonic() + min(2.0, duration / 4)
        await asyncio.gather(*(worker(c) for c in clients))  # warm-up: caches, pools
        result.latencies_ms.clear()
        result.errors.clear()
        for proc in watched.values():
            _cpu(proc)
        started = time.monotonic()
        stop_at = started + duration
        await asyncio.gather(*(worker(c) for c in clients))
        result.elapsed_s = time.monotonic() - started
        result.cpu_pct = {name: _cpu(proc) for name, proc in watched.items()}
    finally:
        for c in clients:
            await c.close()
        if pooled is not None:
            await pooled.aclose()
    return result


def _first(history: list[dict[str, Any]], state: str) -> datetime | None:
    return next((datetime.fromisoformat(h["at"]) for h in history if h["to_state"] == state), None)


def _spread(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    return {"n": len(ordered), "p50_ms": round(ordered[len(ordered) // 2], 1),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 1),
            "max_ms": round(ordered[-1], 1)}


async def submit_latency(base: str, sample: int, wait_s: float) -> dict[str, Any]:
    """Follow ``sample`` of the workloads the last submit run created (newest page, evenly spread) until they
    run; submit→placed and submit→running from their histories."""
    async with httpx.AsyncClient(base_url=base, timeout=30.0, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as api:
        items = (await api.get("/v1/workloads", params={"limit": 500})).json()["items"]
        ids = [w["id"] for w in items[:: max(1, len(items) // sample)]][:sample]
        placed: dict[str, float] = {}
        running: dict[str, float] = {}
        deadline = time.monotonic() + wait_s
        while ids and len(running) < len(ids) and time.monotonic() < deadline:
            for wid in [w for w in ids if w not in running]:
                history = (await api.get(f"/v1/workloads/{wid}")).json().get("history", [])
                submitted = _first(history, "pending")
                if submitted is None:
                    continue
                for state, into in (("placed", placed), ("running", running)):
                    at = _first(history, state)
                    if at is not None:
                        into[wid] = (at - submitted).total_seconds() * 1000
            await asyncio.sleep(0.5)
    return {"followed": len(ids), "not_running": len(ids) - len(running),
            "submit_to_placed": _spread(list(placed.values())), "submit_to_running": _spread(list(running.values()))}


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    mesh = start_mesh(workdir, ADMIN_KEY, XPUMESH_HEARTBEAT_INTERVAL_S=str(args.interval),
                      XPUMESH_TELEMETRY_INTERVAL_S=str(args.interval),
                      XPUMESH_SIM__DEVICE_FAULT_PER_HOUR="0", XPUMESH_SIM__HOST_LOSS_PER_HOUR="0")
    nats, pg, settings, env, base = mesh.nats, mesh.pg, mesh.settings, mesh.env, mesh.base_url
    procs: list[subprocess.Popen[bytes]] = []
    out: dict[str, Any] = {"hosts": args.hosts, "devices_per_host": args.devices, "duration_s": args.duration,
                           "client": args.client,
                           "cpus": os.cpu_count(), "results": [], "missing": []}
    try:
        await prestart(settings)
        bus = Bus(settings.bus, name="bench")
        await bus.connect(nats.url)
        await bus.ensure_streams()
        for service in SERVICES:
            procs.append(spawn([sys.executable, "-m", "xpumesh", "run", service], env, workdir / f"{service}.log"))
            await until(lambda s=service: bus.nc.request(subjects.rpc_subject(s, "health"), b"{}", timeout=1), 60,
                        f"{service} up")
        watched = {name: psutil.Process(p.pid) for name, p in zip(SERVICES, procs, strict=True)}
        t0 = time.monotonic()
        procs.append(spawn([sys.executable, "-m", "agent.sim.main", "--hosts", str(args.hosts), "--devices-per-host",
                            str(args.devices)], env, workdir / "sim.log"))
        async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as api:
            await until(lambda: _at_least(api, args.hosts), args.register_timeout, f"{args.hosts} hosts in the inventory")
            out["populate_s"] = round(time.monotonic() - t0, 1)
            paths = (await api.get("/openapi.json")).json()["paths"]
        watched.update({"sim": psutil.Process(procs[-1].pid), "bench": psutil.Process(),
                        "nats": psutil.Process(nats.proc.pid),  # type: ignore[union-attr]
                        "postgres": psutil.Process(pg.proc.pid)})  # type: ignore[union-attr]
        await bus.close()
        endpoints = ["GET /v1/devices?hardware_type=gpu"] if "get" in args.endpoints else []
        if "post" in args.endpoints and "post" in paths.get("/v1/workloads", {}):
            endpoints.append("POST /v1/workloads")
        elif "post" in args.endpoints:
            out["missing"].append("POST /v1/workloads (the gateway has no such route yet)")
        if "batch" in args.endpoints and "post" in paths.get("/v1/workloads/batch", {}):
            endpoints.append("POST /v1/workloads/batch")
        elif "batch" in args.endpoints:
            out["missing"].append("POST /v1/workloads/batch (the gateway has no such route yet)")
        for endpoint in endpoints:
            for c in args.concurrency:
                print(f"  measuring {endpoint} c={c}", file=sys.stderr, flush=True)
                res = await load(base, endpoint, c, args.duration, watched, args.client, args.batch_size)
                summary = res.summary()
                if endpoint.startswith("POST") and args.latency_sample > 0:
                    summary["latency"] = await submit_latency(base, args.latency_sample, args.latency_wait)
                out["results"].append(summary)
                print(f"  {endpoint:38} c={c:<4} {summary['rps']:>8} req/s, {summary['workloads_per_s']} workloads/s",
                      file=sys.stderr, flush=True)
    finally:
        stop_all(procs, pg, nats)
    return out


async def _at_least(api: httpx.AsyncClient, hosts: int) -> bool:
    return await fleet_size(api) >= hosts


def table(out: dict[str, Any]) -> str:
    lines = [f"fleet: {out['hosts']} hosts x {out['devices_per_host']} devices (populated in {out.get('populate_s')} s); "
             f"{out['cpus']} CPUs shared by the {out['client']} load generator and the mesh",
             f"{'endpoint':38} {'clients':>7} {'req/s':>9} {'wl/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} "
             f"{'gw cpu%':>8} {'sched cpu%':>10}"]
    for r in out["results"]:
        lines.append(f"{r['endpoint']:38} {r['concurrency']:>7} {r['rps']:>9} {r['workloads_per_s']!s:>9} "
                     f"{r['p50_ms']!s:>8} {r['p99_ms']!s:>8} {sum(r['errors'].values()):>7} "
                     f"{r['cpu_pct'].get('gateway', 0.0):>8} {r['cpu_pct'].get('scheduler', 0.0):>10}")
    for r in out["results"]:
        lat = r.get("latency")
        if lat:
            lines.append(f"c={r['concurrency']}: of {lat['followed']} submitted workloads followed, "
                         f"{lat['not_running']} not running; submit->placed {lat['submit_to_placed']}, "
                         f"submit->running {lat['submit_to_running']}")
    lines += [f"missing: {m}" for m in out["missing"]]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hosts", type=int, default=10_000)
    p.add_argument("--devices", type=int, default=8, help="accelerators per host")
    p.add_argument("--concurrency", type=int, nargs="+", default=[50, 200])
    p.add_argument("--duration", type=float, default=10.0, help="seconds measured per endpoint and concurrency")
    p.add_argument("--interval", type=float, default=60.0, help="heartbeat/telemetry interval of the idle fleet")
    p.add_argument("--register-timeout", type=float, default=600.0)
    p.add_argument("--client", choices=["raw", "httpx"], default="raw",
                   help="load generator: a bare asyncio HTTP/1.1 client (default) or one pooled httpx.AsyncClient")
    p.add_argument("--batch-size", type=int, default=100, help="workloads per POST /v1/workloads/batch request")
    p.add_argument("--endpoints", nargs="+", choices=["get", "post", "batch"], default=["get", "post", "batch"],
                   help="which endpoints to measure")
    p.add_argument("--latency-sample", type=int, default=50,
                   help="workloads followed after each submit run for submit->running (0: none)")
    p.add_argument("--latency-wait", type=float, default=60.0, help="how long they are followed (s)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="xpumesh-bench-api-") as d:
        out = asyncio.run(run(args, Path(d)))
    print(table(out))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
