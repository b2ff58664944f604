"""The audit log's records as the API shows them: who changed what, when, and how it ended.

The gateway writes one entry per admin action (``services/gateway/audit.py``) and serves
them at ``GET /v1/audit``. The actor is always the authenticated key, never anything the
request body says; ``changes`` is a bounded summary of the request with every secret removed.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class AuditAction(StrEnum):
    """Every action the audit log records: ``<resource>.<verb>``."""

    KEY_CREATE = "key.create"
    KEY_REVOKE = "key.revoke"
    QUOTA_SET = "quota.set"
    CATALOG_CREATE = "catalog.create"
    CATALOG_UPSERT = "catalog.upsert"
    RULE_UPSERT = "rule.upsert"
    HOST_LABELS = "host.labels"
    SITE_UPSERT = "site.upsert"
    SUBSCRIPTION_CREATE = "subscription.create"
    SUBSCRIPTION_DELETE = "subscription.delete"
    ENROLLMENT_TOKEN_CREATE = "enrollment_token.create"
    HOST_ENROLL = "host.enroll"
    HOST_CREDENTIAL_REVOKE = "host_credential.revoke"


class AuditActor(BaseModel):
    """The key that acted, with its tenant and role when it acted."""

    key_id: str
    tenant: str
    role: str


class AuditEntry(BaseModel):
    """One audited action."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": 4182, "at": "2026-12-06T09:15:02.114Z", "request_id": "9f1c2e7a4b6d4e0f8a3b5c7d9e1f2a4b",
        "actor": {"key_id": "key_0a1b2c3d4e5f", "tenant": "system", "role": "admin"},
        "action": "key.create", "target": "key_5f2c9a1b7d3e",
        "changes": {"tenant": "acme", "role": "user", "name": "ci pipeline"}, "status": 201}]})

    id: int = Field(description="Entry id; larger is newer.")
    at: datetime = Field(description="When the gateway recorded the action.")
    request_id: str = Field(description="The request's X-Request-Id.")
    actor: AuditActor
    action: str = Field(description="What was done: one of the audit actions, e.g. key.create.")
    target: str = Field(description="What was acted on (a key id, a tenant, vendor/model, a host id, …).")
    changes: dict[str, Any] = Field(default_factory=dict,
                                    description="What the request asked to change, bounded, with secrets removed.")
    status: int = Field(description="The HTTP status the request was answered with.")
