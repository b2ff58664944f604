"""Refuse to serve beyond loopback with example secrets or an anonymous, clear-text bus.

A process that binds an HTTP server to an address other machines can reach (the gateway's API,
the metrics endpoint) checks its settings first: a secret that still holds one of the shipped
example values (``CHANGE-ME`` in deploy/k8s/secret.example.yaml, ``change_me`` and the old
laptop defaults), or a NATS connection with neither credentials nor TLS, stops it with one
line naming the setting. On loopback the same settings are allowed: that is a laptop.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from libs.config import Settings

#: Markers of example values shipped in this repository's files (lower case).
EXAMPLE_MARKERS = ("change-me", "change_me", "changeme", "dev-service-password", "dev-sim-password",
                   "dev-postgres-password", "dev-agent-", "xpm_dev_admin_key")


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _password(url: str) -> str:
    try:
        return urlsplit(url).password or ""
    except ValueError:
        return ""


def example_secrets(settings: Settings) -> list[str]:
    """The settings whose value is one of the shipped examples (names only, never the values)."""
    found = []
    candidates = {
        "XPUMESH_BOOTSTRAP_ADMIN_KEY": settings.bootstrap_admin_key.get_secret_value()
        if settings.bootstrap_admin_key else "",
        "XPUMESH_DATABASE_URL": _password(settings.database_url.get_secret_value()) if settings.database_url else "",
        "XPUMESH_NATS_URL": " ".join(_password(u) for u in (settings.nats_url or "").split(",")),
        "XPUMESH_CONSUL_TOKEN": settings.consul_token.get_secret_value() if settings.consul_token else "",
    }
    for name, value in candidates.items():
        if any(m in value.lower() for m in EXAMPLE_MARKERS):
            found.append(name)
    return found


def anonymous_bus(settings: Settings) -> bool:
    """Whether this process would talk to NATS with no credentials at all, in clear text."""
    urls = [u.strip() for u in (settings.nats_url or "").split(",") if u.strip()]
    has_user = settings.bus.creds_file is not None or any("@" in u for u in urls)
    tls = settings.bus.tls_ca_file is not None or any(u.startswith("tls://") for u in urls)
    return not has_user and not tls


def check_exposure(settings: Settings, bound_hosts: list[str]) -> None:
    """Raise when a server binds beyond loopback with example secrets or an anonymous bus."""
    wide = [h for h in bound_hosts if not is_loopback(h)]
    if not wide:
        return
    problems = [f"{name} holds an example value from this repository" for name in example_secrets(settings)]
    if anonymous_bus(settings):
        problems.append("the NATS connection has no credentials and no TLS (set XPUMESH_BUS__CREDS_FILE)")
    if problems:
        raise RuntimeError(f"refusing to serve on {', '.join(wide)} (beyond loopback): " + "; ".join(problems))
