"""The webhook SSRF guard at connect time: a name re-pointed after the check is still refused."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpcore
import httpx
import pytest

from services.gateway.webhooks.ssrf import GuardedBackend, GuardedTransport, UnsafeTarget, resolve_public


@pytest.fixture
async def loopback_server() -> AsyncIterator[int]:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


async def test_ssrf_name_rebound_to_loopback_is_refused_at_connect(loopback_server: int) -> None:
    answers = {"hooks.example.com": ["127.0.0.1"]}  # what the name resolves to when the connection opens

    async def resolve(host: str, port: int) -> list[str]:
        return answers[host]

    transport = GuardedTransport([], limits=httpx.Limits(max_connections=2), resolve=resolve)
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(UnsafeTarget, match="loopback"):
            await client.post(f"http://hooks.example.com:{loopback_server}/hook", content=b"{}")


async def test_ssrf_allowed_pattern_connects_and_public_name_uses_the_checked_address(loopback_server: int) -> None:
    looked_up: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        looked_up.append(host)
        return ["127.0.0.1"]

    transport = GuardedTransport(["127.0.0.1"], limits=httpx.Limits(max_connections=2), resolve=resolve)
    async with httpx.AsyncClient(transport=transport) as client:
        r = await client.post(f"http://127.0.0.1:{loopback_server}/hook", content=b"{}")
    assert r.status_code == 204 and looked_up == []  # an allowed host is neither resolved nor checked


class _Recording(httpcore.AsyncNetworkBackend):
    """Records where connections go; refuses the addresses listed as down."""

    def __init__(self, down: set[str]) -> None:
        self.down: set[str] = down
        self.tried: list[str] = []
        self.inner = httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                          socket_options: Any = None) -> httpcore.AsyncNetworkStream:
        self.tried.append(host)
        if host in self.down:
            raise httpcore.ConnectError(f"{host} unreachable")
        return await self.inner.connect_tcp("127.0.0.1", port, timeout=timeout)

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


async def test_ssrf_connects_to_the_checked_addresses_in_turn_never_looking_up_again(loopback_server: int) -> None:
    lookups: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        lookups.append(host)
        return ["93.184.215.14", "151.101.1.69"]  # both public; the first one is down

    inner = _Recording(down={"93.184.215.14"})
    backend = GuardedBackend([], resolve=resolve, inner=inner)
    stream = await backend.connect_tcp("hooks.example.com", loopback_server, timeout=5)
    await stream.aclose()
    assert inner.tried == ["93.184.215.14", "151.101.1.69"] and lookups == ["hooks.example.com"]


@pytest.mark.parametrize("addresses", [["10.0.0.7"], ["203.0.113.5", "169.254.169.254"], ["::1"], ["fd00::1"]])
async def test_ssrf_any_private_or_special_address_refuses_the_name(addresses: list[str]) -> None:
    async def resolve(host: str, port: int) -> list[str]:
        return addresses

    with pytest.raises(UnsafeTarget):
        await resolve_public("hooks.example.com", 443, resolve=resolve)


async def test_ssrf_public_addresses_pass() -> None:
    async def resolve(host: str, port: int) -> list[str]:
        return ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"]

    assert [str(a) for a in await resolve_public("example.com", 443, resolve=resolve)] == [
        "93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"]


@pytest.mark.parametrize("address", [
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "2002:a00:1::",  # 6to4 of 10.0.0.1
    "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254 (cloud metadata)
    "2001:0:4136:e378:8000:63bf:f5ff:fffe",  # Teredo, client 10.0.0.1
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "64:ff9b::c0a8:101",  # NAT64 of 192.168.1.1
    "64:ff9b:1::a00:1",  # local-use NAT64
    "::ffff:169.254.169.254",  # IPv4-mapped
    "::10.0.0.1",  # IPv4-compatible
    "::ffff:0:a00:1",  # IPv4-translated
])
async def test_ssrf_ipv6_carrying_a_private_ipv4_is_refused(address: str) -> None:
    async def resolve(host: str, port: int) -> list[str]:
        return [address]

    with pytest.raises(UnsafeTarget):
        await resolve_public("hooks.example.com", 443, resolve=resolve)
    with pytest.raises(UnsafeTarget):
        await resolve_public(address, 443)  # a literal address in the URL


def test_ssrf_embedded_ipv4_is_found_in_every_transition_form() -> None:
    from ipaddress import IPv4Address, IPv6Address

    from services.gateway.webhooks.ssrf import embedded_ipv4

    assert embedded_ipv4(IPv6Address("2002:7f00:1::1")) == [IPv4Address("127.0.0.1")]
    assert IPv4Address("10.0.0.1") in embedded_ipv4(IPv6Address("2001:0:4136:e378:8000:63bf:f5ff:fffe"))
    assert embedded_ipv4(IPv6Address("64:ff9b::7f00:1")) == [IPv4Address("127.0.0.1")]
    assert embedded_ipv4(IPv6Address("::ffff:10.1.2.3")) == [IPv4Address("10.1.2.3")]
    assert embedded_ipv4(IPv6Address("2606:2800:21f:cb07:6820:80da:af6b:8b2c")) == []


async def test_ssrf_6to4_of_a_public_ipv4_passes() -> None:
    async def resolve(host: str, port: int) -> list[str]:
        return ["2002:808:808::1"]

    assert len(await resolve_public("hooks.example.com", 443, resolve=resolve)) == 1
