"""The audit log (admin only): who changed what, when, from which request, and how it ended.

Entries are written by ``services/gateway/audit.py`` for every admin action; this route only
reads them, newest first, with the same cursor pagination as every other list.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query

from libs.db import session_scope
from libs.schemas.audit import AuditAction, AuditEntry
from libs.schemas.tenancy import Role
from services.gateway import store
from services.gateway.auth import Principal, require_role
from services.gateway.deps import Ctx
from services.gateway.pagination import MAX_PAGE, Page, decode_cursor, encode_cursor
from services.gateway.problems import ProblemError
from services.gateway.routes.keys import ADMIN_ONLY

router = APIRouter(tags=["audit"])
Admin = Annotated[Principal, Depends(require_role(Role.ADMIN))]
_MAX_ID = 2**63 - 1


def _utc(value: datetime | None, name: str) -> datetime | None:
    """A time filter in UTC (a time without an offset is taken as UTC); out of range is a 422."""
    if value is None:
        return None
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except (OverflowError, ValueError):
        raise ProblemError(422, "Invalid request", f"query.{name}: out of range",
                           errors=[{"loc": f"query.{name}", "msg": "out of range"}]) from None


@router.get("/v1/audit", summary="The audit log of admin actions, newest first (admin)",
            description="One entry per admin action (API keys, quotas, catalog and rules, host labels, sites, "
                        "subscriptions): the acting key with its tenant and role, the request id, the action, its "
                        "target, what the request asked to change (secrets removed) and the status it was "
                        "answered with.",
            response_model=Page[AuditEntry], responses=ADMIN_ONLY)
async def list_audit(
        ctx: Ctx, principal: Admin,
        actor: Annotated[str | None, Query(max_length=32, description="Only entries by this key id.",
                                           examples=["key_0a1b2c3d4e5f"])] = None,
        action: Annotated[AuditAction | None, Query(description="Only entries of this action.")] = None,
        target: Annotated[str | None, Query(max_length=256, description="Only entries about this target.",
                                            examples=["acme"])] = None,
        since: Annotated[datetime | None, Query(description="Only entries at or after this time (RFC 3339).",
                                                examples=["2026-12-06T00:00:00Z"])] = None,
        until: Annotated[datetime | None, Query(description="Only entries before this time (RFC 3339).",
                                                examples=["2026-12-07T00:00:00Z"])] = None,
        cursor: str | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100) -> Page[AuditEntry]:
    before = decode_cursor(cursor)
    if before is not None and (not isinstance(before, int) or isinstance(before, bool) or not 0 < before <= _MAX_ID):
        raise ProblemError(400, "Invalid cursor", "the cursor is not one this API returned")
    async with session_scope(ctx.db) as session:
        items, last = await store.list_audit_entries(session, actor=actor, action=action, target=target,
                                                     since=_utc(since, "since"), until=_utc(until, "until"),
                                                     before=before, limit=limit)
    return Page[AuditEntry](items=items, next_cursor=encode_cursor(last) if last is not None else None)
