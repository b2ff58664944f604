"""The real agent as a process: registers its host from captured tool outputs, sends telemetry,
re-reports when the hardware changes, and stops cleanly on SIGTERM."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

from libs.schemas.hostevents import host_id_for
from libs.schemas.inventory import HostDetail
from services.inventory.api import app as inventory_app
from services.registry.api import app as registry_app
from tests.conftest import REPO, assert_eventually, service_env, spawn_agent
from tests.integration.test_inventory import host

FIXTURE = REPO / "tests" / "fixtures" / "probes" / "nvidia-a100x8"


async def test_agent_registers_reports_telemetry_and_rereports_a_driver_upgrade(
        settings, running_service, bus, tmp_path: Path) -> None:
    await running_service(registry_app)
    await running_service(inventory_app)
    probe_dir = tmp_path / "probes"
    shutil.copytree(FIXTURE, probe_dir)
    host_id = host_id_for(socket.gethostname())
    proc = spawn_agent(settings, probe_dir, tmp_path / "agent.log", XPUMESH_AGENT__REDISCOVER_INTERVAL_S="0.5")
    try:
        async def with_readings() -> HostDetail | None:
            h = await host(bus, host_id)
            return h if h is not None and all(d.telemetry is not None for d in h.devices) else None

        detail = await assert_eventually(with_readings, timeout=20, message="agent's host registered with readings")
        assert detail.site == "hangzhou" and len(detail.devices) == 8
        assert {d.catalog_model for d in detail.devices} == {"A100-SXM4-80GB"}
        assert {d.driver_version for d in detail.devices} == {"550.90.07"}
        assert detail.labels["xpumesh.io/gpu.model"] == "A100-SXM4-80GB"
        assert detail.telemetry is not None and detail.telemetry.mem_total_mib > 0
        first_generation = detail.generation

        for f in probe_dir.iterdir():
            if f.is_file():
                f.write_text(f.read_text().replace("550.90.07", "550.127.05"))

        async def upgraded() -> HostDetail | None:
            h = await host(bus, host_id)
            return h if h is not None and {d.driver_version for d in h.devices} == {"550.127.05"} else None

        after = await assert_eventually(upgraded, timeout=15, message="driver upgrade re-reported")
        assert after.generation > first_generation and len(after.devices) == 8
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=10)
    assert code == 0, (tmp_path / "agent.log").read_text()[-2000:]


def test_agent_refuses_a_missing_probe_dir(settings, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "xpumesh", "agent", "--probe-dir", str(tmp_path / "nope")],
                          env=service_env(settings), capture_output=True, timeout=60, cwd=REPO)
    assert proc.returncode == 2 and b"probe dir not found" in proc.stdout + proc.stderr
