"""A replica's environment holds none of the agent's credentials, read back the way a tenant
would: a real agent process runs ``env`` for a user key and the output comes through the
gateway's logs route. A workload cannot set the agent's variables either (422 at submit)."""

from __future__ import annotations

import shutil
import signal
import socket
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from libs.schemas.hostevents import host_id_for
from services.scheduler.api import app as scheduler_app
from tests.conftest import REPO, TEST_ADMIN_KEY, spawn_agent
from tests.integration.test_api_kit import ADMIN, bearer, eventually, make_key, start_gateway
from tests.integration.test_scheduler_kit import fast

NATS_PASSWORD = "nats-agent-s3cret"
DB_PASSWORD = "db-s3cret"


def _with_password(nats_url: str) -> str:
    """The test server's URL with a user and password in it, as a production agent has it."""
    parts = urlsplit(nats_url)
    return f"{parts.scheme}://agent:{NATS_PASSWORD}@{parts.hostname}:{parts.port}"


async def test_replica_environment_holds_no_agent_credential_read_through_the_logs_route(
        settings, running_service, tmp_path: Path) -> None:
    s = fast(settings)
    await running_service(scheduler_app, s)
    url = await start_gateway(running_service, s)
    probes = tmp_path / "probes"
    shutil.copytree(REPO / "tests" / "fixtures" / "probes" / "nvidia-a100x8", probes)
    log = tmp_path / "agent.log"
    proc = spawn_agent(s, probes, log, XPUMESH_AGENT__STATE_INTERVAL_S="0.3",
                       XPUMESH_NATS_URL=_with_password(s.nats_url or ""),
                       XPUMESH_DATABASE_URL=f"postgresql://xpumesh:{DB_PASSWORD}@127.0.0.1:1/xpumesh")
    try:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            user = bearer(await make_key(client, "acme", "user"))
            spec = {"name": "printenv", "hardware": {"type": "gpu", "vendor": "nvidia"}, "restart_policy": "never",
                    "variants": {"nvidia": {"command": ["env"], "env": {"MY_SETTING": "mine"}}}}
            r = await client.post("/v1/workloads", json=spec, headers=user)
            assert r.status_code == 201, r.text
            wid = r.json()["id"]

            async def done() -> dict[str, str] | None:
                got = await client.get(f"/v1/workloads/{wid}", headers=user)
                assert got.status_code == 200, got.text
                return got.json() if got.json()["state"] == "succeeded" else None

            placed = (await eventually(done, timeout=30, message="env ran on the agent"))["placement"][0]
            assert placed["host_id"] == host_id_for(socket.gethostname())
            logs = await client.get(f"/v1/workloads/{wid}/logs", headers=user)
            assert logs.status_code == 200, logs.text
            text = logs.json()["text"]
            lines = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
            assert lines.get("XPUMESH_WORKLOAD_ID") == wid and lines.get("MY_SETTING") == "mine"
            assert lines.get("CUDA_VISIBLE_DEVICES") == str(placed["devices"][0]["index"])
            for secret in (NATS_PASSWORD, DB_PASSWORD, TEST_ADMIN_KEY):
                assert secret not in text
            assert not {"XPUMESH_NATS_URL", "XPUMESH_DATABASE_URL", "XPUMESH_BOOTSTRAP_ADMIN_KEY"} & set(lines)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=15)
    assert code == 0, log.read_text()[-2000:]


async def test_replica_environment_reserved_names_are_refused_at_submit(settings, running_service) -> None:
    s = fast(settings)
    await running_service(scheduler_app, s)
    url = await start_gateway(running_service, s)
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        for name in ("CUDA_VISIBLE_DEVICES", "XPUMESH_DEVICES", "ASCEND_RT_VISIBLE_DEVICES"):
            spec = {"name": "override", "hardware": {"type": "gpu"},
                    "variants": {"default": {"command": ["env"], "env": {name: "0,1,2,3"}}}}
            r = await client.post("/v1/workloads", json=spec, headers=ADMIN)
            assert r.status_code == 422, r.text
            assert r.headers["content-type"].startswith("application/problem+json")
            assert name in r.json()["detail"] and "reserved" in r.json()["detail"]
        listed = await client.get("/v1/workloads", headers=ADMIN)
        assert listed.status_code == 200 and listed.json()["items"] == []
