"""The simulator's HTTP responder: it answers for every simulated service replica of its fleet.

Simulated hosts run no processes, so a service placed on one reports as its endpoint
``<responder>/<host>/<workload>/<replica>/<attempt>`` (``agent.executor``), and this one
server answers every such URL while that replica runs: JSON naming the host, workload,
replica and attempt, the method, the path below the replica's base and the body's length;
below ``…/stream`` a few Server-Sent Events. A URL of a replica that does not run (stopped,
replaced, on a host that is down) is a 404, like a process that is gone. So requests
through ``/v1/endpoints/`` can be routed and balanced over thousands of replicas without
thousands of processes. Listens on ``sim.responder_host``:``sim.responder_port``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from starlette.types import Receive, Scope, Send

Live = Callable[[str, str, int, int], bool]


class Responder:
    """An ASGI app; ``live(host, workload, replica, attempt)`` says whether that replica runs now."""

    def __init__(self, live: Live, *, stream_gap_s: float = 0.02) -> None:
        self.live = live
        self.stream_gap_s = stream_gap_s
        self.requests = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        size = 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            size += len(msg.get("body", b""))
            if not msg.get("more_body"):
                break
        parts = scope["path"].lstrip("/").split("/", 4)
        if len(parts) < 4 or not parts[2].isdigit() or not parts[3].isdigit() \
                or not self.live(parts[0], parts[1], int(parts[2]), int(parts[3])):
            await _send(send, 404, b'{"detail": "no such simulated replica"}', b"application/json")
            return
        self.requests += 1
        rest = "/" + (parts[4] if len(parts) == 5 else "")
        if rest == "/stream":
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream")]})
            for i in range(3):
                await send({"type": "http.response.body", "body": f"data: token {i}\n\n".encode(), "more_body": True})
                await asyncio.sleep(self.stream_gap_s)
            await send({"type": "http.response.body", "body": b""})
            return
        answer: dict[str, Any] = {"simulated": True, "host": parts[0], "workload": parts[1], "replica": parts[2],
                                  "attempt": parts[3], "method": scope["method"], "path": rest,
                                  "query": scope.get("query_string", b"").decode("latin-1"), "body_bytes": size}
        await _send(send, 200, json.dumps(answer).encode(), b"application/json")


async def _send(send: Send, status: int, body: bytes, content_type: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
