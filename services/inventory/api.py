"""The inventory service."""

from __future__ import annotations

from libs.service import ServiceApp

app = ServiceApp("inventory", uses_db=False)
