"""``xpumesh up``: the whole mesh from one command, and a clean stop."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import httpx
import nats
import psutil
import pytest

import xpumesh.examples.echo as echo
from libs.bus import subjects
from libs.embedded import free_port
from libs.schemas.hostevents import host_id_for
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
    proc = _up(env, log)
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
        assert sorted(p.name for p in (secrets / "creds").iterdir()) == sorted(f"{n}.creds"
                                                                             for n in {*FIVE, "sim", "agent"})
        tree = psutil.Process(proc.pid).children(recursive=True)
        assert len(tree) >= 8  # five services, the simulator, the local agent, nats-server, postgres
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
        _kill(proc)


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


@pytest.mark.slow
async def test_up_demo_runs_a_real_local_host_whose_service_answers_through_the_gateway(tmp_path: Path) -> None:
    """``xpumesh up --demo``: beside the simulated fleet, this machine's own agent; a tiny HTTP service placed
    there is a real process, becomes ready and answers through /v1/endpoints/, and stops when asked."""
    env = _env(tmp_path, XPUMESH_AGENT__READINESS_INTERVAL_S="0.2", XPUMESH_AGENT__STATE_INTERVAL_S="1")
    log = open(tmp_path / "up.log", "wb")
    proc = _up(env, log)
    local = host_id_for(socket.gethostname())
    admin = {"Authorization": f"Bearer {TEST_ADMIN_KEY}"}
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{env['XPUMESH_GATEWAY_PORT']}", timeout=10) as c:
            async def local_host() -> bool:
                try:
                    r = await c.get(f"/v1/hosts/{local}", headers=admin)
                except httpx.HTTPError:
                    return False
                return r.status_code == 200 and r.json()["labels"].get("pool") == "local"

            await assert_eventually(local_host, timeout=90, interval=0.5, message="the local host, labelled pool=local")
            spec = {"name": "echo", "kind": "service", "replicas": 3, "hardware": {"type": "cpu"},
                    "placement": {"host_labels": {"pool": "local"}},
                    "service": {"port": 8000, "readiness_path": "/healthz"},
                    "variants": {"cpu": {"command": [_replica_python(), echo.__file__]}}}
            r = await c.post("/v1/workloads", json=spec, headers=admin)
            assert r.status_code == 201, r.text
            wid = r.json()["id"]

            async def answers() -> set[str] | None:
                got = [await c.get("/v1/endpoints/echo/hello", headers=admin) for _ in range(6)]
                if {g.status_code for g in got} != {200}:
                    return None
                bodies = [g.json() for g in got]
                assert {b["host"] for b in bodies} == {local} and {b["workload"] for b in bodies} == {wid}
                return {b["replica"] for b in bodies} if len({b["replica"] for b in bodies}) == 3 else None

            assert await assert_eventually(answers, timeout=60, interval=0.5, message="all three replicas answer") \
                == {"0", "1", "2"}
            view = (await c.get(f"/v1/workloads/{wid}", headers=admin)).json()
            assert {p["host_id"] for p in view["placement"]} == {local}
            assert not any(p["simulated"] for p in view["placement"])
            assert (await c.patch(f"/v1/workloads/{wid}", json={"replicas": 1}, headers=admin)).status_code == 200

            async def one() -> bool:
                got = [await c.get("/v1/endpoints/echo/", headers=admin) for _ in range(4)]
                return {g.status_code for g in got} == {200} and {g.json()["replica"] for g in got} == {"0"}
            await assert_eventually(one, timeout=30, interval=0.5, message="only replica 0 answers after the patch")
            await assert_eventually(lambda: len(_echo_processes()) == 1, timeout=15,
                                    message="the scaled-away replicas' processes exit")

            # the packaged embedding model of the catalog, by name, on the local host, through the gateway
            model = {"model": "wordllama-l2-supercat-256", "hardware": {"type": "cpu"},
                     "placement": {"host_labels": {"pool": "local"}}}
            r = await c.post("/v1/workloads", json=model, headers=admin)
            assert r.status_code == 201, r.text
            mid = r.json()["id"]
            texts = ["a cat sat on the mat", "a kitten rested on the rug", "quarterly tax filing deadline"]

            async def embedded() -> list[list[float]] | None:
                got = await c.post("/v1/endpoints/wordllama-l2-supercat-256/v1/embeddings", headers=admin,
                                   json={"model": "wordllama-l2-supercat-256", "input": texts})
                return [d["embedding"] for d in got.json()["data"]] if got.status_code == 200 else None

            vectors = await assert_eventually(embedded, timeout=60, interval=0.5,
                                              message="the packaged model answers through the gateway")
            near = sum(x * y for x, y in zip(vectors[0], vectors[1], strict=True))
            far = sum(x * y for x, y in zip(vectors[0], vectors[2], strict=True))
            assert len(vectors[0]) == 256 and near > far  # real model output: related texts are closer
            placed = (await c.get(f"/v1/workloads/{mid}", headers=admin)).json()["placement"]
            assert [(p["host_id"], p["simulated"]) for p in placed] == [(local, False)]
            assert (await c.delete(f"/v1/workloads/{mid}", headers=admin)).status_code == 200
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)
        assert not _echo_processes()  # the demo's local host stops its replicas with it
    finally:
        _kill(proc)


def _up(env: dict[str, str], log: IO[bytes]) -> subprocess.Popen[bytes]:
    """``xpumesh up --demo`` in a session of its own, so ``_kill`` can end all it started."""
    return subprocess.Popen([sys.executable, "-m", "xpumesh", "up", "--demo", "--hosts", "6"], env=env,
                            stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """After a failure: the supervisor's whole process group, and any example replica it left, so nothing of this
    test outlives it (left running, they would hold the replica uids the next tests want)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    for p in _echo_processes():
        with contextlib.suppress(psutil.Error):
            p.kill()


def _replica_python() -> str:
    """A Python the replica's own uid can run: as root the agent gives each replica a uid of its range, which may
    not reach this interpreter (e.g. under /root), so the system's; otherwise this one."""
    system = Path("/usr/bin/python3")
    return str(system) if os.geteuid() == 0 and system.exists() else sys.executable


def _echo_processes() -> list[psutil.Process]:
    """The example service's interpreters now running (not their shell wrappers)."""
    out = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info.get("cmdline") or []
        if len(cmd) >= 2 and cmd[1] == echo.__file__:
            out.append(p)
    return out
SINGLETONS = {"registry", "scheduler", "metrics"}


@pytest.mark.slow
async def test_up_replicas_2_runs_two_of_every_service_one_leader_each_on_a_3_node_nats_cluster(
        tmp_path: Path) -> None:
    env = _env(tmp_path)
    log = open(tmp_path / "up.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "xpumesh", "up", "--replicas", "2", "--demo", "--hosts", "4"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        port = int(env["XPUMESH_GATEWAY_PORT"])
        seen: dict[str, object] = {}

        async def settled() -> bool:
            try:
                async with httpx.AsyncClient() as c:
                    r = await c.get(f"http://127.0.0.1:{port}/v1/services",
                                    headers={"Authorization": f"Bearer {TEST_ADMIN_KEY}"}, timeout=2)
            except httpx.HTTPError:
                return False
            if r.status_code != 200:
                return False
            by_name = {s["name"]: s for s in r.json()["items"]}
            seen.update(by_name)
            for name in FIVE:
                up = [i for i in by_name.get(name, {"instances": []})["instances"] if i["status"] == "up"]
                if len(up) != 2:
                    return False
                roles = sorted(str(i["role"]) for i in up)
                if roles != (["leader", "standby"] if name in SINGLETONS else ["None", "None"]):
                    return False
                leader = by_name[name]["leader"]
                if leader != (next(i["id"] for i in up if i["role"] == "leader") if name in SINGLETONS else None):
                    return False
            return True

        await assert_eventually(settled, timeout=120, interval=0.5,
                                message="two instances of each service, one leader of each singleton")
        print(f"\n/v1/services: { {n: seen[n] for n in sorted(seen)} }")
        async with httpx.AsyncClient() as c:  # the second gateway instance answers on the next port
            r = await c.get(f"http://127.0.0.1:{port + 1}/v1/services",
                            headers={"Authorization": f"Bearer {TEST_ADMIN_KEY}"}, timeout=5)
        assert r.status_code == 200 and {s["name"] for s in r.json()["items"]} >= FIVE
        tree = psutil.Process(proc.pid).children(recursive=True)
        assert sum(1 for p in tree if p.name() == "nats-server") == 3
        # JetStream keeps every stream on all three nodes
        secrets = tmp_path / "data" / "secrets"
        nc = await nats.connect(f"tls://127.0.0.1:{env['XPUMESH_EMBEDDED__NATS_PORT']}",
                                tls=client_context(secrets / "tls" / "ca.pem"),
                                user_credentials=str(secrets / "creds" / "gateway.creds"), connect_timeout=5,
                                inbox_prefix=subjects.inbox_prefix("service", "gateway"))
        try:
            info = await nc.jetstream().stream_info("XPUMESH_EVENTS")
            assert info.config.num_replicas == 3
            assert info.cluster is not None and len(info.cluster.replicas or []) == 2  # the leader and two more
        finally:
            await nc.close()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=15)
        _gone, alive = psutil.wait_procs(tree, timeout=2)
        assert not alive, f"left running: {[p.pid for p in alive]}"
        assert f":{port + 1}/v1" in (tmp_path / "up.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
