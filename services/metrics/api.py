"""The metrics service."""

from __future__ import annotations

from libs.service import ServiceApp

app = ServiceApp("metrics", uses_db=False)
