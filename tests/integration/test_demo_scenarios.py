"""The demo, end to end: the real services and the demo fleet simulator, driven only over HTTP.

One mesh (registry, inventory, scheduler, gateway, and the simulated multi-city fleet that
``xpumesh up --demo`` runs, here with 44 hosts) serves every scenario of this module. Each
scenario submits workloads with its own tenant's key, reads where they landed from
``/v1/workloads/{id}``, checks vendor, model and driver of those devices through
``/v1/hosts/{id}``, and stops its workloads afterwards so the next one starts on an idle fleet.
The only thing not done over HTTP is losing a host: that goes to the simulator's control
subject, as it would from an operator's console.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

import asyncpg
import httpx
import pytest
from pydantic import SecretStr

from agent.sim.main import Simulator, simulate
from libs.bus import subjects
from libs.bus.connection import Bus
from libs.config import Settings
from libs.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from libs.schemas.sim import SimControl, SimControlReply
from libs.service import ServiceApp, serve
from libs.versions import Version
from services.gateway.api import app as gateway_app
from services.inventory.api import app as inventory_app
from services.registry.api import app as registry_app
from services.scheduler.api import app as scheduler_app
from tests.conftest import TEST_ADMIN_KEY, assert_eventually
from tests.integration.test_scheduler_kit import FAST

FLEET_HOSTS = 44  # the demo fleet's first 44 hosts: every city, four 8-GPU NVIDIA hosts, old and new drivers
ADMIN = {"Authorization": f"Bearer {TEST_ADMIN_KEY}"}
_tenants = itertools.count()


@dataclass
class Mesh:
    client: httpx.AsyncClient  # the admin key; scenarios use their own tenant keys
    bus: Bus
    settings: Settings


@pytest.fixture(scope="module")
def demo_nats() -> Iterator[EmbeddedNats]:
    with tempfile.TemporaryDirectory(prefix="xpumesh-demo-nats-") as d:
        n = EmbeddedNats(Path(d)).start()
        try:
            yield n
        finally:
            n.stop()


async def _admin_sql(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(urlunparse(urlparse(dsn)._replace(path="/postgres")))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="module")
async def demo_db(pg_server: tuple[str, EmbeddedPostgres | None], template_db: str) -> AsyncIterator[str]:
    dsn, _ = pg_server
    name = f"xpm_demo_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}_{os.getpid()}"
    await _admin_sql(dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await _admin_sql(dsn, f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    yield urlunparse(urlparse(dsn)._replace(path=f"/{name}"))
    with contextlib.suppress(Exception):
        await _admin_sql(dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
async def mesh(demo_nats: EmbeddedNats, demo_db: str, tmp_path_factory: pytest.TempPathFactory
               ) -> AsyncIterator[Mesh]:
    """Every service the demo needs, in this process, and the demo fleet simulator (no random faults)."""
    s = Settings(nats_url=demo_nats.url, database_url=SecretStr(demo_db), data_dir=tmp_path_factory.mktemp("demo"),
                 bootstrap_admin_key=SecretStr(TEST_ADMIN_KEY), heartbeat_interval_s=0.5, telemetry_interval_s=2.0,
                 gateway_port=free_port(), metrics_port=free_port(),
                 registry={"sweep_interval_s": 0.1, "flush_interval_s": 0.3},
                 bus={"request_timeout_s": 3.0, "drain_timeout_s": 1.0}, scheduler=FAST,
                 inventory={"sim_device_fault_per_hour": 0.0, "sim_host_loss_per_hour": 0.0})
    stops: list[tuple[asyncio.Event, asyncio.Task[Any]]] = []

    async def start(app: ServiceApp[Any]) -> None:
        ready, stop = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(serve(app, s, ready=ready, stop=stop))
        stops.append((stop, task))
        waiter = asyncio.create_task(ready.wait())
        done, _ = await asyncio.wait({task, waiter}, timeout=20, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if task in done:
            task.result()
        assert ready.is_set(), f"{app.name} did not become ready"

    bus = Bus(s.bus, name="demo-test")
    try:
        for app in (registry_app, inventory_app, scheduler_app, gateway_app):
            await start(app)
        sim_stop, sim_ready = asyncio.Event(), asyncio.Event()
        sim: asyncio.Task[Simulator] = asyncio.create_task(simulate(s, FLEET_HOSTS, 7, sim_stop, ready=sim_ready))
        stops.append((sim_stop, sim))
        await asyncio.wait_for(sim_ready.wait(), timeout=30)
        await bus.connect(s.nats_url or "")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{s.gateway_port}", headers=ADMIN,
                                     timeout=10) as client:

            async def fleet_registered() -> bool:
                try:
                    r = await client.get("/v1/hosts", params={"limit": 100, "status": "up"})
                except httpx.TransportError:
                    return False
                return r.status_code == 200 and len(r.json()["items"]) == FLEET_HOSTS

            await assert_eventually(fleet_registered, timeout=30, interval=0.2, message="the demo fleet registered")
            yield Mesh(client, bus, s)
    finally:
        await bus.close()
        for stop, task in reversed(stops):
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, timeout=10)


@pytest.fixture
async def user(mesh: Mesh) -> AsyncIterator[dict[str, str]]:
    """A fresh tenant's user key (as an application developer has); its workloads are stopped afterwards."""
    tenant = f"demo{next(_tenants)}"
    r = await mesh.client.post("/v1/keys", json={"tenant": tenant, "role": "user", "name": tenant})
    assert r.status_code == 201, r.text
    headers = {"Authorization": f"Bearer {r.json()['key']}"}
    yield headers
    page = await mesh.client.get("/v1/workloads", params={"limit": 500}, headers=headers)
    for w in page.json()["items"]:
        if w["state"] not in ("succeeded", "failed", "stopped"):
            stopped = await mesh.client.delete(f"/v1/workloads/{w['id']}", headers=headers)
            assert stopped.status_code == 200, stopped.text


# --------------------------------------------------------------------------- helpers
async def _submit(mesh: Mesh, user: dict[str, str], spec: dict[str, Any]) -> str:
    r = await mesh.client.post("/v1/workloads", json=spec, headers=user)
    assert r.status_code == 201, r.text
    wid: str = r.json()["id"]
    return wid


async def _view(mesh: Mesh, user: dict[str, str], wid: str) -> dict[str, Any]:
    r = await mesh.client.get(f"/v1/workloads/{wid}", headers=user)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _describe(view: dict[str, Any]) -> str:
    return (f"{view['id']} is {view['state']}; replicas {[(p['replica'], p['state'], p['host_id']) for p in view['placement']]}"
            f"; explanation {view['explanation']}; history {[(h['replica'], h['to_state'], h['reason']) for h in view['history']]}")


async def _view_when(mesh: Mesh, user: dict[str, str], wid: str, ok: Callable[[dict[str, Any]], bool], what: str,
                     timeout: float) -> dict[str, Any]:
    """The workload's view once ``ok`` holds for it; else an error describing where it got to."""
    last: dict[str, Any] = {}

    async def check() -> dict[str, Any] | None:
        nonlocal last
        last = await _view(mesh, user, wid)
        return last if ok(last) else None

    try:
        result: dict[str, Any] = await assert_eventually(check, timeout=timeout, interval=0.2)
    except AssertionError:
        raise AssertionError(f"{what} within {timeout}s: {_describe(last)}") from None
    return result


async def _until(mesh: Mesh, user: dict[str, str], wid: str, state: str, *, timeout: float = 20.0
                 ) -> dict[str, Any]:
    """The workload's view once it is in ``state`` (with every replica running, for 'running')."""
    def ok(v: dict[str, Any]) -> bool:
        return v["state"] == state and (state != "running" or all(p["state"] == "running" for p in v["placement"]))

    return await _view_when(mesh, user, wid, ok, f"not {state}", timeout)


async def _waiting(mesh: Mesh, user: dict[str, str], wid: str, reason: str, *, timeout: float = 20.0
                   ) -> dict[str, Any]:
    """The workload's view once the scheduler has explained why it waits, naming ``reason``."""
    def ok(v: dict[str, Any]) -> bool:
        return v["explanation"] is not None and reason in v["explanation"]["reason"]

    return await _view_when(mesh, user, wid, ok, f"no explanation naming {reason!r}", timeout)


async def _devices_of(mesh: Mesh, replica: dict[str, Any]) -> list[dict[str, Any]]:
    """The inventory's record (vendor, model, driver, runtimes, compute units) of a replica's devices."""
    r = await mesh.client.get(f"/v1/hosts/{replica['host_id']}")
    assert r.status_code == 200, r.text
    by_id = {d["id"]: d for d in r.json()["devices"]}
    return [by_id[d["id"]] for d in replica["devices"]]


async def _all_devices(mesh: Mesh, **params: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        r = await mesh.client.get("/v1/devices", params={"limit": 500, **params, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        items += r.json()["items"]
        cursor = r.json().get("next_cursor")
        if not cursor:
            return items


async def _sim(mesh: Mesh, **req: Any) -> SimControlReply:
    msg = await mesh.bus.nc.request(subjects.SIM_CONTROL, SimControl(**req).model_dump_json().encode(), timeout=3)
    return SimControlReply.model_validate_json(msg.data)


# --------------------------------------------------------------------------- scenarios
async def test_demo_two_npus_land_on_two_ascend_devices_of_one_host(mesh: Mesh, user: dict[str, str]) -> None:
    wid = await _submit(mesh, user, {"name": "npu-pair", "hardware": {"type": "npu", "count": 2}})
    view = await _until(mesh, user, wid, "running")
    [replica] = view["placement"]
    assert replica["host_id"] and len(replica["devices"]) == 2
    assert len({d["id"] for d in replica["devices"]}) == 2
    devices = await _devices_of(mesh, replica)
    assert all(d["host_id"] == replica["host_id"] and d["hardware_type"] == "npu" for d in devices)
    assert all(d["vendor"] == "huawei" and d["model"].startswith("Ascend") for d in devices), devices


async def test_demo_cpu_work_for_aarch64_runs_on_an_arm_server(mesh: Mesh, user: dict[str, str]) -> None:
    wid = await _submit(mesh, user, {"name": "arm-etl", "hardware": {"type": "cpu", "arch": "aarch64"},
                                     "resources": {"cpu": 16, "memory_gib": 32}})
    view = await _until(mesh, user, wid, "running")
    [replica] = view["placement"]
    assert replica["devices"] == [], replica
    r = await mesh.client.get(f"/v1/hosts/{replica['host_id']}")
    assert r.status_code == 200, r.text
    host = r.json()
    assert host["arch"] == "aarch64" and host["facts"]["cpu_model"], host["facts"]
    # CPU-only servers first, so accelerators are not stranded: the demo has CPU-only ARM servers.
    assert host["devices"] == [], host["devices"]


async def test_demo_ordered_alternatives_fall_back_to_the_second_and_the_placement_names_it(
        mesh: Mesh, user: dict[str, str]) -> None:
    # The demo fleet has no AMD hosts, so 8 x MI300X cannot be placed and the second choice, 8 x Ascend 910B, is.
    wid = await _submit(mesh, user, {"name": "alt", "hardware": [
        {"type": "gpu", "model": "MI300X", "count": 8}, {"type": "npu", "model": "Ascend910B*", "count": 8}]})
    view = await _until(mesh, user, wid, "running")
    [replica] = view["placement"]
    assert replica["resources"]["alternative"] == 1, replica
    devices = await _devices_of(mesh, replica)
    assert len(devices) == 8 and all(d["model"].startswith("Ascend910B") for d in devices), devices
    assert any("alternative 1" in h["reason"] for h in view["history"]), view["history"]


async def test_demo_two_half_a100_shares_run_on_one_device(mesh: Mesh, user: dict[str, str]) -> None:
    spec = {"name": "half-a100", "hardware": {"type": "gpu", "vendor": "nvidia", "model": "A100*", "share": 0.5}}
    first, second = await _submit(mesh, user, spec), await _submit(mesh, user, spec)
    a, b = await _until(mesh, user, first, "running"), await _until(mesh, user, second, "running")
    [da], [db] = a["placement"][0]["devices"], b["placement"][0]["devices"]
    assert da["id"] == db["id"], (da, db)
    assert da["share"] == db["share"] == 0.5
    [device] = await _devices_of(mesh, a["placement"][0])
    assert device["vendor"] == "nvidia" and device["model"].startswith("A100"), device


async def _eight_gpu_hosts(mesh: Mesh) -> dict[str, str]:
    """The fleet's 8-GPU hosts and each one's GPU model."""
    gpus = await _all_devices(mesh, hardware_type="gpu")
    per_host: dict[str, list[str]] = {}
    for d in gpus:
        per_host.setdefault(d["host_id"], []).append(d["model"])
    return {h: models[0] for h, models in sorted(per_host.items()) if len(models) >= 8}


async def test_demo_gang_of_four_by_eight_gpus_lands_all_or_none(mesh: Mesh, user: dict[str, str]) -> None:
    eight = await _eight_gpu_hosts(mesh)
    assert len(eight) == 4, f"the scenario wants exactly four 8-GPU hosts, the fleet has {eight}"
    assert len(set(eight.values())) > 1, f"the scenario wants 8-GPU hosts of more than one model: {eight}"
    mixed = {"type": "gpu", "count": 8}, {"mixed_models": True}

    # One replica more than there are 8-GPU hosts: four could run, so the gang places none of them.
    too_big = await _submit(mesh, user, {"name": "gang-5x8", "hardware": mixed[0], "placement": mixed[1],
                                         "replicas": 5, "gang": True})
    waiting = await _waiting(mesh, user, too_big, "gang of 5")
    assert waiting["state"] == "pending" and all(p["host_id"] is None and not p["devices"]
                                                 for p in waiting["placement"]), _describe(waiting)

    # The four hosts are of two models: only a gang that lets its replicas mix models takes all four.
    fits = await _submit(mesh, user, {"name": "gang-4x8", "hardware": mixed[0], "placement": mixed[1],
                                      "replicas": 4, "gang": True})
    view = await _until(mesh, user, fits, "running")
    assert sorted(p["host_id"] for p in view["placement"]) == sorted(eight)
    for replica in view["placement"]:
        devices = await _devices_of(mesh, replica)
        assert len(devices) == 8 and all(d["vendor"] == "nvidia" for d in devices)
        assert {d["model"] for d in devices} == {eight[replica["host_id"]]}
    still = await _view(mesh, user, too_big)
    assert still["state"] == "pending" and all(p["host_id"] is None for p in still["placement"]), _describe(still)


async def test_demo_gang_without_a_model_lands_on_one_model_or_waits_saying_so(mesh: Mesh, user: dict[str, str]
                                                                               ) -> None:
    eight = await _eight_gpu_hosts(mesh)
    by_model: dict[str, list[str]] = {}
    for host, model in eight.items():
        by_model.setdefault(model, []).append(host)
    assert len(by_model) > 1 and all(len(h) >= 2 for h in by_model.values()), by_model
    gpus8 = {"type": "gpu", "count": 8}

    # Four 8-GPU hosts exist, but no model has four of them: a uniform gang waits, and says why.
    four = await _submit(mesh, user, {"name": "gang-4x8-uniform", "hardware": gpus8, "replicas": 4, "gang": True})
    waiting = await _waiting(mesh, user, four, "no model has room for all 4")
    assert "mixed_models" in waiting["explanation"]["reason"], _describe(waiting)
    assert waiting["state"] == "pending" and all(p["host_id"] is None and not p["devices"]
                                                 for p in waiting["placement"]), _describe(waiting)

    # Two replicas fit one model: they land on two hosts of that model, never one H100 and one A100.
    two = await _submit(mesh, user, {"name": "gang-2x8", "hardware": gpus8, "replicas": 2, "gang": True})
    view = await _until(mesh, user, two, "running")
    hosts = sorted(p["host_id"] for p in view["placement"])
    assert len(set(hosts)) == 2 and len({eight[h] for h in hosts}) == 1, (hosts, eight)
    models: set[str] = set()
    for replica in view["placement"]:
        devices = await _devices_of(mesh, replica)
        assert len(devices) == 8
        models |= {d["model"] for d in devices}
    assert models == {eight[hosts[0]]}, models
    still = await _view(mesh, user, four)
    assert still["state"] == "pending" and all(p["host_id"] is None for p in still["placement"]), _describe(still)


async def test_demo_high_priority_preempts_preemptible_work_in_a_full_pool(mesh: Mesh, user: dict[str, str]) -> None:
    pool = await _all_devices(mesh, model="L40S", site="ningbo")
    assert pool, "the scenario's pool (ningbo's L40S devices) is empty"
    where = {"type": "gpu", "model": "L40S"}, {"sites": ["ningbo"]}
    low = [await _submit(mesh, user, {"name": f"batch-{i}", "hardware": where[0], "placement": where[1],
                                      "priority": 10, "preemptible": True}) for i in range(len(pool))]
    held = [(await _until(mesh, user, wid, "running"))["placement"][0]["devices"][0]["id"] for wid in low]
    assert sorted(held) == sorted(d["id"] for d in pool)  # the pool is full

    high = await _submit(mesh, user, {"name": "urgent", "hardware": where[0], "placement": where[1],
                                      "priority": 500})  # a user key's ceiling (gateway.max_priority_user)
    view = await _until(mesh, user, high, "running")
    [dev] = view["placement"][0]["devices"]
    assert dev["id"] in held

    async def one_victim() -> list[dict[str, Any]] | None:
        views = [await _view(mesh, user, wid) for wid in low]
        victims = [v for v in views if v["state"] == "preempted"]
        return victims if len(victims) == 1 and all(v["state"] == "running" for v in views if v not in victims) \
            else None

    [victim] = await assert_eventually(one_victim, timeout=10, interval=0.2, message="exactly one preempted")
    assert held[low.index(victim["id"])] == dev["id"]  # the high-priority work took the victim's device
    assert any(h["to_state"] == "preempted" and high in h["reason"] for h in victim["history"])
    waiting = await _waiting(mesh, user, victim["id"], "")
    assert all(p["host_id"] is None for p in waiting["placement"]), _describe(waiting)


async def test_demo_cuda_124_work_never_lands_on_an_old_driver(mesh: Mesh, user: dict[str, str]) -> None:
    nvidia = await _all_devices(mesh, vendor="nvidia")
    hosts: dict[str, list[dict[str, Any]]] = {}
    for d in nvidia:
        hosts.setdefault(d["host_id"], []).append(d)

    def new_enough(d: dict[str, Any]) -> bool:
        return Version.parse(d["runtimes"]["cuda"]) >= Version.parse("12.4")

    fresh = sorted(h for h, ds in hosts.items() if len(ds) == 8 and all(map(new_enough, ds)))
    stale = sorted(h for h, ds in hosts.items() if len(ds) == 8 and not any(map(new_enough, ds)))
    assert fresh and stale, f"the scenario wants 8-GPU hosts on both sides of CUDA 12.4: {fresh} / {stale}"

    # One replica more than the new-driver hosts can take, while an old-driver host sits idle.
    wid = await _submit(mesh, user, {"name": "needs-cuda-124", "hardware": {"type": "gpu", "vendor": "nvidia",
                                                                            "count": 8},
                                     "runtime": {"requires": ["cuda>=12.4"]}, "replicas": len(fresh) + 1})
    await _waiting(mesh, user, wid, "driver too old for cuda>=12.4")

    async def all_fresh_running() -> list[dict[str, Any]] | None:
        v = await _view(mesh, user, wid)
        ps = [p for p in v["placement"] if p["host_id"]]
        return ps if len(ps) == len(fresh) and all(p["state"] == "running" for p in ps) else None

    placed = await assert_eventually(all_fresh_running, timeout=20, interval=0.2, message="new-driver hosts used")
    assert sorted(p["host_id"] for p in placed) == fresh
    for replica in placed:
        for d in await _devices_of(mesh, replica):
            assert new_enough(d) and Version.parse(d["driver_version"]) >= Version.parse("550"), d
    view = await _view(mesh, user, wid)
    assert [p["host_id"] for p in view["placement"]].count(None) == 1
    assert view["explanation"]["counts"].get("driver too old for cuda>=12.4", 0) >= len(stale), view["explanation"]
    r = await mesh.client.get("/v1/devices", params={"host_id": stale[0]})
    assert r.json()["items"] and all(d["host_id"] == stale[0] for d in r.json()["items"])


async def test_demo_compute_units_land_on_whichever_chips_provide_them(mesh: Mesh, user: dict[str, str]) -> None:
    # In Jiaxing only the Hygon K100_AI host (8 x 196 CU, an estimate the catalog marks as such) adds up to
    # 1200 CU of one model: its Kunlunxin R200 host reaches 8 x 128 = 1024, its MLU370 host 384 and its Z100
    # host 8 x 26.5 = 212.
    local = await _submit(mesh, user, {"name": "cu-jiaxing", "hardware": {"type": "any", "compute_units": 1200},
                                       "placement": {"sites": ["jiaxing"]}})
    anywhere = await _submit(mesh, user, {"name": "cu-anywhere", "hardware": {"type": "any", "compute_units": 1500}})
    for wid, need in ((local, 1200), (anywhere, 1500)):
        view = await _until(mesh, user, wid, "running")
        [replica] = view["placement"]
        devices = await _devices_of(mesh, replica)
        assert len({(d["vendor"], d["model"]) for d in devices}) == 1, devices
        assert sum(d["compute_units"] for d in devices) >= need, devices
        assert view["hardware_type"] in ("any", devices[0]["hardware_type"])
        if wid == local:
            assert replica["site"] == "jiaxing"
            assert {(d["vendor"], d["model"]) for d in devices} == {("hygon", "K100_AI")}, devices


async def test_demo_losing_a_simulated_host_reschedules_its_work(mesh: Mesh, user: dict[str, str]) -> None:
    wid = await _submit(mesh, user, {"name": "survivor", "hardware": {"type": "npu", "model": "Ascend910B*"}})
    first = (await _until(mesh, user, wid, "running"))["placement"][0]
    lost = first["host_id"]
    reply = await _sim(mesh, action="host_down", host_id=lost)
    assert reply.ok and not reply.hosts[0].up
    try:
        async def moved() -> dict[str, Any] | None:
            v = await _view(mesh, user, wid)
            p = v["placement"][0]
            return v if v["state"] == "running" and p["state"] == "running" and p["host_id"] != lost else None

        view = await assert_eventually(moved, timeout=20, interval=0.2, message="work moved off the lost host")
        replica = view["placement"][0]
        assert replica["attempt"] == first["attempt"] + 1
        states = [h["to_state"] for h in view["history"] if h["replica"] is None]
        assert states.index("lost") < states.index("rescheduled") < states.index("running", states.index("lost"))
        assert any(h["to_state"] == "lost" and f"host {lost} down" in h["reason"] for h in view["history"])

        async def down() -> bool:
            return bool((await mesh.client.get(f"/v1/hosts/{lost}")).json()["status"] == "down")

        await assert_eventually(down, timeout=10, interval=0.2, message="the lost host down in the API")
        devices = await _devices_of(mesh, replica)
        assert all(d["vendor"] == "huawei" and d["model"].startswith("Ascend910B") for d in devices)
    finally:
        assert (await _sim(mesh, action="host_up", host_id=lost)).ok


async def test_demo_a_tenant_borrows_above_its_min_and_is_reclaimed_when_the_lender_submits(
        mesh: Mesh, user: dict[str, str]) -> None:
    borrower = (await mesh.client.get("/v1/me", headers=user)).json()["tenant"]
    r = await mesh.client.post("/v1/keys", json={"tenant": f"{borrower}-lender", "role": "user", "name": "lender"})
    assert r.status_code == 201, r.text
    lender_tenant, lender = r.json()["tenant"], {"Authorization": f"Bearer {r.json()['key']}"}
    quotas = {borrower: {"devices": {"gpu": {"min": 0, "max": 16}}}, lender_tenant: {"devices": {"gpu": {"min": 2}}}}
    for tenant, quota in quotas.items():
        assert (await mesh.client.put(f"/v1/tenants/{tenant}/quota", json=quota)).status_code == 200
    try:
        pool = await _all_devices(mesh, model="L40S", site="ningbo")
        assert len(pool) >= 2, "the scenario's pool (ningbo's L40S devices) is too small"
        where = {"hardware": {"type": "gpu", "model": "L40S"}, "placement": {"sites": ["ningbo"]}}
        lent = [await _submit(mesh, user, {"name": f"borrow-{i}", **where, "preemptible": True})
                for i in range(len(pool))]
        for wid in lent:  # the lender's idle GPUs: every one of them borrowed
            view = await _until(mesh, user, wid, "running")
            assert any("borrowing idle capacity" in h["reason"] for h in view["history"]), _describe(view)
        usage = (await mesh.client.get(f"/v1/tenants/{borrower}/usage", headers=user)).json()
        assert usage["resources"]["gpu"] == {"min": 0.0, "max": 16.0, "used": float(len(pool)),
                                             "borrowed": float(len(pool))}
        assert sorted(usage["borrowing"]) == sorted(lent)

        mine = await _submit(mesh, lender, {"name": "guaranteed", **{**where, "hardware": {
            "type": "gpu", "model": "L40S", "count": 2}}})
        view = await _until(mesh, lender, mine, "running")
        assert len(view["placement"][0]["devices"]) == 2

        async def two_reclaimed() -> list[dict[str, Any]] | None:
            views = [await _view(mesh, user, wid) for wid in lent]
            gone = [v for v in views if any(h["to_state"] == "preempted" for h in v["history"])]
            return gone if len(gone) == 2 else None

        gone = await assert_eventually(two_reclaimed, timeout=15, interval=0.2, message="two borrowed jobs reclaimed")
        for v in gone:
            why = next(h["reason"] for h in v["history"] if h["to_state"] == "preempted")
            assert why.startswith(f"reclaimed for {mine} of tenant {lender_tenant}, within its guarantee "
                                  "(gpu 2 of min 2)"), why
        usage = (await mesh.client.get(f"/v1/tenants/{lender_tenant}/usage", headers=lender)).json()
        assert usage["resources"]["gpu"] == {"min": 2.0, "max": None, "used": 2.0, "borrowed": 0.0}
    finally:
        for tenant in quotas:
            await mesh.client.put(f"/v1/tenants/{tenant}/quota", json={})
        page = await mesh.client.get("/v1/workloads", headers=lender)
        for w in page.json()["items"]:
            await mesh.client.delete(f"/v1/workloads/{w['id']}", headers=lender)
