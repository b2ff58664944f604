"""The API-client commands run as real ``xpumesh`` processes against an in-process gateway."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import httpx

from agent.publisher import HostPublisher
from libs.bus.connection import Bus
from libs.events import CloudEvent, EventTypes
from libs.schemas.devices import Device, HardwareType, Health, HostFacts
from libs.schemas.hostevents import CapabilityReport
from services.inventory.api import app as inventory_app
from tests.conftest import REPO, TEST_ADMIN_KEY
from tests.integration.test_api_kit import ADMIN, eventually, gateway_settings, start_gateway


async def xpumesh(url: str, key: str | None, *args: str, timeout: float = 20) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XPUMESH_")}
    env["XPUMESH_API_URL"] = url
    if key is not None:
        env["XPUMESH_API_KEY"] = key
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "xpumesh", *args, "--width", "200", env=env,
                                                cwd=REPO, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_keys_create_list_revoke_and_clear_errors(settings, running_service) -> None:
    url = await start_gateway(running_service, gateway_settings(settings))
    rc, out, err = await xpumesh(url, TEST_ADMIN_KEY, "keys", "create", "--tenant", "acme", "--role", "user",
                                 "--name", "from the cli", "--json")
    assert rc == 0, err
    created = json.loads(out)
    assert created["key"].startswith("xpm_") and created["tenant"] == "acme"

    rc, out, err = await xpumesh(url, TEST_ADMIN_KEY, "keys", "list", "--tenant", "acme")
    assert rc == 0, err
    assert created["id"] in out and "from the cli" in out and created["key"] not in out

    rc, out, err = await xpumesh(url, created["key"], "keys", "list")
    assert rc == 3 and "Forbidden" in err and "admin" in err, (rc, err)
    rc, out, err = await xpumesh(url, TEST_ADMIN_KEY, "keys", "revoke", created["id"])
    assert rc == 0 and created["id"] in out, err
    rc, out, err = await xpumesh(url, created["key"], "devices")
    assert rc == 3 and "Invalid API key" in err, (rc, err)
    rc, out, err = await xpumesh(url, None, "keys", "list")
    assert rc == 3 and "XPUMESH_API_KEY" in err
    rc, out, err = await xpumesh("http://127.0.0.1:1", TEST_ADMIN_KEY, "keys", "list")
    assert rc == 4 and "cannot reach" in err
    rc, out, err = await xpumesh(url, TEST_ADMIN_KEY, "keys", "create", "--tenant", "Bad Tenant", "--role", "user")
    assert rc == 2 and "Invalid request" in err and "tenant" in err, (rc, err)


def _report(host: str, site: str, hw: HardwareType, vendor: str, model: str) -> CapabilityReport:
    facts = HostFacts(hostname=host, arch="x86_64", os="Ubuntu 22.04", kernel="6.5", cpu_model="Xeon", cpu_sockets=2,
                      cpu_cores=64, cpu_threads=128, memory_mib=512 * 1024)
    devices = [Device(index=i, hardware_type=hw, vendor=vendor, model=model, memory_mib=65536, health=Health.HEALTHY)
               for i in range(2)]
    return CapabilityReport(host_id=host, site=site, generation=1, facts=facts, devices=devices)


async def test_cli_devices_filters_by_type_and_site(settings, running_service, bus: Bus) -> None:
    await running_service(inventory_app)
    url = await start_gateway(running_service, gateway_settings(settings))
    for host, site, hw, vendor, model in (("hz-npu-1", "hangzhou", HardwareType.NPU, "huawei", "Ascend910B3"),
                                          ("nb-npu-1", "ningbo", HardwareType.NPU, "huawei", "Ascend910B3"),
                                          ("hz-gpu-1", "hangzhou", HardwareType.GPU, "nvidia", "A100-SXM4-80GB")):
        await HostPublisher(bus, host, site, host, interval_s=1).capability(_report(host, site, hw, vendor, model))

    async def known() -> bool:
        async with httpx.AsyncClient(base_url=url) as c:
            r = await c.get("/v1/devices", headers=ADMIN)
            return r.status_code == 200 and len(r.json()["items"]) == 6

    await eventually(known, timeout=15, message="inventory knows the devices")
    rc, out, err = await xpumesh(url, TEST_ADMIN_KEY, "devices", "--type", "npu", "--site", "hangzhou", "--json")
    assert rc == 0, err
    rows = json.loads(out)
    assert {r["id"] for r in rows} == {"hz-npu-1:huawei:0", "hz-npu-1:huawei:1"}
    rc, out, err = await xpumesh(url, TEST_ADMIN_KEY, "devices", "--type", "npu")
    assert rc == 0 and "devices (4)" in out and "nb-npu-1:huawei:0" in out and "hz-gpu-1" not in out, out
    rc, out, err = await xpumesh(url, TEST_ADMIN_KEY, "devices", "--type", "tpu")
    assert rc == 2 and "invalid choice" in err


async def test_cli_events_prints_the_stream_and_follows_as_a_table(settings, running_service, bus: Bus) -> None:
    url = await start_gateway(running_service, gateway_settings(settings))

    async def run_until_done(*args: str) -> tuple[int, str, str]:
        task = asyncio.create_task(xpumesh(url, TEST_ADMIN_KEY, "events", "--type", "io.xpumesh.workload.*", *args))
        n = 0
        while not task.done():  # the stream starts at the next event: publish until the client has enough
            await bus.publish_event(CloudEvent.new(EventTypes.workload("running"), "/scheduler",
                                                   {"tenant": "acme", "site": "hangzhou"}, subject=f"wl-{n}"))
            await bus.publish_event(CloudEvent.new(EventTypes.HOST_UP, "/registry", {}))
            n += 1
            await asyncio.sleep(0.2)
        return await task

    rc, out, err = await run_until_done("--max", "2")
    assert rc == 0, err
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 2 and all("workload.running" in line and "acme" in line for line in lines), out
    rc, out, err = await run_until_done("--max", "3", "--follow")
    assert rc == 0, err
    assert "events (last 3 of 3)" in out and "workload.running" in out and "host.up" not in out


async def test_cli_submit_reports_bad_spec_files_clearly(settings, running_service, tmp_path: Path) -> None:
    url = await start_gateway(running_service, gateway_settings(settings))
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\nhardware: [unclosed\n")
    rc, _, err = await xpumesh(url, TEST_ADMIN_KEY, "submit", str(broken))
    assert rc == 2 and "not valid YAML at line" in err, err
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    rc, _, err = await xpumesh(url, TEST_ADMIN_KEY, "submit", str(listy))
    assert rc == 2 and "a mapping" in err
    rc, _, err = await xpumesh(url, TEST_ADMIN_KEY, "submit", str(tmp_path / "missing.yaml"))
    assert rc == 2 and "cannot read" in err
