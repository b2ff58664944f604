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

Attempts without a valid key are limited before any lookup: each client address (the TCP
peer; a ``gateway.trusted_proxies`` proxy's ``X-Forwarded-For``; IPv6 by /64) has a token
bucket (``login_rate_per_s``, ``login_burst``) that every missing, malformed or unknown key
takes from, and an empty bucket is a 429 with ``Retry-After`` — so a flood of random tokens
costs no database query past the burst. A well-formed key that is not cached takes its token
before the lookup and gets it back when it verifies; a key verified before (still in the
cache, even expired) is looked up whatever the bucket says, so a valid key keeps working
beside a flood from its own address. Unknown keys are remembered apart from verified ones
(``_UNKNOWN_ENTRIES``), so they never push a verified key out of the cache.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request
from pydantic import BaseModel, ConfigDict
from starlette.types import Scope

from libs.config import GatewaySettings
from libs.db import session_scope
from libs.metrics import BUS_REJECTED
from libs.schemas.tenancy import Role
from libs.service import Context
from services.gateway import store
from services.gateway.problems import ProblemError
from services.gateway.ratelimit import Network, TokenBuckets, client_address

if TYPE_CHECKING:
    from services.gateway.state import GatewayState

log = logging.getLogger(__name__)

PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc",
                          "/v1/enroll"})  # enrollment: the token in the body is the credential
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_CACHE_ENTRIES = 50_000  # verified keys only
_UNKNOWN_ENTRIES = 10_000  # digests that matched no live key
_BUCKETS = 100_000
_KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/=")
MAX_KEY_LEN = 256


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


class AuthState:
    """Per-process caches (``GatewayState.auth``): verified keys (short TTL), unknown keys apart, token buckets
    per key and per client address, lookups in flight."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self._keys: OrderedDict[str, tuple[float, Principal]] = OrderedDict()
        self._unknown: OrderedDict[str, float] = OrderedDict()
        self.keys = TokenBuckets(settings.rate_per_s, settings.rate_burst, _BUCKETS)
        self.logins = TokenBuckets(settings.login_rate_per_s, settings.login_burst, settings.login_tracked_addresses)
        self.trusted_proxies: tuple[Network, ...] = tuple(
            ipaddress.ip_network(p, strict=False) for p in settings.trusted_proxies)
        self.lookups: dict[str, asyncio.Future[Principal | None]] = {}

    def cached(self, digest: str) -> tuple[bool, Principal | None]:
        """(True, principal) for a key verified within ``key_cache_s``, (True, None) for one found unknown
        within it, else (False, None)."""
        now = time.monotonic()
        hit = self._keys.get(digest)
        if hit is not None and hit[0] >= now:
            return True, hit[1]
        unknown = self._unknown.get(digest)
        if unknown is not None and unknown >= now:
            return True, None
        return False, None

    def known(self, digest: str) -> bool:
        """Whether this key verified before (its cache entry may have expired): looking it up again is no guess."""
        return digest in self._keys

    def remember(self, digest: str, principal: Principal | None) -> None:
        until = time.monotonic() + self.settings.key_cache_s
        if principal is None:
            self._keys.pop(digest, None)
            self._unknown[digest] = until
            self._unknown.move_to_end(digest)
            while len(self._unknown) > _UNKNOWN_ENTRIES:
                self._unknown.popitem(last=False)
            return
        self._unknown.pop(digest, None)
        self._keys[digest] = (until, principal)
        self._keys.move_to_end(digest)
        while len(self._keys) > _CACHE_ENTRIES:
            self._keys.popitem(last=False)

    def forget_key(self, key_id: str) -> None:
        """Drop a revoked key at once (other instances drop it within ``key_cache_s``)."""
        for digest in [d for d, (_, p) in self._keys.items() if p.key_id == key_id]:
            del self._keys[digest]

    def take(self, key_id: str) -> float:
        """Take one token from the key's bucket; return 0 when allowed, else the seconds until one is available."""
        return self.keys.take(key_id)

    def client(self, scope: Scope) -> str:
        """The bucket name of the caller's address (see ``ratelimit.client_address``)."""
        return client_address(scope, self.trusted_proxies)


def well_formed(token: str) -> bool:
    """A token that could be a key: 24-256 characters of the URL-safe/base64 alphabet (bootstrap keys are
    chosen by the operator, so no prefix is required). Anything else is refused without a lookup."""
    return store.MIN_KEY_LEN <= len(token) <= MAX_KEY_LEN and _KEY_CHARS.issuperset(token)


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
    return await authenticate_scope(request.app.state.ctx, request.scope)


async def authenticate_scope(ctx: Context[GatewayState], scope: Scope) -> Principal:
    """The one authentication path (routes and middleware): the key's principal, kept in the scope's state and
    charged to its bucket; 401 without a valid key, 429 when the key's or the address's bucket is empty."""
    known: Principal | None = scope.get("state", {}).get("principal")
    if known is not None:
        return known
    auth = ctx.state.auth
    token = bearer_token(Request(scope))
    if token is None:
        _failed(ctx, scope, "missing_key")
        raise _unauthorized("Missing API key", "send the header 'Authorization: Bearer <key>'")
    if not well_formed(token):
        _failed(ctx, scope, "malformed_key")
        raise _unauthorized("Invalid API key", "the key is unknown or revoked")
    digest = hashlib.sha256(token.encode()).hexdigest()
    hit, principal = auth.cached(digest)
    if not hit and not auth.known(digest):  # a guess until it verifies: it pays before the lookup
        client = charge_attempt(ctx, scope)
        principal = await principal_for_key(ctx, token)
        if principal is not None:
            auth.logins.give(client)
    elif not hit:
        principal = await principal_for_key(ctx, token)
    elif principal is None:
        charge_attempt(ctx, scope)
    if principal is None:
        BUS_REJECTED.labels("gateway", "auth", "invalid_key").inc()
        raise _unauthorized("Invalid API key", "the key is unknown or revoked")
    charge(ctx, principal)
    scope.setdefault("state", {})["principal"] = principal
    return principal


def _failed(ctx: Context[GatewayState], scope: Scope, reason: str) -> None:
    charge_attempt(ctx, scope)
    BUS_REJECTED.labels("gateway", "auth", reason).inc()


def charge_attempt(ctx: Context[GatewayState], scope: Scope) -> str:
    """Take one token from the client address's bucket of attempts without a valid key (429 when empty)."""
    auth = ctx.state.auth
    client = auth.client(scope)
    wait = auth.logins.take(client)
    if wait > 0:
        BUS_REJECTED.labels("gateway", "auth", "login_rate_limited").inc()
        settings = ctx.settings.gateway
        raise ProblemError(429, "Too many requests without a valid API key",
                           f"this address may make {settings.login_rate_per_s:g} requests per second without a "
                           f"valid key (bursts of {settings.login_burst})",
                           headers={"Retry-After": str(max(1, math.ceil(wait)))})
    return client


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


ENDPOINTS_PREFIX = "/v1/endpoints/"


async def gate(request: Request) -> None:
    """App-level dependency: every non-public route needs a key; viewers cannot write; invoke-only keys
    call services through ``/v1/endpoints/`` and nothing else."""
    if is_public(request):
        return
    principal = await authenticate(request)
    if principal.role == Role.INVOKER:
        path = request.url.path
        if not (path.startswith(ENDPOINTS_PREFIX) or path == ENDPOINTS_PREFIX.rstrip("/")):
            BUS_REJECTED.labels("gateway", "auth", "invoke_only").inc()
            raise ProblemError(403, "Forbidden", "invoke-only keys may only call services through /v1/endpoints/")
        return
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
