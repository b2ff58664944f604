"""NATS decentralized-auth JWTs: NKeys, operator / account / user claims, ``.creds`` files.

NATS' own tool (``nsc``) writes these; xpumesh issues them itself so that enrollment can hand a
host its own user without a shell-out. The format is nats-io/jwt v2: a JWT whose header says
``ed25519-nkey``, signed by the issuer's NKey (an operator signs accounts; an account, or one of
its signing keys, signs users). The server checks every signature back to the operator it trusts.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from dataclasses import dataclass
from typing import Any, Literal

import nkeys

Role = Literal["operator", "account", "user"]
_PREFIX = {"operator": nkeys.PREFIX_BYTE_OPERATOR, "account": nkeys.PREFIX_BYTE_ACCOUNT,
           "user": nkeys.PREFIX_BYTE_USER}
_HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}


@dataclass(frozen=True)
class NKey:
    """An NKey pair (the seed is the secret; the public key names the identity)."""

    seed: bytes

    @classmethod
    def create(cls, role: Role) -> NKey:
        return cls(nkeys.encode_seed(os.urandom(32), _PREFIX[role]))

    @property
    def public_key(self) -> str:
        return str(nkeys.from_seed(bytearray(self.seed)).public_key.decode())

    def sign(self, data: bytes) -> bytes:
        return bytes(nkeys.from_seed(bytearray(self.seed)).sign(data))


def public_key_role(public_key: str) -> Role | None:
    """The role a public NKey names (``U…`` user, ``A…`` account, ``O…`` operator), if valid."""
    roles: dict[str, Role] = {"U": "user", "A": "account", "O": "operator"}
    role = roles.get(public_key[:1])
    if role is None or len(public_key) != 56:
        return None
    try:
        raw = base64.b32decode(public_key + "=" * (-len(public_key) % 8))
    except (ValueError, TypeError):
        return None
    if nkeys.crc16_checksum(bytearray(raw[:-2])) != raw[-2:]:
        return None
    return role


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def encode(claims_type: Role, *, issuer: NKey, subject: str, name: str, nats: dict[str, Any],
           expires_at: int | None = None, issuer_account: str | None = None, issued_at: int | None = None) -> str:
    """One signed JWT. ``nats`` holds the type-specific claims (permissions, limits, …)."""
    body = {"type": claims_type, "version": 2, **nats}
    if issuer_account:
        body["issuer_account"] = issuer_account
    claims: dict[str, Any] = {"jti": "", "iat": issued_at or int(time.time()), "iss": issuer.public_key,
                              "name": name, "sub": subject, "nats": body}
    if expires_at:
        claims["exp"] = expires_at
    # The id is the hash of the claims without it, as nats-io/jwt computes it.
    claims["jti"] = base64.b32encode(hashlib.new("sha512_256", json.dumps(claims).encode()).digest()) \
        .rstrip(b"=").decode()
    signing_input = f"{_b64(json.dumps(_HEADER).encode())}.{_b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{_b64(issuer.sign(signing_input.encode()))}"


def decode_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT (no signature check: the NATS server is the one that verifies)."""
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("not a JWT")
    claims: dict[str, Any] = json.loads(_unb64(parts[1]))
    return claims


def creds_file(user_jwt: str, seed: bytes) -> str:
    """The ``.creds`` text nats clients read (``user_credentials=``): the JWT, then the user's seed."""
    return ("-----BEGIN NATS USER JWT-----\n" + user_jwt + "\n------END NATS USER JWT------\n\n"
            "************************* IMPORTANT *************************\n"
            "NKEY Seed printed below can be used to sign and prove identity.\n"
            "NKEYs are sensitive and should be treated as secrets.\n\n"
            "-----BEGIN USER NKEY SEED-----\n" + seed.decode() + "\n------END USER NKEY SEED------\n\n"
            "*************************************************************\n")


def write_secret(path: os.PathLike[str] | str, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (0600), never briefly wider."""
    tmp = f"{os.fspath(path)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)
