"""The gateway's records: API keys (hashed at rest), idempotency responses and the audit log
(tenant quotas live in the scheduler, see ``services/scheduler/quotas.py``).

Keys are ``xpm_`` + 32 random bytes (urlsafe base64). Only the sha256 of a key is stored,
with its first characters as a non-secret lookup prefix; verification compares digests in
constant time. Every function takes a session and only flushes; the caller owns the transaction.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from libs.schemas.audit import AuditAction, AuditActor, AuditEntry
from libs.schemas.tenancy import ApiKey, Role
from services.gateway.orm import api_keys, audit_log, idempotency_keys

KEY_PREFIX_LEN = 12
MIN_KEY_LEN = 24
KEY_SCHEME = "xpm_"


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_prefix(key: str) -> str:
    return key[:KEY_PREFIX_LEN]


def new_key_secret() -> str:
    return KEY_SCHEME + secrets.token_urlsafe(32)


def _new_key_id() -> str:
    return "key_" + secrets.token_hex(6)


def _api_key(row: Any) -> ApiKey:
    return ApiKey(id=row.id, prefix=row.prefix, tenant=row.tenant, role=Role(row.role), name=row.name,
                  created_at=row.created_at, created_by=row.created_by, revoked_at=row.revoked_at)


async def create_key(session: AsyncSession, *, tenant: str, role: Role, name: str = "",
                     created_by: str | None = None, secret: str | None = None) -> tuple[ApiKey, str]:
    """Store a new key; return it and its secret (the only time the secret exists outside the caller)."""
    secret = secret or new_key_secret()
    if len(secret) < MIN_KEY_LEN:
        raise ValueError(f"an API key must be at least {MIN_KEY_LEN} characters")
    row = (await session.execute(api_keys.insert().values(
        id=_new_key_id(), prefix=key_prefix(secret), hash=key_digest(secret), tenant=tenant, role=str(role),
        name=name, created_by=created_by).returning(*api_keys.c))).one()
    return _api_key(row), secret


async def read_live_key(session: AsyncSession, secret: str) -> ApiKey | None:
    """The live key whose secret this is, or None. Candidates by prefix; digests compared in constant time."""
    if len(secret) < MIN_KEY_LEN or len(secret) > 256:
        return None
    digest = key_digest(secret)
    rows = (await session.execute(
        select(api_keys).where(api_keys.c.prefix == key_prefix(secret), api_keys.c.revoked_at.is_(None)))).all()
    found = None
    for row in rows:
        if hmac.compare_digest(row.hash, digest):
            found = row
    return _api_key(found) if found is not None else None


async def list_keys(session: AsyncSession, *, tenant: str | None, after: str | None, limit: int,
                    include_revoked: bool = False) -> tuple[list[ApiKey], str | None]:
    q = select(api_keys).order_by(api_keys.c.id).limit(limit + 1)
    if tenant is not None:
        q = q.where(api_keys.c.tenant == tenant)
    if after is not None:
        q = q.where(api_keys.c.id > after)
    if not include_revoked:
        q = q.where(api_keys.c.revoked_at.is_(None))
    rows = (await session.execute(q)).all()
    items = [_api_key(r) for r in rows[:limit]]
    return items, (items[-1].id if len(rows) > limit else None)


async def update_key_revoked(session: AsyncSession, key_id: str) -> ApiKey | None:
    """Revoke a key (an already revoked one keeps its time); None when there is no such key."""
    row = (await session.execute(
        update(api_keys).where(api_keys.c.id == key_id)
        .values(revoked_at=func.coalesce(api_keys.c.revoked_at, datetime.now(UTC))).returning(*api_keys.c))).one_or_none()
    return _api_key(row) if row is not None else None


async def count_live_admin_keys(session: AsyncSession) -> int:
    return int(await session.scalar(select(func.count()).select_from(api_keys).where(
        api_keys.c.role == str(Role.ADMIN), api_keys.c.revoked_at.is_(None))) or 0)


async def count_keys_with_secret(session: AsyncSession, secret: str) -> int:
    """Keys, live or revoked, whose secret this is (0 or 1)."""
    return int(await session.scalar(select(func.count()).select_from(api_keys).where(
        api_keys.c.hash == key_digest(secret))) or 0)


# --- idempotency ---------------------------------------------------------------------------
@dataclass
class StoredResponse:
    request_hash: str
    method: str
    path: str
    status_code: int | None  # None: the first request is still running
    content_type: str | None
    body: bytes | None


async def create_idempotency_claim(session: AsyncSession, *, key_id: str, idem_key: str, method: str, path: str,
                                request_hash: str, ttl: timedelta,
                                in_flight: timedelta = timedelta(minutes=2)) -> StoredResponse | None:
    """Claim the key for this request (None), or return what an earlier request with it stored.

    An expired record, or a claim still unanswered after ``in_flight`` (its request died), is dropped first.
    """
    now = datetime.now(UTC)
    t = idempotency_keys
    await session.execute(delete(t).where(
        t.c.key_id == key_id, t.c.idem_key == idem_key,
        or_(t.c.created_at < now - ttl, and_(t.c.status_code.is_(None), t.c.created_at < now - in_flight))))
    inserted = (await session.execute(insert(idempotency_keys).values(
        key_id=key_id, idem_key=idem_key, method=method, path=path, request_hash=request_hash)
        .on_conflict_do_nothing().returning(idempotency_keys.c.key_id))).first()
    if inserted is not None:
        return None
    row = (await session.execute(select(idempotency_keys).where(
        idempotency_keys.c.key_id == key_id, idempotency_keys.c.idem_key == idem_key))).one()
    return StoredResponse(row.request_hash, row.method, row.path, row.status_code, row.content_type, row.body)


async def update_idempotency_response(session: AsyncSession, *, key_id: str, idem_key: str, status_code: int,
                                    content_type: str | None, body: bytes) -> None:
    await session.execute(update(idempotency_keys).where(
        idempotency_keys.c.key_id == key_id, idempotency_keys.c.idem_key == idem_key).values(
        status_code=status_code, content_type=content_type, body=body))


async def delete_idempotency_claim(session: AsyncSession, *, key_id: str, idem_key: str) -> None:
    """Forget a claim whose request failed on our side, so a retry runs again."""
    await session.execute(delete(idempotency_keys).where(
        idempotency_keys.c.key_id == key_id, idempotency_keys.c.idem_key == idem_key,
        idempotency_keys.c.status_code.is_(None)))


async def delete_expired_idempotency(session: AsyncSession, ttl: timedelta) -> int:
    result = await session.execute(delete(idempotency_keys).where(
        idempotency_keys.c.created_at < datetime.now(UTC) - ttl))
    return int(getattr(result, "rowcount", 0) or 0)


# --- audit log -----------------------------------------------------------------------------
async def create_audit_entry(session: AsyncSession, *, request_id: str, actor: AuditActor, action: AuditAction,
                             target: str, changes: dict[str, Any], status: int) -> int:
    """Append one audit entry (the caller has bounded and redacted ``changes``); return its id."""
    return int(await session.scalar(audit_log.insert().values(
        request_id=request_id[:128], actor_key_id=actor.key_id, actor_tenant=actor.tenant, actor_role=actor.role,
        action=str(action), target=target[:256], changes=changes, status=status).returning(audit_log.c.id)))


async def list_audit_entries(session: AsyncSession, *, actor: str | None = None, action: AuditAction | None = None,
                             target: str | None = None, since: datetime | None = None, until: datetime | None = None,
                             before: int | None = None, limit: int = 100) -> tuple[list[AuditEntry], int | None]:
    """Entries newest first (by id), filtered; ``before`` is the last id of the previous page.

    Returns the page and the id to continue before, or None on the last page. ``since`` is
    inclusive, ``until`` exclusive.
    """
    t = audit_log
    q = select(t).order_by(t.c.id.desc()).limit(limit + 1)
    if actor is not None:
        q = q.where(t.c.actor_key_id == actor)
    if action is not None:
        q = q.where(t.c.action == str(action))
    if target is not None:
        q = q.where(t.c.target == target)
    if since is not None:
        q = q.where(t.c.at >= since)
    if until is not None:
        q = q.where(t.c.at < until)
    if before is not None:
        q = q.where(t.c.id < before)
    rows = (await session.execute(q)).all()
    items = [AuditEntry(id=r.id, at=r.at, request_id=r.request_id, action=r.action, target=r.target,
                        actor=AuditActor(key_id=r.actor_key_id, tenant=r.actor_tenant, role=r.actor_role),
                        changes=r.changes, status=r.status) for r in rows[:limit]]
    return items, (items[-1].id if len(rows) > limit else None)
