"""``xpumesh up``: the whole mesh from one command, and a clean stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import nats
import psutil
import pytest

from libs.embedded import free_port
from libs.tls import client_context
from tests.conftest import REPO, TEST_ADMIN_KEY, assert_eventually

FIVE = {"gateway", "registry", "inventory", "scheduler", "metrics"}


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XPUMESH_")}
    env.update({
        "XPUMESH_DATA_DIR": str(tmp_path / "data"),
        "XPUMESH_GATEWAY_PORT": str(free_port()),
        "XPUMESH_METRICS_PORT": str(free_port()),
        "XPUMESH_EMBEDDED__NATS_PORT": str(free_port()),
        "XPUMESH_EMBEDDED__POSTGRES_PORT": str(free_port()),
        "XPUMESH_HEARTBEAT_INTERVAL_S": "1",
        "XPUMESH_BOOTSTRAP_ADMIN_KEY": TEST_ADMIN_KEY,
    })
    env.update(extra)
    return env


@pytest.mark.slow
async def test_up_starts_all_five_services_and_stops_cleanly_on_sigint(tmp_path: Path) -> None:
    env = _env(tmp_path)
    log = open(tmp_path / "up.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "xpumesh", "up", "--demo", "--hosts", "6"], env=env,
                            stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        url = f"http://127.0.0.1:{env['XPUMESH_GATEWAY_PORT']}/v1/services"

        async def all_up() -> bool:
            try:
                async with httpx.AsyncClient() as c:
                    r = await c.get(url, headers={"Authorization": f"Bearer {TEST_ADMIN_KEY}"}, timeout=2)
            except httpx.HTTPError:
                return False
            if r.status_code != 200:
                return False
            up = {s["name"] for s in r.json()["items"] if s["status"] == "up"}
            return FIVE <= up

        await assert_eventually(all_up, timeout=60, interval=0.5, message="five services up")
        # NATS is secure by default: TLS, and no session without credentials (each process has its own)
        secrets = tmp_path / "data" / "secrets"
        nats_url = f"tls://127.0.0.1:{env['XPUMESH_EMBEDDED__NATS_PORT']}"
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nats.connect(nats_url, tls=client_context(secrets / "tls" / "ca.pem"), connect_timeout=3,
                               allow_reconnect=False, max_reconnect_attempts=0)
        assert sorted(p.name for p in (secrets / "creds").iterdir()) == sorted(f"{n}.creds" for n in {*FIVE, "sim"})
        tree = psutil.Process(proc.pid).children(recursive=True)
        assert len(tree) >= 7  # five services, the simulator, nats-server, postgres
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)
        assert time.monotonic() - started < 5.0
        _gone, alive = psutil.wait_procs(tree, timeout=1)
        assert not alive, f"left running: {[p.pid for p in alive]}"
        output = (tmp_path / "up.log").read_text()
        assert "API" in output and "dashboard" in output
        assert str(secrets) in output and "xpumesh agent enroll" in output
    finally:
        if proc.poll() is None:
            proc.kill()


def test_up_names_the_port_that_is_taken(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        env = _env(tmp_path, XPUMESH_EMBEDDED__NATS_PORT=str(port))
        res = subprocess.run([sys.executable, "-m", "xpumesh", "up"], env=env, capture_output=True, timeout=60, cwd=REPO)
    assert res.returncode == 2
    err = res.stderr.decode()
    assert f"port {port}" in err and "Traceback" not in err


def test_run_without_nats_url_explains_itself(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "xpumesh", "run", "registry"], env=_env(tmp_path),
                         capture_output=True, timeout=60, cwd=REPO)
    assert res.returncode == 1
    assert "XPUMESH_NATS_URL" in res.stderr.decode() and "Traceback" not in res.stderr.decode()


def test_bad_config_is_a_clear_error(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "xpumesh", "up"], env=_env(tmp_path, XPUMESH_GATEWAY_PORT="eighty"),
                         capture_output=True, timeout=60, cwd=REPO)
    assert res.returncode == 2
    assert "XPUMESH_GATEWAY_PORT" in res.stderr.decode() and "Traceback" not in res.stderr.decode()
