"""The registry mirrors service endpoints into Consul: each ready replica an instance of
``xpumesh-endpoint-<tenant>-<name>``, gone when it leaves rotation, and stale ones removed at start.

Consul cannot be installed here, so these tests run the registry's real py-consul client against a
small stand-in of the Consul agent's HTTP API (the calls py-consul makes: list, register,
deregister, TTL pass); ``test_consul.py`` runs the member bridge against a real agent when one is set."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from libs.bus import subjects
from libs.embedded import free_port
from libs.httpserve import HttpServer
from libs.schemas.scheduler import WorkloadView
from services.registry.api import app as registry_app
from services.scheduler.api import app as scheduler_app
from tests.conftest import assert_eventually
from tests.integration.test_scheduler_kit import TestHost, fast, submit
from tests.integration.test_services import ready_urls, scale, service_spec


class FakeConsulAgent:
    """The Consul agent endpoints py-consul's ``agent.services``/``service.register``/``deregister``/``check.ttl_pass``
    call, holding services in memory."""

    def __init__(self) -> None:
        self.services: dict[str, dict[str, Any]] = {}
        self.app = Starlette(routes=[
            Route("/v1/agent/services", self._list),
            Route("/v1/agent/service/register", self._register, methods=["PUT"]),
            Route("/v1/agent/service/deregister/{sid:path}", self._deregister, methods=["PUT"]),
            Route("/v1/agent/check/pass/{cid:path}", lambda r: Response(), methods=["PUT"]),
        ])

    async def _list(self, request: Request) -> JSONResponse:
        return JSONResponse(self.services)

    async def _register(self, request: Request) -> Response:
        body = {k.lower(): v for k, v in (await request.json()).items()}  # Consul takes its keys in any case
        self.services[body["id"]] = {"ID": body["id"], "Service": body["name"], "Tags": body.get("tags") or [],
                                     "Address": body.get("address", ""), "Port": body.get("port", 0),
                                     "Meta": body.get("meta") or {}}
        return Response()

    async def _deregister(self, request: Request) -> Response:
        self.services.pop(request.path_params["sid"], None)
        return Response()

    def endpoints(self, name: str) -> list[tuple[str, int]]:
        return sorted((s["Address"], s["Port"]) for s in self.services.values() if s["Service"] == name)


async def test_registry_mirrors_endpoint_replicas_into_consul_and_removes_stale_ones(
        settings, running_service, bus, tmp_path: Path) -> None:
    consul = FakeConsulAgent()
    consul.services["xpumesh-ep-wl_gone-0"] = {"ID": "xpumesh-ep-wl_gone-0", "Service": "xpumesh-endpoint-acme-old",
                                               "Tags": ["xpumesh-endpoint"], "Address": "10.0.0.9", "Port": 1,
                                               "Meta": {"xpumesh_workload": "wl_gone"}}
    consul.services["someone-else"] = {"ID": "someone-else", "Service": "web", "Tags": [], "Meta": {}}
    port = free_port()
    server = HttpServer(consul.app, host="127.0.0.1", port=port, drain_timeout_s=1)
    serving = asyncio.create_task(server.run())
    s = fast(settings)
    s = s.model_copy(update={"consul_url": f"http://127.0.0.1:{port}",
                             "agent": s.agent.model_copy(update={"readiness_interval_s": 0.1})})
    try:
        await running_service(scheduler_app, s)
        await running_service(registry_app, s)
        host = await TestHost(bus, s, "hz-cpu-1", [], tmp_path, cpus=8).start()
        try:
            view = await submit(bus, service_spec(replicas=2), tenant="acme")
            urls = await ready_urls(bus, view.id, 2)
            want = sorted(("127.0.0.1", int(u.rsplit(":", 1)[1])) for u in urls)
            await assert_eventually(lambda: consul.endpoints("xpumesh-endpoint-acme-echo") == want, timeout=15,
                                    message="both ready replicas registered in Consul")
            assert "xpumesh-ep-wl_gone-0" not in consul.services  # stale: removed by the first full sync
            assert "someone-else" in consul.services  # what xpumesh did not register is left alone
            mine = [v for v in consul.services.values() if v["Service"] == "xpumesh-endpoint-acme-echo"]
            assert all("xpumesh-endpoint" in v["Tags"] and "tenant=acme" in v["Tags"] for v in mine)
            assert {v["Meta"]["url"] for v in mine} == set(urls)

            await scale(bus, view.id, 1)
            await assert_eventually(lambda: len(consul.endpoints("xpumesh-endpoint-acme-echo")) == 1, timeout=15,
                                    message="the replica scaled away is deregistered")
            await bus.request(subjects.rpc_subject("scheduler", "workloads.stop"), {"id": view.id}, WorkloadView)
            await assert_eventually(lambda: consul.endpoints("xpumesh-endpoint-acme-echo") == [], timeout=15,
                                    message="a stopped service leaves Consul")
        finally:
            await host.stop()
    finally:
        await server.stop(1)
        await serving
