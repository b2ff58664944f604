"""Forwarding one request through ``/v1/endpoints/<name>/<path>`` to a ready replica, streaming both ways.

httpx's streaming client does the HTTP: ``Clients``, ``gateway.endpoint_client_shards``
``AsyncClient``s taken in turn, together bounded by ``gateway.endpoint_max_connections``
(httpcore's pool walks all its connections for every request it assigns, so one pool holding
hundreds of connections spends its time on that bookkeeping; small pools keep it cheap). The caller's body is handed over as it arrives (chunked
uploads included) and the replica's answer goes back chunk by chunk as it comes, so Server-Sent
Events and chunked token streams pass through unbuffered. Timeouts: connecting
(``endpoint_connect_timeout_s``), the response headers (``endpoint_request_timeout_s``, then 504)
and the silence between two chunks either way (``endpoint_idle_timeout_s``).

A connect that fails happens before anything of the request was sent, so the request is tried
again on another ready replica (at most ``endpoint_retries`` more), whatever its method. A
request of an idempotent method (RFC 9110 section 9.2.2: GET, HEAD, OPTIONS, PUT, DELETE) without
a body whose connection breaks before the response headers (a replica killed mid-request, a
kept-alive connection it had closed) is tried again too, as nginx's ``proxy_next_upstream error``
does: sending it twice has the effect of sending it once. Any other failure is a 502 and is never
retried, since the replica may have acted on it. No ready replica: 503 with ``Retry-After``.

The caller's ``Authorization`` never reaches the replica (it is the caller's API key); hop-by-hop
headers are dropped both ways; ``X-Forwarded-For``/``-Proto``/``-Host`` and ``X-Request-Id`` are set.
The answer names the replica that gave it in ``X-Xpumesh-Replica``.

Per endpoint (tenant and name): ``xpumesh_endpoint_requests_total{code}``,
``xpumesh_endpoint_errors_total{reason}`` and ``xpumesh_endpoint_request_seconds`` (time to the
replica's response headers). ``_answered`` counts each request in Prometheus and in the instance's
``traffic.Traffic`` window at once (what ``GET /v1/endpoint-stats`` reports), so the two never disagree
on what was counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import httpx
from fastapi import Request
from prometheus_client import Counter, Histogram
from starlette.background import BackgroundTask
from starlette.responses import Response, StreamingResponse

from libs.config import GatewaySettings
from services.gateway.endpoints import Endpoint, EndpointTable
from services.gateway.problems import ProblemError
from services.gateway.traffic import Traffic

log = logging.getLogger(__name__)

REQUESTS = Counter("xpumesh_endpoint_requests_total", "Requests through /v1/endpoints/, by tenant, endpoint and "
                   "answered status code.", ["tenant", "endpoint", "code"])
ERRORS = Counter("xpumesh_endpoint_errors_total", "Requests through /v1/endpoints/ that failed in the gateway, by "
                 "tenant, endpoint and reason (no_ready_replica, connect_failed, timeout, upstream_error, "
                 "stream_broken).", ["tenant", "endpoint", "reason"])
LATENCY = Histogram("xpumesh_endpoint_request_seconds", "Time from a request through /v1/endpoints/ to the "
                    "replica's response headers, by tenant and endpoint.", ["tenant", "endpoint"],
                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                        "trailers", "transfer-encoding", "upgrade", "host", "authorization"})
BODYLESS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
RETRIES = Counter("xpumesh_endpoint_retries_total", "Requests through /v1/endpoints/ tried again on another replica, "
                  "by tenant, endpoint and why (connect_failed; connection_broken: an idempotent request without "
                  "a body whose connection broke before the response headers).", ["tenant", "endpoint", "reason"])


class Clients:
    """``gateway.endpoint_client_shards`` httpx clients to service replicas, taken in turn."""

    def __init__(self, settings: GatewaySettings) -> None:
        timeout = httpx.Timeout(connect=settings.endpoint_connect_timeout_s, read=settings.endpoint_idle_timeout_s,
                                write=settings.endpoint_idle_timeout_s, pool=settings.endpoint_connect_timeout_s)
        shards = settings.endpoint_client_shards
        per = max(1, settings.endpoint_max_connections // shards)
        limits = httpx.Limits(max_connections=per, max_keepalive_connections=per)
        self.clients = [httpx.AsyncClient(timeout=timeout, limits=limits, trust_env=False, follow_redirects=False)
                        for _ in range(shards)]
        self.turn = 0

    def next(self) -> httpx.AsyncClient:
        self.turn = (self.turn + 1) % len(self.clients)
        return self.clients[self.turn]

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()


class _Body:
    """The caller's body, streamed to the replica; ``started`` says whether any of it was taken."""

    def __init__(self, request: Request) -> None:
        self.request = request
        self.started = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        self.started = True
        async for chunk in self.request.stream():
            if chunk:
                yield chunk


def _upstream_headers(request: Request) -> list[tuple[str, str]]:
    out = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP]
    out.append(("x-forwarded-for", request.client.host if request.client else ""))
    out.append(("x-forwarded-proto", request.url.scheme))
    out.append(("x-forwarded-host", request.headers.get("host", "")))
    rid = getattr(request.state, "request_id", None)
    if rid and "x-request-id" not in request.headers:
        out.append(("x-request-id", rid))
    return out


def _answered(traffic: Traffic, labels: tuple[str, str], ep: Endpoint, status: int,
              seconds: float | None = None) -> None:
    """One request got its status (``seconds``: to the replica's headers, when a replica answered)."""
    REQUESTS.labels(*labels, str(status)).inc()
    if seconds is not None:
        LATENCY.labels(*labels).observe(seconds)
    traffic.answered((ep.tenant, ep.name), status, seconds)


async def forward(request: Request, table: EndpointTable, clients: Clients, settings: GatewaySettings,
                  traffic: Traffic, ep: Endpoint, path: str) -> Response:
    labels = (ep.tenant or "", ep.name)
    length = request.headers.get("content-length")
    has_body = "transfer-encoding" in request.headers or (length != "0" if length is not None
                                                          else request.method not in BODYLESS)
    body = _Body(request) if has_body else None
    query = request.url.query
    tried: list[str] = []
    started = time.perf_counter()
    while True:
        replica = table.pick(ep, tried)
        if replica is None:
            reason = "no_ready_replica" if not tried else "connect_failed"
            ERRORS.labels(*labels, reason).inc()
            if not tried:
                _answered(traffic, labels, ep, 503)
                raise ProblemError(503, "No ready replica", f"endpoint {ep.name!r} has no replica ready to take "
                                   "requests; retry shortly",
                                   headers={"Retry-After": str(settings.endpoint_retry_after_s)})
            _answered(traffic, labels, ep, 502)
            raise ProblemError(502, "Replica unreachable", f"no replica of endpoint {ep.name!r} could be reached")
        tried.append(replica.url)
        url = replica.url + "/" + path.lstrip("/") + (f"?{query}" if query else "")
        client = clients.next()
        upstream = client.build_request(request.method, url, headers=_upstream_headers(request), content=body)
        table.begin(replica.url)
        try:
            async with asyncio.timeout(settings.endpoint_request_timeout_s):
                resp = await client.send(upstream, stream=True)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            table.end(replica.url)
            if (body is None or not body.started) and len(tried) <= settings.endpoint_retries:
                log.info("endpoint %s/%s: replica %d unreachable (%s); trying another", ep.tenant, ep.name,
                         replica.replica, type(exc).__name__)
                RETRIES.labels(*labels, "connect_failed").inc()
                continue
            ERRORS.labels(*labels, "connect_failed").inc()
            _answered(traffic, labels, ep, 502)
            raise ProblemError(502, "Replica unreachable", f"no replica of endpoint {ep.name!r} could be "
                               "reached") from None
        except TimeoutError:
            table.end(replica.url)
            ERRORS.labels(*labels, "timeout").inc()
            _answered(traffic, labels, ep, 504)
            raise ProblemError(504, "Replica timed out", f"endpoint {ep.name!r} did not answer within "
                               f"{settings.endpoint_request_timeout_s:g} s") from None
        except httpx.HTTPError as exc:
            table.end(replica.url)
            if (body is None and request.method in IDEMPOTENT and len(tried) <= settings.endpoint_retries
                    and isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError))):
                log.info("endpoint %s/%s: replica %d broke the connection before answering %s (%s); trying "
                         "another", ep.tenant, ep.name, replica.replica, request.method, type(exc).__name__)
                RETRIES.labels(*labels, "connection_broken").inc()
                continue
            ERRORS.labels(*labels, "upstream_error").inc()
            _answered(traffic, labels, ep, 502)
            raise ProblemError(502, "Replica failed", f"the replica of endpoint {ep.name!r} failed the request "
                               f"({type(exc).__name__})") from None
        break
    _answered(traffic, labels, ep, resp.status_code, time.perf_counter() - started)
    headers = {k: v for k, v in resp.headers.items() if k.lower() not in HOP_BY_HOP}
    headers["x-xpumesh-replica"] = str(replica.replica)
    return StreamingResponse(_relay(resp, labels, traffic, (ep.tenant, ep.name)), status_code=resp.status_code,
                             headers=headers, background=BackgroundTask(_close, resp, table, replica.url))


async def _relay(resp: httpx.Response, labels: tuple[str, str], traffic: Traffic,
                 key: tuple[str | None, str]) -> AsyncIterator[bytes]:
    try:
        async for chunk in resp.aiter_raw():
            yield chunk
    except httpx.HTTPError as exc:  # the status line is sent: the stream can only end early
        ERRORS.labels(*labels, "stream_broken").inc()
        traffic.broken(key, resp.status_code)
        log.info("endpoint %s/%s: stream from the replica broke (%s)", *labels, type(exc).__name__)


async def _close(resp: httpx.Response, table: EndpointTable, url: str) -> None:
    try:
        with contextlib.suppress(Exception):
            await resp.aclose()
    finally:
        table.end(url)
