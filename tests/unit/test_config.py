"""Settings: prefix, nesting, defaults and descriptions everywhere."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, SecretStr, ValidationError

from libs.config import Settings, settings_table_markdown


def test_settings_read_xpumesh_prefix_and_nested_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XPUMESH_GATEWAY_PORT", "9090")
    monkeypatch.setenv("XPUMESH_EMBEDDED__NATS_PORT", "14333")
    monkeypatch.setenv("XPU_VISIBLE_DEVICES", "0,1")  # a Kunlunxin runtime variable: never ours
    s = Settings()
    assert s.gateway_port == 9090
    assert s.embedded.nats_port == 14333


def test_settings_reject_bad_values_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XPUMESH_HEARTBEAT_INTERVAL_S", "-1")
    with pytest.raises(ValidationError) as exc:
        Settings()
    assert "heartbeat_interval_s" in str(exc.value)


def test_settings_every_field_has_a_description_and_default() -> None:
    def walk(model: type[BaseModel]) -> None:
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            assert not field.is_required(), f"{model.__name__}.{name} has no default"
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann)

    walk(Settings)


def test_settings_secrets_are_not_printed() -> None:
    s = Settings(database_url=SecretStr("postgresql://u:hunter2@db/x"))
    assert "hunter2" not in repr(s) and "hunter2" not in s.model_dump_json()


def test_settings_table_lists_required_variables() -> None:
    table = settings_table_markdown()
    for var in ("XPUMESH_NATS_URL", "XPUMESH_DATABASE_URL", "XPUMESH_DATA_DIR", "XPUMESH_GATEWAY_PORT",
                "XPUMESH_HEARTBEAT_INTERVAL_S", "XPUMESH_LOG_LEVEL", "XPUMESH_OTLP_ENDPOINT",
                "XPUMESH_EMBEDDED__NATS_PORT"):
        assert f"`{var}`" in table
