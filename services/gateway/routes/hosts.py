"""Hosts: what each host has and whether it is up, from the inventory (which follows the registry).

Readable by every role; operator labels can be changed by operators and admins.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from libs.bus.errors import NotFound
from libs.bus.subjects import TOKEN_PATTERN
from libs.schemas.audit import AuditAction
from libs.schemas.inventory import HostDetail, HostLabels, HostPage, HostQuery, HostStatus, HostSummary
from libs.schemas.tenancy import Role
from services.gateway.audit import Audit, audited
from services.gateway.auth import require_role
from services.gateway.deps import Ctx, call
from services.gateway.openapi import problem
from services.gateway.pagination import MAX_PAGE, Page, decode_cursor, encode_cursor
from services.gateway.problems import ProblemError

router = APIRouter(tags=["hosts"])
LabelFilter = Annotated[list[str] | None, Query(
    description="Only hosts carrying this label, as key=value (repeat for several; all must match).",
    max_length=64, examples=[["xpumesh.io/gpu.model=A100-SXM4-80GB"]])]
HostId = Annotated[str, Path(pattern=TOKEN_PATTERN, description="Host id (its hostname as one token).",
                             examples=["hz-a100-03"])]
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: problem("No such host", "Host not found", "no host 'hz-a100-03'")}


def label_filter(label: list[str] | None) -> dict[str, str]:
    """``["k=v", …]`` → ``{k: v}``; a malformed entry is a 422 naming it."""
    out: dict[str, str] = {}
    for item in label or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ProblemError(422, "Invalid request", f"label {item[:80]!r} must be key=value",
                               errors=[{"loc": "query.label", "msg": "must be key=value"}])
        out[key] = value
    return out


def invalid(exc: ValidationError) -> ProblemError:
    """A filter the inventory's query model refuses, as 422 naming the parameter."""
    errors = [{"loc": "query." + ".".join(str(p) for p in e["loc"]), "msg": e["msg"]} for e in exc.errors()[:20]]
    first = errors[0]
    return ProblemError(422, "Invalid request", f"{first['loc']}: {first['msg']}", errors=errors)


def string_cursor(cursor: str | None) -> str | None:
    after = decode_cursor(cursor)
    if after is not None and not isinstance(after, str):
        raise ProblemError(400, "Invalid cursor", "the cursor is not one this API returned")
    return after


@router.get("/v1/hosts", summary="Host inventory: each host's hardware, labels and status, filtered",
            description="What each host *is*, from the inventory: CPU, memory, devices by hardware type, "
                        "discovered and operator labels, agent version and up/down status; filter by site, status "
                        "or labels. For a city's hosts with their latest telemetry readings, see "
                        "`GET /v1/metrics/sites/{site}/hosts`.",
            response_model=Page[HostSummary])
async def list_hosts(ctx: Ctx, site: Annotated[str | None, Query(pattern=TOKEN_PATTERN)] = None,
                     status: HostStatus | None = None, label: LabelFilter = None, cursor: str | None = None,
                     limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100) -> Page[HostSummary]:
    try:
        query = HostQuery(site=site, status=status, labels=label_filter(label), after=string_cursor(cursor),
                          limit=limit)
    except ValidationError as exc:
        raise invalid(exc) from None
    page = await call(ctx, "inventory", "hosts.list", query, HostPage)
    return Page[HostSummary](items=page.items,
                             next_cursor=encode_cursor(page.next_cursor) if page.next_cursor else None)


@router.get("/v1/hosts/{host_id}", summary="One host: facts, labels, devices with health and last readings",
            response_model=HostDetail, responses=NOT_FOUND)
async def get_host(ctx: Ctx, host_id: HostId) -> HostDetail:
    try:
        return await call(ctx, "inventory", "hosts.get", {"id": host_id}, HostDetail)
    except NotFound:
        raise ProblemError(404, "Host not found", f"no host {host_id!r}") from None


class LabelChange(BaseModel):
    """Operator labels to set and to remove; discovered labels are never changed."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"set": {"team": "vision", "pool": "training"}, "remove": ["deprecated"]}]})

    set: dict[str, str] = Field(default_factory=dict)
    remove: list[str] = Field(default_factory=list, max_length=64)


@router.patch("/v1/hosts/{host_id}/labels", summary="Set or remove a host's operator labels (operator, admin)",
              response_model=HostDetail, responses=NOT_FOUND,
              dependencies=[Depends(require_role(Role.OPERATOR))])
async def patch_labels(ctx: Ctx, host_id: HostId, body: LabelChange,
                       audit: Annotated[Audit, Depends(audited(AuditAction.HOST_LABELS))]) -> HostDetail:
    async with audit.remote(target=host_id, changes=body):
        try:
            req = HostLabels(id=host_id, set=body.set, remove=body.remove)
        except ValidationError as exc:
            errors = [{"loc": "body." + ".".join(str(p) for p in e["loc"]), "msg": e["msg"]} for e in exc.errors()[:20]]
            raise ProblemError(422, "Invalid request", f"{errors[0]['loc']}: {errors[0]['msg']}",
                               errors=errors) from None
        try:
            return await call(ctx, "inventory", "hosts.labels", req, HostDetail)
        except NotFound:
            raise ProblemError(404, "Host not found", f"no host {host_id!r}") from None
