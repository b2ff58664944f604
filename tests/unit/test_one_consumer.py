"""Every JetStream reader of the mesh is ``libs.bus.consumer.PullConsumer``: no other module pulls or pushes.

A static walk: outside ``libs/bus/consumer.py`` no module of the services, the kit, the agent or the
command line calls JetStream's own subscribe/pull APIs or sends pull requests by hand. The live half
(every consumer the running services have at the server is a PullConsumer) is
``tests/integration/test_consumers.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HOME = ROOT / "libs" / "bus" / "consumer.py"
JS_READERS = {"subscribe", "pull_subscribe", "pull_subscribe_bind", "fetch"}


def _offences(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in JS_READERS:
            owner = node.func.value
            if isinstance(owner, ast.Attribute) and owner.attr == "js":  # bus.js.<reader>(...), ctx.bus.js...
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} js.{node.func.attr}()")
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and "CONSUMER.MSG.NEXT" in node.value:
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} a hand-made pull request")
    return found


def test_jetstream_readers_only_pull_consumer() -> None:
    files = [p for d in ("services", "libs", "agent", "xpumesh") for p in (ROOT / d).rglob("*.py") if p != HOME]
    assert len(files) > 100
    offences = [o for p in files for o in _offences(p)]
    assert not offences, "JetStream read outside libs/bus/consumer.py:\n" + "\n".join(offences)


def test_jetstream_readers_walk_sees_the_consumer_itself() -> None:
    """The walk would notice a reader: the one implementation trips it."""
    assert _offences(HOME)
