"""Shared helpers for the gateway's API tests (no tests here): start the gateway, make keys,
run a webhook receiver on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import uvicorn

from libs.config import Settings
from tests.conftest import TEST_ADMIN_KEY, assert_eventually

ADMIN = {"Authorization": f"Bearer {TEST_ADMIN_KEY}"}
T = TypeVar("T")


eventually = assert_eventually  # the name these tests use

# A gateway process that delivers webhooks within a second or two (for tests that kill and restart it).
FAST_WEBHOOK_ENV = {
    "XPUMESH_GATEWAY__WEBHOOK_ALLOW_HOSTS": '["127.0.0.1"]',
    "XPUMESH_GATEWAY__WEBHOOK_ACK_WAIT_S": "2",
    "XPUMESH_GATEWAY__WEBHOOK_TIMEOUT_S": "2",
    "XPUMESH_GATEWAY__WEBHOOK_POLL_S": "0.1",
    "XPUMESH_GATEWAY__WEBHOOK_RETRY_SCHEDULE_S": "[0.2, 0.5, 1, 1, 1]",
    "XPUMESH_GATEWAY__SYNC_INTERVAL_S": "0.5",
}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def gateway_settings(settings: Settings, **gateway: Any) -> Settings:
    """The test settings with loopback webhook targets allowed and fast retries, plus overrides."""
    base: dict[str, Any] = {"webhook_allow_hosts": ["127.0.0.1", "localhost"], "webhook_timeout_s": 2.0,
                            "webhook_retry_schedule_s": [0.2, 0.4], "webhook_poll_s": 0.1, "webhook_ack_wait_s": 2.0,
                            "sync_interval_s": 0.5, "sse_heartbeat_s": 0.5}
    base.update(gateway)
    return settings.model_copy(update={"gateway": settings.gateway.model_copy(update=base)})


def base_url(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.gateway_port}"


async def start_gateway(running_service: Callable[..., Any], settings: Settings) -> str:
    from services.gateway.api import app as gateway_app

    await running_service(gateway_app, settings)
    return base_url(settings)


async def make_key(client: httpx.AsyncClient, tenant: str, role: str) -> str:
    r = await client.post("/v1/keys", json={"tenant": tenant, "role": role, "name": f"{tenant}-{role}"},
                          headers=ADMIN)
    assert r.status_code == 201, r.text
    key: str = r.json()["key"]
    return key


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """A webhook receiver on loopback; ``answer`` picks each response's status code."""

    url: str = ""
    received: list[Received] = field(default_factory=list)
    answer: Callable[[Received], int] = lambda r: 204
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return  # the sender died mid-request (e.g. SIGKILL): nothing was delivered
            chunks.append(msg.get("body", b""))
            if not msg.get("more_body"):
                break
        rec = Received({k.decode(): v.decode() for k, v in scope["headers"]}, b"".join(chunks), time.monotonic())
        self.received.append(rec)
        self.arrived.set()
        await send({"type": "http.response.start", "status": self.answer(rec), "headers": []})
        await send({"type": "http.response.body", "body": b""})

    def ids(self) -> list[str]:
        return [r.headers["webhook-id"] for r in self.received]


class _QuietServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def webhook_receiver(path: str = "/hook") -> AsyncIterator[Receiver]:
    rec = Receiver()
    server = _QuietServer(uvicorn.Config(rec, host="127.0.0.1", port=0, log_level="error", lifespan="off"))
    task = asyncio.create_task(server.serve())
    await assert_eventually(lambda: server.started, timeout=10, interval=0.01, message="receiver started")
    port = server.servers[0].sockets[0].getsockname()[1]
    rec.url = f"http://127.0.0.1:{port}{path}"
    try:
        yield rec
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, timeout=5)
