"""Hosts: membership and liveness from the registry."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from libs.bus.errors import NotFound
from libs.schemas.registry import Member, MemberKind, MemberPage, MemberQuery, MemberRef, MemberStatus
from services.gateway.deps import Ctx, call
from services.gateway.pagination import MAX_PAGE, Page, decode_cursor, encode_cursor
from services.gateway.problems import ProblemError

router = APIRouter(tags=["hosts"])


@router.get("/v1/hosts", summary="Hosts of the fleet, with liveness", response_model=Page[Member])
async def list_hosts(ctx: Ctx, site: str | None = None, status: MemberStatus | None = None,
                     cursor: str | None = None, limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100) -> Page[Member]:
    after = decode_cursor(cursor)
    page = await call(ctx, "registry", "members.list",
                      MemberQuery(kind=MemberKind.HOST, site=site, status=status, after=after, limit=limit), MemberPage)
    return Page[Member](items=page.items, next_cursor=encode_cursor(page.next_cursor) if page.next_cursor else None)


@router.get("/v1/hosts/{host_id}", summary="One host", response_model=Member,
            responses={404: {"description": "No such host"}})
async def get_host(ctx: Ctx, host_id: str) -> Member:
    try:
        member = await call(ctx, "registry", "members.get", MemberRef(id=host_id), Member)
    except NotFound:
        raise ProblemError(404, "Host not found", f"no host {host_id!r}") from None
    if member.kind != MemberKind.HOST:
        raise ProblemError(404, "Host not found", f"no host {host_id!r}")
    return member
