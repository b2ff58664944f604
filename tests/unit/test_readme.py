"""The README's configuration table is the one the code generates."""

from __future__ import annotations

from tests.conftest import REPO
from xpumesh.docs import render_readme


def test_readme_settings_table_is_current() -> None:
    text = (REPO / "README.md").read_text()
    assert render_readme(text) == text, "README settings table is stale: run `python -m xpumesh.docs`"


def test_readme_names_the_two_commands_ci_uses() -> None:
    text = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert "./dev up" in text and "./dev test" in text
    assert "./dev test" in ci
