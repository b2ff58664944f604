"""Sites, devices, the device-model catalog and the compatibility rules, from the inventory.

Reads are open to every role; writes (catalog entries, rules, sites) need an operator or
admin key.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response
from pydantic import ValidationError

from libs.bus.errors import NotFound
from libs.bus.subjects import TOKEN_PATTERN
from libs.schemas.audit import AuditAction
from libs.schemas.catalog import DeviceModel
from libs.schemas.devices import HardwareType
from libs.schemas.inventory import (
    CatalogEntry,
    CatalogPage,
    CatalogQuery,
    CatalogRef,
    DeviceCursor,
    DevicePage,
    DeviceQuery,
    HostStatus,
    InventoryDevice,
    RuleKind,
    RuleQuery,
    RuleSet,
    RuleUpsert,
    Site,
    SiteLink,
    SiteLinkList,
    SiteSummary,
    SiteSummaryList,
    Upserted,
    hardware_type_or_error,
)
from libs.schemas.tenancy import Role
from services.gateway.audit import Audit, audited
from services.gateway.auth import require_role
from services.gateway.deps import Ctx, call
from services.gateway.openapi import problem
from services.gateway.pagination import MAX_PAGE, Page, decode_cursor, encode_cursor
from services.gateway.problems import ProblemError
from services.gateway.routes.hosts import LabelFilter, invalid, label_filter, string_cursor

router = APIRouter(tags=["inventory"])
Operator = [Depends(require_role(Role.OPERATOR))]
VALID_TYPES = ", ".join(t.value for t in HardwareType)
Vendor = Annotated[str, Path(max_length=40, examples=["nvidia"])]
ModelName = Annotated[str, Path(max_length=128, examples=["A100-SXM4-80GB"])]
SiteAudit = Annotated[Audit, Depends(audited(AuditAction.SITE_UPSERT))]
CatalogCreateAudit = Annotated[Audit, Depends(audited(AuditAction.CATALOG_CREATE))]
CatalogAudit = Annotated[Audit, Depends(audited(AuditAction.CATALOG_UPSERT))]
RuleAudit = Annotated[Audit, Depends(audited(AuditAction.RULE_UPSERT))]


def hardware_type(value: str | None) -> str | None:
    """An unknown hardware type is a 422 that names the valid ones."""
    if value is None:
        return None
    try:
        return hardware_type_or_error(value).value
    except ValueError as exc:
        raise ProblemError(422, "Unknown hardware type", str(exc),
                           errors=[{"loc": "query.hardware_type", "msg": f"must be one of: {VALID_TYPES}"}]) from None


# ------------------------------------------------------------------ sites


@router.get("/v1/sites", summary="Site inventory: each city's location, hosts and devices by type and health",
            description="What each site *has*, from the inventory: its city, region and coordinates, how many hosts "
                        "it has (up and down) and its devices by hardware type and health, with their compute "
                        "units. For live utilisation, power, allocation and alerts per city, see "
                        "`GET /v1/metrics/summary`.",
            response_model=Page[SiteSummary])
async def list_sites(ctx: Ctx) -> Page[SiteSummary]:
    summary = await call(ctx, "inventory", "sites.summary", {}, SiteSummaryList)
    return Page[SiteSummary](items=summary.items)


@router.get("/v1/sites/links", summary="Bandwidth and round-trip latency between every two sites",
            response_model=Page[SiteLink])
async def list_links(ctx: Ctx) -> Page[SiteLink]:
    links = await call(ctx, "inventory", "sites.links", {}, SiteLinkList)
    return Page[SiteLink](items=links.items)


@router.put("/v1/sites/{site_id}", summary="Create or update a site (operator, admin)", response_model=Site,
            dependencies=Operator, responses={201: {"description": "Created", "model": Site}})
async def put_site(ctx: Ctx, site_id: Annotated[str, Path(pattern=TOKEN_PATTERN, examples=["hangzhou"])], body: Site,
                   response: Response, audit: SiteAudit) -> Site:
    async with audit.remote(target=site_id, changes=body):
        if body.id != site_id:
            raise ProblemError(422, "Invalid request", "the body's id must be the path's site id",
                               errors=[{"loc": "body.id", "msg": "differs from the path"}])
        result = await call(ctx, "inventory", "sites.upsert", body, Upserted)
        response.status_code = 201 if result.created else 200
    return body


# ------------------------------------------------------------------ devices


@router.get("/v1/devices", summary="Devices of the whole fleet, filtered; sorted by host and slot",
            response_model=Page[InventoryDevice],
            responses={422: problem("A filter is invalid, e.g. an unknown hardware_type (the valid ones are named)",
                                    "Unknown hardware type", f"hardware_type 'tpu' is not one of: {VALID_TYPES}",
                                    errors=[{"loc": "query.hardware_type", "msg": f"must be one of: {VALID_TYPES}"}])})
async def list_devices(
        ctx: Ctx,
        hardware_type_: Annotated[str | None, Query(alias="hardware_type", description=f"One of: {VALID_TYPES}.",
                                                    examples=["npu"])] = None,
        vendor: Annotated[str | None, Query(max_length=40, examples=["huawei"])] = None,
        model: Annotated[str | None, Query(max_length=128, description="Glob over reported or catalog model.",
                                           examples=["*910B*"])] = None,
        site: Annotated[str | None, Query(pattern=TOKEN_PATTERN)] = None,
        host_id: Annotated[str | None, Query(pattern=TOKEN_PATTERN)] = None,
        healthy: Annotated[bool | None, Query(description="true: healthy only; false: unhealthy only.")] = None,
        min_free_memory_mib: Annotated[int | None, Query(ge=0)] = None,
        host_status: Annotated[HostStatus | None, Query(description="Status of the device's host.")] = None,
        label: LabelFilter = None, cursor: str | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100) -> Page[InventoryDevice]:
    after = decode_cursor(cursor)
    try:
        query = DeviceQuery(hardware_type=hardware_type(hardware_type_), vendor=vendor, model=model, site=site,
                            host_id=host_id, healthy=healthy, min_free_memory_mib=min_free_memory_mib,
                            status=host_status, labels=label_filter(label), limit=limit,
                            after=DeviceCursor.model_validate(after) if after is not None else None)
    except ValidationError as exc:
        if after is not None and any(e["loc"] and e["loc"][0] in ("host_id", "slot") for e in exc.errors()):
            raise ProblemError(400, "Invalid cursor", "the cursor is not one this API returned") from None
        raise invalid(exc) from None
    page = await call(ctx, "inventory", "devices.list", query, DevicePage)
    nxt = encode_cursor(page.next_cursor.model_dump()) if page.next_cursor else None
    return Page[InventoryDevice](items=page.items, next_cursor=nxt)


# ------------------------------------------------------------------ catalog


@router.get("/v1/catalog", summary="The device-model catalog (compute units: 1 CU = 1 TFLOPS dense FP16)",
            response_model=Page[CatalogEntry])
async def list_catalog(ctx: Ctx, vendor: Annotated[str | None, Query(max_length=40)] = None,
                       hardware_type_: Annotated[str | None, Query(alias="hardware_type")] = None,
                       cursor: str | None = None,
                       limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100) -> Page[CatalogEntry]:
    query = CatalogQuery(vendor=vendor, hardware_type=hardware_type(hardware_type_), after=string_cursor(cursor),
                         limit=limit)
    page = await call(ctx, "inventory", "catalog.list", query, CatalogPage)
    return Page[CatalogEntry](items=page.items, next_cursor=encode_cursor(page.next_cursor) if page.next_cursor else None)


@router.get("/v1/catalog/{vendor}/{model}", summary="One catalog entry", response_model=CatalogEntry,
            responses={404: problem("No such entry", "Catalog entry not found",
                                    "no catalog entry nvidia/A100-SXM4-80GB")})
async def get_catalog(ctx: Ctx, vendor: Vendor, model: ModelName) -> CatalogEntry:
    try:
        return await call(ctx, "inventory", "catalog.get", CatalogRef(vendor=vendor, model=model), CatalogEntry)
    except NotFound:
        raise ProblemError(404, "Catalog entry not found", f"no catalog entry {vendor}/{model}") from None


@router.post("/v1/catalog", summary="Add a device model (operator, admin)", status_code=201,
             response_model=DeviceModel, dependencies=Operator,
             responses={409: problem("The entry already exists", "Catalog entry exists",
                                     "nvidia/A100-SXM4-80GB exists; PUT it to replace it")})
async def create_catalog(ctx: Ctx, body: DeviceModel, audit: CatalogCreateAudit) -> DeviceModel:
    async with audit.remote(target=f"{body.vendor}/{body.model}", changes=body):
        try:
            await call(ctx, "inventory", "catalog.get", CatalogRef(vendor=body.vendor, model=body.model), CatalogEntry)
        except NotFound:
            await call(ctx, "inventory", "catalog.upsert", body, Upserted)
            return body
        raise ProblemError(409, "Catalog entry exists", f"{body.vendor}/{body.model} exists; PUT it to replace it")


@router.put("/v1/catalog/{vendor}/{model}", summary="Create or replace a device model (operator, admin)",
            response_model=DeviceModel, dependencies=Operator,
            responses={201: {"description": "Created", "model": DeviceModel}})
async def put_catalog(ctx: Ctx, vendor: Vendor, model: ModelName, body: DeviceModel, response: Response,
                      audit: CatalogAudit) -> DeviceModel:
    async with audit.remote(target=f"{vendor}/{model}", changes=body):
        if (body.vendor, body.model) != (vendor, model):
            raise ProblemError(422, "Invalid request", "the body's vendor and model must be the path's",
                               errors=[{"loc": "body.model", "msg": "differs from the path"}])
        result = await call(ctx, "inventory", "catalog.upsert", body, Upserted)
        response.status_code = 201 if result.created else 200
    return body


# ------------------------------------------------------------------ rules


@router.get("/v1/compat-rules", summary="Framework/runtime compatibility rules and runtime→driver minimums",
            response_model=RuleSet)
async def list_rules(ctx: Ctx, kind: RuleKind | None = None,
                     vendor: Annotated[str | None, Query(max_length=40)] = None) -> RuleSet:
    return await call(ctx, "inventory", "rules.list", RuleQuery(kind=kind, vendor=vendor), RuleSet)


@router.post("/v1/compat-rules", summary="Create or replace a rule (operator, admin): give 'compat' or 'driver'",
             response_model=RuleUpsert, dependencies=Operator,
             responses={201: {"description": "Created", "model": RuleUpsert}})
async def upsert_rule(ctx: Ctx, body: RuleUpsert, response: Response, audit: RuleAudit) -> RuleUpsert:
    target = f"compat/{body.compat.id}" if body.compat else f"driver/{body.driver.id if body.driver else ''}"
    async with audit.remote(target=target, changes=body):
        result = await call(ctx, "inventory", "rules.upsert", body, Upserted)
        response.status_code = 201 if result.created else 200
    return body
