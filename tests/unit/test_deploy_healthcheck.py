"""deploy/healthcheck.py, the probe the image ships, against a real service on a real nats-server."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from libs.config import Settings
from libs.embedded import free_port
from libs.service import Context, ServiceApp, default_instance_id, serve
from tests.unit.test_deploy import HEALTHCHECK, load_healthcheck

SERVICE = "hcprobe"
state = {"healthy": True}
app = ServiceApp(SERVICE, uses_db=False)


async def _switch(ctx: Context) -> bool:
    return state["healthy"]


app.health_checks["switch"] = _switch


@pytest.fixture
async def service(nats_url: str, tmp_path: Path) -> AsyncIterator[None]:
    state["healthy"] = True
    ready, stop = asyncio.Event(), asyncio.Event()
    settings = Settings(nats_url=nats_url, data_dir=tmp_path, heartbeat_interval_s=0.5)
    task = asyncio.create_task(serve(app, settings, ready=ready, stop=stop))
    await asyncio.wait_for(ready.wait(), timeout=15)
    yield
    stop.set()
    await asyncio.wait_for(task, timeout=10)


async def probe(*args: str, nats_url: str, **env: str) -> tuple[int, str]:
    """Run the probe as the container would, as its own process."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("XPUMESH_")}
    full.update({"XPUMESH_NATS_URL": nats_url, **env})
    proc = await asyncio.create_subprocess_exec(sys.executable, str(HEALTHCHECK), *args, env=full,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_healthcheck_service_passes_for_this_containers_instance(service: None, nats_url: str) -> None:
    (ready, ready_out), (live, _) = await asyncio.gather(
        probe("service", SERVICE, nats_url=nats_url), probe("service", SERVICE, "--live", nats_url=nats_url))
    assert (ready, live) == (0, 0), ready_out
    assert SERVICE in ready_out and ": ok" in ready_out


async def test_healthcheck_service_ignores_other_instances_and_services(service: None, nats_url: str) -> None:
    """Another container's instance answering must not make this one healthy."""
    (other, other_out), (absent, absent_out) = await asyncio.gather(
        probe("service", SERVICE, "--timeout", "0.5", nats_url=nats_url, XPUMESH_INSTANCE_ID="another-pod"),
        probe("service", "nosuchservice", "--live", "--timeout", "0.5", nats_url=nats_url))
    assert other == 1 and "did not answer" in other_out
    assert absent == 1 and "did not answer" in absent_out


async def test_healthcheck_degraded_service_is_alive_but_not_ready(service: None, nats_url: str) -> None:
    state["healthy"] = False
    (ready, ready_out), (live, _) = await asyncio.gather(
        probe("service", SERVICE, nats_url=nats_url), probe("service", SERVICE, "--live", nats_url=nats_url))
    assert ready == 1 and "degraded" in ready_out and "switch" in ready_out
    assert live == 0


async def test_healthcheck_unreachable_nats_fails_readiness_not_liveness() -> None:
    closed = f"nats://127.0.0.1:{free_port()}"
    (ready, ready_out), (live, live_out) = await asyncio.gather(
        probe("service", SERVICE, "--timeout", "1", nats_url=closed),
        probe("service", SERVICE, "--live", "--timeout", "1", nats_url=closed))
    assert ready == 1 and "cannot reach NATS" in ready_out
    assert live == 0 and "cannot reach NATS" in live_out


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 503)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


async def test_healthcheck_http_needs_a_2xx(http_port: int) -> None:
    base = f"http://127.0.0.1:{http_port}"
    (ok, _), (unready, unready_out), (down, down_out) = await asyncio.gather(
        probe("http", f"{base}/healthz", nats_url=""), probe("http", f"{base}/readyz", nats_url=""),
        probe("http", f"http://127.0.0.1:{free_port()}/healthz", "--timeout", "1", nats_url=""))
    assert ok == 0
    assert unready == 1 and "HTTP 503" in unready_out
    assert down == 1 and "URLError" in down_out


def test_healthcheck_matches_the_default_instance_id_of_this_host(monkeypatch: pytest.MonkeyPatch) -> None:
    hc = load_healthcheck()
    monkeypatch.delenv("XPUMESH_INSTANCE_ID", raising=False)
    mine = default_instance_id(Settings())
    assert hc.instance_matches(mine, configured=None, hostname=socket.gethostname())
    pod = "xpumesh-registry-7d9f"
    assert hc.instance_matches(f"{pod}-1", configured=None, hostname=pod)
    assert not hc.instance_matches("otherhost-123", configured=None, hostname=pod)
    assert not hc.instance_matches(f"{pod}2-1", configured=None, hostname=pod)
    assert not hc.instance_matches(f"{pod}-b-1", configured=None, hostname=pod)  # another pod whose name extends ours
    long = "h" * 70
    assert hc.instance_matches(("h" * 64), configured=None, hostname=long)
    assert hc.instance_matches("pod-a", configured="pod-a", hostname="whatever")
    assert not hc.instance_matches("pod-b", configured="pod-a", hostname="pod-b")
