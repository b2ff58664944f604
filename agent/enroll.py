"""``xpumesh agent enroll``: join this host to a mesh with a single-use token.

The host makes its own NATS user key pair; only the public key travels (with the token) to the
gateway's ``POST /v1/enroll``, which answers with a user JWT allowed this host's subjects alone.
The seed and the JWT are written to ``<dir>/agent.creds`` (0600, readable by the agent's user
only: replicas run under other uids and cannot read it), the NATS CA to ``<dir>/nats-ca.pem``,
and the settings the agent needs to ``<dir>/agent.env`` (no secret in it: paths and URLs), ready
for systemd's ``EnvironmentFile=`` or ``set -a; . agent.env; set +a``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import httpx

from agent.facts import local_hostname
from libs.bus.jwt import NKey, creds_file, write_secret
from libs.schemas.enrollment import EnrolledHost
from libs.schemas.hostevents import host_id_for


class EnrollError(RuntimeError):
    """Enrollment did not happen; the message says why (never the token)."""


@dataclass(frozen=True)
class Enrolled:
    host: EnrolledHost
    creds: Path
    env: Path
    ca: Path | None


def enroll(gateway: str, token: str, out_dir: Path, *, gateway_ca: Path | None = None,
           timeout_s: float = 10.0) -> Enrolled:
    host_id = host_id_for(local_hostname())
    key = NKey.create("user")
    verify: str | bool = str(gateway_ca) if gateway_ca else True
    try:
        r = httpx.post(gateway.rstrip("/") + "/v1/enroll", timeout=timeout_s, verify=verify,
                       json={"token": token, "public_key": key.public_key, "host": host_id})
    except httpx.HTTPError as exc:
        raise EnrollError(f"cannot reach the gateway at {gateway}: {type(exc).__name__}") from None
    if r.status_code != 201:
        try:
            detail = r.json().get("detail") or r.json().get("title")
        except ValueError:
            detail = r.text[:200]
        raise EnrollError(f"the gateway refused the enrollment of host {host_id!r} ({r.status_code}): {detail}")
    host = EnrolledHost.model_validate_json(r.content)
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    creds = out_dir / "agent.creds"
    write_secret(creds, creds_file(host.jwt, key.seed))
    ca = None
    if host.ca_pem:
        ca = out_dir / "nats-ca.pem"
        ca.write_text(host.ca_pem)
    lines = [f"XPUMESH_SITE={host.site}", f"XPUMESH_NATS_URL={','.join(host.nats_urls)}",
             f"XPUMESH_BUS__CREDS_FILE={creds.resolve()}"]
    if ca:
        lines.append(f"XPUMESH_BUS__TLS_CA_FILE={ca.resolve()}")
    env = out_dir / "agent.env"
    env.write_text("\n".join(lines) + "\n")
    return Enrolled(host, creds, env, ca)


def enroll_main(gateway: str, token: str, out_dir: Path, gateway_ca: Path | None) -> int:
    try:
        done = enroll(gateway, token, out_dir, gateway_ca=gateway_ca)
    except EnrollError as exc:
        print(f"xpumesh agent enroll: {exc}", file=sys.stderr)
        return 1
    h = done.host
    print(f"enrolled host {h.host} at site {h.site} (credential {h.credential_id}, valid until "
          f"{h.expires_at:%Y-%m-%d})\n  credentials  {done.creds} (0600)\n  settings     {done.env}\n"
          f"start the agent with:  set -a; . {done.env}; set +a; xpumesh agent run")
    return 0
