"""Fleet metrics for people and dashboards: city summaries, time series, alerts, drill-down.

These are live telemetry views (what the fleet is doing now); the inventory's routes
(``/v1/sites``, ``/v1/hosts``, ``/v1/devices``) say what the fleet has, and
``/v1/workloads`` is the scheduler's workload record. Aggregates only — the browser never receives raw samples. Every call is answered by the
metrics service over the bus. Fleet-wide views (summaries, series, alerts, hosts, devices)
are readable by every role; workloads are confined to the caller's tenant unless the key
is an admin or operator key. ``GET /metrics`` is the gateway process's own Prometheus
exposition and, like health, needs no key.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Path, Query
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from libs.bus.subjects import TOKEN_PATTERN
from libs.metrics import exposition
from libs.schemas.metrics import (
    AlertList,
    AlertQuery,
    AlertSeverity,
    AlertState,
    DeviceDetail,
    DeviceRef,
    FleetSummary,
    HostNow,
    HostPage,
    HostsQuery,
    Scope,
    Series,
    SeriesQuery,
    SummaryQuery,
    WorkloadNow,
    WorkloadPage,
    WorkloadQuery,
)
from services.gateway.auth import CurrentPrincipal, tenant_filter
from services.gateway.deps import Ctx, call
from services.gateway.openapi import problem
from services.gateway.pagination import MAX_PAGE, Page, decode_cursor, encode_cursor
from services.gateway.problems import ProblemError

router = APIRouter(tags=["metrics"])
SiteFilter = Annotated[list[str] | None, Query(description="Only these sites (repeat the parameter).", max_length=1000)]


def _invalid(exc: ValidationError) -> ProblemError:
    errors = [{"loc": ".".join(str(p) for p in e["loc"]) or "query", "msg": e["msg"]} for e in exc.errors()[:20]]
    return ProblemError(422, "Invalid request", f"{errors[0]['loc']}: {errors[0]['msg']}", errors=errors)


@router.get("/v1/metrics/summary", summary="Live telemetry of every city: utilisation, power, allocation, alerts",
            description="How each site is *doing* now, from the metrics service: devices reporting, utilisation, "
                        "memory in use, power, devices held by workloads, running workloads and firing alerts, by "
                        "hardware type, with fleet totals. For each site's location and inventory, see "
                        "`GET /v1/sites`.",
            response_model=FleetSummary)
async def get_summary(ctx: Ctx, principal: CurrentPrincipal, site: SiteFilter = None) -> FleetSummary:
    return await call(ctx, "metrics", "summary", SummaryQuery(sites=site), FleetSummary)


@router.get("/v1/metrics/series", summary="A time series for a device, host, site or hardware type",
            response_model=Series, responses={404: problem("Unknown device, host, site or hardware type", "Not found",
                                                           "no host 'hz-a100-99'")})
async def get_series(
        ctx: Ctx, principal: CurrentPrincipal,
        scope: Annotated[Scope, Query(description="device, host, site or hardware_type")],
        key: Annotated[str, Query(max_length=140, description="'<host>/<slot>', host id, site or hardware type",
                                  examples=["hz-a100-03/0"])],
        site: Annotated[str | None, Query(pattern=TOKEN_PATTERN, description="With scope hardware_type: one site")] = None,
        start: Annotated[datetime | None, Query(description="Default: end minus one hour")] = None,
        end: Annotated[datetime | None, Query(description="Default: now")] = None,
        step: Annotated[int | None, Query(ge=1, le=7 * 24 * 3600, description="Seconds per point; default: "
                                          "about 120 points, whole minutes")] = None) -> Series:
    end = _aware(end) if end else datetime.now(UTC)
    start = _aware(start) if start else end - timedelta(hours=1)
    if step is None:
        window = max((end - start).total_seconds(), 1.0)
        step = max(60, math.ceil(window / 120 / 60) * 60)
    try:
        query = SeriesQuery(scope=scope, key=key, site=site, start=start, end=end, step_s=step)
    except ValidationError as exc:
        raise _invalid(exc) from None
    return await call(ctx, "metrics", "series", query, Series)


def _aware(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=UTC)


@router.get("/v1/alerts", tags=["alerts"], summary="Alerts: firing now (default) or recently resolved",
            response_model=AlertList)
async def list_alerts(ctx: Ctx, principal: CurrentPrincipal, state: AlertState = AlertState.FIRING,
                      site: SiteFilter = None, severity: AlertSeverity | None = None,
                      limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 200) -> AlertList:
    return await call(ctx, "metrics", "alerts.list",
                      AlertQuery(state=state, sites=site, severity=severity, limit=limit), AlertList)


@router.get("/v1/metrics/sites/{site}/hosts", summary="Live telemetry of one city's hosts and their devices",
            description="The latest readings of a site's hosts, from the metrics service: CPU and memory in use "
                        "and each device's utilisation, memory, temperature, power and health. For what the hosts "
                        "are (hardware, labels) and to filter them, see `GET /v1/hosts`.",
            response_model=Page[HostNow])
async def list_site_hosts(ctx: Ctx, principal: CurrentPrincipal,
                          site: Annotated[str, Path(pattern=TOKEN_PATTERN, description="A site; an unknown one has no hosts.",
                                                    examples=["hangzhou"])],
                          cursor: str | None = None,
                          limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100) -> Page[HostNow]:
    after = decode_cursor(cursor)
    if after is not None and not isinstance(after, str):
        raise ProblemError(400, "Invalid cursor", "the cursor is not one this API returned")
    page = await call(ctx, "metrics", "hosts.list", HostsQuery(site=site, after=after, limit=limit), HostPage)
    return Page[HostNow](items=page.items, next_cursor=encode_cursor(page.next_cursor) if page.next_cursor else None)


@router.get("/v1/metrics/devices/{host_id}/{slot}", summary="One device: metadata, versions, latest values, workloads",
            response_model=DeviceDetail,
            responses={404: problem("No such device", "Not found", "no device hz-a100-03/9")})
async def get_device(ctx: Ctx, principal: CurrentPrincipal,
                     host_id: Annotated[str, Path(pattern=TOKEN_PATTERN, examples=["hz-a100-03"])],
                     slot: Annotated[int, Path(ge=0, le=100_000, examples=[0])]) -> DeviceDetail:
    detail = await call(ctx, "metrics", "device.get", DeviceRef(host_id=host_id, slot=slot), DeviceDetail)
    tenant = tenant_filter(principal)
    if tenant is not None:
        detail.workloads = [w for w in detail.workloads if w.tenant == tenant]
    return detail


@router.get("/v1/metrics/workloads", summary="Workloads on the fleet, by device placement, for the telemetry views",
            description="The metrics service's view of workloads: state and the devices each replica holds, "
                        "filtered by site, to read beside device telemetry (it follows the scheduler's events and "
                        "may trail them briefly). The workload record itself (spec, priority, history, why it "
                        "waits; submit and stop) is `/v1/workloads`.",
            response_model=Page[WorkloadNow])
async def list_workloads(ctx: Ctx, principal: CurrentPrincipal, site: SiteFilter = None,
                         state: Annotated[str | None, Query(max_length=32)] = None, cursor: str | None = None,
                         limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100) -> Page[WorkloadNow]:
    after = decode_cursor(cursor)
    if after is not None and not isinstance(after, str):
        raise ProblemError(400, "Invalid cursor", "the cursor is not one this API returned")
    query = WorkloadQuery(sites=site, tenant=tenant_filter(principal), state=state, after=after, limit=limit)
    page = await call(ctx, "metrics", "workloads.list", query, WorkloadPage)
    return Page[WorkloadNow](items=page.items, next_cursor=encode_cursor(page.next_cursor) if page.next_cursor else None)


async def gateway_metrics(request: Request) -> Response:
    """The gateway process's own metrics (requests, rejections, bus calls) in Prometheus text format."""
    return Response(exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")


# A plain Starlette route: outside the API's key check, like /healthz (Prometheus scrapes it).
router.add_route("/metrics", gateway_metrics, methods=["GET"], include_in_schema=False)
