"""Service endpoints: ``/v1/endpoints/<name>/<path>`` calls a ready replica of the caller's tenant's
service ``<name>`` (``proxy.forward``); ``GET /v1/endpoints`` lists the endpoints a key may call.

Who may call: keys of the owning tenant (any role but viewer, invoke-only keys included), and
keys of tenants every service behind the endpoint names in ``service.callers`` (``*``: every
tenant), addressing it as ``/v1/endpoints/<owner>:<name>/…``. Anything else is a 404, as if
the endpoint did not exist. The routing table is this instance's (``endpoints.EndpointTable``,
kept from events): no request asks another service anything.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from libs.schemas.tenancy import Role
from services.gateway.auth import CurrentPrincipal, Principal
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


async def call_endpoint(ctx: Ctx, principal: CurrentPrincipal, request: Request, name: Name, path: Rest) -> Response:
    owner, _, local = name.rpartition(":")
    ep = _resolve(ctx, principal, owner or principal.tenant, local)
    return await forward(request, ctx.state.endpoints, ctx.state.proxy, ctx.settings.gateway, ep, path)


for _method in METHODS:  # one operation per method, each with its own id
    router.add_api_route(
        "/v1/endpoints/{name}/{path:path}", call_endpoint, methods=[_method], responses=_RESPONSES,
        response_class=Response, operation_id=f"call_endpoint_{_method.lower()}",
        summary="Call a service: a ready replica answers",
        description="`name` is a service of the caller's tenant, or `<owner>:<name>` for one another tenant opened "
                    "to the caller's (`service.callers`). Proxied to a ready replica with the fewest requests in "
                    "flight; request and response bodies stream both ways (chunked, Server-Sent Events).")
