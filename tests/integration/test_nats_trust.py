"""The NATS trust model of docs/deploy.md, on a real nats-server started from ``xpumesh nats init``'s files.

Each role's credentials may do what the table says and nothing else: a service cannot speak for a
host, listen to another service's endpoints or delete a stream; the simulator cannot publish
events; no one hears replies meant for others. The table in docs/deploy.md is the one rendered
from ``libs.bus.permissions``.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client

from libs.bus import subjects
from libs.bus.permissions import table_markdown
from libs.embedded import EmbeddedNats, free_port, stop_process, wait_for_port
from tests.conftest import REPO, assert_eventually
from xpumesh.credentials import role_permissions

DEPLOY_DOC = REPO / "docs" / "deploy.md"
SENTINEL = "zz.no-one-may-publish-here"


@pytest.fixture
def trust_dir(tmp_path: Path) -> Path:
    out = tmp_path / "trust"
    res = subprocess.run([sys.executable, "-m", "xpumesh", "nats", "init", "--dir", str(out),
                          "--resolver-dir", str(tmp_path / "accounts")], capture_output=True, text=True, timeout=60,
                         cwd=REPO)
    assert res.returncode == 0, res.stderr
    return out


@pytest.fixture
def server_url(trust_dir: Path, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    conf = trust_dir / "nats-server.conf"
    conf.write_text(f'listen: "127.0.0.1:{port}"\njetstream {{ store_dir: "{tmp_path / "js"}" }}\n'
                    "include nats-auth.conf\n")
    log = tmp_path / "nats.log"
    proc = subprocess.Popen([EmbeddedNats.binary(), "-c", str(conf), "-l", str(log)])
    try:
        wait_for_port(port, proc, "NATS server", 20, log)
        yield f"nats://127.0.0.1:{port}"
    finally:
        import signal
        stop_process(proc, signal.SIGTERM, 3)


class Probe:
    """One role's connection, collecting the permission violations the server reports."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.nc: Client | None = None

    async def connect(self, url: str, creds: Path, inbox: str) -> Probe:
        async def on_error(exc: Exception) -> None:
            self.errors.append(str(exc))
        self.nc = await nats.connect(url, user_credentials=str(creds), inbox_prefix=inbox, error_cb=on_error,
                                     allow_reconnect=False, max_reconnect_attempts=0)
        return self

    async def refused(self, *, publish: tuple[str, ...] = (), subscribe: tuple[str, ...] = ()) -> None:
        """Each of these is refused by the server, one violation each."""
        assert self.nc is not None
        before = len(self.errors)
        for s in publish:
            await self.nc.publish(s, b"{}")
        for s in subscribe:
            await self.nc.subscribe(s)
        want = before + len(publish) + len(subscribe)
        await assert_eventually(lambda: len(self.errors) >= want, timeout=5, message=f"refusals of {publish} {subscribe}")
        assert all("permissions violation" in e.lower() for e in self.errors[before:]), self.errors[before:]

    async def allowed(self, *, publish: tuple[str, ...] = (), subscribe: tuple[str, ...] = ()) -> None:
        """None of these is refused: the server answers in order, so a refused sentinel sent after them
        must be the only violation that comes back."""
        assert self.nc is not None
        before = len(self.errors)
        for s in subscribe:
            await self.nc.subscribe(s)
        for s in publish:
            await self.nc.publish(s, b"{}")
        await self.nc.publish(SENTINEL, b"")
        await assert_eventually(lambda: len(self.errors) > before, timeout=5, message="the sentinel's refusal")
        assert len(self.errors) == before + 1 and SENTINEL in self.errors[-1], self.errors[before:]

    async def close(self) -> None:
        if self.nc is not None:
            await self.nc.close()


async def test_nats_trust_refuses_clients_without_credentials(server_url: str) -> None:
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(server_url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=3)


async def test_nats_trust_services_may_do_their_own_work_only(server_url: str, trust_dir: Path) -> None:
    for name in ("registry", "inventory", "scheduler", "metrics", "gateway"):
        p = await Probe().connect(server_url, trust_dir / "creds" / f"{name}.creds", subjects.inbox_prefix("service", name))
        try:
            await p.allowed(subscribe=(subjects.rpc_subject(name, "x"), subjects.CTL_HEALTH),
                            publish=(subjects.rpc_subject("registry", "members.list"), "xpumesh.events.host.up.hz"))
            other = "scheduler" if name != "scheduler" else "registry"
            await p.refused(publish=(subjects.host_subject("hangzhou", "hz-1", "heartbeat"),
                                     "$JS.API.STREAM.DELETE.XPUMESH_EVENTS",
                                     subjects.service_heartbeat_subject(other, "x")),
                            subscribe=(subjects.rpc_subject(other, "x"), "_INBOX.>",
                                       subjects.inbox_prefix("service", other) + ".>"))
            if name == "scheduler":
                await p.allowed(publish=(subjects.agent_command_subject("hangzhou", "hz-1"),))
            else:
                await p.refused(publish=(subjects.agent_command_subject("hangzhou", "hz-1"),))
        finally:
            await p.close()


async def test_nats_trust_simulator_speaks_for_hosts_and_nothing_else(server_url: str, trust_dir: Path) -> None:
    p = await Probe().connect(server_url, trust_dir / "creds" / "sim.creds", subjects.inbox_prefix("sim"))
    try:
        await p.allowed(publish=(subjects.host_subject("hangzhou", "hz-1", "heartbeat"),),
                        subscribe=(subjects.agent_command_subject("hangzhou", "hz-1"), subjects.SIM_CONTROL))
        await p.refused(publish=("xpumesh.events.host.up.hz", subjects.rpc_subject("scheduler", "workloads.submit"),
                                 "$JS.API.STREAM.CREATE.X"),
                        subscribe=("_INBOX.>", subjects.rpc_subject("scheduler", ">")))
    finally:
        await p.close()


def test_deploy_doc_shows_the_permissions_the_credentials_carry() -> None:
    assert table_markdown(role_permissions()) in DEPLOY_DOC.read_text(), \
        "docs/deploy.md's permission table is stale: paste table_markdown(role_permissions()) there"
