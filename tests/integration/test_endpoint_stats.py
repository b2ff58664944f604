"""GET /v1/endpoint-stats: each endpoint's traffic as this gateway forwarded it (requests, errors, rate, latency
quantiles), confined like workloads: a tenant's keys see its own endpoints only, admins and operators all;
invoke-only keys and keyless callers read nothing."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from libs.bus import subjects
from libs.bus.connection import Bus
from libs.embedded import free_port
from libs.events import CloudEvent, EventTypes
from libs.schemas.endpoints import EndpointReplica, EndpointSet
from tests.integration.test_api_kit import ADMIN, bearer, eventually, make_key, start_gateway
from tests.integration.test_endpoints import _echo_process


async def _publish(bus: Bus, s: EndpointSet) -> None:
    await bus.publish_event(CloudEvent.new(EventTypes.ENDPOINT_CHANGED, "/scheduler", s, subject=s.workload_id),
                            subject=subjects.event_subject(EventTypes.ENDPOINT_CHANGED))


def _set(wid: str, name: str, tenant: str, url: str, callers: list[str] | None = None) -> EndpointSet:
    return EndpointSet(workload_id=wid, name=name, tenant=tenant, version=1, active=True, callers=callers or [],
                       replicas=[EndpointReplica(replica=0, attempt=1, host_id="h0", url=url)])


async def _stats(client: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, dict[str, Any]]:
    r = await client.get("/v1/endpoint-stats", headers=headers)
    assert r.status_code == 200, r.text
    return {f'{i["tenant"]}:{i["name"]}': i for i in r.json()["items"]}


async def test_endpoint_stats_count_requests_errors_and_latency_per_endpoint_for_its_own_tenant_only(
        settings, running_service, bus) -> None:
    url = await start_gateway(running_service, settings)
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: every request there is a 502
    with _echo_process(free_port()) as live:
        async with httpx.AsyncClient(timeout=5) as direct:
            async def listening() -> bool:
                try:
                    return (await direct.get(live + "/healthz")).status_code == 200
                except httpx.TransportError:
                    return False
            await eventually(listening, timeout=10, message="the echo replica listens")
        async with httpx.AsyncClient(base_url=url, timeout=20) as client:
            acme = bearer(await make_key(client, "acme", "user"))
            acme_viewer = bearer(await make_key(client, "acme", "viewer"))
            acme_invoker = bearer(await make_key(client, "acme", "invoker"))
            beta = bearer(await make_key(client, "beta", "user"))
            zeta = bearer(await make_key(client, "zeta", "user"))
            operator = bearer(await make_key(client, "ops", "operator"))
            await _publish(bus, _set("wl_s1", "echo", "acme", live, callers=["beta"]))
            await _publish(bus, _set("wl_s2", "down", "acme", dead))
            await _publish(bus, _set("wl_s3", "own", "zeta", live))

            async def routed() -> bool:
                return len(await _stats(client, ADMIN)) == 3
            await eventually(routed, timeout=10, message="the three endpoints are routed")

            for i in range(20):
                assert (await client.post("/v1/endpoints/echo/x", json={"i": i}, headers=acme)).status_code == 200
            assert (await client.get("/v1/endpoints/acme:echo/", headers=beta)).status_code == 200  # opened to beta
            for _ in range(3):
                assert (await client.get("/v1/endpoints/down/", headers=acme)).status_code == 502
            assert (await client.get("/v1/endpoints/own/", headers=zeta)).status_code == 200

            mine = await _stats(client, acme)
            assert sorted(mine) == ["acme:down", "acme:echo"]  # not zeta's
            echo = mine["acme:echo"]
            assert (echo["requests_total"], echo["requests"], echo["errors_total"], echo["errors"]) == (21, 21, 0, 0)
            assert echo["url"] == "/v1/endpoints/echo/" and echo["workloads"] == ["wl_s1"]
            assert echo["replicas_ready"] == 1 and echo["simulated"] == 0 and echo["error_ratio"] == 0
            assert 0 < echo["window_s"] <= settings.gateway.endpoint_stats_window_s
            assert echo["rate_per_s"] == pytest.approx(21 / echo["window_s"], rel=0.01)
            assert 0 < echo["latency_p50_ms"] <= echo["latency_p99_ms"] < 5000
            down = mine["acme:down"]
            assert (down["requests"], down["errors"], down["error_ratio"]) == (3, 3, 1.0)
            assert down["latency_p50_ms"] is None  # no replica answered

            seen = await _stats(client, acme_viewer)  # viewers read it too
            assert {k: (v["requests_total"], v["errors_total"]) for k, v in seen.items()} == \
                {"acme:down": (3, 3), "acme:echo": (21, 0)}
            assert await _stats(client, beta) == {}  # may call acme:echo, but its traffic is acme's
            assert sorted(await _stats(client, zeta)) == ["zeta:own"]
            assert sorted(await _stats(client, operator)) == ["acme:down", "acme:echo", "zeta:own"]
            everyone = await _stats(client, ADMIN)
            assert everyone["zeta:own"]["requests_total"] == 1
            assert everyone["acme:echo"]["url"] == "/v1/endpoints/acme:echo/"  # the admin's tenant is not acme

            for headers in (acme_invoker, {}, bearer("xpm_" + "x" * 43)):
                r = await client.get("/v1/endpoint-stats", headers=headers)
                assert r.status_code in (401, 403), r.text
                assert r.headers["content-type"].startswith("application/problem+json")
            assert (await client.get("/v1/endpoint-stats", headers=acme_invoker)).status_code == 403
            assert (await client.get("/v1/endpoints/echo/", headers=acme_invoker)).status_code == 200  # it calls

