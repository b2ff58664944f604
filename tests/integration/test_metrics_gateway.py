"""The gateway's metrics routes and the dashboard's files: keys, problems, tenant scoping, no key for static files."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from libs.bus.connection import Bus
from libs.events import CloudEvent, EventTypes
from services.gateway.api import app as gateway_app
from services.metrics.api import app as metrics_app
from tests.conftest import TEST_ADMIN_KEY
from tests.integration.test_metrics_kit import announce, devices, eventually, fast_settings, telemetry

ADMIN = {"Authorization": f"Bearer {TEST_ADMIN_KEY}"}


async def _start(settings, running_service) -> str:
    """Metrics and gateway in-process; the gateway's base URL once it listens."""
    s = fast_settings(settings)
    await running_service(metrics_app, s)
    await running_service(gateway_app, s)
    base = f"http://127.0.0.1:{s.gateway_port}"

    async def up() -> bool:
        try:
            async with httpx.AsyncClient(base_url=base) as c:
                return (await c.get("/healthz")).status_code == 200
        except httpx.TransportError:
            return False

    await eventually(up, message="gateway listens")
    return base


async def test_metrics_gateway_dashboard_files_and_exposition_need_no_key(settings, running_service) -> None:
    async with httpx.AsyncClient(base_url=await _start(settings, running_service), timeout=10) as client:
        index = await client.get("/")
        assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
        assert "/static/app.js" in index.text and "Content-Security-Policy" in index.headers
        for name, ctype in (("app.js", "text/javascript"), ("style.css", "text/css"), ("favicon.svg", "image/svg+xml")):
            r = await client.get(f"/static/{name}")
            assert r.status_code == 200 and r.headers["content-type"].startswith(ctype), name
        for bad in ("/static/../routes/metrics.py", "/static/%2e%2e/http.py", "/static/nope.js", "/static/"):
            assert (await client.get(bad)).status_code == 404, bad
        exposition = await client.get("/metrics")
        assert exposition.status_code == 200
        names = {f.name for f in text_string_to_metric_families(exposition.text)}
        assert "xpumesh_bus_messages" in names and "xpumesh_service_up" in names
        api = await client.get("/v1/metrics/summary")
        assert api.status_code == 401 and api.headers["content-type"] == "application/problem+json"


async def test_metrics_gateway_routes_answer_and_turn_bad_input_into_problems(settings, running_service,
                                                                               bus: Bus) -> None:
    async with httpx.AsyncClient(base_url=await _start(settings, running_service), timeout=10) as client:
        pub = await announce(bus, "h-1", "ningbo", devices("gpu", 2))
        await pub.telemetry(telemetry("h-1", "ningbo", [(0, 40, 100, 90, 200, 1), (1, 60, 100, 50, 200, 1)]))

        async def reported() -> dict | None:
            body = (await client.get("/v1/metrics/summary", headers=ADMIN)).json()
            return body if body["sites"] and body["sites"][0]["by_type"] and body["totals"]["utilization_pct"] else None

        summary = await eventually(reported)
        assert summary["sites"][0]["site"] == "ningbo" and summary["totals"]["utilization_pct"] == 50.0
        alerts = await eventually(lambda: _alerts(client))
        assert alerts["items"][0]["id"] == "device_hot/h-1/0"
        hosts = (await client.get("/v1/metrics/sites/ningbo/hosts", headers=ADMIN, params={"limit": 1})).json()
        assert [h["host_id"] for h in hosts["items"]] == ["h-1"] and hosts["next_cursor"] is None
        series = await client.get("/v1/metrics/series", headers=ADMIN, params={"scope": "site", "key": "ningbo"})
        assert series.status_code == 200 and series.json()["step_s"] == 60
        device = (await client.get("/v1/metrics/devices/h-1/1", headers=ADMIN)).json()
        assert device["device"]["util"] == 60 and device["driver_version"] == "550.54.14"

        bad: list[tuple[dict[str, str | int], int]] = [
            ({"scope": "rack", "key": "x"}, 422), ({"scope": "site"}, 422),
            ({"scope": "site", "key": "ningbo", "start": "2026-01-02T00:00:00Z", "end": "2026-01-01T00:00:00Z"}, 422),
            ({"scope": "site", "key": "ningbo", "step": 1}, 422),
            ({"scope": "device", "key": "h-1/9"}, 404), ({"scope": "site", "key": "mars"}, 404)]
        for params, status in bad:
            r = await client.get("/v1/metrics/series", headers=ADMIN, params=params)
            assert r.status_code == status, (params, r.text)
            assert r.headers["content-type"] == "application/problem+json" and r.json()["title"]
        missing = await client.get("/v1/metrics/devices/h-1/7", headers=ADMIN)
        assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"
        assert (await client.get("/v1/metrics/sites/bad site!/hosts", headers=ADMIN)).status_code == 422
        assert (await client.get("/v1/metrics/sites/ningbo/hosts", headers=ADMIN,
                                 params={"cursor": "%%%"})).status_code == 400


async def _alerts(client: httpx.AsyncClient) -> dict | None:
    body = (await client.get("/v1/alerts", headers=ADMIN)).json()
    return body if body["items"] else None


async def test_metrics_gateway_workloads_are_confined_to_the_callers_tenant(settings, running_service, bus: Bus) -> None:
    async with httpx.AsyncClient(base_url=await _start(settings, running_service), timeout=10) as client:
        created = await client.post("/v1/keys", headers=ADMIN, json={"tenant": "acme", "role": "user", "name": "t"})
        assert created.status_code == 201, created.text
        acme = {"Authorization": f"Bearer {created.json()['key']}"}
        pub = await announce(bus, "h-1", "huzhou", devices("npu", 2))
        await pub.telemetry(telemetry("h-1", "huzhou", [(0, 10, 10, 40, 100, 1), (1, 10, 10, 40, 100, 1)]))
        for wid, tenant, dev in (("w-a", "acme", "h-1:huawei:0"), ("w-g", "globex", "h-1:huawei:1")):
            await bus.publish_event(CloudEvent.new(EventTypes.workload("running"), "/scheduler", {
                "workload_id": wid, "name": wid, "tenant": tenant, "state": "running",
                "placements": [{"replica": 0, "host_id": "h-1", "site": "huzhou", "devices": [dev], "shares": [1.0]}]},
                subject=wid), site="huzhou")

        async def both() -> list | None:
            items = (await client.get("/v1/metrics/workloads", headers=ADMIN)).json()["items"]
            return items if len(items) == 2 else None

        assert [w["id"] for w in await eventually(both)] == ["w-a", "w-g"]
        mine = (await client.get("/v1/metrics/workloads", headers=acme)).json()["items"]
        assert [w["id"] for w in mine] == ["w-a"]
        async def held() -> dict | None:  # the capability report (device identity) may land after telemetry
            r = await client.get("/v1/metrics/devices/h-1/1", headers=acme)  # 404 until metrics knows the device
            body: dict = r.json()
            return body if r.status_code == 200 and body["device"]["allocated"] == 1.0 else None

        other_device = await eventually(held)
        assert other_device["workloads"] == []
        assert [w["id"] for w in (await client.get("/v1/metrics/devices/h-1/1", headers=ADMIN)).json()["workloads"]] == ["w-g"]
        me = (await client.get("/v1/me", headers=acme)).json()
        assert (me["tenant"], me["role"]) == ("acme", "user")
