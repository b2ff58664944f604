"""Serving beyond loopback with example secrets or an anonymous clear-text bus is refused."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from libs.config import Settings
from libs.exposure import check_exposure, example_secrets
from tests.conftest import REPO
from tests.unit.test_deploy import COMPOSE

EXAMPLE_KEY = "xpm_CHANGE-ME"  # deploy/k8s/secret.example.yaml


def _settings(**kw: object) -> Settings:
    base: dict[str, object] = {"nats_url": "nats://xpumesh:s3cret-9f1a@nats:4222",
                               "database_url": SecretStr("postgresql://x:pg-9b2c@db/x"),
                               "bootstrap_admin_key": SecretStr("xpm_" + "q" * 40)}
    base.update(kw)
    return Settings(**base)  # type: ignore[arg-type]


def test_exposure_example_secrets_are_named_never_shown() -> None:
    s = _settings(bootstrap_admin_key=SecretStr(EXAMPLE_KEY),
                  database_url=SecretStr("postgresql://xpumesh:CHANGE-ME@postgres/xpumesh"))
    assert example_secrets(s) == ["XPUMESH_BOOTSTRAP_ADMIN_KEY", "XPUMESH_DATABASE_URL"]
    with pytest.raises(RuntimeError) as err:
        check_exposure(s, ["0.0.0.0"])
    assert "XPUMESH_BOOTSTRAP_ADMIN_KEY" in str(err.value) and "CHANGE-ME" not in str(err.value)


def test_exposure_loopback_allows_what_beyond_loopback_refuses() -> None:
    anonymous = _settings(nats_url="nats://127.0.0.1:4222", bootstrap_admin_key=SecretStr(EXAMPLE_KEY))
    check_exposure(anonymous, ["127.0.0.1", "::1", "localhost"])
    with pytest.raises(RuntimeError, match="no credentials and no TLS"):
        check_exposure(anonymous, ["127.0.0.1", "10.0.0.5"])
    check_exposure(_settings(), ["0.0.0.0"])  # real secrets, authenticated bus: fine anywhere


def test_exposure_compose_ships_no_secret_defaults() -> None:
    text = COMPOSE.read_text()
    for name in re.findall(r"\$\{([A-Z0-9_]*(?:PASSWORD|ADMIN_KEY))", text):
        assert re.search(rf"\$\{{{name}:\?", text), f"{name} has a default in docker-compose.yml"
    assert not re.search(r"dev-[a-z-]*password|xpm_dev", text)


def test_exposure_gateway_refuses_to_start_with_the_example_admin_key(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "XPUMESH_NATS_URL": "nats://127.0.0.1:1", "XPUMESH_GATEWAY_HOST": "0.0.0.0",
           "XPUMESH_BOOTSTRAP_ADMIN_KEY": EXAMPLE_KEY, "XPUMESH_DATA_DIR": str(tmp_path),
           "XPUMESH_DATABASE_URL": "postgresql://x:y@127.0.0.1:1/x"}
    res = subprocess.run([sys.executable, "-m", "xpumesh", "run", "gateway"], env=env, capture_output=True,
                         text=True, timeout=60, cwd=REPO)
    assert res.returncode == 1
    assert "refusing to serve on 0.0.0.0" in res.stderr and "XPUMESH_BOOTSTRAP_ADMIN_KEY" in res.stderr
    assert EXAMPLE_KEY not in res.stderr + res.stdout
