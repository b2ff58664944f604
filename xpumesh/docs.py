"""Keep generated parts of the README in step with the code (``python -m xpumesh.docs``)."""

from __future__ import annotations

import re
from pathlib import Path

from libs.config import settings_table_markdown

START, END = "<!-- settings-table:start -->", "<!-- settings-table:end -->"


def render_readme(text: str) -> str:
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    return pattern.sub(lambda _: f"{START}\n{settings_table_markdown()}\n{END}", text)


def main() -> None:
    readme = Path(__file__).resolve().parents[1] / "README.md"
    readme.write_text(render_readme(readme.read_text()))


if __name__ == "__main__":
    main()
