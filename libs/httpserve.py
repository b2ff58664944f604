"""An ASGI app served by uvicorn as one of a service's tasks (declared with ``ServiceApp.http``).

uvicorn's own signal handling is off (the service's lifecycle owns SIGTERM/SIGINT); at stop
the server stops accepting, in-flight requests get ``drain_timeout_s`` to finish, then it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn

from libs.aio import wait_event


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HttpServer:
    """One running uvicorn server of one service instance."""

    def __init__(self, asgi: Any, *, host: str, port: int, drain_timeout_s: float,
                 tls: tuple[Path, Path] | None = None) -> None:
        """``tls``: (certificate chain, private key) PEM files to serve HTTPS with."""
        ssl: dict[str, Any] = {"ssl_certfile": str(tls[0]), "ssl_keyfile": str(tls[1])} if tls else {}
        config = uvicorn.Config(asgi, host=host, port=port, log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=max(1, int(drain_timeout_s)), **ssl)
        self.server = _Server(config)
        self.done = asyncio.Event()

    async def run(self) -> None:
        try:
            await self.server.serve()
        except asyncio.CancelledError:
            self.server.should_exit = True
            raise
        finally:
            self.done.set()

    async def stop(self, timeout_s: float) -> None:
        """Stop accepting, let in-flight requests finish (bounded)."""
        self.server.should_exit = True
        await wait_event(self.done, timeout_s)
