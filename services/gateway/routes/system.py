"""Health, readiness, and the service catalog."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from libs.schemas.registry import MemberKind, MemberPage, MemberQuery, MemberStatus, ServiceHealth
from services.gateway.deps import Ctx, call

router = APIRouter()


class Readiness(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"status": "ready", "checks": {"nats": True, "registry": True}},
        {"status": "not ready", "checks": {"nats": True, "registry": False}}]})

    status: Literal["ready", "not ready"]
    checks: dict[str, bool] = Field(description="Each check and whether it passed.")


@router.get("/healthz", tags=["system"], summary="Liveness: the process runs",
            responses={200: {"content": {"application/json": {"example": {"status": "ok"}}}}})
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", tags=["system"], summary="Readiness: connected to NATS and the registry answers",
            response_model=Readiness,
            responses={200: {"content": {"application/json": {"example": {
                           "status": "ready", "checks": {"nats": True, "registry": True}}}}},
                       503: {"description": "Not ready: the checks say which part is missing", "model": Readiness,
                             "content": {"application/json": {"example": {
                                 "status": "not ready", "checks": {"nats": True, "registry": False}}}}}})
async def readyz(ctx: Ctx) -> JSONResponse:
    checks = {"nats": ctx.bus.connected}
    if checks["nats"]:
        try:
            await call(ctx, "registry", "health", None, ServiceHealth, timeout=2.0)
            checks["registry"] = True
        except Exception:
            checks["registry"] = False
    ok = all(checks.values())
    return JSONResponse({"status": "ready" if ok else "not ready", "checks": checks}, status_code=200 if ok else 503)


Role = Literal["leader", "standby"]


class ServiceInstance(BaseModel):
    id: str
    version: str
    status: MemberStatus
    last_seen: datetime
    role: Role | None = Field(default=None, description=(
        "Of a service that elects a leader among its instances (registry, scheduler, metrics): 'leader' for the "
        "one that acts, 'standby' for the others, as each said in its last heartbeat; null for an instance that "
        "is down and for the services whose every instance acts (gateway, inventory)."))


class ServiceEntry(BaseModel):
    name: str
    status: MemberStatus
    leader: str | None = Field(default=None, description=(
        "The id of the instance that leads (registry, scheduler, metrics); null while none is up and leading "
        "(a leader change) and for the services whose every instance acts."))
    instances: list[ServiceInstance]


class ServiceList(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"items": [
        {"name": "gateway", "status": "up", "instances": [
            {"id": "gateway.hz-ctl-01-48211", "version": "0.1.0", "status": "up",
             "last_seen": "2025-06-03T08:14:05Z"}]},
        {"name": "scheduler", "status": "up", "leader": "scheduler.hz-ctl-01-48230", "instances": [
            {"id": "scheduler.hz-ctl-01-48230", "version": "0.1.0", "status": "up", "last_seen": "2025-06-03T08:14:04Z",
             "role": "leader"},
            {"id": "scheduler.nb-ctl-01-7716", "version": "0.1.0", "status": "up", "last_seen": "2025-06-03T08:14:05Z",
             "role": "standby"},
            {"id": "scheduler.nb-ctl-01-7715", "version": "0.1.0", "status": "down",
             "last_seen": "2025-06-03T08:02:51Z"}]}]}]})

    items: list[ServiceEntry]


async def list_service_members(ctx: Ctx) -> MemberPage:
    return await call(ctx, "registry", "members.list", MemberQuery(kind=MemberKind.SERVICE, limit=5000), MemberPage)


@router.get("/v1/services", tags=["system"], summary="The mesh's services and their instances",
            response_model=ServiceList)
async def list_services(ctx: Ctx) -> ServiceList:
    page = await list_service_members(ctx)
    by_name: dict[str, list[ServiceInstance]] = {}
    for m in page.items:
        role = m.meta.get("role") if m.status == MemberStatus.UP else None
        by_name.setdefault(m.name, []).append(
            ServiceInstance(id=m.id, version=m.version, status=m.status, last_seen=m.last_seen,
                            role=role if role in ("leader", "standby") else None))
    return ServiceList(items=[_entry(name, insts) for name, insts in sorted(by_name.items())])


def _entry(name: str, instances: list[ServiceInstance]) -> ServiceEntry:
    # two instances may both say 'leader' for one heartbeat interval after a takeover (the deposed one's last
    # word): the one heard from last leads
    leaders = sorted((i for i in instances if i.role == "leader"), key=lambda i: i.last_seen)
    return ServiceEntry(name=name, instances=instances, leader=leaders[-1].id if leaders else None,
                        status=MemberStatus.UP if any(i.status == MemberStatus.UP for i in instances)
                        else MemberStatus.DOWN)
