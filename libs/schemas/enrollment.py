"""Host enrollment as the API shows it: single-use tokens, and the NATS credentials they buy.

An admin creates a token for one host (``POST /v1/enrollment-tokens``); on that host
``xpumesh agent enroll`` makes its own NKey pair and sends the token with the *public* key
(``POST /v1/enroll``); the gateway answers with a user JWT allowed only that host's subjects.
The private seed never leaves the host, and the token works once, for a short time.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from libs.bus.subjects import TOKEN_PATTERN

ENROLLMENT_TOKEN_SCHEME = "xpe_"


class EnrollmentTokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"site": "hangzhou", "host": "hz-gpu-17", "ttl_s": 900}]})

    site: str = Field(pattern=TOKEN_PATTERN, description="Site (city) the host belongs to.")
    host: str = Field(pattern=TOKEN_PATTERN, description="The host's id: its hostname as one subject token "
                                                          "(what `xpumesh agent discover` prints).")
    ttl_s: float | None = Field(default=None, gt=0, description="Lifetime of the token (default and maximum: "
                                                                 "the gateway's enrollment settings).")


class EnrollmentToken(BaseModel):
    """A created token: the secret is in this answer only."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": "enr_7c2a9d4e1b3f", "token": "xpe_Jq3v9Xb2mT0pQ7sLr5Kd8wYc1Fh6Ng4Za0Uo2Ie9Vt",
        "site": "hangzhou", "host": "hz-gpu-17", "expires_at": "2026-12-07T08:15:00Z"}]})

    id: str = Field(description="Token id (not secret), as the audit log names it.")
    token: str = Field(description="The single-use secret to give `xpumesh agent enroll --token`.")
    site: str
    host: str
    expires_at: datetime


class EnrollRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "token": "xpe_Jq3v9Xb2mT0pQ7sLr5Kd8wYc1Fh6Ng4Za0Uo2Ie9Vt",
        "public_key": "UBXJ2N7LZ3QJ5XK3SO6YB6WF5TNNKU3C3HHBYA2VZ2B3AKD4VH7NXM2J", "host": "hz-gpu-17"}]})

    token: str = Field(min_length=8, max_length=128, description="The enrollment token.")
    public_key: str = Field(min_length=56, max_length=56, pattern=r"^U[A-Z2-7]{55}$",
                            description="The host's NATS user public NKey (its seed stays on the host).")
    host: str = Field(pattern=TOKEN_PATTERN, description="The host id the enrolling host has; a token made for "
                                                          "another host is refused and stays unspent.")


class EnrolledHost(BaseModel):
    """What an enrolled host needs to join: its user JWT and where and how to connect."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "credential_id": "hcr_4b1d9e2f7a3c", "site": "hangzhou", "host": "hz-gpu-17",
        "jwt": "eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.eyJqdGkiOiIuLi4ifQ.c2lnbmF0dXJl",
        "nats_urls": ["tls://nats.example.net:4222"], "ca_pem": None, "expires_at": "2027-12-07T08:00:00Z"}]})

    credential_id: str
    site: str
    host: str
    jwt: str = Field(description="The host's NATS user JWT (write it with the seed into a .creds file).")
    nats_urls: list[str] = Field(description="NATS servers to connect to.")
    ca_pem: str | None = Field(default=None, description="CA that signs the NATS server's certificate, when not public.")
    expires_at: datetime


class HostCredential(BaseModel):
    """One host's NATS credential, as admins list and revoke them."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": "hcr_4b1d9e2f7a3c", "site": "hangzhou", "host": "hz-gpu-17",
        "public_key": "UBXJ2N7LZ3QJ5XK3SO6YB6WF5TNNKU3C3HHBYA2VZ2B3AKD4VH7NXM2J",
        "issued_at": "2026-12-07T08:00:00Z", "expires_at": "2027-12-07T08:00:00Z", "revoked_at": None}]})

    id: str
    site: str
    host: str
    public_key: str
    issued_at: datetime
    expires_at: datetime
    revoked_at: datetime | None = None
