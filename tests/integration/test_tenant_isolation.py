"""Two tenants' replicas on one host are kept apart, seen the way a tenant would see it: a real
agent process (as root) runs both tenants' workloads on its one host, and the second
tenant's replica, trying to read the first's ``output.log`` and signal its process, reports
through the gateway's logs route that it could not; each tenant still reads its own logs."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from services.scheduler.api import app as scheduler_app
from tests.conftest import REPO, spawn_agent
from tests.integration.test_api_kit import bearer, eventually, make_key, start_gateway
from tests.integration.test_scheduler_kit import fast

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="giving replicas their own uids needs a root agent")
START = 2_100_000_000


def _replica_pid(workdir_name: str) -> int | None:
    """The pid of the process running in a replica's directory (the test is root and may look)."""
    for p in psutil.process_iter(["cwd", "name"]):
        if (p.info["cwd"] or "").endswith("/runs/" + workdir_name) and p.info["name"] == "sleep":
            return int(p.pid)
    return None


async def test_tenant_isolation_two_tenants_replicas_on_one_host_cannot_read_or_signal_each_other(
        settings, running_service, tmp_path: Path) -> None:
    s = fast(settings)
    await running_service(scheduler_app, s)
    url = await start_gateway(running_service, s)
    probes = tmp_path / "probes"
    shutil.copytree(REPO / "tests" / "fixtures" / "probes" / "nvidia-a100x8", probes)
    log = tmp_path / "agent.log"
    proc = spawn_agent(s, probes, log, XPUMESH_AGENT__STATE_INTERVAL_S="0.3",
                       XPUMESH_AGENT__REPLICA_UID_START=str(START), XPUMESH_AGENT__REPLICA_UID_COUNT="16")
    try:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            acme = bearer(await make_key(client, "acme", "user"))
            globex = bearer(await make_key(client, "globex", "user"))

            async def submit(key: dict[str, str], name: str, script: str) -> str:
                spec = {"name": name, "hardware": {"type": "gpu", "vendor": "nvidia"}, "restart_policy": "never",
                        "variants": {"nvidia": {"command": ["/bin/sh", "-c", script]}}}
                r = await client.post("/v1/workloads", json=spec, headers=key)
                assert r.status_code == 201, r.text
                return str(r.json()["id"])

            async def logs(key: dict[str, str], wid: str, marker: str) -> str | None:
                r = await client.get(f"/v1/workloads/{wid}/logs", headers=key)
                text = r.json().get("text", "") if r.status_code == 200 else ""
                return str(text) if marker in text else None

            a = await submit(acme, "acme-secret", "echo acme-secret-data; id -u; echo a=up; exec sleep 60")
            # waiting for the line after the uid: the log may be read between the first line and the second
            a_text = await eventually(lambda: logs(acme, a, "a=up"), timeout=30, message="A runs")
            a_pid = await eventually(lambda: _replica_pid(f"{a}-0-1"), timeout=10, message="A's process")
            probe = (f"id -u; cat ../{a}-0-1/output.log; echo cat=$?; ls ..; echo ls=$?; "
                     f"kill -0 {a_pid}; echo kill=$?; cat output.log >/dev/null && echo own=ok")
            b = await submit(globex, "globex-probe", probe)
            b_text = await eventually(lambda: logs(globex, b, "own=ok"), timeout=30, message="B ran its probe")
            assert "acme-secret-data" not in b_text, b_text
            assert "Permission denied" in b_text and "cat=1" in b_text and "ls=2" in b_text, b_text
            assert "kill=1" in b_text, b_text
            uid_a, uid_b = int(a_text.split()[1]), int(b_text.split()[0])
            assert uid_a != uid_b and START <= uid_a < START + 16 and START <= uid_b < START + 16
            forbidden: Any = await client.get(f"/v1/workloads/{a}/logs", headers=globex)
            assert forbidden.status_code in (403, 404)  # nor through the API
            await client.delete(f"/v1/workloads/{a}", headers=acme)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=15)
        for p in psutil.process_iter(["uids"]):  # nothing of this test's uids outlives it
            if START <= p.info["uids"].real < START + 16:
                p.kill()
    assert code == 0, log.read_text()[-2000:]
