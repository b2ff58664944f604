"""The embedded runtime: real servers, data kept across restarts, clear port errors."""

from __future__ import annotations

import socket
from pathlib import Path

import asyncpg
import nats
import pytest

from libs.embedded import EmbeddedError, EmbeddedNats, EmbeddedPostgres


async def test_embedded_postgres_second_start_reuses_data(tmp_path: Path) -> None:
    pg = EmbeddedPostgres(tmp_path, durable=True).start()
    try:
        conn = await asyncpg.connect(pg.dsn)
        await conn.execute("CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)")
        await conn.close()
    finally:
        pg.stop()
    pg2 = EmbeddedPostgres(tmp_path, pg.port).start()
    try:
        conn = await asyncpg.connect(pg2.dsn)
        assert await conn.fetchval("SELECT v FROM kept") == 42
        await conn.close()
    finally:
        pg2.stop()
    assert pg2.proc is not None and pg2.proc.poll() is not None


async def test_embedded_nats_second_start_reuses_jetstream_data(tmp_path: Path) -> None:
    n = EmbeddedNats(tmp_path).start()
    try:
        nc = await nats.connect(n.url)
        js = nc.jetstream()
        await js.add_stream(name="KEPT", subjects=["kept.>"])
        await js.publish("kept.one", b"hello")
        await nc.close()
    finally:
        n.stop()
    n2 = EmbeddedNats(tmp_path, n.port).start()
    try:
        nc = await nats.connect(n2.url)
        info = await nc.jetstream().stream_info("KEPT")
        assert info.state.messages == 1
        await nc.close()
    finally:
        n2.stop()


def test_embedded_servers_name_a_taken_port(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        for server in (EmbeddedNats(tmp_path, port), EmbeddedPostgres(tmp_path, port)):
            with pytest.raises(EmbeddedError, match=f"port {port}"):
                server.start()
