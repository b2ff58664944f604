"""Host enrollment: tokens (admin), the exchange a host makes (the token is its credential), revocation (admin)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request

from libs.db import session_scope
from libs.metrics import BUS_REJECTED
from libs.schemas.audit import AuditAction, AuditActor
from libs.schemas.enrollment import (
    EnrolledHost,
    EnrollmentToken,
    EnrollmentTokenCreate,
    EnrollRequest,
    HostCredential,
)
from libs.schemas.tenancy import Role
from services.gateway import store
from services.gateway.audit import Audit, audited
from services.gateway.auth import Principal, charge_attempt, require_role
from services.gateway.deps import Ctx
from services.gateway.enrollment import ENROLLMENTS, EnrollmentDisabled, credential_expiry
from services.gateway.openapi import problem
from services.gateway.pagination import MAX_PAGE, Page, decode_cursor, encode_cursor
from services.gateway.problems import ProblemError
from services.gateway.routes.keys import ADMIN_ONLY

router = APIRouter(tags=["enrollment"])
Admin = Annotated[Principal, Depends(require_role(Role.ADMIN))]
TokenAudit = Annotated[Audit, Depends(audited(AuditAction.ENROLLMENT_TOKEN_CREATE))]
RevokeAudit = Annotated[Audit, Depends(audited(AuditAction.HOST_CREDENTIAL_REVOKE))]
DISABLED: dict[int | str, dict[str, Any]] = {404: problem(
    "This gateway cannot issue credentials", "Enrollment is off",
    "host enrollment is off: this gateway has no XPUMESH_ENROLL__TRUST_DIR")}
ENROLL_PATH = "/v1/enroll"
INVALID_TOKEN = "the token is unknown, already used, expired, or made for another host"


def _disabled(exc: EnrollmentDisabled) -> ProblemError:
    return ProblemError(404, "Enrollment is off", str(exc))


@router.post("/v1/enrollment-tokens", status_code=201, response_model=EnrollmentToken,
             summary="Create a single-use enrollment token for one host (admin); the secret is shown once",
             responses={**ADMIN_ONLY, **DISABLED})
async def create_enrollment_token(ctx: Ctx, principal: Admin, body: EnrollmentTokenCreate,
                                  audit: TokenAudit) -> EnrollmentToken:
    try:
        ctx.state.enrollment.require()
    except EnrollmentDisabled as exc:
        raise _disabled(exc) from None
    cfg = ctx.settings.enroll
    if body.ttl_s is not None and body.ttl_s > cfg.max_token_ttl_s:
        raise ProblemError(422, "Invalid request", f"body.ttl_s: at most {cfg.max_token_ttl_s:g} s",
                           errors=[{"loc": "body.ttl_s", "msg": f"at most {cfg.max_token_ttl_s:g} s"}])
    ttl = min(body.ttl_s or cfg.token_ttl_s, cfg.max_token_ttl_s)
    async with audit.local(changes=body) as session:
        token = await store.create_enrollment_token(session, site=body.site, host=body.host,
                                                    created_by=principal.key_id,
                                                    expires_at=datetime.now(UTC) + timedelta(seconds=ttl))
        audit.target = f"{body.site}/{body.host}"
        audit.changes["token_id"] = token.id
    return token


@router.post(ENROLL_PATH, status_code=201, response_model=EnrolledHost,
             summary="Exchange an enrollment token and a host's public NKey for its NATS credentials",
             description="Needs no API key: the token is the credential, and it works once. Failed attempts count "
                         "against the caller's address like requests without a valid key (429 when spent).",
             responses={401: problem("Unknown, used or expired token", "Invalid enrollment token", INVALID_TOKEN),
                        **DISABLED})
async def enroll(ctx: Ctx, request: Request, body: EnrollRequest) -> EnrolledHost:
    enrollment = ctx.state.enrollment
    if enrollment.trust is None:
        ENROLLMENTS.labels("disabled").inc()
        raise _disabled(EnrollmentDisabled("host enrollment is off: this gateway has no XPUMESH_ENROLL__TRUST_DIR"))
    client = charge_attempt(ctx, request.scope)  # a guess pays before the lookup, as an unknown API key does
    now = datetime.now(UTC)
    request_id = str(getattr(request.state, "request_id", "") or "")
    async with session_scope(ctx.db) as session:
        row = await store.update_enrollment_token_used(session, body.token, body.host, now)
        if row is None:
            ENROLLMENTS.labels("invalid_token").inc()
            BUS_REJECTED.labels("gateway", "enroll", "invalid_token").inc()
            raise ProblemError(401, "Invalid enrollment token", INVALID_TOKEN)
        expires_at = credential_expiry(ctx.settings, now)
        jwt = enrollment.sign(row.site, row.host, body.public_key, expires_at)
        cred = await store.create_host_credential(session, site=row.site, host=row.host, public_key=body.public_key,
                                                  token_id=row.id, issued_at=now, expires_at=expires_at)
        # The actor is the token (the request carried no key): its id, never its secret.
        await store.create_audit_entry(
            session, request_id=request_id, actor=AuditActor(key_id=row.id, tenant="system", role="host"),
            action=AuditAction.HOST_ENROLL, target=f"{row.site}/{row.host}",
            changes={"credential_id": cred.id, "public_key_sha256": hashlib.sha256(body.public_key.encode())
                     .hexdigest()[:16], "address": client}, status=201)
    ctx.state.auth.logins.give(client)
    ENROLLMENTS.labels("enrolled").inc()
    return EnrolledHost(credential_id=cred.id, site=row.site, host=row.host, jwt=jwt,
                        nats_urls=enrollment.nats_urls, ca_pem=enrollment.ca_pem, expires_at=expires_at)


@router.get("/v1/host-credentials", summary="List hosts' NATS credentials (admin)",
            response_model=Page[HostCredential], responses=ADMIN_ONLY)
async def list_host_credentials(
        ctx: Ctx, principal: Admin,
        site: Annotated[str | None, Query(max_length=64)] = None,
        host: Annotated[str | None, Query(max_length=64)] = None,
        include_revoked: bool = False, cursor: str | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100) -> Page[HostCredential]:
    after = decode_cursor(cursor)
    if after is not None and not isinstance(after, str):
        raise ProblemError(400, "Invalid cursor", "the cursor is not one this API returned")
    async with session_scope(ctx.db) as session:
        items, last = await store.list_host_credentials(session, site=site, host=host, after=after, limit=limit,
                                                        include_revoked=include_revoked)
    return Page[HostCredential](items=items, next_cursor=encode_cursor(last) if last else None)


@router.delete("/v1/host-credentials/{credential_id}", response_model=HostCredential,
               summary="Revoke a host's NATS credentials (admin); the NATS server drops its connections",
               responses={**ADMIN_ONLY, **DISABLED,
                          404: problem("No such credential", "Credential not found", "no credential 'hcr_4b1d9e2f7a3c'"),
                          502: problem("Revoked here, not yet on the NATS server", "Revocation not pushed",
                                       "the NATS server did not take the revocation; it is retried")})
async def revoke_host_credential(ctx: Ctx, principal: Admin, audit: RevokeAudit,
                                 credential_id: Annotated[str, Path(max_length=32, examples=["hcr_4b1d9e2f7a3c"])],
                                 ) -> HostCredential:
    enrollment = ctx.state.enrollment
    try:
        enrollment.require()
    except EnrollmentDisabled as exc:
        raise _disabled(exc) from None
    async with audit.local(target=credential_id) as session:
        cred = await store.update_host_credential_revoked(session, credential_id, datetime.now(UTC))
        if cred is None:
            raise ProblemError(404, "Credential not found", f"no credential {credential_id!r}")
        audit.changes = {"site": cred.site, "host": cred.host}
    try:
        await enrollment.push(ctx)
    except Exception as exc:
        raise ProblemError(502, "Revocation not pushed",
                           f"the credential is revoked here, but the NATS server did not take it "
                           f"({type(exc).__name__}); the gateway pushes the list again every "
                           f"{ctx.settings.enroll.revocation_resync_s:g} s") from None
    return cred
