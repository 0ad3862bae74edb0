"""The code blocks of the README and the docs pages, for the tests that run or check them
(tests/unit/test_docs.py, tests/ns/test_doc_examples.py)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"


def pages() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def fenced(path: Path, language: str) -> list[str]:
    """The code of each ``language`` block of a page, but snippet includes (``--8<--``)."""
    blocks = re.findall(rf"^```{language}\n(.*?)^```$", path.read_text(), re.M | re.S)
    return [b for b in blocks if not b.lstrip().startswith("--8<--")]


def script_blocks(needs_lab: bool) -> list[tuple[str, str]]:
    """(page, code) of each Python example that is a whole script (it starts with an import
    and is no ``# file:`` of a worked example): with ``needs_lab``, those that bring up a
    ``hyperplane.Lab`` (root: tests/ns/test_doc_examples.py runs them), else the others."""
    found = []
    for page in pages():
        for block in fenced(page, "python"):
            if re.match(r"(import|from) ", block) and ("Lab." in block) == needs_lab:
                found.append((str(page.relative_to(ROOT)), block))
    return found
