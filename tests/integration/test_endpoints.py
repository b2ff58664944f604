"""Calling services through the gateway: /v1/endpoints/<name>/ to ready replicas of the caller's tenant,
spread by least outstanding requests, streaming both ways, retried on a replica that refuses the connection,
503 when none is ready; who may call (and change) what."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx

import xpumesh.examples.echo as echo
from agent.sim.main import simulate
from libs.bus import subjects
from libs.embedded import free_port
from libs.events import CloudEvent, EventTypes
from libs.schemas.endpoints import EndpointReplica, EndpointSet
from services.gateway import proxy
from services.scheduler.api import app as scheduler_app
from tests.integration.test_api_kit import ADMIN, bearer, eventually, make_key, start_gateway
from tests.integration.test_scheduler_kit import TestHost, fast
from tests.integration.test_services import service_spec


def _settings(settings: Any) -> Any:
    s = fast(settings)
    return s.model_copy(update={"agent": s.agent.model_copy(update={"readiness_interval_s": 0.1})})


async def _ready(client: httpx.AsyncClient, headers: dict[str, str], name: str, n: int) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        r = await client.get("/v1/endpoints", headers=headers)
        assert r.status_code == 200, r.text
        found = [i for i in r.json()["items"] if i["name"] == name]
        return found[0] if found and found[0]["replicas_ready"] == n else None

    info: dict[str, Any] = await eventually(check, timeout=20, interval=0.1, message=f"{name}: {n} ready")
    return info


async def _chunks(total: int, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    block = os.urandom(size)
    sent = 0
    while sent < total:
        yield block
        sent += size


async def test_endpoints_spread_requests_over_ready_replicas_and_stream_both_ways(
        settings, running_service, bus, tmp_path: Path) -> None:
    s = _settings(settings)
    await running_service(scheduler_app, s)
    url = await start_gateway(running_service, s)
    host = await TestHost(bus, s, "hz-cpu-1", [], tmp_path, cpus=8).start()
    try:
        async with httpx.AsyncClient(base_url=url, timeout=20) as client:
            acme = bearer(await make_key(client, "acme", "user"))
            r = await client.post("/v1/workloads", json=service_spec(replicas=3), headers=acme)
            assert r.status_code == 201, r.text
            wid = r.json()["id"]
            info = await _ready(client, acme, "echo", 3)
            assert info["url"] == "/v1/endpoints/echo/" and info["workloads"] == [wid] and info["simulated"] == 0

            answers = [await client.get("/v1/endpoints/echo/hello", params={"q": "1"}, headers=acme)
                       for _ in range(30)]
            assert {a.status_code for a in answers} == {200}
            bodies = [a.json() for a in answers]
            assert sorted({b["replica"] for b in bodies}) == ["0", "1", "2"]  # every replica took requests
            assert {b["path"] for b in bodies} == {"/hello?q=1"}
            assert {b["authorization"] for b in bodies} == {None}  # the caller's key never reaches the replica
            assert {a.headers["x-xpumesh-replica"] for a in answers} == {"0", "1", "2"}

            digest = hashlib.sha256()
            total = 3 * 1024 * 1024  # past the gateway's own 1 MiB body cap: streamed, not buffered

            async def upload() -> AsyncIterator[bytes]:
                async for chunk in _chunks(total):
                    digest.update(chunk)
                    yield chunk

            up = await client.post("/v1/endpoints/echo/upload", content=upload(),
                                   headers={**acme, "Content-Type": "application/octet-stream"})
            assert up.status_code == 200, up.text
            assert up.json()["body_bytes"] == total and up.json()["body_sha256"] == digest.hexdigest()

            arrivals: list[float] = []
            async with client.stream("GET", "/v1/endpoints/echo/stream", params={"n": 6}, headers=acme) as sse:
                assert sse.headers["content-type"].startswith("text/event-stream")
                async for line in sse.aiter_lines():
                    if line.startswith("data: token"):
                        arrivals.append(time.monotonic())
            assert len(arrivals) == 6
            assert arrivals[-1] - arrivals[0] > 0.15  # events came as the replica sent them (50 ms apart)

            scaled = await client.patch(f"/v1/workloads/{wid}", json={"replicas": 1}, headers=acme)
            assert scaled.status_code == 200, scaled.text
            await _ready(client, acme, "echo", 1)
            assert {(await client.get("/v1/endpoints/echo/", headers=acme)).json()["replica"]
                    for _ in range(5)} == {"0"}
            bad = await client.patch(f"/v1/workloads/{wid}", json={"replicas": 0}, headers=acme)
            assert bad.status_code == 422 and bad.headers["content-type"].startswith("application/problem+json")
            extra = await client.patch(f"/v1/workloads/{wid}", json={"replicas": 2, "image": "x"}, headers=acme)
            assert extra.status_code == 422

            assert (await client.delete(f"/v1/workloads/{wid}", headers=acme)).status_code == 200

            async def gone() -> bool:
                r = await client.get("/v1/endpoints/echo/", headers=acme)
                return r.status_code == 404
            await eventually(gone, timeout=10, message="endpoint gone once the service stopped")
    finally:
        await host.stop()


async def test_endpoints_retry_an_idempotent_request_whose_connection_broke_but_never_a_post(
        settings, running_service, bus, tmp_path: Path) -> None:
    """A replica that drops the connection before answering (as one killed mid-request): a GET is answered by
    another replica; a POST with a body is a 502, since the replica may have acted on it. Failed before the
    gateway retried idempotent requests (every request that met replica 0 was a 502)."""
    s = _settings(settings)
    await running_service(scheduler_app, s)
    url = await start_gateway(running_service, s)
    host = await TestHost(bus, s, "hz-cpu-1", [], tmp_path, cpus=8).start()
    try:
        async with httpx.AsyncClient(base_url=url, timeout=20) as client:
            acme = bearer(await make_key(client, "acme", "user"))
            r = await client.post("/v1/workloads", json=service_spec(replicas=2), headers=acme)
            assert r.status_code == 201, r.text
            await _ready(client, acme, "echo", 2)
            before = proxy.RETRIES.labels("acme", "echo", "connection_broken")._value.get()
            got = [await client.get("/v1/endpoints/echo/drop", params={"replica": "0"}, headers=acme)
                   for _ in range(12)]
            assert {g.status_code for g in got} == {200}, [g.text for g in got if g.status_code != 200]
            assert {g.json()["replica"] for g in got} == {"1"}
            assert proxy.RETRIES.labels("acme", "echo", "connection_broken")._value.get() - before >= 1
            # a GET saying Content-Length: 0 (as many clients do) has no body either: retried the same
            empty = [await client.request("GET", "/v1/endpoints/echo/drop", params={"replica": "0"},
                                          headers={**acme, "Content-Length": "0"}) for _ in range(8)]
            assert {g.status_code for g in empty} == {200}, [g.text for g in empty if g.status_code != 200]
            posts = [await client.post("/v1/endpoints/echo/drop", params={"replica": "0"}, content=b"x",
                                       headers=acme) for _ in range(6)]
            assert {p.status_code for p in posts} == {200, 502}  # replica 0's share failed, not retried
            broken = next(p for p in posts if p.status_code == 502)
            assert broken.headers["content-type"].startswith("application/problem+json")
    finally:
        await host.stop()


async def test_endpoints_without_a_ready_replica_answer_503_with_retry_after(
        settings, running_service, bus, tmp_path: Path) -> None:
    s = _settings(settings)
    await running_service(scheduler_app, s)
    url = await start_gateway(running_service, s)
    host = await TestHost(bus, s, "hz-cpu-1", [], tmp_path, cpus=8).start()
    try:
        async with httpx.AsyncClient(base_url=url, timeout=20) as client:
            acme = bearer(await make_key(client, "acme", "user"))
            never = service_spec(name="deaf")
            never["variants"] = {"default": {"command": [sys.executable, "-c", "import time; time.sleep(60)"]}}
            r = await client.post("/v1/workloads", json=never, headers=acme)
            assert r.status_code == 201, r.text

            async def unavailable() -> httpx.Response | None:
                r = await client.get("/v1/endpoints/deaf/x", headers=acme)
                return r if r.status_code == 503 else None
            answer = await eventually(unavailable, timeout=10, message="503 while none is ready")
            assert answer.headers["retry-after"] == str(s.gateway.endpoint_retry_after_s)
            assert answer.headers["content-type"].startswith("application/problem+json")
            assert answer.json()["title"] == "No ready replica"
    finally:
        await host.stop()


@contextlib.contextmanager
def _echo_process(port: int) -> Iterator[str]:
    proc = subprocess.Popen([sys.executable, echo.__file__], env={**os.environ, "PORT": str(port),
                                                                  "XPUMESH_REPLICA": "1"})
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()


async def test_endpoints_retry_a_refused_connection_on_another_replica(settings, running_service, bus) -> None:
    url = await start_gateway(running_service, settings)
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there: the connection is refused
    with _echo_process(free_port()) as live:
        async with httpx.AsyncClient(base_url=url, timeout=20) as client:
            acme = bearer(await make_key(client, "acme", "user"))
            endpoint = EndpointSet(workload_id="wl_retry", name="flaky", tenant="acme", version=1, active=True,
                                   replicas=[EndpointReplica(replica=0, attempt=1, host_id="h0", url=dead),
                                             EndpointReplica(replica=1, attempt=1, host_id="h1", url=live)])
            await bus.publish_event(CloudEvent.new(EventTypes.ENDPOINT_CHANGED, "/scheduler", endpoint,
                                                   subject="wl_retry"),
                                    subject=subjects.event_subject(EventTypes.ENDPOINT_CHANGED))
            await _ready(client, acme, "flaky", 2)

            async def live_answers() -> bool:
                r = await client.get("/v1/endpoints/flaky/", headers=acme)
                return r.status_code == 200
            await eventually(live_answers, timeout=10, message="the live replica answers")
            answers = [await client.post("/v1/endpoints/flaky/x", json={"n": i}, headers=acme) for i in range(12)]
            assert [a.status_code for a in answers] == [200] * 12  # POSTs too: nothing reached the dead one
            assert {a.json()["replica"] for a in answers} == {"1"}

            older = endpoint.model_copy(update={"version": 0, "replicas": []})  # stale: ignored
            await bus.publish_event(CloudEvent.new(EventTypes.ENDPOINT_CHANGED, "/scheduler", older,
                                                   subject="wl_retry"),
                                    subject=subjects.event_subject(EventTypes.ENDPOINT_CHANGED))
            ended = endpoint.model_copy(update={"version": 2, "active": False, "replicas": []})
            await bus.publish_event(CloudEvent.new(EventTypes.ENDPOINT_CHANGED, "/scheduler", ended,
                                                   subject="wl_retry"),
                                    subject=subjects.event_subject(EventTypes.ENDPOINT_CHANGED))

            async def removed() -> bool:
                return (await client.get("/v1/endpoints/flaky/", headers=acme)).status_code == 404
            await eventually(removed, timeout=10, message="an ended service is no longer routed")
    assert proxy.REQUESTS.labels("acme", "flaky", "200")._value.get() >= 12


async def test_endpoints_refuse_other_tenants_viewers_and_invoke_only_keys_elsewhere(
        settings, running_service, bus, tmp_path: Path) -> None:
    s = _settings(settings)
    await running_service(scheduler_app, s)
    url = await start_gateway(running_service, s)
    host = await TestHost(bus, s, "hz-cpu-1", [], tmp_path, cpus=8).start()
    try:
        async with httpx.AsyncClient(base_url=url, timeout=20) as client:
            acme = bearer(await make_key(client, "acme", "user"))
            acme_invoker = bearer(await make_key(client, "acme", "invoker"))
            acme_viewer = bearer(await make_key(client, "acme", "viewer"))
            zeta = bearer(await make_key(client, "zeta", "user"))
            beta = bearer(await make_key(client, "beta", "invoker"))
            private = await client.post("/v1/workloads", json=service_spec(name="private", replicas=1), headers=acme)
            shared_spec = service_spec(name="shared", replicas=1)
            shared_spec["service"]["callers"] = ["beta"]
            shared = await client.post("/v1/workloads", json=shared_spec, headers=acme)
            assert private.status_code == shared.status_code == 201, (private.text, shared.text)
            await _ready(client, acme, "private", 1)
            await _ready(client, acme, "shared", 1)

            assert (await client.get("/v1/endpoints/private/", headers=acme_invoker)).status_code == 200
            assert (await client.post("/v1/endpoints/private/", json={}, headers=acme_invoker)).status_code == 200
            for path in ("/v1/endpoints/private/", "/v1/endpoints/acme:private/", "/v1/endpoints/shared/"):
                r = await client.get(path, headers=zeta)
                assert r.status_code == 404, (path, r.text)  # another tenant's service does not exist for it
                assert r.headers["content-type"].startswith("application/problem+json")
            assert (await client.get("/v1/endpoints/acme:private/", headers=beta)).status_code == 404
            assert (await client.get("/v1/endpoints/acme:shared/", headers=beta)).status_code == 200
            assert [i["url"] for i in (await client.get("/v1/endpoints", headers=beta)).json()["items"]] == \
                ["/v1/endpoints/acme:shared/"]
            assert (await client.get("/v1/endpoints", headers=zeta)).json()["items"] == []
            assert (await client.get("/v1/endpoints/private/", headers=acme_viewer)).status_code == 403
            assert (await client.post("/v1/endpoints/private/", json={}, headers=acme_viewer)).status_code == 403
            assert (await client.get("/v1/endpoints/private/")).status_code == 401
            assert (await client.get("/v1/endpoints/private/",
                                     headers=bearer("xpm_" + "x" * 43))).status_code == 401

            wid = private.json()["id"]
            assert (await client.patch(f"/v1/workloads/{wid}", json={"replicas": 2}, headers=zeta)).status_code == 404
            assert (await client.patch(f"/v1/workloads/{wid}", json={"replicas": 2},
                                       headers=acme_viewer)).status_code == 403
            for method, path, body in (("PATCH", f"/v1/workloads/{wid}", {"replicas": 2}),
                                       ("GET", f"/v1/workloads/{wid}", None), ("GET", "/v1/workloads", None),
                                       ("POST", "/v1/workloads", service_spec(name="x")),
                                       ("POST", "/v1/keys", {"tenant": "acme", "role": "admin"}),
                                       ("GET", "/v1/hosts", None), ("GET", "/v1/events", None)):
                r = await client.request(method, path, json=body, headers=acme_invoker)
                assert r.status_code == 403, (method, path, r.text)  # invoke-only keys call services only
            assert (await client.get(f"/v1/workloads/{wid}", headers=ADMIN)).json()["spec"]["replicas"] == 1
    finally:
        await host.stop()


async def test_endpoints_balance_over_simulated_replicas_answered_by_the_simulators_responder(
        settings, running_service, bus) -> None:
    s = fast(settings)
    await running_service(scheduler_app, s)
    url = await start_gateway(running_service, s)
    stop, ready = asyncio.Event(), asyncio.Event()
    sim = asyncio.create_task(simulate(s, 22, 7, stop, ready=ready))
    await asyncio.wait_for(ready.wait(), timeout=20)
    try:
        async with httpx.AsyncClient(base_url=url, timeout=20) as client:
            acme = bearer(await make_key(client, "acme", "user"))
            spec = {"name": "fleet", "kind": "service", "replicas": 16, "hardware": {"type": "gpu", "share": 0.25},
                    "service": {"port": 8000}, "variants": {"default": {"image": "example/serve:1"}}}
            r = await client.post("/v1/workloads", json=spec, headers=acme)
            assert r.status_code == 201, r.text
            wid = r.json()["id"]
            info = await _ready(client, acme, "fleet", 16)
            assert info["simulated"] == 16
            view = (await client.get(f"/v1/workloads/{wid}", headers=acme)).json()
            assert all(p["simulated"] and p["ready"] and p["endpoint"] for p in view["placement"])

            async def call(i: int) -> httpx.Response:
                return await client.post(f"/v1/endpoints/fleet/v1/infer?i={i}", json={"i": i}, headers=acme)

            answers = await asyncio.gather(*(call(i) for i in range(160)))
            assert {a.status_code for a in answers} == {200}
            bodies = [a.json() for a in answers]
            assert all(b["simulated"] and b["path"] == "/v1/infer" and b["workload"] == wid for b in bodies)
            per_replica = Counter(b["replica"] for b in bodies)
            assert len(per_replica) == 16 and max(per_replica.values()) <= 20  # spread, none starved or piled on
            hosts = {str(p["replica"]): p["host_id"] for p in view["placement"]}
            assert all(b["host"] == hosts[b["replica"]] for b in bodies)  # each answered by its own replica's host
            sse = await client.get("/v1/endpoints/fleet/stream", headers=acme)
            assert sse.text.count("data: token") == 3
    finally:
        stop.set()
        await asyncio.wait_for(sim, timeout=15)


async def test_endpoints_keep_answering_through_a_replica_kill_and_a_rolling_update(
        settings, running_service, bus, tmp_path: Path) -> None:
    s = _settings(settings)
    s = s.model_copy(update={"scheduler": s.scheduler.model_copy(update={"rollout_interval_s": 0.2,
                                                                         "rollout_drain_s": 0.5})})
    await running_service(scheduler_app, s)
    url = await start_gateway(running_service, s)
    host = await TestHost(bus, s, "hz-cpu-1", [], tmp_path, cpus=8).start()
    try:
        async with httpx.AsyncClient(base_url=url, timeout=20) as client:
            acme = bearer(await make_key(client, "acme", "user"))
            v1 = service_spec(replicas=3)  # the host's 8 CPUs hold both versions during the update
            v1["variants"]["default"]["env"] = {"VERSION": "1"}
            r = await client.post("/v1/workloads", json=v1, headers=acme)
            assert r.status_code == 201, r.text
            old = r.json()["id"]
            await _ready(client, acme, "echo", 3)
            codes: list[int] = []
            versions: list[str] = []
            problems: list[str] = []

            async def call() -> None:
                a = await client.get("/v1/endpoints/echo/v", headers=acme)
                codes.append(a.status_code)
                if a.status_code == 200:
                    versions.append(a.json()["version"])
                else:
                    problems.append(a.text)

            for _ in range(5):
                await call()
            victim = next(run for run in host.executor.runs.values() if run.replica == 1 and run.state.live)
            assert victim.handle is not None and victim.handle.pid is not None
            os.killpg(victim.handle.pid, 9)  # between two requests: none is in flight to it
            for _ in range(40):
                await call()
            await _ready(client, acme, "echo", 3)  # the killed replica is back, on a new port
            assert set(codes) == {200}, (codes, problems)

            v2 = {**v1, "variants": {"default": {"command": v1["variants"]["default"]["command"],
                                                 "env": {"VERSION": "2"}}}}
            up = await client.patch(f"/v1/workloads/{old}", json={"spec": v2}, headers=acme)
            assert up.status_code == 200, up.text
            new = up.json()["id"]
            assert new != old and up.json()["replaces"] == old
            renamed = await client.patch(f"/v1/workloads/{old}", json={"spec": {**v2, "name": "other"}},
                                         headers=acme)
            assert renamed.status_code == 422, renamed.text

            async def rolled() -> bool:
                await call()
                state = (await client.get(f"/v1/workloads/{old}", headers=acme)).json()["state"]
                return state == "stopped"
            await eventually(rolled, timeout=30, interval=0.02, message="the old version stopped")
            for _ in range(10):
                await call()
            assert set(codes) == {200}, problems  # not one failed request
            assert versions[0] == "1" and set(versions[-10:]) == {"2"} and "2" in versions
            info = await _ready(client, acme, "echo", 3)
            assert info["workloads"] == [new]
    finally:
        await host.stop()


async def test_endpoints_autoscale_a_service_on_requests_in_flight(settings, running_service, bus,
                                                                   tmp_path: Path) -> None:
    s = _settings(settings)
    s = s.model_copy(update={
        "scheduler": s.scheduler.model_copy(update={"autoscale_interval_s": 0.3, "autoscale_down_after_s": 1.0}),
        "gateway": s.gateway.model_copy(update={"endpoint_load_interval_s": 0.3, "endpoint_load_sample_s": 0.05})})
    await running_service(scheduler_app, s)
    url = await start_gateway(running_service, s)
    host = await TestHost(bus, s, "hz-cpu-1", [], tmp_path, cpus=8).start()
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            acme = bearer(await make_key(client, "acme", "user"))
            spec = service_spec(replicas=1)
            spec["service"].update({"min_replicas": 1, "max_replicas": 3, "target_in_flight": 1})
            r = await client.post("/v1/workloads", json=spec, headers=acme)
            assert r.status_code == 201, r.text
            wid = r.json()["id"]
            await _ready(client, acme, "echo", 1)
            busy = asyncio.Event()

            async def stream_forever() -> None:  # each stream holds a request in flight for ~1 s
                while not busy.is_set():
                    got = await client.get("/v1/endpoints/echo/stream", params={"n": 20}, headers=acme)
                    assert got.status_code == 200

            load = [asyncio.create_task(stream_forever()) for _ in range(5)]
            try:
                await _ready(client, acme, "echo", 3)  # 5 in flight, 1 per replica wanted: capped at 3
            finally:
                busy.set()
                await asyncio.gather(*load)
            view = (await client.get(f"/v1/workloads/{wid}", headers=acme)).json()
            assert view["spec"]["replicas"] == 3
            await _ready(client, acme, "echo", 1)  # idle for autoscale_down_after_s: back to min_replicas
    finally:
        await host.stop()
