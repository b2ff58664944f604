"""The mesh's NATS trust chain: an operator, a system account, the mesh account, user credentials.

NATS decentralized auth: the server trusts one operator (``operator.jwt``); the operator signs the
accounts; the mesh account's *signing key* signs every user, and each user JWT carries its own
permissions (``libs.bus.permissions``). Issuing a user therefore needs no change on the server,
and revoking one is a new account JWT (its ``revocations``) pushed to the server's resolver by the
system account; the server then closes that user's connections.

The trust directory (mode 0700, every seed file 0600) holds:

=====================  ==================================================================
``operator.nk``        the operator seed (re-signs the account when a user is revoked)
``system.nk``          the system account's identity seed
``mesh.nk``            the mesh account's identity seed (never signs users)
``mesh-signing.nk``    the mesh account's signing key: signs users (enrollment needs it)
``system.creds``       a system-account user, used only to push account updates
=====================  ==================================================================

``xpumesh up`` creates one under its data dir at first start; ``xpumesh nats init`` creates one for
a deployment whose NATS runs elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from collections.abc import Mapping
from pathlib import Path

import nats

from libs.bus import jwt
from libs.bus.jwt import NKey
from libs.bus.permissions import Permissions

MESH_ACCOUNT = "XPUMESH"
SYSTEM_ACCOUNT = "SYS"
CLAIMS_UPDATE = "$SYS.REQ.CLAIMS.UPDATE"

_UNLIMITED = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": True,
              "conn": -1, "leaf": -1}
# JetStream is on for the mesh account (limits other than 0 enable it).
_JETSTREAM = {"mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1, "max_ack_pending": -1,
              "mem_max_stream_bytes": 0, "disk_max_stream_bytes": 0, "max_bytes_required": False}


class TrustError(RuntimeError):
    """The trust directory is missing, incomplete, or readable by others."""


def _load_or_create(path: Path, role: jwt.Role, create: bool) -> NKey:
    if path.exists():
        if path.stat().st_mode & 0o077:
            raise TrustError(f"{path} is readable by others; it must be mode 0600")
        return NKey(path.read_bytes().strip())
    if not create:
        raise TrustError(f"{path} is missing (create the trust directory with `xpumesh nats init`)")
    key = NKey.create(role)
    jwt.write_secret(path, key.seed.decode() + "\n")
    return key


class TrustStore:
    """One trust directory: load it (creating what is missing when asked), issue and revoke users."""

    def __init__(self, root: Path, *, create: bool = False) -> None:
        self.root = root
        if create:
            root.mkdir(parents=True, exist_ok=True, mode=0o700)
            root.chmod(0o700)
        elif not root.is_dir():
            raise TrustError(f"trust directory {root} does not exist (create it with `xpumesh nats init`)")
        self.operator = _load_or_create(root / "operator.nk", "operator", create)
        self.system = _load_or_create(root / "system.nk", "account", create)
        self.mesh = _load_or_create(root / "mesh.nk", "account", create)
        self.signing = _load_or_create(root / "mesh-signing.nk", "account", create)
        if create and not (root / "system.creds").exists():
            user = NKey.create("user")
            token = jwt.encode("user", issuer=self.system, subject=user.public_key, name="system-push",
                               nats={"pub": {"allow": [CLAIMS_UPDATE]}, "sub": {"allow": ["_INBOX.>"]},
                                     "subs": -1, "data": -1, "payload": -1})
            jwt.write_secret(root / "system.creds", jwt.creds_file(token, user.seed))

    # --- the JWTs the server needs -----------------------------------------------------
    def operator_jwt(self) -> str:
        return jwt.encode("operator", issuer=self.operator, subject=self.operator.public_key, name="xpumesh",
                          nats={"system_account": self.system.public_key}, issued_at=1)

    def system_jwt(self) -> str:
        return jwt.encode("account", issuer=self.operator, subject=self.system.public_key, name=SYSTEM_ACCOUNT,
                          nats={"limits": _UNLIMITED}, issued_at=1)

    def mesh_jwt(self, revoked: Mapping[str, int] | None = None, *, issued_at: int | None = None) -> str:
        """The mesh account; ``revoked`` maps user public keys to the time their JWTs stop counting."""
        body: dict[str, object] = {"limits": {**_UNLIMITED, **_JETSTREAM},
                                   "signing_keys": [self.signing.public_key],
                                   "default_permissions": {"pub": {}, "sub": {}}}
        if revoked:
            body["revocations"] = dict(revoked)
        return jwt.encode("account", issuer=self.operator, subject=self.mesh.public_key, name=MESH_ACCOUNT,
                          nats=body, issued_at=issued_at or (int(time.time()) if revoked else 1))

    def server_config(self, resolver_dir: Path) -> str:
        """The ``nats-server`` config lines that make it trust this operator (include them)."""
        preload = {self.system.public_key: self.system_jwt(), self.mesh.public_key: self.mesh_jwt()}
        lines = [f"operator: {self.operator_jwt()}", f"system_account: {self.system.public_key}",
                 f'resolver: {{ type: full, dir: {json.dumps(str(resolver_dir))}, allow_delete: false, '
                 f'interval: "2m" }}',
                 "resolver_preload: {",
                 *(f"  {k}: {v}" for k, v in preload.items()), "}"]
        return "\n".join(lines) + "\n"

    # --- users ---------------------------------------------------------------------------
    def issue(self, name: str, permissions: Permissions, *, public_key: str | None = None,
              expires_at: int | None = None) -> tuple[str, NKey | None]:
        """A user JWT for ``public_key`` (the holder keeps its seed), or for a new key returned with it."""
        key = None if public_key else NKey.create("user")
        subject = public_key or (key.public_key if key else "")
        if jwt.public_key_role(subject) != "user":
            raise ValueError("not a NATS user public key")
        token = jwt.encode("user", issuer=self.signing, subject=subject, name=name,
                           nats={**permissions.claims(), "subs": -1, "data": -1, "payload": -1},
                           issuer_account=self.mesh.public_key, expires_at=expires_at)
        return token, key

    def write_creds(self, path: Path, name: str, permissions: Permissions) -> Path:
        """Issue a new user and write its ``.creds`` file (0600) to ``path``."""
        token, key = self.issue(name, permissions)
        assert key is not None
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        jwt.write_secret(path, jwt.creds_file(token, key.seed))
        return path

    async def push_revocations(self, servers: list[str], revoked: Mapping[str, int], *,
                               tls: ssl.SSLContext | None = None, timeout_s: float = 5.0) -> None:
        """Send the server a mesh account JWT that revokes ``revoked``; the server drops those users."""
        nc = await nats.connect(servers=servers, user_credentials=str(self.root / "system.creds"), tls=tls,
                                connect_timeout=timeout_s, max_reconnect_attempts=0, allow_reconnect=False)
        try:
            reply = await nc.request(CLAIMS_UPDATE, self.mesh_jwt(revoked).encode(), timeout=timeout_s)
            answer = json.loads(reply.data or b"{}")
            if "error" in answer:
                raise TrustError(f"the NATS server refused the account update: {answer['error']}")
        finally:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(timeout_s):
                    await nc.close()
