"""The files of a worked example in the docs: fenced code blocks whose first line is
``# file: NAME`` are the files a reader copies; tests write them out and run them."""

from __future__ import annotations

import re
from importlib.metadata import entry_points
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAB_TESTING = ROOT / "docs" / "lab-testing.md"

_BLOCK = re.compile(r"^```[a-z]*\n# file: (?P<name>\S+)\n(?P<body>.*?)^```$", re.M | re.S)


def example_files(doc: Path = LAB_TESTING) -> dict[str, str]:
    """{file name: text} of the doc's ``# file:`` blocks (the marker line dropped)."""
    files = {m["name"]: m["body"] for m in _BLOCK.finditer(doc.read_text())}
    if not files:
        raise AssertionError(f"{doc}: no '# file:' code blocks")
    return files


def write_example(folder: Path, doc: Path = LAB_TESTING) -> list[Path]:
    written = []
    for name, text in example_files(doc).items():
        p = folder / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        written.append(p)
    return written


def plugin_installed() -> bool:
    """Whether pytest loads the plugin by itself (the package is installed with its entry
    point, as in CI) rather than by ``-p hyperplane.pytest_plugin``."""
    return any(ep.value == "hyperplane.pytest_plugin"
               for ep in entry_points(group="pytest11"))


def plugin_args() -> list[str]:
    """The arguments a pytest run needs to have the plugin loaded exactly once."""
    return [] if plugin_installed() else ["-p", "hyperplane.pytest_plugin"]
