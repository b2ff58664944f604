"""The NATS permission model of deploy/nats/nats.conf, on the real nats-server.

The server runs the committed config with the passwords compose gives it; every client
connects with the credentials from docker-compose.yml, so the config, the compose users and
the agents' host ids (their hostnames) are checked against each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from agent.main import Agent as HostAgent
from agent.main import agent_bus
from libs.bus import subjects
from libs.bus.connection import STREAM_HOSTS, Bus
from libs.config import BusSettings, Settings
from libs.embedded import EmbeddedNats, free_port, wait_for_port
from libs.schemas.hostevents import host_id_for
from tests.conftest import assert_eventually
from tests.unit.test_deploy import NATS_CONF, REPO, compose, container_env, mesh_containers, nats_conf_env


@dataclass
class ComposeAgent:
    name: str
    site: str
    host: str
    url: str


@dataclass
class Conn:
    nc: Client
    errors: list[str] = field(default_factory=list)


def _agents() -> list[ComposeAgent]:
    out = []
    for name, svc in mesh_containers().items():
        if svc["command"][:1] == ["agent"]:
            env = container_env(svc)
            out.append(ComposeAgent(name, env["XPUMESH_SITE"], host_id_for(svc["hostname"]), env["XPUMESH_NATS_URL"]))
    return out


def _violations(conn: Conn, n: int) -> Callable[[], bool]:
    """At least ``n`` errors arrived, and every one is a permissions violation."""
    def check() -> bool:
        return len(conn.errors) >= n and all("permissions violation" in e.lower() for e in conn.errors)
    return check


async def _settled(nc: Client) -> None:
    """Every command this connection sent so far has reached the server.

    nats-py's ``flush()`` writes its PING ahead of commands still queued for the socket, so a
    subscription may still be unknown to the server after it; a message to ourselves cannot
    overtake them (the connection needs permission to use an inbox: services only).
    """
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    await nc.publish(inbox, b"")
    await sub.next_msg(timeout=5)
    await sub.unsubscribe()


def _answered(nc: Client, subject: str) -> Callable[[], Awaitable[Any]]:
    """Whether a request on ``subject`` gets b"ok" (retried by assert_eventually while the responder's
    subscription is still on its way to the server)."""
    async def ask() -> bool:
        try:
            return (await nc.request(subject, b"{}", timeout=1)).data == b"ok"
        except (NoRespondersError, NatsTimeout):
            return False
    return ask


@pytest.fixture
def server(tmp_path: Path) -> Iterator[int]:
    """nats-server on the committed config; only the ports and the store folder are moved for the test."""
    port = free_port()
    log = tmp_path / "nats.log"
    argv = [EmbeddedNats.binary(), "-c", str(NATS_CONF), "-a", "127.0.0.1", "-p", str(port), "-m", str(free_port()),
            "-sd", str(tmp_path / "js"), "-l", str(log)]
    proc = subprocess.Popen(argv, env={**os.environ, **nats_conf_env()}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc, "NATS server", 15.0, log)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _local(url: str, port: int) -> str:
    """A compose URL (host ``nats``) pointed at the test server, credentials kept."""
    parts = urlsplit(url)
    return f"nats://{parts.username}:{parts.password}@127.0.0.1:{port}"


async def _echo_reply(msg: Msg) -> None:
    """Answer with the reply subject the request came with: whose inbox the answer travels to."""
    await msg.respond(msg.reply.encode())


def _agent_inbox(a: ComposeAgent) -> str:
    return subjects.inbox_prefix("host", a.site, a.host)


async def _connect(url: str, inbox_prefix: str = subjects.INBOX_ROOT) -> Conn:
    client = Conn(nc=Client())

    async def on_error(exc: Exception) -> None:
        client.errors.append(str(exc))

    client.nc = await nats.connect(url, error_cb=on_error, allow_reconnect=False, connect_timeout=5,
                                   inbox_prefix=inbox_prefix)
    return client


@pytest.fixture
async def clients(server: int) -> AsyncIterator[dict[str, Conn]]:
    """The service user and every compose agent, connected with their compose credentials."""
    out = {"service": await _connect(_local(container_env(compose()["services"]["registry"])["XPUMESH_NATS_URL"], server),
                                     subjects.inbox_prefix("service", "gateway"))}
    for a in _agents():
        out[a.name] = await _connect(_local(a.url, server), _agent_inbox(a))
    yield out
    for c in out.values():
        await c.nc.close()


async def test_nats_agents_publish_only_under_their_own_host(clients: dict[str, Conn]) -> None:
    agents = _agents()
    assert len(agents) == 3
    got: list[str] = []

    async def collect(msg: Msg) -> None:
        if not msg.subject.startswith("_INBOX."):  # not the barrier's own message
            got.append(msg.subject)

    service = clients["service"].nc
    await service.subscribe(">", cb=collect)
    await _settled(service)
    for a in agents:
        nc = clients[a.name].nc
        own = subjects.host_subject(a.site, a.host, "heartbeat")
        other = next(b for b in agents if b.name != a.name)
        forbidden = [subjects.host_subject(other.site, other.host, "heartbeat"),  # another host
                     subjects.host_subject(a.site, "someone-else", "capability"),  # another host in its city
                     subjects.rpc_subject("registry", "members.list"),  # a service endpoint
                     subjects.event_subject("io.xpumesh.host.down", a.site),  # a mesh event
                     subjects.agent_command_subject(other.site, other.host)]  # commanding another agent
        for subject in [own, *forbidden]:
            await nc.publish(subject, b"{}")
        await nc.flush()
        await assert_eventually(_violations(clients[a.name], len(forbidden)), timeout=5.0,
                                message=f"{a.name}: a permissions violation for each forbidden publish")
        clients[a.name].errors.clear()
    allowed = sorted(subjects.host_subject(a.site, a.host, "heartbeat") for a in agents)
    await assert_eventually(lambda: sorted(got) == allowed, timeout=5.0, message="each agent's own heartbeat arrived")
    # a forbidden publish let through would have reached us before the server's error reached its sender
    await service.flush()
    await asyncio.sleep(0.2)
    assert sorted(got) == allowed


async def test_nats_agents_hear_only_their_own_commands_and_may_answer(clients: dict[str, Conn]) -> None:
    agents = _agents()
    for a in agents:
        nc = clients[a.name].nc

        async def answer(msg: Msg) -> None:
            await msg.respond(b"ok")

        await nc.subscribe(subjects.agent_command_subject(a.site, a.host), cb=answer)
        other = next(b for b in agents if b.name != a.name)
        await nc.subscribe(subjects.agent_command_subject(other.site, other.host))
        await nc.subscribe(subjects.HOST_TELEMETRY_ALL)
        await nc.subscribe(subjects.EVENTS_ALL)
        await nc.flush()
        await assert_eventually(_violations(clients[a.name], 3), timeout=5.0,
                                message=f"{a.name}: a permissions violation for each forbidden subscription")

    service = clients["service"].nc
    for a in agents:
        await assert_eventually(_answered(service, subjects.agent_command_subject(a.site, a.host)), timeout=5.0,
                                message=f"{a.name} answers its own command")
    # another agent's subscription to a command subject was refused, so only the owner answers: one reply
    inbox = service.new_inbox()
    sub = await service.subscribe(inbox)
    await service.publish(subjects.agent_command_subject(agents[0].site, agents[0].host), b"{}", reply=inbox)
    assert (await sub.next_msg(timeout=3)).data == b"ok"
    with pytest.raises(NatsTimeout):
        await sub.next_msg(timeout=0.3)


async def test_nats_agents_hear_no_other_clients_replies(clients: dict[str, Conn]) -> None:
    """Replies travel under each client's own inbox prefix; an agent may subscribe to its own only."""
    agents = _agents()
    service = clients["service"].nc
    a, other = agents[0], agents[1]
    nc = clients[a.name].nc
    heard: list[str] = []

    async def eavesdrop(msg: Msg) -> None:
        heard.append(msg.subject)

    forbidden = ["_INBOX.>",  # every client's replies
                 f"{subjects.inbox_prefix('service', 'gateway')}.>",  # a service's (workload views, logs)
                 f"{_agent_inbox(other)}.>",  # another agent's (its JetStream acknowledgements)
                 f"{subjects.INBOX_ROOT}.host.>"]  # every agent's
    for subject in forbidden:
        await nc.subscribe(subject, cb=eavesdrop)
    await nc.flush()
    await assert_eventually(_violations(clients[a.name], len(forbidden)), timeout=5.0,
                            message=f"{a.name}: a permissions violation for each other client's inbox")

    # a reply to the service and one to the other agent: the refused subscriptions hear neither
    await service.subscribe(subjects.rpc_subject("registry", "probe"), cb=_echo_reply)
    await service.subscribe(subjects.host_subject(a.site, a.host, "probe"), cb=_echo_reply)
    await service.subscribe(subjects.host_subject(other.site, other.host, "probe"), cb=_echo_reply)
    await _settled(service)
    got = await service.request(subjects.rpc_subject("registry", "probe"), b"{}", timeout=5)
    assert got.data.decode().startswith(subjects.inbox_prefix("service", "gateway") + ".")
    got = await clients[other.name].nc.request(subjects.host_subject(other.site, other.host, "probe"), b"{}", timeout=5)
    assert got.data.decode().startswith(_agent_inbox(other) + ".")
    # the agent's own request/reply works, through its private inbox
    got = await nc.request(subjects.host_subject(a.site, a.host, "probe"), b"{}", timeout=5)
    assert got.data.decode().startswith(_agent_inbox(a) + ".")
    await nc.flush()  # anything the server delivered to the agent before this round trip has arrived
    assert heard == [], f"{a.name} heard other clients' replies: {heard}"


async def test_nats_agent_capability_is_acknowledged_by_jetstream(server: int) -> None:
    """A durable publish needs the reply inbox the agent is allowed; the service user creates the streams."""
    service_url = _local(container_env(compose()["services"]["registry"])["XPUMESH_NATS_URL"], server)
    service = Bus(BusSettings(), name="service")
    await service.connect(service_url)
    await service.ensure_streams()
    a = _agents()[0]
    agent = Bus(BusSettings(max_reconnect_attempts=0), name="agent", inbox_prefix=_agent_inbox(a))
    await agent.connect(_local(a.url, server))
    try:
        ack = await agent.js.publish(subjects.host_subject(a.site, a.host, "capability"), b"{}")
        assert ack.seq >= 1
        with pytest.raises((NoRespondersError, NatsTimeout, nats.errors.Error)):
            await agent.js.publish(subjects.host_subject(a.site, "not-me", "capability"), b"{}", timeout=1.0)
    finally:
        await agent.close()
        await service.close()


async def test_nats_rejects_wrong_and_missing_credentials(server: int) -> None:
    a = _agents()[0]
    parts = urlsplit(a.url)
    for url in (f"nats://{parts.username}:wrong@127.0.0.1:{server}", f"nats://127.0.0.1:{server}"):
        with pytest.raises(Exception) as exc:
            await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=3)
        assert "authorization" in str(exc.value).lower() or isinstance(exc.value, nats.errors.NoServersError)


async def test_nats_sim_user_speaks_for_simulated_hosts_and_nothing_else(server: int) -> None:
    sim = mesh_containers()["sim"]
    client = await _connect(_local(container_env(sim)["XPUMESH_NATS_URL"], server), subjects.inbox_prefix("sim"))
    service = await _connect(_local(container_env(compose()["services"]["registry"])["XPUMESH_NATS_URL"], server))
    try:
        got = await service.nc.subscribe(">")
        await _settled(service.nc)

        async def answer(msg: Msg) -> None:
            await msg.respond(b"ok")

        await client.nc.subscribe(subjects.AGENT_COMMAND_ALL, cb=answer)
        await client.nc.subscribe(subjects.SIM_CONTROL, cb=answer)
        await client.nc.flush()
        for subject in (subjects.agent_command_subject("ningbo", "sim-00001"), subjects.SIM_CONTROL):
            await assert_eventually(_answered(service.nc, subject), timeout=5.0, message=f"sim answers {subject}")
        await client.nc.publish(subjects.host_subject("ningbo", "sim-00001", "heartbeat"), b"{}")
        await client.nc.publish(subjects.rpc_subject("registry", "members.list"), b"{}")
        await client.nc.subscribe(subjects.EVENTS_ALL)
        await client.nc.subscribe("_INBOX.>")  # other clients' replies
        await client.nc.flush()
        await assert_eventually(_violations(client, 3), timeout=5.0,
                                message="sim: refused the rpc publish, events and other clients' inboxes")
        probe = subjects.host_subject("ningbo", "sim-00001", "probe")
        await service.nc.subscribe(probe, cb=_echo_reply)
        await _settled(service.nc)
        reply = await client.nc.request(probe, b"{}", timeout=5)  # through its own inbox
        assert reply.data.decode().startswith(subjects.inbox_prefix("sim") + ".")
        seen = []
        with contextlib.suppress(NatsTimeout):
            while True:
                seen.append((await got.next_msg(timeout=0.3)).subject)
        assert "xpumesh.host.ningbo.sim-00001.heartbeat" in seen
        assert subjects.rpc_subject("registry", "members.list") not in seen
    finally:
        await client.nc.close()
        await service.nc.close()


async def test_nats_real_agent_runs_within_its_permissions(server: int, monkeypatch: pytest.MonkeyPatch,
                                                           tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The real agent loop, as compose's hangzhou agent (its hostname, site, credentials and fixture set)."""
    name, svc = next((n, s) for n, s in mesh_containers().items() if s["command"][:1] == ["agent"])
    env = container_env(svc)
    probes = REPO / next(v for v in svc["volumes"] if v.endswith(":/probes:ro")).split(":", 1)[0]
    monkeypatch.setattr(socket, "gethostname", lambda: svc["hostname"])
    host = host_id_for(svc["hostname"])
    service = Bus(BusSettings(), name="service")
    await service.connect(_local(container_env(compose()["services"]["registry"])["XPUMESH_NATS_URL"], server))
    await service.ensure_streams()
    seen: set[str] = set()

    own = subjects.host_subject(env["XPUMESH_SITE"], host, "")

    async def collect(msg: Msg) -> None:
        seen.add(msg.subject.removeprefix(own))

    await service.nc.subscribe("xpumesh.host.>", cb=collect)
    await _settled(service.nc)
    settings = Settings(nats_url=_local(env["XPUMESH_NATS_URL"], server), site=env["XPUMESH_SITE"], data_dir=tmp_path,
                        heartbeat_interval_s=0.3, telemetry_interval_s=0.3)
    bus = agent_bus(settings)  # as run_agent connects: its own host's inbox prefix
    await bus.connect(settings.nats_url or "")
    stop = asyncio.Event()
    caplog.set_level(logging.WARNING, logger="libs.bus.connection")
    task = asyncio.create_task(HostAgent(settings, bus, probe_dir=probes).run(stop))
    try:
        await assert_eventually(lambda: {"heartbeat", "telemetry", "capability"} <= seen, timeout=15.0,
                                message=f"{name}: heartbeat, telemetry and capability on its own subjects")
        info = await service.js.stream_info(STREAM_HOSTS)
        assert info.state.messages >= 1, "the capability report reached JetStream"
        assert not [s for s in seen if "." in s], f"{name} published outside {own}*: {seen}"
        mine = f"nats error on {bus.name}:"  # other tests' leftover connections may log their own errors
        assert not [r for r in caplog.records if r.getMessage().startswith(mine)], "a permissions violation"
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)
        await bus.close()
        await service.close()
