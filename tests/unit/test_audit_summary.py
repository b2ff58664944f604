"""The audit log's summary of a request body: secrets never, URLs without credentials, bounded size."""

from __future__ import annotations

import json

from services.gateway.audit import MAX_BYTES, MAX_ITEMS, MAX_STRING, REDACTED, summarize


def test_audit_summary_drops_fields_named_like_secrets() -> None:
    body = {"name": "ci", "secret": "s1", "api_key": "s2", "Token": "s3", "password": "s4", "private_key": "s5",
            "nested": {"role": "user", "webhook_secret": "s6", "credentials": {"nkey_seed": "s7"}},
            "items": [{"authorization": "s8", "ok": 1}]}
    out = summarize(body)
    assert out == {"name": "ci", "nested": {"role": "user"}, "items": [{"ok": 1}]}
    assert not any(f"s{i}" in json.dumps(out) for i in range(1, 9))


def test_audit_summary_cuts_urls_and_key_like_strings() -> None:
    out = summarize({"url": "https://user:pw@hooks.example.com:8443/services/T0/B0/XXXX?token=abc#f",
                     "plain": "http://10.0.0.1", "name": "xpm_Q2x9fB3aV0lW1c4kS7mN8pR2tY5uZ6wX9yA0bC3dE"})
    assert out == {"url": "https://hooks.example.com:8443/…", "plain": "http://10.0.0.1", "name": REDACTED}


def test_audit_summary_stays_bounded() -> None:
    out = summarize({"long": "x" * 10_000, "many": list(range(1000)), "deep": {"a": {"b": {"c": {"d": {"e": 1}}}}}})
    assert len(out["long"]) == MAX_STRING + 1
    assert len(out["many"]) == MAX_ITEMS + 1 and out["many"][-1] == f"{1000 - MAX_ITEMS} more"
    assert out["deep"] == {"a": {"b": {"c": "…"}}}
    huge = summarize({f"field{i}": "y" * 200 for i in range(60)})
    assert huge["truncated"] is True and len(json.dumps(huge)) < 4 * MAX_BYTES
