"""NUL in JSON: refused (PostgreSQL stores none), while the text backslash-u0000 is fine."""

from __future__ import annotations

import json

import pytest

from libs.db import json_has_nul


@pytest.mark.parametrize("value,has_nul", [("a\x00b", True), ("\\u0000", False), ("\\\x00", True),
                                           ("\\\\u0000", False), ("plain", False)])
def test_json_has_nul_tells_a_nul_from_its_escaped_text(value: str, has_nul: bool) -> None:
    assert json_has_nul(json.dumps({"model": value}).encode()) is has_nul
