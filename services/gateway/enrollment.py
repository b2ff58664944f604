"""Host enrollment: what the gateway signs and what it tells the NATS server.

The gateway holds the mesh account's signing key (``XPUMESH_ENROLL__TRUST_DIR``; under
``xpumesh up`` no other process does). Redeeming a token signs a user JWT for the host's own
public key with ``permissions.agent(site, host)`` and nothing more; revoking a credential
sends the NATS server a new mesh account JWT listing every revoked, unexpired key
(``TrustStore.push_revocations``), and the server closes that host's connections. The list
is pushed again every ``revocation_resync_s`` so a NATS server restarted from an older
resolver state learns it back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prometheus_client import Counter

from libs.bus import permissions
from libs.bus.connection import connect_security
from libs.bus.trust import TrustError, TrustStore
from libs.config import Settings
from libs.db import session_scope
from libs.service import Context
from services.gateway import store

log = logging.getLogger(__name__)
ENROLLMENTS = Counter("xpumesh_enrollments_total", "Host enrollment attempts, by outcome "
                      "(enrolled, invalid_token, disabled).", ["outcome"])
REVOCATION_PUSHES = Counter("xpumesh_revocation_pushes_total",
                            "Pushes of the NATS account's revocation list, by outcome (ok, failed).", ["outcome"])


class EnrollmentDisabled(RuntimeError):
    """This gateway holds no trust directory, so it cannot issue or revoke host credentials."""


@dataclass
class Enrollment:
    trust: TrustStore | None
    nats_urls: list[str]
    ca_pem: str | None

    @classmethod
    def from_settings(cls, settings: Settings) -> Enrollment:
        cfg = settings.enroll
        trust = None
        if cfg.trust_dir is not None:
            try:
                trust = TrustStore(cfg.trust_dir)
            except TrustError as exc:
                raise RuntimeError(f"enrollment: {exc}") from None
        url = cfg.agent_nats_url or settings.nats_url or ""
        ca_file: Path | None = cfg.agent_ca_file or settings.bus.tls_ca_file
        ca = ca_file.read_text() if ca_file and ca_file.is_file() else None
        return cls(trust, [u.strip() for u in url.split(",") if u.strip()], ca)

    def require(self) -> TrustStore:
        if self.trust is None:
            raise EnrollmentDisabled("host enrollment is off: this gateway has no XPUMESH_ENROLL__TRUST_DIR")
        return self.trust

    def sign(self, site: str, host: str, public_key: str, expires_at: datetime) -> str:
        token, _ = self.require().issue(f"agent-{site}-{host}", permissions.agent(site, host), public_key=public_key,
                                        expires_at=int(expires_at.timestamp()))
        return token

    async def push(self, ctx: Context[Any]) -> None:
        """Tell the NATS server which host keys are revoked (all of them, every time)."""
        trust = self.require()
        async with session_scope(ctx.db) as session:
            revoked = await store.list_revoked_public_keys(session, datetime.now(UTC))
        servers = [u.strip() for u in (ctx.settings.nats_url or "").split(",") if u.strip()]
        tls = connect_security(ctx.settings.bus.model_copy(update={"creds_file": None}), servers).get("tls")
        try:
            await trust.push_revocations(servers, revoked, tls=tls, timeout_s=ctx.settings.enroll.push_timeout_s)
        except Exception:
            REVOCATION_PUSHES.labels("failed").inc()
            raise
        REVOCATION_PUSHES.labels("ok").inc()


def credential_expiry(settings: Settings, now: datetime) -> datetime:
    return now + timedelta(days=settings.enroll.credential_ttl_days)
