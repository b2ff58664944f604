"""Service replicas on a host: the free port each one gets, and the probe that says whether it is ready.

``PortBook`` hands each service replica a port of ``agent.service_address`` that the kernel
reports free (a bind to port 0) and that no live replica of this agent holds; the port is the
replica's until it ends. Another process may still take it between the check and the replica's
bind: the replica then fails to start and is restarted per its restart policy with a new port.

``Readiness`` probes one replica: an HTTP GET of its readiness path every
``agent.readiness_interval_s`` with ``agent.readiness_timeout_s``; 2xx/3xx is ready, anything
else (refused, timed out, 4xx/5xx) not ready. Each change calls ``changed`` so the state report
goes out at once and the scheduler takes the replica into or out of rotation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable

import httpx

log = logging.getLogger(__name__)
MAX_TRIES = 32


class PortBook:
    """Free ports of one address for this agent's service replicas."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.held: set[int] = set()

    def allocate(self) -> int:
        family = socket.AF_INET6 if ":" in self.address else socket.AF_INET
        for _ in range(MAX_TRIES):
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.bind((self.address, 0))
                port = int(sock.getsockname()[1])
            if port not in self.held:
                self.held.add(port)
                return port
        raise OSError(f"no free port on {self.address} after {MAX_TRIES} tries")

    def claim(self, port: int) -> None:
        """A port an adopted replica still holds (after an agent restart)."""
        self.held.add(port)

    def release(self, port: int | None) -> None:
        if port is not None:
            self.held.discard(port)


def base_url(address: str, port: int) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"http://{host}:{port}"


async def probe_once(client: httpx.AsyncClient, url: str, timeout_s: float) -> bool:
    """One readiness probe: True for a 2xx or 3xx answer within the timeout."""
    try:
        r = await client.get(url, timeout=timeout_s)
    except (httpx.HTTPError, OSError):
        return False
    return 200 <= r.status_code < 400


class Readiness:
    """Probes one replica until cancelled, keeping ``ready`` and calling ``changed`` on every flip."""

    def __init__(self, client: httpx.AsyncClient, url: str, *, interval_s: float, timeout_s: float,
                 changed: Callable[[bool], None]) -> None:
        self.client, self.url, self.interval_s, self.timeout_s = client, url, interval_s, timeout_s
        self.changed = changed
        self.ready = False
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"readiness:{self.url}")

    async def _run(self) -> None:
        while True:
            ok = await probe_once(self.client, self.url, self.timeout_s)
            if ok != self.ready:
                self.ready = ok
                log.info("%s %s", self.url, "ready" if ok else "not ready")
                self.changed(ok)
            await asyncio.sleep(self.interval_s)

    async def stop(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        self.task = None
