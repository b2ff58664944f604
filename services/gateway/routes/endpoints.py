"""Service endpoints: ``/v1/endpoints/<name>/<path>`` calls a ready replica of the caller's tenant's
service ``<name>`` (``proxy.forward``); ``GET /v1/endpoints`` lists the endpoints a key may call.

Who may call: keys of the owning tenant (any role but viewer, invoke-only keys included), and
keys of tenants every service behind the endpoint names in ``service.callers`` (``*``: every
tenant), addressing it as ``/v1/endpoints/<owner>:<name>/…``. Anything else is a 404, as if
the endpoint did not exist. The routing table is this instance's (``endpoints.EndpointTable``,
kept from events): no request asks another service anything.

``GET /v1/endpoint-stats`` is what the dashboard's services view reads: each endpoint's ready
replicas and its traffic as this instance forwarded it (``traffic.Traffic``), as JSON so the browser
never parses Prometheus text. It lives outside ``/v1/endpoints/`` on purpose: every path below
that prefix is a service's own (``/v1/endpoints/<name>/<path>`` is proxied), so a stats path there
would shadow a service's route — and invoke-only keys, which may use that prefix and nothing else,
do not read it. Its scope is the workloads' (``tenant_filter``): a user or viewer sees its own
tenant's endpoints, admins and operators every tenant's; an endpoint another tenant merely opened
to the caller is not listed (its traffic is its owner's).
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from libs.schemas.tenancy import Role
from services.gateway.auth import CurrentPrincipal, Principal, tenant_filter
from services.gateway.deps import Ctx
from services.gateway.endpoints import Endpoint
from services.gateway.openapi import problem
from services.gateway.problems import ProblemError
from services.gateway.proxy import forward

router = APIRouter(tags=["endpoints"])
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
Name = Annotated[str, Path(max_length=191, description="The service's name (its workload spec's name), or "
                           "'<owner>:<name>' for another tenant's.", examples=["echo", "acme:echo"])]
Rest = Annotated[str, Path(description="Path passed on to the replica.", examples=["v1/embeddings"])]
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The replica's answer, streamed as it comes (any status, headers and body; "
                         "X-Xpumesh-Replica names the replica). The example is what xpumesh/examples/echo.py says.",
          "content": {"*/*": {"schema": {}, "example": {
              "replica": "1", "host": "hz-cpu-01", "workload": "wl_18ea52ab2dac349aa6915d69", "method": "GET",
              "path": "/hello?q=1", "body_bytes": 0, "body_sha256": hashlib.sha256(b"").hexdigest(),
              "authorization": None}}}},
    404: problem("No such endpoint for this key (or one it may not call)", "Endpoint not found",
                 "no endpoint 'echo'"),
    502: problem("No ready replica could be reached, or the replica failed the request", "Replica unreachable",
                 "no replica of endpoint 'echo' could be reached"),
    503: problem("The service has no ready replica now (see Retry-After)", "No ready replica",
                 "endpoint 'echo' has no replica ready to take requests; retry shortly"),
    504: problem("The replica did not answer in time", "Replica timed out", "endpoint 'echo' did not answer "
                 "within 60 s")}


class EndpointInfo(BaseModel):
    name: str
    tenant: str | None
    url: str = Field(description="Where to call it, relative to the gateway.")
    replicas_ready: int
    simulated: int = Field(description="Ready replicas answered by the simulator's responder.")
    workloads: list[str]
    callers: list[str]


class EndpointPage(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"items": [
        {"name": "echo", "tenant": "acme", "url": "/v1/endpoints/echo/", "replicas_ready": 3, "simulated": 0,
         "workloads": ["wl_18ea52ab2dac349aa6915d69"], "callers": []},
        {"name": "embed", "tenant": "beta", "url": "/v1/endpoints/beta:embed/", "replicas_ready": 16,
         "simulated": 16, "workloads": ["wl_18ea52ab2dac349aa6915d70"], "callers": ["acme"]}]}]})

    items: list[EndpointInfo]


class EndpointStats(BaseModel):
    tenant: str | None
    name: str
    url: str = Field(description="Its address relative to the gateway (another tenant's: '<owner>:<name>').")
    workloads: list[str] = Field(description="The services behind it (two during a rolling update).")
    replicas_ready: int
    simulated: int = Field(description="Ready replicas answered by the simulator's responder.")
    requests_total: int = Field(description="Requests this gateway instance forwarded since it started.")
    errors_total: int = Field(description="Of those, the ones that failed: answered with a 5xx (by the gateway "
                              "or the replica) or whose stream broke.")
    window_s: float = Field(description="The span the figures below cover: gateway.endpoint_stats_window_s, "
                            "or less while the instance is younger.")
    requests: int = Field(description="Requests in the window.")
    errors: int = Field(description="Failed requests in the window.")
    rate_per_s: float = Field(description="Requests per second over the window.")
    error_ratio: float | None = Field(description="errors / requests in the window (None without requests).")
    latency_p50_ms: float | None = Field(description="Median time to the replica's response headers in the window "
                                         "(to within about 9 %; None when no replica answered).")
    latency_p99_ms: float | None = Field(description="99th percentile of the same.")


class EndpointStatsPage(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"instance": "gw-7f3a", "items": [
        {"tenant": "acme", "name": "echo", "url": "/v1/endpoints/echo/", "workloads": ["wl_18ea52ab2dac349aa6915d69"],
         "replicas_ready": 3, "simulated": 0, "requests_total": 5120, "errors_total": 2, "window_s": 60.0,
         "requests": 1830, "errors": 0, "rate_per_s": 30.5, "error_ratio": 0.0, "latency_p50_ms": 1.3,
         "latency_p99_ms": 6.4}]}]})

    instance: str = Field(description="The gateway instance that counted (each counts only what it forwarded).")
    items: list[EndpointStats]


def _not_found(name: str) -> ProblemError:
    return ProblemError(404, "Endpoint not found", f"no endpoint {name!r}")


def _resolve(ctx: Ctx, principal: Principal, owner: str, name: str) -> Endpoint:
    if principal.role == Role.VIEWER:
        raise ProblemError(403, "Forbidden", "viewer keys are read-only and cannot call services")
    ep = ctx.state.endpoints.get(owner, name)
    if ep is None or not ep.callable_by(principal.tenant):
        raise _not_found(name)
    return ep


def _info(ep: Endpoint, own: bool) -> EndpointInfo:
    replicas = ep.replicas()
    return EndpointInfo(name=ep.name, tenant=ep.tenant, replicas_ready=len(replicas),
                        url=f"/v1/endpoints/{ep.name}/" if own else f"/v1/endpoints/{ep.tenant}:{ep.name}/",
                        simulated=sum(r.simulated for r in replicas), workloads=sorted(ep.sets),
                        callers=sorted({c for s in ep.sets.values() for c in s.callers}))


@router.get("/v1/endpoints", response_model=EndpointPage, summary="Service endpoints this key may call",
            description="The caller's tenant's services, and other tenants' services open to it, with how many "
                        "replicas are ready now (as this gateway knows it).")
async def list_endpoints(ctx: Ctx, principal: CurrentPrincipal) -> EndpointPage:
    table = ctx.state.endpoints
    items = [_info(ep, ep.tenant == principal.tenant) for ep in table.by_name.values()
             if ep.callable_by(principal.tenant)]
    return EndpointPage(items=sorted(items, key=lambda i: (i.tenant or "", i.name)))


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


@router.get("/v1/endpoint-stats", response_model=EndpointStatsPage, summary="Traffic of each service endpoint",
            description="Per endpoint the key may see (its tenant's; every tenant's for admins and operators): "
                        "ready replicas, requests and errors since this gateway instance started, and over the "
                        "last `gateway.endpoint_stats_window_s` the request rate, error ratio and latency p50/p99. "
                        "Each gateway instance reports only what it forwarded itself (behind a load balancer, "
                        "sum the instances or read Prometheus' `xpumesh_endpoint_*`). Outside `/v1/endpoints/`, "
                        "whose every path belongs to the services; invoke-only keys cannot read it.")
async def endpoint_stats(ctx: Ctx, principal: CurrentPrincipal) -> EndpointStatsPage:
    tenant = tenant_filter(principal)
    traffic = ctx.state.traffic
    items = []
    for ep in ctx.state.endpoints.by_name.values():
        if tenant is not None and ep.tenant != tenant:
            continue
        info = _info(ep, ep.tenant == principal.tenant)
        f = traffic.figures((ep.tenant, ep.name))
        items.append(EndpointStats(
            tenant=ep.tenant, name=ep.name, url=info.url, workloads=info.workloads,
            replicas_ready=info.replicas_ready, simulated=info.simulated, requests_total=f.requests_total,
            errors_total=f.errors_total, window_s=round(f.window_s, 3), requests=f.requests, errors=f.errors,
            rate_per_s=round(f.rate_per_s, 3), error_ratio=f.error_ratio, latency_p50_ms=_ms(f.latency_p50_s),
            latency_p99_ms=_ms(f.latency_p99_s)))
    return EndpointStatsPage(instance=ctx.instance, items=sorted(items, key=lambda i: (i.tenant or "", i.name)))


async def call_endpoint(ctx: Ctx, principal: CurrentPrincipal, request: Request, name: Name, path: Rest) -> Response:
    owner, _, local = name.rpartition(":")
    ep = _resolve(ctx, principal, owner or principal.tenant, local)
    return await forward(request, ctx.state.endpoints, ctx.state.proxy, ctx.settings.gateway, ctx.state.traffic,
                         ep, path)


for _method in METHODS:  # one operation per method, each with its own id
    router.add_api_route(
        "/v1/endpoints/{name}/{path:path}", call_endpoint, methods=[_method], responses=_RESPONSES,
        response_class=Response, operation_id=f"call_endpoint_{_method.lower()}",
        summary="Call a service: a ready replica answers",
        description="`name` is a service of the caller's tenant, or `<owner>:<name>` for one another tenant opened "
                    "to the caller's (`service.callers`). Proxied to a ready replica with the fewest requests in "
                    "flight; request and response bodies stream both ways (chunked, Server-Sent Events).")
