"""Host enrollment on a real nats-server in the embedded default's secure mode (TLS, operator JWTs).

An admin makes a single-use token for one host; ``xpumesh agent enroll`` exchanges it (with the
host's own public key) for credentials that may speak only for that host; revoking them closes
the host's connection at once. Nothing connects without credentials, or without TLS.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import nats
import pytest
from nats.aio.client import Client
from pydantic import SecretStr

from agent.facts import local_hostname
from libs.bus import subjects
from libs.bus.jwt import NKey, creds_file, write_secret
from libs.config import Settings
from libs.embedded import EmbeddedNats, free_port
from libs.schemas.hostevents import host_id_for
from libs.tls import client_context
from services.gateway.api import app as gateway_app
from tests.conftest import REPO, TEST_ADMIN_KEY, assert_eventually, service_env
from tests.integration.test_api_kit import ADMIN, bearer, make_key
from xpumesh.credentials import EmbeddedSecrets, ensure_embedded_secrets

SITE = "hangzhou"
HOST = host_id_for(local_hostname())  # what `xpumesh agent enroll` on this machine says it is


@dataclass
class SecureMesh:
    secrets: EmbeddedSecrets
    nats: EmbeddedNats
    settings: Settings
    url: str  # the gateway


@pytest.fixture
async def secure(tmp_path: Path, database_url: str, running_service: Any) -> AsyncIterator[SecureMesh]:
    data = tmp_path / "data"
    secrets = ensure_embedded_secrets(data, ("gateway", "registry", "inventory"))
    server = EmbeddedNats(data, trust=secrets.trust, tls=secrets.tls).start()
    settings = Settings(nats_url=server.url, database_url=SecretStr(database_url), data_dir=data,
                        bootstrap_admin_key=SecretStr(TEST_ADMIN_KEY), gateway_port=free_port(),
                        metrics_port=free_port(),
                        bus={"creds_file": secrets.creds["gateway"], "tls_ca_file": secrets.tls.ca,
                             "request_timeout_s": 3.0, "drain_timeout_s": 1.0},
                        enroll={"trust_dir": secrets.trust.root},
                        gateway={"login_burst": 5, "login_rate_per_s": 0.5})
    gateway = await running_service(gateway_app, settings)
    try:
        yield SecureMesh(secrets, server, settings, f"http://127.0.0.1:{settings.gateway_port}")
    finally:
        await gateway.stop()
        server.stop()


async def _token(c: httpx.AsyncClient, host: str = HOST, **body: Any) -> dict[str, Any]:
    r = await c.post("/v1/enrollment-tokens", json={"site": SITE, "host": host, **body}, headers=ADMIN)
    assert r.status_code == 201, r.text
    out: dict[str, Any] = r.json()
    return out


async def _redeem(c: httpx.AsyncClient, token: str, host: str = HOST) -> tuple[httpx.Response, NKey]:
    key = NKey.create("user")
    return await c.post("/v1/enroll", json={"token": token, "public_key": key.public_key, "host": host}), key


async def _connect(mesh: SecureMesh, creds: Path | None, errors: list[str] | None = None, **kw: Any) -> Client:
    async def on_error(exc: Exception) -> None:
        if errors is not None:
            errors.append(str(exc))
    extra: dict[str, Any] = {"user_credentials": str(creds)} if creds else {}
    return await nats.connect(mesh.nats.url, tls=client_context(mesh.secrets.tls.ca), connect_timeout=3,
                              allow_reconnect=False, max_reconnect_attempts=0, error_cb=on_error, **extra, **kw)


def _violations(errors: list[str], n: int) -> bool:
    return len(errors) >= n and all("permissions violation" in e.lower() for e in errors)


async def test_secure_nats_refuses_clients_without_credentials_or_tls(secure: SecureMesh) -> None:
    with pytest.raises(Exception, match="Authorization Violation"):
        await _connect(secure, None)
    plain = secure.nats.url.replace("tls://", "nats://")
    with pytest.raises(Exception):  # noqa: B017 - the server requires TLS: a plain client gets no session at all
        await nats.connect(plain, user_credentials=str(secure.secrets.creds["gateway"]), connect_timeout=3,
                           allow_reconnect=False, max_reconnect_attempts=0)
    nc = await _connect(secure, secure.secrets.creds["gateway"])
    await nc.close()
    for path in [*secure.secrets.creds.values(), *(secure.secrets.trust.root.glob("*")), secure.secrets.tls.key]:
        assert path.stat().st_mode & 0o777 == 0o600, path
    for folder in (secure.secrets.root, secure.secrets.trust.root, secure.secrets.root / "creds"):
        assert folder.stat().st_mode & 0o777 == 0o700, folder


async def test_enroll_cli_gets_credentials_that_speak_only_for_this_host(secure: SecureMesh, tmp_path: Path) -> None:
    async with httpx.AsyncClient(base_url=secure.url, timeout=10) as c:
        token = await _token(c)
        out = tmp_path / "agent"

        def run_enroll() -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "xpumesh", "agent", "enroll", "--gateway", secure.url,
                                   "--token", token["token"], "--dir", str(out)], capture_output=True, text=True,
                                  timeout=60, cwd=REPO, env=service_env(secure.settings))
        first = await asyncio.to_thread(run_enroll)
        assert first.returncode == 0, first.stderr
        assert token["token"] not in first.stdout + first.stderr
        creds = out / "agent.creds"
        assert creds.stat().st_mode & 0o777 == 0o600
        env = dict(line.split("=", 1) for line in (out / "agent.env").read_text().split())
        assert env["XPUMESH_SITE"] == SITE and env["XPUMESH_NATS_URL"] == secure.nats.url
        assert Path(env["XPUMESH_BUS__CREDS_FILE"]) == creds.resolve()
        assert Path(env["XPUMESH_BUS__TLS_CA_FILE"]).read_bytes() == secure.secrets.tls.ca.read_bytes()  # noqa: ASYNC240

        second = await asyncio.to_thread(run_enroll)  # single use
        assert second.returncode == 1 and "401" in second.stderr, second.stderr

        errors: list[str] = []
        nc = await _connect(secure, creds, errors, inbox_prefix=subjects.inbox_prefix("host", SITE, HOST))
        try:
            own = subjects.host_subject(SITE, HOST, "heartbeat")
            sub = await nc.subscribe(subjects.agent_command_subject(SITE, HOST))
            await nc.publish(own, b"{}")
            await nc.flush()
            await nc.publish(subjects.host_subject(SITE, "someone-else", "heartbeat"), b"{}")
            await nc.subscribe(subjects.agent_command_subject(SITE, "someone-else"))
            await nc.subscribe("_INBOX.>")
            await assert_eventually(lambda: _violations(errors, 3), timeout=5, message="three refusals")
            assert sub.subject and not nc.is_closed
        finally:
            await nc.close()

        audit = (await c.get("/v1/audit", headers=ADMIN)).json()["items"]
        actions = [(e["action"], e["target"]) for e in audit]
        assert ("enrollment_token.create", f"{SITE}/{HOST}") in actions
        assert ("host.enroll", f"{SITE}/{HOST}") in actions
        assert token["token"] not in str(audit)


async def test_enroll_refuses_expired_tokens_and_tokens_for_another_host(secure: SecureMesh,
                                                                         database_url: str) -> None:
    async with httpx.AsyncClient(base_url=secure.url, timeout=10) as c:
        other = await _token(c, host="hz-other-01")
        wrong, _ = await _redeem(c, other["token"], host=HOST)
        assert wrong.status_code == 401
        assert wrong.headers["content-type"].startswith("application/problem+json")
        right, _ = await _redeem(c, other["token"], host="hz-other-01")  # the wrong-host attempt spent nothing
        assert right.status_code == 201, right.text
        assert right.json()["host"] == "hz-other-01"

        stale = await _token(c)
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute("UPDATE gateway.enrollment_tokens SET expires_at = now() - interval '1 second' "
                               "WHERE id = $1", stale["id"])
        finally:
            await conn.close()
        expired, _ = await _redeem(c, stale["token"])
        assert expired.status_code == 401

        long = await c.post("/v1/enrollment-tokens", json={"site": SITE, "host": HOST, "ttl_s": 2 * 86400},
                            headers=ADMIN)
        assert long.status_code == 422, long.text  # beyond enroll.max_token_ttl_s (a day)
        assert long.json()["errors"][0]["loc"] == "body.ttl_s"


async def test_revoked_host_credential_is_disconnected_and_refused(secure: SecureMesh, tmp_path: Path) -> None:
    async with httpx.AsyncClient(base_url=secure.url, timeout=10) as c:
        answer, key = await _redeem(c, (await _token(c))["token"])
        assert answer.status_code == 201, answer.text
        creds = tmp_path / "a.creds"
        write_secret(creds, creds_file(answer.json()["jwt"], key.seed))
        closed = asyncio.Event()

        async def on_closed() -> None:
            closed.set()
        nc = await _connect(secure, creds, closed_cb=on_closed)
        assert nc.is_connected
        listed = (await c.get("/v1/host-credentials", params={"host": HOST}, headers=ADMIN)).json()["items"]
        assert [x["public_key"] for x in listed] == [key.public_key]

        r = await c.delete(f"/v1/host-credentials/{answer.json()['credential_id']}", headers=ADMIN)
        assert r.status_code == 200, r.text
        assert r.json()["revoked_at"]
        await asyncio.wait_for(closed.wait(), timeout=5)
        with pytest.raises(Exception, match="Authorization Violation"):
            await _connect(secure, creds)

        assert (await c.get("/v1/host-credentials", params={"host": HOST}, headers=ADMIN)).json()["items"] == []
        audit = (await c.get("/v1/audit", params={"action": "host_credential.revoke"}, headers=ADMIN)).json()
        assert [e["target"] for e in audit["items"]] == [answer.json()["credential_id"]]
        assert audit["items"][0]["changes"] == {"site": SITE, "host": HOST}


async def test_enrollment_routes_refuse_non_admins_and_missing_keys(secure: SecureMesh) -> None:
    async with httpx.AsyncClient(base_url=secure.url, timeout=10) as c:
        user = bearer(await make_key(c, "acme", "user"))
        operator = bearer(await make_key(c, "acme", "operator"))
        for headers, status in ((user, 403), (operator, 403), ({}, 401)):
            r = await c.post("/v1/enrollment-tokens", json={"site": SITE, "host": HOST}, headers=headers)
            assert r.status_code == status, r.text
            assert (await c.get("/v1/host-credentials", headers=headers)).status_code == status
            assert (await c.delete("/v1/host-credentials/hcr_000000000000", headers=headers)).status_code == status


async def test_enroll_guesses_are_rate_limited_per_address(secure: SecureMesh) -> None:
    async with httpx.AsyncClient(base_url=secure.url, timeout=10) as c:
        statuses = [(await _redeem(c, "xpe_" + "x" * 40))[0].status_code for _ in range(8)]
        assert statuses[:5] == [401] * 5  # login_burst 5
        assert statuses[5:] == [429] * 3
        limited, _ = await _redeem(c, "xpe_" + "y" * 40)
        assert int(limited.headers["Retry-After"]) >= 1


async def test_enrollment_is_off_without_a_trust_directory(settings: Settings, running_service: Any) -> None:
    from tests.integration.test_api_kit import start_gateway

    url = await start_gateway(running_service, settings)
    async with httpx.AsyncClient(base_url=url, timeout=10) as c:
        r = await c.post("/v1/enrollment-tokens", json={"site": SITE, "host": HOST}, headers=ADMIN)
        assert r.status_code == 404 and "XPUMESH_ENROLL__TRUST_DIR" in r.json()["detail"]
        r = await c.post("/v1/enroll", json={"token": "xpe_" + "x" * 40, "public_key": NKey.create("user").public_key,
                                             "host": HOST})
        assert r.status_code == 404


async def test_enrolled_agent_joins_the_secure_mesh_and_is_dropped_when_revoked(
        secure: SecureMesh, running_service: Any, tmp_path: Path) -> None:
    from services.inventory.api import app as inventory_app
    from services.registry.api import app as registry_app

    for name, app in (("registry", registry_app), ("inventory", inventory_app)):
        await running_service(app, secure.settings.model_copy(update={"bus": secure.settings.bus.model_copy(
            update={"creds_file": secure.secrets.creds[name]})}))
    async with httpx.AsyncClient(base_url=secure.url, timeout=10) as c:
        out = tmp_path / "agent"
        token = (await _token(c))["token"]
        res = await asyncio.to_thread(subprocess.run, [
            sys.executable, "-m", "xpumesh", "agent", "enroll", "--gateway", secure.url, "--token", token,
            "--dir", str(out)], capture_output=True, text=True, timeout=60, cwd=REPO, env=service_env(secure.settings))
        assert res.returncode == 0, res.stderr
        agent_env = dict(line.split("=", 1) for line in (out / "agent.env").read_text().split())
        env = {k: v for k, v in service_env(secure.settings).items() if not k.startswith("XPUMESH_BUS__")}
        env.update(agent_env)
        log = tmp_path / "agent.log"
        proc = subprocess.Popen([sys.executable, "-m", "xpumesh", "agent", "run", "--probe-dir",
                                 str(REPO / "tests" / "fixtures" / "probes" / "nvidia-a100x8")],
                                env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=REPO)
        try:
            async def joined() -> dict[str, Any] | None:
                r = await c.get(f"/v1/hosts/{HOST}", headers=ADMIN)
                return r.json() if r.status_code == 200 and r.json().get("status") == "up" else None

            host = await assert_eventually(joined, timeout=30, message="the enrolled agent's host is up")
            assert host["site"] == SITE and host["device_count"] == 8
            assert "permissions violation" not in log.read_text().lower()

            cred = (await c.get("/v1/host-credentials", params={"host": HOST}, headers=ADMIN)).json()["items"][0]
            assert (await c.delete(f"/v1/host-credentials/{cred['id']}", headers=ADMIN)).status_code == 200

            async def down() -> bool:
                r = await c.get(f"/v1/hosts/{HOST}", headers=ADMIN)
                return r.status_code == 200 and r.json().get("status") != "up"

            await assert_eventually(down, timeout=30, message="the revoked host goes silent, then down")
            assert await asyncio.to_thread(proc.wait, 20) == 1  # it says why and stops, rather than retry forever
            assert "refuses this process's credentials" in log.read_text()
        finally:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=10)
