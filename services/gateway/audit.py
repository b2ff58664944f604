"""The one place admin actions are written to the audit log.

A route that changes something declares its action with a dependency and runs the change
inside the recorder it gets::

    KeyCreateAudit = Annotated[Audit, Depends(audited(AuditAction.KEY_CREATE))]

    async def create_key(ctx: Ctx, principal: Admin, body: KeyCreate, audit: KeyCreateAudit) -> CreatedKey:
        async with audit.local(changes=body) as session:   # a change in the gateway's own tables
            key, secret = await store.create_key(session, ...)
            audit.target = key.id

    async with audit.remote(target=tenant, changes=body):   # a change another service makes
        return await call(ctx, "scheduler", "quotas.set", ...)

- ``local``: the entry is written in the change's own transaction, so the two commit
  together or not at all (an entry that cannot be written fails the request).
- ``remote``: the entry is written after the service answered, in its own transaction,
  with the outcome; a write that fails there cannot undo the change, so it is logged and
  counted (``xpumesh_audit_writes_total{outcome="failed"}``) and the answer stands.
- A change that fails (a problem, a service's typed error) is recorded with its status in
  a transaction of its own, after the failed one rolled back.

The actor is the authenticated key (``auth.authenticate``), never the body; the request id
is the gateway's ``X-Request-Id``; ``changes`` is ``summarize(body)``: bounded, with every
field named like a secret, key, token or password dropped, URLs cut to scheme and host,
and any string that looks like an API key removed.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from fastapi import Request, Response
from prometheus_client import Counter
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.exceptions import HTTPException

from libs.bus.errors import BusError
from libs.db import session_scope
from libs.schemas.audit import AuditAction, AuditActor
from libs.service import Context
from services.gateway import store
from services.gateway.auth import Principal, authenticate
from services.gateway.problems import ProblemError
from services.gateway.state import GatewayState

log = logging.getLogger(__name__)
AUDIT_WRITES = Counter("xpumesh_audit_writes_total", "Audit log entries the gateway wrote, by outcome (ok, failed).",
                       ["outcome"])

SECRET_FIELD = re.compile(r"secret|key|token|passw|credential|authori|signature|cookie|private|nkey|seed", re.I)
_KEY_LIKE = re.compile(r"xp[me]_[A-Za-z0-9_-]{8,}")  # API keys and enrollment tokens
MAX_DEPTH = 4
MAX_ITEMS = 64
MAX_STRING = 256
MAX_BYTES = 4096
REDACTED = "[redacted]"


def _url(value: str) -> str:
    """A URL without what may carry a credential: userinfo, path, query and fragment."""
    try:
        parts = urlsplit(value)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return REDACTED
    rest = "/…" if parts.path.strip("/") or parts.query or parts.fragment else ""
    return f"{parts.scheme}://{host}{port}{rest}"


def _clean(value: Any, depth: int) -> Any:
    if isinstance(value, str):
        if value[:8].lower().startswith(("http://", "https://")):
            return _url(value)
        if _KEY_LIKE.search(value):
            return REDACTED
        return value if len(value) <= MAX_STRING else value[:MAX_STRING] + "…"
    if value is None or isinstance(value, bool | int | float):
        return value
    if depth >= MAX_DEPTH:
        return "…"
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            name = str(k)[:MAX_STRING]
            if SECRET_FIELD.search(name):
                continue
            if len(out) == MAX_ITEMS:
                out["…"] = f"{len(value) - MAX_ITEMS} more"
                break
            out[name] = _clean(v, depth + 1)
        return out
    if isinstance(value, list | tuple | set | frozenset):
        items = list(value)
        cleaned = [_clean(v, depth + 1) for v in items[:MAX_ITEMS]]
        return cleaned + ([f"{len(items) - MAX_ITEMS} more"] if len(items) > MAX_ITEMS else [])
    return _clean(str(value), depth)


def summarize(body: BaseModel | dict[str, Any] | None) -> dict[str, Any]:
    """A bounded, JSON-safe summary of a request body with every secret removed."""
    if body is None:
        return {}
    raw = body.model_dump(mode="json") if isinstance(body, BaseModel) else body
    cleaned = _clean(raw, 0)
    if not isinstance(cleaned, dict):
        cleaned = {"value": cleaned}
    if len(json.dumps(cleaned, default=str)) > MAX_BYTES:
        return {"truncated": True, "fields": sorted(cleaned)[:MAX_ITEMS]}
    return cleaned


def status_of(exc: BaseException) -> int:
    """The HTTP status an exception from a route becomes (see ``problems.install``)."""
    if isinstance(exc, ProblemError):
        return exc.status
    if isinstance(exc, BusError):
        return exc.http_status
    if isinstance(exc, HTTPException):
        return exc.status_code
    return 500


@dataclass
class Audit:
    """The audit recorder of one request: who, which request, which action; the route adds target and changes."""

    ctx: Context[GatewayState]
    principal: Principal
    request_id: str
    action: AuditAction
    response: Response
    success_status: int
    target: str = ""
    changes: dict[str, Any] = field(default_factory=dict)

    def _note(self, target: str | None, changes: BaseModel | dict[str, Any] | None) -> None:
        if target is not None:
            self.target = target
        if changes is not None:
            self.changes = summarize(changes)

    def _status(self) -> int:
        return self.response.status_code or self.success_status

    async def _write(self, session: AsyncSession, status: int) -> None:
        actor = AuditActor(key_id=self.principal.key_id, tenant=self.principal.tenant, role=str(self.principal.role))
        await store.create_audit_entry(session, request_id=self.request_id, actor=actor, action=self.action,
                                       target=self.target, changes=self.changes, status=status)

    async def _write_apart(self, status: int) -> None:
        """Write the entry in a transaction of its own; a failure is logged and counted, never raised."""
        try:
            async with session_scope(self.ctx.db) as session:
                await self._write(session, status)
        except Exception:
            AUDIT_WRITES.labels("failed").inc()
            log.exception("audit entry not written: %s on %r by %s (request %s, status %d)", self.action,
                          self.target, self.principal.key_id, self.request_id, status)
            return
        AUDIT_WRITES.labels("ok").inc()

    @asynccontextmanager
    async def local(self, *, target: str | None = None,
                    changes: BaseModel | dict[str, Any] | None = None) -> AsyncIterator[AsyncSession]:
        """A transaction for a change in the gateway's own tables; the entry commits with it."""
        self._note(target, changes)
        entry_failed = False
        try:
            async with session_scope(self.ctx.db) as session:
                yield session
                try:
                    await self._write(session, self._status())
                except Exception:
                    entry_failed = True
                    AUDIT_WRITES.labels("failed").inc()
                    log.exception("audit entry not written, so %s on %r is not made (request %s)", self.action,
                                  self.target, self.request_id)
                    raise
        except Exception as exc:
            if not entry_failed:
                await self._write_apart(status_of(exc))
            raise
        AUDIT_WRITES.labels("ok").inc()

    @asynccontextmanager
    async def remote(self, *, target: str | None = None,
                     changes: BaseModel | dict[str, Any] | None = None) -> AsyncIterator[Audit]:
        """A change another service makes: recorded after it answered, with the outcome."""
        self._note(target, changes)
        try:
            yield self
        except Exception as exc:
            await self._write_apart(status_of(exc))
            raise
        await self._write_apart(self._status())


def audited(action: AuditAction) -> Callable[[Request, Response], Awaitable[Audit]]:
    """A dependency declaring that a route performs ``action``: it gets the request's ``Audit``."""

    async def dependency(request: Request, response: Response) -> Audit:
        principal = await authenticate(request)
        route = request.scope.get("route")
        request_id = str(getattr(request.state, "request_id", "") or request.headers.get("x-request-id", ""))
        return Audit(ctx=request.app.state.ctx, principal=principal, request_id=request_id, action=action,
                     response=response, success_status=getattr(route, "status_code", None) or 200)

    return dependency
