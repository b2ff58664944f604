"""Workloads: submit, list, inspect, stop, and read a replica's output.

The tenant always comes from the caller's key, never from the body: a submitted spec's
``tenant`` is overwritten, and every read is confined to the caller's tenant unless its
role sees every tenant (admin, operator). Another tenant's workload is a 404. Stopping
another tenant's workload needs an admin key. A submitted priority above the key's role's
ceiling (``gateway.max_priority_user`` / ``_operator`` / ``_admin``) is a 403 (counted as
``xpumesh_bus_rejected_total{service="gateway",handler="workloads",reason="priority_not_allowed"}``),
so a user cannot preempt other tenants' preemptible work with a top priority. Specs that
can never run (a model glob no catalog model matches, a runtime requirement no known
version satisfies…) are refused by the scheduler with a 422 naming the field.
"""

from __future__ import annotations

import re
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Response

from libs.bus.errors import NotFound
from libs.bus.subjects import TOKEN_PATTERN
from libs.config import GatewaySettings
from libs.metrics import BUS_REJECTED
from libs.schemas.scheduler import (
    LogsQuery,
    LogsView,
    WorkloadBatch,
    WorkloadBatchResult,
    WorkloadBatchSubmit,
    WorkloadPage,
    WorkloadPatch,
    WorkloadQuery,
    WorkloadRef,
    WorkloadScale,
    WorkloadState,
    WorkloadSubmit,
    WorkloadSummary,
    WorkloadUpdate,
    WorkloadView,
)
from libs.schemas.tenancy import QUOTA_PROBLEM, Role
from libs.schemas.workload import WorkloadSpec
from services.gateway.auth import CurrentPrincipal, Principal, ensure_can_modify, tenant_filter
from services.gateway.deps import Ctx, call, call_retrying
from services.gateway.openapi import problem
from services.gateway.pagination import MAX_PAGE, Page, encode_cursor
from services.gateway.problems import PRIORITY_PROBLEM, ProblemError
from services.gateway.routes.hosts import string_cursor
from services.gateway.routes.inventory import hardware_type

router = APIRouter(tags=["workloads"])
WorkloadId = Annotated[str, Path(max_length=64, description="Workload id, e.g. 'wl_18ea52ab2dac349aa6915d69'.",
                                 examples=["wl_18ea52ab2dac349aa6915d69"])]
_ID = re.compile(TOKEN_PATTERN)
RETRY_KEY_PREFIX = "gw-retry-"  # the idempotency key the gateway gives a submit that came without one
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: problem(
    "No such workload (or another tenant's)", "Workload not found", "no workload 'wl_18ea52ab2dac349aa6915d69'")}
_QUOTA_EXAMPLE = {
    "type": QUOTA_PROBLEM,
    "quota": {"devices": {"gpu": 16, "npu": 8}, "compute_units": 5000},
    "usage": {"devices": {"gpu": 12.0}, "compute_units": 3711.6},
    "requested": {"hardware_type": "gpu", "devices": 8.0, "compute_units": None}}


def _not_found(wid: str) -> ProblemError:
    return ProblemError(404, "Workload not found", f"no workload {wid!r}")


def priority_ceiling(settings: GatewaySettings, role: Role) -> int:
    """The highest priority a key of this role may submit (a viewer cannot submit at all)."""
    if role == Role.ADMIN:
        return settings.max_priority_admin
    if role == Role.OPERATOR:
        return settings.max_priority_operator
    return settings.max_priority_user


def _check_priority(settings: GatewaySettings, principal: Principal, priority: int) -> None:
    ceiling = priority_ceiling(settings, principal.role)
    if priority > ceiling:
        BUS_REJECTED.labels("gateway", "workloads", "priority_not_allowed").inc()
        raise ProblemError(403, "Priority not allowed",
                           f"a {principal.role} key may submit priority up to {ceiling}; this workload asks for "
                           f"{priority}", type_=PRIORITY_PROBLEM, max_priority=ceiling)


def _ref(wid: str, tenant: str | None) -> WorkloadRef:
    if not _ID.match(wid):
        raise _not_found(wid)
    return WorkloadRef(id=wid, tenant=tenant)


@router.post("/v1/workloads", status_code=201, response_model=WorkloadView,
             summary="Submit a workload: what to run, on what kind and amount of hardware, where",
             responses={201: {"description": "Accepted; placement follows (see state and explanation)",
                              "headers": {"Location": {"description": "The workload's URL",
                                                       "schema": {"type": "string"}}}},
                        403: problem("The tenant's quota does not allow this workload (the numbers are in the "
                                     "answer), or its priority is above the key's role's ceiling (type "
                                     f"{PRIORITY_PROBLEM}, with max_priority)",
                                     "Quota exceeded",
                                     "tenant 'acme' may hold 16 gpu devices; it holds 12 and this workload asks for 8",
                                     **_QUOTA_EXAMPLE),
                        409: problem("A request with this Idempotency-Key is still running (Retry-After)",
                                     "Request in progress",
                                     "a request with this Idempotency-Key is still running; retry shortly")})
async def submit_workload(ctx: Ctx, principal: CurrentPrincipal, spec: WorkloadSpec, response: Response,
                          idempotency_key: Annotated[str | None, Header(
                              alias="Idempotency-Key", max_length=255,
                              description="Retrying with the same key returns the same workload")] = None
                          ) -> WorkloadView:
    _check_priority(ctx.settings.gateway, principal, spec.priority)
    spec = spec.model_copy(update={"tenant": principal.tenant})
    # without a key of the client's, one of our own: a retry after a timed-out attempt finds what it stored
    key = idempotency_key or f"{RETRY_KEY_PREFIX}{uuid.uuid4().hex}"
    view = await call_retrying(ctx, "scheduler", "workloads.submit",
                               WorkloadSubmit(spec=spec, tenant=principal.tenant, idempotency_key=key), WorkloadView,
                               budget_s=ctx.settings.gateway.submit_timeout_s,
                               timeout=ctx.settings.gateway.submit_attempt_s)
    response.headers["Location"] = f"/v1/workloads/{view.id}"
    return view


@router.post("/v1/workloads/batch", status_code=201, response_model=WorkloadBatchResult,
             summary="Submit many workloads at once (a sweep, an array): accepted or refused together",
             description="One request, one transaction. Every workload is checked as `POST /v1/workloads` checks "
                         "one, and the tenant's quota against their sum; any refusal refuses them all and creates "
                         "nothing (a 422 names each problem at `body.workloads.<i>`). The items come back in the "
                         "order sent. With an `Idempotency-Key`, a retry returns the same workloads.",
             responses={403: problem("The tenant's quota does not allow these workloads together, or one asks for "
                                     "a priority above the key's role's ceiling", "Quota exceeded",
                                     "tenant 'acme' may hold 16 gpu devices; it holds 12 and these 3 workloads ask "
                                     "for 6", **_QUOTA_EXAMPLE),
                        409: problem("A request with this Idempotency-Key is still running, or created part of "
                                     "another batch", "Request in progress",
                                     "a request with this Idempotency-Key is still being decided; retry")})
async def submit_workload_batch(ctx: Ctx, principal: CurrentPrincipal, body: WorkloadBatch,
                                idempotency_key: Annotated[str | None, Header(
                                    alias="Idempotency-Key", max_length=200,
                                    description="Retrying with the same key returns the same workloads")] = None
                                ) -> WorkloadBatchResult:
    for spec in body.workloads:
        _check_priority(ctx.settings.gateway, principal, spec.priority)
    specs = [spec.model_copy(update={"tenant": principal.tenant}) for spec in body.workloads]
    # asked again while no scheduler answers; after a timed-out attempt only with the client's key (a key of
    # our own would cost a lookup per item)
    return await call_retrying(ctx, "scheduler", "workloads.submit_batch",
                               WorkloadBatchSubmit(specs=specs, tenant=principal.tenant,
                                                   idempotency_key=idempotency_key or None),
                               WorkloadBatchResult, budget_s=ctx.settings.gateway.batch_submit_timeout_s,
                               timeout=ctx.settings.gateway.batch_submit_timeout_s,
                               after_timeout=idempotency_key is not None)


@router.get("/v1/workloads", response_model=Page[WorkloadSummary], summary="Workloads, newest first",
            description="The scheduler's workload records: state, hardware type, priority, replicas and the sites "
                        "they are placed at. For the devices each replica holds, beside their telemetry, see "
                        "`GET /v1/metrics/workloads`.")
async def list_workloads(ctx: Ctx, principal: CurrentPrincipal, state: WorkloadState | None = None,
                         hardware_type_: Annotated[str | None, Query(alias="hardware_type", max_length=40)] = None,
                         site: Annotated[str | None, Query(max_length=64,
                                                           description="Placed (in part) at this site")] = None,
                         cursor: str | None = None,
                         limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100) -> Page[WorkloadSummary]:
    query = WorkloadQuery(tenant=tenant_filter(principal), state=state, hardware_type=hardware_type(hardware_type_),
                          site=site, after=string_cursor(cursor), limit=limit)
    page = await call(ctx, "scheduler", "workloads.list", query, WorkloadPage)
    return Page[WorkloadSummary](items=page.items,
                                 next_cursor=encode_cursor(page.next_cursor) if page.next_cursor else None)


@router.get("/v1/workloads/{workload_id}", response_model=WorkloadView, responses=_NOT_FOUND,
            summary="One workload: spec, state, placement (hosts and devices), history, and why it waits")
async def get_workload(ctx: Ctx, principal: CurrentPrincipal, workload_id: WorkloadId) -> WorkloadView:
    try:
        return await call(ctx, "scheduler", "workloads.get", _ref(workload_id, tenant_filter(principal)),
                          WorkloadView)
    except NotFound:
        raise _not_found(workload_id) from None


@router.delete("/v1/workloads/{workload_id}", response_model=WorkloadView, responses=_NOT_FOUND,
               summary="Stop a workload (its replicas are stopped on their hosts)")
async def stop_workload(ctx: Ctx, principal: CurrentPrincipal, workload_id: WorkloadId) -> WorkloadView:
    current = await get_workload(ctx, principal, workload_id)
    ensure_can_modify(principal, current.tenant, _not_found(workload_id))
    try:
        return await call(ctx, "scheduler", "workloads.stop", _ref(workload_id, current.tenant), WorkloadView)
    except NotFound:
        raise _not_found(workload_id) from None


@router.patch("/v1/workloads/{workload_id}", response_model=WorkloadView, responses={
                  **_NOT_FOUND, 403: problem("The tenant's quota does not allow the new replicas (or, for a rolling "
                                             "update, both versions at once), or the new spec's priority is above "
                                             "the key's role's ceiling", "Quota exceeded",
                                             "tenant 'acme' may hold 16 gpu devices; it holds 12 and this workload "
                                             "asks for 8", **_QUOTA_EXAMPLE),
                  422: problem("Not a running service, or a spec that changes its name or kind", "Cannot update",
                               "only a running service can be updated")},
              summary="Change a running service: its number of replicas, or its spec (a rolling update)",
              description="`replicas`: new replicas are placed and come into rotation when ready; with fewer, the "
                          "highest-numbered replicas leave rotation and are stopped. `spec`: a rolling update; a new "
                          "service with the changed spec (same name) starts beside this one under the same endpoint, "
                          "and once all its replicas are ready this one leaves rotation and is stopped after a drain; "
                          "the answer is the new workload (its `replaces` names this one).")
async def patch_workload(ctx: Ctx, principal: CurrentPrincipal, workload_id: WorkloadId,
                         body: WorkloadPatch) -> WorkloadView:
    current = await get_workload(ctx, principal, workload_id)
    ensure_can_modify(principal, current.tenant, _not_found(workload_id))
    try:
        if body.spec is not None:
            _check_priority(ctx.settings.gateway, principal, body.spec.priority)
            spec = body.spec.model_copy(update={"tenant": current.tenant})
            return await call(ctx, "scheduler", "workloads.update",
                              WorkloadUpdate(id=workload_id, tenant=current.tenant, spec=spec), WorkloadView)
        assert body.replicas is not None
        return await call(ctx, "scheduler", "workloads.scale",
                          WorkloadScale(id=workload_id, tenant=current.tenant, replicas=body.replicas), WorkloadView)
    except NotFound:
        raise _not_found(workload_id) from None


@router.get("/v1/workloads/{workload_id}/logs", response_model=LogsView, responses=_NOT_FOUND,
            summary="The tail of a replica's output, from the host that runs (or ran) it")
async def workload_logs(ctx: Ctx, principal: CurrentPrincipal, workload_id: WorkloadId,
                        replica: Annotated[int, Query(ge=0, le=4095)] = 0,
                        tail_bytes: Annotated[int, Query(ge=1, le=1024 * 1024)] = 64 * 1024) -> LogsView:
    ref = _ref(workload_id, tenant_filter(principal))
    try:
        return await call(ctx, "scheduler", "workloads.logs",
                          LogsQuery(id=ref.id, tenant=ref.tenant, replica=replica, tail_bytes=tail_bytes), LogsView,
                          timeout=ctx.settings.scheduler.logs_timeout_s + 1.0)
    except NotFound as exc:
        raise ProblemError(404, exc.title, exc.detail) from None
