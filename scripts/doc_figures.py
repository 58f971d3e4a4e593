"""Regenerate the pictures of the docs by running each page's code blocks in order.

Usage::

    python scripts/doc_figures.py docs/concepts.md docs/influence.md

Every ```python block of a page runs in one namespace, in the page's order, with the
page's folder as the working directory, so a block's ``savefig("tcav.png")`` writes the
picture the page embeds. Doctest blocks run as their ``>>>``/``...`` source lines (their
expected output is not checked here: the test suite checks it).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

_BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def source_of(block: str) -> str:
    """The Python source of a markdown code block (doctest prompts removed)."""
    lines = block.splitlines()
    if not any(line.startswith(">>>") for line in lines):
        return block
    return "\n".join(line[4:] for line in lines if line.startswith((">>> ", "... ", ">>>", "...")))


def run_page(page: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    namespace: dict = {"__name__": "__doc_figures__"}
    here = Path.cwd()
    os.chdir(page.parent)
    try:
        for i, block in enumerate(_BLOCK.findall(page.read_text())):
            exec(compile(source_of(block), f"{page.name}[block {i}]", "exec"), namespace)
    finally:
        os.chdir(here)


def main(argv: list[str]) -> None:
    for name in argv or ["docs/concepts.md", "docs/influence.md"]:
        print(f"running {name}")
        run_page(Path(name).resolve())


if __name__ == "__main__":
    main(sys.argv[1:])
