"""The fault suite's mesh: every service, two fleet simulators, nats-server and PostgreSQL as processes.

Each process reaches NATS through a ``TcpProxy`` of its own (so one link can be cut or slowed);
the test process talks to NATS directly. ``Load`` submits and stops workloads through the
gateway's REST API and records every 2xx; ``EventLog`` records every workload event id that
arrives at a webhook receiver and at an SSE reader. ``Checks`` holds the system of record
(PostgreSQL) against both.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from pydantic import SecretStr

from libs.bus import subjects
from libs.bus.connection import Bus
from libs.config import Settings
from libs.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from tests.conftest import REPO, TEST_ADMIN_KEY
from tests.faults.proxy import TcpProxy
from tests.integration.test_api_kit import FAST_WEBHOOK_ENV

SERVICES = ("registry", "inventory", "scheduler", "metrics", "gateway")
SIM_B = "sim-b"  # the simulator whose hosts are lost; its hosts' ids start with B_PREFIX
B_PREFIX = "b-"
B_SITE = "lishui"  # the lost hosts' site, theirs alone (simulator A's ten hosts take the other ten demo sites)
ADMIN = {"Authorization": f"Bearer {TEST_ADMIN_KEY}"}
ACTIVE = ("placed", "starting", "running")
QUEUED = ("pending", "preempted", "rescheduled")
TERMINAL = ("succeeded", "failed", "stopped")

ENV = {
    "XPUMESH_HEARTBEAT_INTERVAL_S": "1",
    "XPUMESH_TELEMETRY_INTERVAL_S": "2",
    "XPUMESH_LOG_LEVEL": "WARNING",
    "XPUMESH_REGISTRY__SWEEP_INTERVAL_S": "0.5",
    "XPUMESH_REGISTRY__FLUSH_INTERVAL_S": "1",
    "XPUMESH_SCHEDULER__LOST_SWEEP_INTERVAL_S": "2",
    "XPUMESH_SCHEDULER__ORPHAN_STOP_INTERVAL_S": "1",
    "XPUMESH_AGENT__STATE_INTERVAL_S": "2",
    "XPUMESH_BUS__REDELIVERY_MAX_S": "4",
    "XPUMESH_GATEWAY__RATE_PER_S": "100000",
    "XPUMESH_GATEWAY__RATE_BURST": "100000",
    **FAST_WEBHOOK_ENV,
    "XPUMESH_SIM__DEVICE_FAULT_PER_HOUR": "0",
    "XPUMESH_SIM__HOST_LOSS_PER_HOUR": "0",
}


def utc_now() -> float:
    return time.time()


@dataclass
class Process:
    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.popen = subprocess.Popen(self.argv, env=self.env, stdout=self.log.open("ab"), stderr=subprocess.STDOUT,
                                      cwd=REPO)

    def kill(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(timeout=10)

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None


class Load:
    """Clients: a workload submitted every ``interval_s``, one in four of them stopped a little later.

    ``data_site``: one submission in three says its input data (``DATA_GIB``) lies there. Moving that much
    costs placement more than opening an empty host, so such work goes to that site's hosts while they
    have room, and elsewhere while they do not (a host loss moves it like any other)."""

    DATA_GIB = 100_000.0

    def __init__(self, base_url: str, interval_s: float = 0.4, data_site: str | None = None) -> None:
        self.base_url, self.interval_s, self.data_site = base_url, interval_s, data_site
        self.accepted: dict[str, float] = {}
        self.stopped: set[str] = set()
        self.refused: Counter[str] = Counter()
        self.rng = random.Random(11)
        self.n = 0

    async def run(self) -> None:
        async with httpx.AsyncClient(base_url=self.base_url, headers=ADMIN, timeout=8) as c:
            while True:
                await asyncio.gather(self._submit(c), asyncio.sleep(self.interval_s))
                if self.n % 4 == 0 and len(self.accepted) > 5:
                    await self._stop(c)

    async def _submit(self, c: httpx.AsyncClient) -> None:
        self.n += 1
        spec: dict[str, Any] = {"name": f"f{self.n}", "hardware": {"type": "any", "count": 1},
                                "duration_s": self.rng.uniform(4, 14)}
        if self.data_site is not None and self.n % 3 == 0:
            spec["placement"] = {"data_site": self.data_site, "data_gib": self.DATA_GIB}
        try:
            r = await c.post("/v1/workloads", json=spec, headers={"Idempotency-Key": f"faults-{self.n}"})
        except httpx.HTTPError as exc:
            self.refused[type(exc).__name__] += 1
            return
        if 200 <= r.status_code < 300:
            self.accepted[r.json()["id"]] = utc_now()
        else:
            self.refused[str(r.status_code)] += 1

    async def _stop(self, c: httpx.AsyncClient) -> None:
        wid = self.rng.choice(list(self.accepted)[-20:])
        with contextlib.suppress(httpx.HTTPError):
            r = await c.delete(f"/v1/workloads/{wid}")
            if 200 <= r.status_code < 300:
                self.stopped.add(wid)


class EventLog:
    """Every workload event id that reached the webhook receiver and the SSE reader (with repeats)."""

    def __init__(self, webhook_ids: Callable[[], list[str]]) -> None:
        self.webhook_ids = webhook_ids
        self.sse: list[str] = []
        self.sse_reconnects = 0

    @property
    def webhook(self) -> list[str]:
        return self.webhook_ids()

    async def read_sse(self, base_url: str) -> None:
        last: str | None = None
        while True:
            headers = dict(ADMIN, **({"Last-Event-ID": last} if last else {}))
            try:
                async with httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(5, read=30)) as c, \
                        c.stream("GET", "/v1/events", params={"type": "io.xpumesh.workload.*"},
                                 headers=headers) as r:
                    if r.status_code != 200:
                        raise httpx.HTTPError(f"status {r.status_code}")
                    fields: dict[str, str] = {}
                    async for line in r.aiter_lines():
                        if line == "":
                            if "data" in fields:
                                self.sse.append(json.loads(fields["data"])["id"])
                                last = fields.get("id", last)
                            fields = {}
                        elif not line.startswith(":"):
                            name, _, value = line.partition(":")
                            fields[name] = value.removeprefix(" ")
            except (httpx.HTTPError, OSError, json.JSONDecodeError):
                pass
            self.sse_reconnects += 1
            await asyncio.sleep(0.3)


@dataclass
class FaultMesh:
    """The mesh as processes under ``workdir``. ``env`` overrides the processes' settings (``ENV``);
    ``proxied``: each process reaches NATS through a ``TcpProxy`` of its own (off, it connects directly:
    no link can be cut, and the test process forwards no traffic)."""

    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    proxied: bool = True
    nats: EmbeddedNats = field(init=False)
    pg: EmbeddedPostgres = field(init=False)
    settings: Settings = field(init=False)
    procs: dict[str, Process] = field(default_factory=dict)
    proxies: dict[str, TcpProxy] = field(default_factory=dict)
    gateway_port: int = 0
    hosts: int = 0
    bus: Bus = field(init=False)
    base_env: dict[str, str] = field(init=False)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    async def start(self, *, hosts_a: int = 10, hosts_b: int = 4, devices: int = 4) -> None:
        """The services, then simulator B (its hosts are the ones lost, all on ``B_SITE``) and simulator A.

        B's hosts have a site of their own, so work can be steered to them through the API (``Load``'s
        ``data_site``). Left to ties, it need not go there: the scheduler fills partly used hosts before it
        opens an empty one, so once B's work has moved away (a partition), new work keeps to A's hosts,
        and between equal empty hosts it goes by the order the scheduler holds them in, which a
        scheduler restart takes from ``scheduler.hosts`` as PostgreSQL returns the rows."""
        await self.start_services()
        await self.add_sim(SIM_B, hosts_b, devices, prefix=B_PREFIX, seed=3, sites=[B_SITE])
        await self.add_sim("sim-a", hosts_a, devices)
        self.procs[SIM_B].start()
        self.procs["sim-a"].start()

    async def start_services(self) -> None:
        """NATS, PostgreSQL (migrated), the test process's bus connection and every service, healthy."""
        from xpumesh.prestart import prestart

        self.nats = EmbeddedNats(self.workdir).start()
        self.pg = EmbeddedPostgres(self.workdir).start()
        self.gateway_port = free_port()
        self.settings = Settings(nats_url=self.nats.url, database_url=SecretStr(self.pg.dsn), data_dir=self.workdir,
                                 bootstrap_admin_key=SecretStr(TEST_ADMIN_KEY))
        await prestart(self.settings)
        self.bus = Bus(self.settings.bus, name="faults")
        await self.bus.connect(self.nats.url)
        await self.bus.ensure_streams()
        self.base_env = {k: v for k, v in os.environ.items() if not k.startswith("XPUMESH_")}
        self.base_env.update(ENV, XPUMESH_DATABASE_URL=self.pg.dsn, XPUMESH_DATA_DIR=str(self.workdir),
                             XPUMESH_BOOTSTRAP_ADMIN_KEY=TEST_ADMIN_KEY, XPUMESH_GATEWAY_PORT=str(self.gateway_port),
                             XPUMESH_METRICS_PORT=str(free_port()))
        self.base_env.update(self.env)
        (self.workdir / "logs").mkdir(exist_ok=True)
        for name in SERVICES:
            await self.add_process(name, [sys.executable, "-m", "xpumesh", "run", name])
            self.procs[name].start()
        await self.wait_healthy(SERVICES, timeout_s=90)

    async def add_sim(self, name: str, hosts: int, devices: int, *, prefix: str = "", seed: int = 7,
                      sites: list[str] | None = None) -> Process:
        """A fleet simulator of ``hosts`` hosts (ids starting with ``prefix``; on ``sites`` only, when
        given), not started yet."""
        self.hosts += hosts
        return await self.add_process(name, [sys.executable, "-m", "agent.sim.main", "--hosts", str(hosts),
                                             "--devices-per-host", str(devices), "--seed", str(seed),
                                             "--host-prefix", prefix, "--sites", ",".join(sites or [])])

    async def add_process(self, name: str, argv: list[str]) -> Process:
        url = self.nats.url
        if self.proxied:
            proxy = await TcpProxy("127.0.0.1", self.nats.port).start()
            self.proxies[name] = proxy
            url = proxy.url
        self.procs[name] = Process(name, argv, dict(self.base_env, XPUMESH_NATS_URL=url),
                                   self.workdir / "logs" / f"{name}.log")
        return self.procs[name]

    async def stop(self) -> None:
        for p in self.procs.values():
            if p.alive and p.popen is not None:
                p.popen.terminate()
        for p in self.procs.values():
            p.stop()
        with contextlib.suppress(Exception):
            await self.bus.close()
        for proxy in self.proxies.values():
            await proxy.close()
        self.pg.stop()
        self.nats.stop()

    # -- probes ---------------------------------------------------------------------------------
    async def healthy(self, service: str) -> bool:
        try:
            await self.bus.nc.request(subjects.rpc_subject(service, "health"), b"{}", timeout=1)
        except Exception:
            return False
        return True

    async def api_ready(self) -> bool:
        """The gateway answers, the registry behind it does, and a read that reaches PostgreSQL works."""
        try:
            async with httpx.AsyncClient(base_url=self.base_url, headers=ADMIN, timeout=2) as c:
                ready = await c.get("/readyz")
                listed = await c.get("/v1/workloads", params={"limit": 1})
        except httpx.HTTPError:
            return False
        return ready.status_code == 200 and listed.status_code == 200

    async def all_recovered(self) -> bool:
        checks = await asyncio.gather(self.api_ready(), *(self.healthy(s) for s in SERVICES))
        return all(checks) and all(self.procs[s].alive for s in SERVICES)

    async def wait_healthy(self, services: tuple[str, ...], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(await asyncio.gather(*(self.healthy(s) for s in services))):
                return
            await asyncio.sleep(0.2)
        raise AssertionError(f"{services} not healthy within {timeout_s}s; see {self.workdir / 'logs'}")

    async def wait_recovered(self, since: float, timeout_s: float = 30.0) -> float:
        """Seconds from ``since`` (monotonic) until every service answers again."""
        deadline = since + timeout_s
        while time.monotonic() < deadline:
            if await self.all_recovered():
                return time.monotonic() - since
            await asyncio.sleep(0.1)
        raise AssertionError(f"services not recovered within {timeout_s}s of the fault's end")

    async def hosts_up(self, prefix: str = "") -> int:
        rows = await self.sql("SELECT count(*) AS n FROM registry.members WHERE kind = 'host' AND status = 'up' "
                              "AND id LIKE $1", prefix + "%")
        return int(rows[0]["n"])

    # -- PostgreSQL, the system of record ---------------------------------------------------------
    async def sql(self, query: str, *args: Any) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.pg.dsn, timeout=3)
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()
