"""The scheduler service."""

from __future__ import annotations

from libs.service import ServiceApp

app = ServiceApp("scheduler", uses_db=False)
