"""The gateway's ASGI middleware: request ids, body caps, content types, Idempotency-Key, hot-read cache.

Pure ASGI (no per-request task or response buffering) so streaming responses (SSE) pass
straight through and hot reads stay cheap.

- ``X-Request-Id`` on every response (the caller's, or a new one); routes find it in
  ``request.state.request_id`` (the audit log records it).
- Request bodies are read up front, up to ``gateway.max_body_bytes`` whether or not a
  Content-Length was sent (chunked uploads are counted as they arrive): 413 past it.
- A body on POST/PUT/PATCH must be JSON: 415 otherwise.
- ``Idempotency-Key`` on POST: the first request with a key claims it (per API key) and its
  answer is stored; a retry with the same body gets the stored answer with
  ``Idempotent-Replayed: true``; the same key with a different body is a 422; a retry while
  the first is still running is a 409. Answers of 5xx and 429 are not stored.
- Hot fleet reads are answered from a short-TTL cache (``cache.py``) after the key check.
- Requests to ``/v1/endpoints/…`` pass through untouched (any content type, bodies streamed to the
  service's replica by ``proxy.py``; an Idempotency-Key there is the service's business).
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from datetime import timedelta

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from libs.db import json_has_nul, session_scope
from libs.metrics import BUS_REJECTED
from libs.service import Context
from services.gateway import store
from services.gateway.auth import ENDPOINTS_PREFIX, authenticate_scope
from services.gateway.cache import CACHEABLE_PATHS, ReadCache
from services.gateway.problems import ProblemError, problem_response
from services.gateway.state import GatewayState

log = logging.getLogger(__name__)
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
JSON_METHODS = frozenset({"POST", "PUT", "PATCH"})
MAX_IDEMPOTENT_BODY = 1024 * 1024
IDEMPOTENCY_IN_FLIGHT = timedelta(minutes=2)


class _TooLarge(Exception):
    pass


def _header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope.get("headers") or ():
        if k == name:
            return str(v.decode("latin-1"))
    return None


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return True  # FastAPI reads a body without a content type as JSON
    main = content_type.split(";", 1)[0].strip().lower()
    return main == "application/json" or (main.startswith("application/") and main.endswith("+json"))


class GatewayMiddleware:
    def __init__(self, app: ASGIApp, ctx: Context[GatewayState]) -> None:
        self.app = app
        self.ctx = ctx
        settings = ctx.settings.gateway if ctx is not None else None
        self.cache = ReadCache(settings.read_cache_s if settings else 0.0, settings.read_cache_entries if settings else 1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = (_header(scope, b"x-request-id") or uuid.uuid4().hex)[:128]
        scope.setdefault("state", {})["request_id"] = request_id  # routes read it as request.state.request_id
        rid = request_id.encode("latin-1", "replace")

        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid)]
            await send(message)

        method, path = scope["method"], scope["path"]
        try:
            await self._handle(scope, receive, send_with_id)
        except ProblemError as exc:
            await problem_response(exc.status, exc.title, exc.detail, headers=exc.headers,
                                   instance=path)(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error on %s %s (request %s)", method, path, request_id)
            if started:
                raise
            await problem_response(500, "Internal server error", instance=path)(scope, receive, send_with_id)

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        if b"%00" in scope["query_string"] or "\x00" in scope["path"]:  # a raw NUL never gets past the server
            self._reject("nul_character")  # no text column can hold one: say so rather than fail later
            raise ProblemError(422, "Invalid request", "NUL characters are not allowed in paths or parameters")
        if scope["path"].startswith(ENDPOINTS_PREFIX):  # proxied: any body, streamed through (proxy.py)
            await self.app(scope, receive, send)
            return
        if method not in BODY_METHODS:
            if method == "GET" and scope["path"] in CACHEABLE_PATHS and self.cache.enabled:
                await self._cached_read(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        limit = self.ctx.settings.gateway.max_body_bytes
        length = _header(scope, b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            self._reject("body_too_large")
            raise ProblemError(413, "Request body too large", f"the limit is {limit} bytes")
        try:
            body = await _read_body(receive, limit)
        except _TooLarge:
            self._reject("body_too_large")
            raise ProblemError(413, "Request body too large", f"the limit is {limit} bytes") from None
        if body and method in JSON_METHODS and not _is_json(_header(scope, b"content-type")):
            self._reject("unsupported_media_type")
            raise ProblemError(415, "Unsupported media type", "send the body as application/json")
        if json_has_nul(body):
            self._reject("nul_character")
            raise ProblemError(422, "Invalid request", "NUL characters (\\u0000) are not allowed in JSON strings")
        replay = _replayer(body, receive)
        idem_key = _header(scope, b"idempotency-key") if method == "POST" else None
        if idem_key is None:
            await self.app(scope, replay, send)
            return
        await self._idempotent(scope, replay, send, idem_key, body)

    async def _cached_read(self, scope: Scope, receive: Receive, send: Send) -> None:
        principal = await authenticate_scope(self.ctx, scope)  # authenticated and charged once (401/429 raise)
        key = (principal.tenant, str(principal.role), scope["path"], scope.get("query_string", b""))
        item = self.cache.get(key)
        if item is None:
            waiting = self.cache.flight(key)
            if waiting is not None:
                item = await waiting
            else:
                captured = _Capture(send)
                try:
                    await self.app(scope, receive, captured)
                finally:
                    if captured.status == 200 and captured.size <= MAX_IDEMPOTENT_BODY:
                        self.cache.land(key, self.cache.put(key, (captured.content_type or "application/json")
                                                            .encode("latin-1"), b"".join(captured.chunks)))
                    else:
                        self.cache.land(key, None)
                return
        if item is None:  # the request we waited on failed: ask for ourselves
            await self.app(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", item.content_type), (b"content-length", str(len(item.body)).encode()),
                                (b"x-cache", b"hit")]})
        await send({"type": "http.response.body", "body": item.body})

    def _reject(self, reason: str) -> None:
        BUS_REJECTED.labels("gateway", "http", reason).inc()

    async def _idempotent(self, scope: Scope, receive: Receive, send: Send, idem_key: str, body: bytes) -> None:
        if not (1 <= len(idem_key) <= 255) or not idem_key.isprintable():
            raise ProblemError(400, "Invalid Idempotency-Key", "use 1-255 printable characters, e.g. a UUID")
        principal = await authenticate_scope(self.ctx, scope)
        path = scope["path"] + ("?" + scope["query_string"].decode("latin-1") if scope.get("query_string") else "")
        digest = hashlib.sha256(b"POST\n" + path.encode() + b"\n" + body).hexdigest()
        ttl = timedelta(seconds=self.ctx.settings.gateway.idempotency_ttl_s)
        try:
            async with session_scope(self.ctx.db) as session:
                stored = await store.create_idempotency_claim(session, key_id=principal.key_id, idem_key=idem_key,
                                                            method="POST", path=path, request_hash=digest, ttl=ttl,
                                                            in_flight=IDEMPOTENCY_IN_FLIGHT)
        except Exception:
            log.exception("idempotency store failed")
            raise ProblemError(503, "Idempotency store unavailable", "retry shortly",
                               headers={"Retry-After": "1"}) from None
        if stored is not None:
            await _answer_stored(stored, digest, path, scope, receive, send)
            return
        captured = _Capture(send, passthrough=False)  # stored before the client sees it: a fast retry replays it
        ok = False
        try:
            await self.app(scope, receive, captured)
            ok = True
        finally:
            await self._settle(principal.key_id, idem_key, captured if ok else None)
        await captured.flush()

    async def _settle(self, key_id: str, idem_key: str, captured: _Capture | None) -> None:
        try:
            async with session_scope(self.ctx.db) as session:
                if captured is not None and captured.storable():
                    await store.update_idempotency_response(
                        session, key_id=key_id, idem_key=idem_key, status_code=captured.status,
                        content_type=captured.content_type, body=b"".join(captured.chunks))
                else:
                    await store.delete_idempotency_claim(session, key_id=key_id, idem_key=idem_key)
        except Exception:
            log.exception("idempotency record not written")


async def _answer_stored(stored: store.StoredResponse, digest: str, path: str, scope: Scope, receive: Receive,
                         send: Send) -> None:
    if stored.request_hash != digest or stored.path != path:
        BUS_REJECTED.labels("gateway", "http", "idempotency_mismatch").inc()
        raise ProblemError(422, "Idempotency-Key reused",
                           "this key was used for a different request; use a new key for a new request")
    if stored.status_code is None:
        raise ProblemError(409, "Request in progress", "a request with this Idempotency-Key is still running; "
                           "retry shortly", headers={"Retry-After": "1"})
    headers = [(b"content-type", (stored.content_type or "application/json").encode("latin-1")),
               (b"content-length", str(len(stored.body or b"")).encode()), (b"idempotent-replayed", b"true")]
    await send({"type": "http.response.start", "status": stored.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": stored.body or b""})


class _Capture:
    """Passes a response through while keeping a copy for the idempotency record."""

    def __init__(self, send: Send, *, passthrough: bool = True) -> None:
        self.send = send
        self.passthrough = passthrough
        self.held: list[Message] = []
        self.status = 0
        self.content_type: str | None = None
        self.chunks: list[bytes] = []
        self.size = 0

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
            for k, v in message.get("headers", []):
                if k.lower() == b"content-type":
                    self.content_type = v.decode("latin-1")
        elif message["type"] == "http.response.body":
            chunk = message.get("body", b"")
            self.size += len(chunk)
            if self.size <= MAX_IDEMPOTENT_BODY:
                self.chunks.append(chunk)
        if self.passthrough:
            await self.send(message)
        else:
            self.held.append(message)

    async def flush(self) -> None:
        for message in self.held:
            await self.send(message)
        self.held.clear()

    def storable(self) -> bool:
        return 200 <= self.status < 500 and self.status not in (408, 409, 429) and self.size <= MAX_IDEMPOTENT_BODY


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replayer(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
