"""The gateway serves HTTPS when given a certificate (XPUMESH_GATEWAY__TLS_CERT_FILE / _KEY_FILE)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from libs.config import Settings
from libs.tls import ensure_local_tls
from services.gateway.api import app as gateway_app
from tests.integration.test_api_kit import ADMIN


async def test_gateway_serves_https_with_the_configured_certificate(settings: Settings, running_service: Any,
                                                                    tmp_path: Path) -> None:
    tls = ensure_local_tls(tmp_path / "tls")
    s = settings.model_copy(update={"gateway": settings.gateway.model_copy(
        update={"tls_cert_file": tls.cert, "tls_key_file": tls.key})})
    await running_service(gateway_app, s)
    async with httpx.AsyncClient(base_url=f"https://127.0.0.1:{s.gateway_port}", verify=str(tls.ca), timeout=10) as c:
        r = await c.get("/v1/me", headers=ADMIN)
        assert r.status_code == 200 and r.json()["role"] == "admin"
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{s.gateway_port}", timeout=5) as c:
        with pytest.raises(httpx.HTTPError):  # no clear-text API beside it
            await c.get("/healthz")
