"""The gateway's records: API keys (hashed at rest), idempotency responses, the audit log, and
host enrollment (token digests, the public keys of issued host credentials)
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
from libs.schemas.enrollment import ENROLLMENT_TOKEN_SCHEME, EnrollmentToken, HostCredential
from libs.schemas.tenancy import ApiKey, Role
from services.gateway.orm import api_keys, audit_log, enrollment_tokens, host_credentials, idempotency_keys

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


# --- host enrollment ------------------------------------------------------------------------
async def create_enrollment_token(session: AsyncSession, *, site: str, host: str, created_by: str,
                                  expires_at: datetime) -> EnrollmentToken:
    """A new single-use token for one host; only its digest is stored."""
    secret = ENROLLMENT_TOKEN_SCHEME + secrets.token_urlsafe(32)
    token_id = "enr_" + secrets.token_hex(6)
    await session.execute(enrollment_tokens.insert().values(
        id=token_id, hash=key_digest(secret), site=site, host=host, created_by=created_by, expires_at=expires_at))
    return EnrollmentToken(id=token_id, token=secret, site=site, host=host, expires_at=expires_at)


async def update_enrollment_token_used(session: AsyncSession, secret: str, host: str, now: datetime) -> Any | None:
    """Spend a token made for ``host``: the row (id, site, host) when it was live and unused, else None. One
    statement, so two redeemers racing for one token cannot both win."""
    t = enrollment_tokens
    return (await session.execute(
        update(t).where(t.c.hash == key_digest(secret), t.c.host == host, t.c.used_at.is_(None), t.c.expires_at > now)
        .values(used_at=now).returning(t.c.id, t.c.site, t.c.host))).one_or_none()


async def delete_expired_enrollment_tokens(session: AsyncSession, older_than: timedelta) -> int:
    """Forget tokens that expired more than ``older_than`` ago (used or not); return how many."""
    t = enrollment_tokens
    result = await session.execute(delete(t).where(t.c.expires_at < datetime.now(UTC) - older_than))
    return int(getattr(result, "rowcount", 0) or 0)


def _host_credential(row: Any) -> HostCredential:
    return HostCredential(id=row.id, site=row.site, host=row.host, public_key=row.public_key,
                          issued_at=row.issued_at, expires_at=row.expires_at, revoked_at=row.revoked_at)


async def create_host_credential(session: AsyncSession, *, site: str, host: str, public_key: str, token_id: str,
                                 issued_at: datetime, expires_at: datetime) -> HostCredential:
    row = (await session.execute(host_credentials.insert().values(
        id="hcr_" + secrets.token_hex(6), site=site, host=host, public_key=public_key, token_id=token_id,
        issued_at=issued_at, expires_at=expires_at).returning(*host_credentials.c))).one()
    return _host_credential(row)


async def list_host_credentials(session: AsyncSession, *, site: str | None = None, host: str | None = None,
                                include_revoked: bool = False, after: str | None = None,
                                limit: int = 100) -> tuple[list[HostCredential], str | None]:
    t = host_credentials
    q = select(t).order_by(t.c.id).limit(limit + 1)
    if site:
        q = q.where(t.c.site == site)
    if host:
        q = q.where(t.c.host == host)
    if not include_revoked:
        q = q.where(t.c.revoked_at.is_(None))
    if after:
        q = q.where(t.c.id > after)
    rows = (await session.execute(q)).all()
    items = [_host_credential(r) for r in rows[:limit]]
    return items, (items[-1].id if len(rows) > limit else None)


async def update_host_credential_revoked(session: AsyncSession, credential_id: str,
                                         now: datetime) -> HostCredential | None:
    """Revoke a credential (again is a no-op that returns it); None when there is no such credential."""
    t = host_credentials
    await session.execute(update(t).where(t.c.id == credential_id, t.c.revoked_at.is_(None)).values(revoked_at=now))
    row = (await session.execute(select(t).where(t.c.id == credential_id))).one_or_none()
    return _host_credential(row) if row is not None else None


async def list_revoked_public_keys(session: AsyncSession, now: datetime) -> dict[str, int]:
    """Public keys of revoked credentials that have not yet expired, with their revocation time (unix s)."""
    t = host_credentials
    rows = (await session.execute(select(t.c.public_key, t.c.revoked_at)
                                  .where(t.c.revoked_at.is_not(None), t.c.expires_at > now))).all()
    return {r.public_key: int(r.revoked_at.timestamp()) for r in rows}
