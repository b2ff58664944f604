"""Who is calling: API keys, roles, tenants and a rate limit per key.

Every route but the public ones (health, readiness, docs, openapi) needs
``Authorization: Bearer <key>``. The app-level ``gate`` dependency (installed in
``http.py``) authenticates every request, applies the per-key token bucket and refuses
writes to viewers, so a new router is protected without doing anything. Routes that need
the caller ask for it::

    @router.get("/v1/things")
    async def list_things(principal: CurrentPrincipal, ...) -> ...: ...

    @router.put("/v1/catalog", dependencies=[Depends(require_role(Role.OPERATOR))])

Tenancy: ``tenant_filter(p)`` is the tenant a listing must be confined to (None: all);
``ensure_visible`` turns another tenant's resource into a 404 (never a 403), and
``ensure_can_modify`` additionally refuses operators changing other tenants' resources.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request
from pydantic import BaseModel, ConfigDict

from libs.config import GatewaySettings
from libs.db import session_scope
from libs.metrics import BUS_REJECTED
from libs.schemas.tenancy import Role
from libs.service import Context
from services.gateway import store
from services.gateway.problems import ProblemError

if TYPE_CHECKING:
    from services.gateway.state import GatewayState

log = logging.getLogger(__name__)

PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_CACHE_ENTRIES = 50_000
_BUCKETS = 100_000


class Principal(BaseModel):
    """The caller: which key, for which tenant, in which role."""

    model_config = ConfigDict(frozen=True)

    key_id: str
    tenant: str
    role: Role

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN

    @property
    def sees_all_tenants(self) -> bool:
        """Admins and operators read every tenant's workloads; users and viewers only their own."""
        return self.role in (Role.ADMIN, Role.OPERATOR)

    @property
    def can_write(self) -> bool:
        return self.role != Role.VIEWER


@dataclass
class _Bucket:
    tokens: float
    at: float


class AuthState:
    """Per-process caches (``GatewayState.auth``): verified keys (short TTL), token buckets, lookups in flight."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self._keys: OrderedDict[str, tuple[float, Principal | None]] = OrderedDict()
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self.lookups: dict[str, asyncio.Future[Principal | None]] = {}

    def cached(self, digest: str) -> tuple[bool, Principal | None]:
        hit = self._keys.get(digest)
        if hit is None or hit[0] < time.monotonic():
            return False, None
        return True, hit[1]

    def remember(self, digest: str, principal: Principal | None) -> None:
        self._keys[digest] = (time.monotonic() + self.settings.key_cache_s, principal)
        self._keys.move_to_end(digest)
        while len(self._keys) > _CACHE_ENTRIES:
            self._keys.popitem(last=False)

    def forget_key(self, key_id: str) -> None:
        """Drop a revoked key at once (other instances drop it within ``key_cache_s``)."""
        for digest in [d for d, (_, p) in self._keys.items() if p is not None and p.key_id == key_id]:
            del self._keys[digest]

    def take(self, key_id: str) -> float:
        """Take one token; return 0 when allowed, else the seconds until one is available."""
        now = time.monotonic()
        rate, burst = self.settings.rate_per_s, float(self.settings.rate_burst)
        b = self._buckets.get(key_id)
        if b is None:
            b = self._buckets[key_id] = _Bucket(burst, now)
            while len(self._buckets) > _BUCKETS:
                self._buckets.popitem(last=False)
        b.tokens = min(burst, b.tokens + (now - b.at) * rate)
        b.at = now
        if b.tokens >= 1.0:
            b.tokens -= 1.0
            return 0.0
        return (1.0 - b.tokens) / rate


def _unauthorized(title: str, detail: str) -> ProblemError:
    return ProblemError(401, title, detail, headers={"WWW-Authenticate": 'Bearer realm="xpumesh"'})


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def principal_for_key(ctx: Context[GatewayState], secret: str) -> Principal | None:
    """The principal of a key (cached for ``key_cache_s``), or None for an unknown or revoked key."""
    state = ctx.state.auth
    digest = hashlib.sha256(secret.encode()).hexdigest()
    hit, principal = state.cached(digest)
    if hit:
        return principal
    pending = state.lookups.get(digest)
    if pending is not None:  # one lookup per key at a time, however many requests arrive meanwhile
        try:
            return await asyncio.shield(pending)
        except asyncio.CancelledError:
            if not pending.cancelled():
                raise  # this request itself was cancelled
            # the request doing the lookup went away: look it up here
    fut: asyncio.Future[Principal | None] = asyncio.get_running_loop().create_future()
    state.lookups[digest] = fut
    try:
        async with session_scope(ctx.db) as session:
            key = await store.read_live_key(session, secret)
        principal = Principal(key_id=key.id, tenant=key.tenant, role=key.role) if key is not None else None
        state.remember(digest, principal)
        fut.set_result(principal)
        return principal
    except Exception:
        log.exception("key lookup failed")
        problem = ProblemError(503, "Key store unavailable", "API keys cannot be checked right now; retry shortly",
                               headers={"Retry-After": "1"})
        fut.set_exception(problem)
        fut.exception()  # retrieved: waiters get it, nobody else needs to
        raise problem from None
    finally:
        state.lookups.pop(digest, None)
        if not fut.done():
            fut.cancel()


async def authenticate(request: Request) -> Principal:
    """Authenticate once per request (the result is kept on ``request.state``) and charge the rate limit."""
    known: Principal | None = getattr(request.state, "principal", None)
    if known is not None:
        return known
    token = bearer_token(request)
    if token is None:
        BUS_REJECTED.labels("gateway", "auth", "missing_key").inc()
        raise _unauthorized("Missing API key", "send the header 'Authorization: Bearer <key>'")
    ctx: Context[GatewayState] = request.app.state.ctx
    principal = await principal_for_key(ctx, token)
    if principal is None:
        BUS_REJECTED.labels("gateway", "auth", "invalid_key").inc()
        raise _unauthorized("Invalid API key", "the key is unknown or revoked")
    charge(ctx, principal)
    request.state.principal = principal
    return principal


def charge(ctx: Context[GatewayState], principal: Principal) -> None:
    """Take one request from the key's token bucket; 429 with Retry-After when it is empty."""
    wait = ctx.state.auth.take(principal.key_id)
    if wait > 0:
        BUS_REJECTED.labels("gateway", "auth", "rate_limited").inc()
        raise ProblemError(429, "Too many requests",
                           f"this key may make {ctx.settings.gateway.rate_per_s:g} requests per second "
                           f"(bursts of {ctx.settings.gateway.rate_burst})",
                           headers={"Retry-After": str(max(1, math.ceil(wait)))})


def is_public(request: Request) -> bool:
    route = request.scope.get("route")
    path = getattr(route, "path", None) or request.url.path
    return path in PUBLIC_PATHS


async def gate(request: Request) -> None:
    """App-level dependency: every non-public route needs a key; viewers cannot write."""
    if is_public(request):
        return
    principal = await authenticate(request)
    if request.method not in SAFE_METHODS and not principal.can_write:
        raise ProblemError(403, "Forbidden", "viewer keys are read-only")


async def current_principal(request: Request) -> Principal:
    """The calling key's principal (401 without a valid key)."""
    return await authenticate(request)


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


def require_role(*roles: Role | str) -> Callable[[Request], Awaitable[Principal]]:
    """A dependency that lets only these roles through (admin always passes); others get 403."""
    allowed = {Role(r) for r in roles} | {Role.ADMIN}
    names = ", ".join(sorted(str(r) for r in allowed))

    async def dependency(request: Request) -> Principal:
        principal = await authenticate(request)
        if principal.role not in allowed:
            raise ProblemError(403, "Forbidden", f"this needs one of the roles: {names}")
        return principal

    return dependency


def tenant_filter(principal: Principal) -> str | None:
    """The tenant a listing of tenant-owned resources must be confined to; None means every tenant."""
    return None if principal.sees_all_tenants else principal.tenant


def ensure_visible(principal: Principal, owner_tenant: str | None, not_found: ProblemError) -> None:
    """Another tenant's resource does not exist for this caller: raise ``not_found`` (a 404)."""
    if not principal.sees_all_tenants and owner_tenant != principal.tenant:
        raise not_found


def ensure_can_modify(principal: Principal, owner_tenant: str | None, not_found: ProblemError) -> None:
    """Only admins change other tenants' resources; operators may see them (403), others may not (404)."""
    ensure_visible(principal, owner_tenant, not_found)
    if not principal.is_admin and owner_tenant != principal.tenant:
        raise ProblemError(403, "Forbidden", "only admins change another tenant's resources")
