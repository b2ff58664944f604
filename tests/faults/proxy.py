"""A TCP proxy between one process and NATS, to cut or slow its link (asyncio, in the test process).

``cut()`` closes every connection through it and refuses new ones until ``heal()``: the process
sees its server vanish, as across a partition. ``delay(s)`` holds every chunk, both ways, for
``s`` seconds (order kept): a slow link that stays up. Bounded: at most ``max_buffer`` bytes wait
per direction; a peer that fills it has its connection closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, *, max_buffer: int = 64 * 1024 * 1024) -> None:
        self.target = (target_host, target_port)
        self.max_buffer = max_buffer
        self.port = 0
        self.latency_s = 0.0
        self.is_cut = False
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        await self._drop()

    async def cut(self) -> None:
        self.is_cut = True
        await self._drop()

    def heal(self) -> None:
        self.is_cut, self.latency_s = False, 0.0

    def delay(self, seconds: float) -> None:
        self.latency_s = seconds

    async def _drop(self) -> None:
        for t in list(self._links):
            t.cancel()
        await asyncio.gather(*self._links, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.is_cut:
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._links.add(task)
        try:
            up_r, up_w = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            self._links.discard(task)
            return
        try:
            await asyncio.gather(self._pipe(reader, up_w), self._pipe(up_r, writer))
        except (asyncio.CancelledError, OSError, ConnectionError):
            pass
        finally:
            for w in (writer, up_w):
                w.close()
                with contextlib.suppress(Exception):
                    await w.wait_closed()
            self._links.discard(task)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        waiting = 0

        async def send() -> None:
            nonlocal waiting
            while True:
                due, chunk = await queue.get()
                pause = due - time.monotonic()
                if pause > 0:
                    await asyncio.sleep(pause)
                waiting -= len(chunk)
                if not chunk:
                    dst.close()
                    return
                dst.write(chunk)
                await dst.drain()

        sender = asyncio.create_task(send())
        try:
            while True:
                chunk = await src.read(65536)
                waiting += len(chunk)
                if waiting > self.max_buffer:
                    raise ConnectionError("proxy buffer full")
                queue.put_nowait((time.monotonic() + self.latency_s, chunk))
                if not chunk:
                    await sender
                    return
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender
