"""End to end: the simulator, registry, inventory and gateway together, over HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from agent.sim.main import Simulator, simulate
from libs.bus import subjects
from libs.bus.connection import Bus
from libs.schemas.sim import SimControl, SimControlReply
from services.gateway.api import app as gateway_app
from services.inventory.api import app as inventory_app
from services.registry.api import app as registry_app
from tests.conftest import TEST_ADMIN_KEY, assert_eventually

ADMIN = {"Authorization": f"Bearer {TEST_ADMIN_KEY}"}


@pytest.fixture
async def mesh(settings, running_service) -> AsyncIterator[httpx.AsyncClient]:
    """Registry, inventory and gateway in-process, plus a 22-host simulated fleet."""
    await running_service(registry_app)
    await running_service(inventory_app)
    await running_service(gateway_app)
    stop, ready = asyncio.Event(), asyncio.Event()
    task: asyncio.Task[Simulator] = asyncio.create_task(simulate(settings, 22, 7, stop, ready=ready))
    await asyncio.wait_for(ready.wait(), timeout=30)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{settings.gateway_port}", headers=ADMIN,
                                 timeout=10) as client:

        async def serving() -> bool:
            try:
                return (await client.get("/healthz")).status_code == 200
            except httpx.TransportError:
                return False

        await assert_eventually(serving, timeout=10, message="gateway serving HTTP")
        yield client
    stop.set()
    await asyncio.wait_for(task, timeout=10)


async def _json(client: httpx.AsyncClient, path: str, **params: Any) -> Any:
    r = await client.get(path, params=params)
    assert r.status_code == 200, r.text
    return r.json()


async def _all_devices(client: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    items, cursor = [], None
    while True:
        page = await _json(client, "/v1/devices", limit=50, **params, **({"cursor": cursor} if cursor else {}))
        items += page["items"]
        cursor = page.get("next_cursor")
        if not cursor:
            return items


async def _ctl(bus: Bus, **req: Any) -> SimControlReply:
    msg = await bus.nc.request(subjects.SIM_CONTROL, SimControl(**req).model_dump_json().encode(), timeout=3)
    return SimControlReply.model_validate_json(msg.data)


async def test_inventory_e2e_sites_and_devices_of_a_simulated_fleet(mesh: httpx.AsyncClient) -> None:
    sites = await _json(mesh, "/v1/sites")
    assert len(sites["items"]) == 11
    assert {"hangzhou", "ningbo", "wenzhou", "lishui", "zhoushan"} <= {s["site"] for s in sites["items"]}

    async def fleet_registered() -> list[dict[str, Any]] | None:
        hosts = await _json(mesh, "/v1/hosts", limit=100)
        return hosts["items"] if len(hosts["items"]) == 22 else None

    hosts = await assert_eventually(fleet_registered, timeout=15, message="22 hosts registered")
    assert {h["site"] for h in hosts} == {s["site"] for s in sites["items"]}
    devices = await _all_devices(mesh)
    vendors = {d["vendor"] for d in devices}
    types = {d["hardware_type"] for d in devices}
    assert len(vendors) >= 5 and len(types) >= 5, (vendors, types)
    assert all(d["driver_version"] and d["runtimes"] for d in devices)
    assert all(d["catalog_model"] == d["model"] and d["compute_units"] is not None for d in devices)
    npus = await _all_devices(mesh, hardware_type="npu", model="Ascend910B*")
    assert npus and all(d["vendor"] == "huawei" for d in npus)

    async def summary_counts_every_device() -> bool:  # the gateway may answer from its short read cache
        summary = (await _json(mesh, "/v1/sites"))["items"]
        return sum(c["total"] for s in summary for c in s["devices"].values()) == len(devices)

    await assert_eventually(summary_counts_every_device, timeout=10, message="summary counts every device")

    r = await mesh.get("/v1/devices", params={"hardware_type": "tpu"})
    assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json")
    assert all(t in r.json()["detail"] for t in ("gpu", "npu", "dcu", "mlu", "xpu"))


async def test_inventory_e2e_fault_on_demand_and_host_loss_reach_the_api(mesh: httpx.AsyncClient, bus: Bus) -> None:
    listing = await _ctl(bus, action="list")
    target = next(h for h in listing.hosts if h.devices >= 4)

    async def registered() -> bool:
        r = await mesh.get(f"/v1/hosts/{target.host_id}")
        return r.status_code == 200

    await assert_eventually(registered, timeout=15)
    reply = await _ctl(bus, action="fault", host_id=target.host_id, device_index=3)
    assert reply.ok and reply.hosts[0].faulty == [3]

    async def unhealthy() -> list[dict[str, Any]]:
        return await _all_devices(mesh, healthy="false", host_id=target.host_id)

    found = await assert_eventually(unhealthy, timeout=10, message="faulty device unhealthy in the API")
    assert [d["slot"] for d in found] == [3]

    assert (await _ctl(bus, action="host_down", host_id=target.host_id)).ok

    async def down() -> bool:
        return (await _json(mesh, f"/v1/hosts/{target.host_id}"))["status"] == "down"

    await assert_eventually(down, timeout=10, message="lost host down in the API")
    assert (await _ctl(bus, action="host_up", host_id=target.host_id)).ok
    assert (await _ctl(bus, action="repair", host_id=target.host_id, device_index=3)).ok

    async def back() -> bool:
        detail = await _json(mesh, f"/v1/hosts/{target.host_id}")
        return detail["status"] == "up" and all(d["health"] == "healthy" for d in detail["devices"])

    await assert_eventually(back, timeout=10, message="host back up and repaired")
    bad = await _ctl(bus, action="fault", host_id="no-such-host", device_index=0)
    assert not bad.ok


async def test_inventory_e2e_writes_need_operator_role(mesh: httpx.AsyncClient) -> None:
    r = await mesh.post("/v1/keys", json={"tenant": "acme", "role": "viewer", "name": "dash"})
    assert r.status_code == 201, r.text
    viewer = {"Authorization": f"Bearer {r.json()['key']}"}
    entry = {"vendor": "acme", "model": "Z9000", "hardware_type": "gpu", "memory_gib": 80, "fp16_tflops": 500,
             "compute_units": 500, "source": "test"}
    r = await mesh.post("/v1/catalog", json=entry, headers=viewer)
    assert r.status_code == 403
    r = await mesh.post("/v1/keys", json={"tenant": "ops", "role": "operator", "name": "ops"})
    operator = {"Authorization": f"Bearer {r.json()['key']}"}
    r = await mesh.post("/v1/catalog", json=entry, headers=operator)
    assert r.status_code == 201, r.text
    r = await mesh.post("/v1/catalog", json=entry, headers=operator)
    assert r.status_code == 409
    r = await mesh.put("/v1/catalog/acme/Z9000", json={**entry, "compute_units": 510, "fp16_tflops": 510},
                       headers=operator)
    assert r.status_code == 200
    assert (await _json(mesh, "/v1/catalog/acme/Z9000"))["compute_units"] == 510
    r = await mesh.get("/v1/catalog/acme/nothing")
    assert r.status_code == 404
    rules = await _json(mesh, "/v1/compat-rules", vendor="huawei")
    assert rules["compat"] and rules["driver"]
    r = await mesh.patch("/v1/hosts/hangzhou-h100-00000/labels", json={"set": {"team": "vision"}}, headers=viewer)
    assert r.status_code == 403
