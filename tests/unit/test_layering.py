"""The package layering: services share only ``libs/``, and the kit knows no service or agent.

Every module is parsed (not imported) and each import resolved to a dotted name, relative
imports included, so an import inside a function counts as much as one at the top.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVICES = sorted(p.name for p in (ROOT / "services").iterdir() if (p / "__init__.py").is_file())


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(source: str, module: str, is_package: bool = False) -> Iterator[tuple[int, str]]:
    """(line, dotted name) of everything ``module`` imports; ``from a import b`` yields ``a.b``."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(source, module)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            for alias in node.names:
                yield node.lineno, f"{module}.{alias.name}"


def _top_two(name: str) -> tuple[str, str]:
    parts = name.split(".")
    return parts[0], parts[1] if len(parts) > 1 else ""


def _violations(tree: str, allowed: Callable[[str, str], bool]) -> list[str]:
    out: list[str] = []
    for path in sorted((ROOT / tree).rglob("*.py")):
        own = _top_two(_module_name(path))
        for line, name in _imports(path.read_text(encoding="utf-8"), _module_name(path), path.name == "__init__.py"):
            if not allowed(own[1], name):
                out.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    return out


def _service_allows(own: str, name: str) -> bool:
    top, second = _top_two(name)
    if top == "agent":
        return False
    return top != "services" or second in ("", own)


def test_layering_services_import_no_other_service():
    assert SERVICES, "no service packages found"
    assert _violations("services", _service_allows) == []


def test_layering_libs_import_no_service_or_agent():
    assert _violations("libs", lambda _own, name: _top_two(name)[0] not in ("services", "agent")) == []


def test_layering_agent_imports_no_service():
    assert _violations("agent", lambda _own, name: _top_two(name)[0] != "services") == []


def test_layering_resolves_relative_and_package_imports():
    source = "from . import engine\nfrom ...inventory import models\nfrom services import metrics\nimport libs.db\n"
    names = [name for _, name in _imports(source, "services.scheduler.placement", is_package=True)]
    assert names == ["services.scheduler.placement.engine", "services.inventory.models", "services.metrics", "libs.db"]
    assert [name for _, name in _imports("def f():\n    from .fleet import Fleet\n", "services.scheduler.api")] == [
        "services.scheduler.fleet.Fleet"]


def test_layering_rule_allows_own_service_and_libs_only():
    assert _service_allows("scheduler", "services.scheduler.placement.engine")
    assert _service_allows("scheduler", "libs.catalog.loader")
    assert not _service_allows("scheduler", "services.inventory.models")
    assert not _service_allows("scheduler", "services.inventory")
    assert not _service_allows("gateway", "agent.sim.host")
