"""The package's layering holds: the import-linter contract in pyproject.toml is kept, and no
module of hyperplane imports itself back through others (no import circle).

Both read the source (grimp parses imports, nothing is imported), so they need no build. The
circle finder is also shown a package with a circle, so that a finder which sees nothing
cannot pass."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

grimp = pytest.importorskip("grimp")

ROOT = Path(__file__).resolve().parents[2]


def import_circles(package: str) -> list[list[str]]:
    """Each import circle among the modules of ``package`` (TYPE_CHECKING imports left out),
    as a list of modules where each imports the next and the last the first; one per
    strongly connected group of modules, found with Tarjan's algorithm."""
    graph = grimp.build_graph(package, exclude_type_checking_imports=True, cache_dir=None)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    for start in sorted(graph.modules):
        if start in index:
            continue
        # iterative depth-first search: (module, the modules it imports still to visit)
        work = [(start, iter(sorted(graph.find_modules_directly_imported_by(start))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            module, todo = work[-1]
            nxt = next(todo, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph.find_modules_directly_imported_by(nxt)))))
                elif nxt in on_stack:
                    low[module] = min(low[module], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[module])
            if low[module] == index[module]:
                group = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    group.append(m)
                    if m == module:
                        break
                if len(group) > 1:
                    groups.append(group)
    circles = []
    for group in groups:
        first = min(group)
        rest = sorted(set(group) - {first})
        chain = graph.find_shortest_chain(importer=first, imported=rest[0])
        back = graph.find_shortest_chain(importer=rest[0], imported=first)
        circles.append(list(chain) + list(back[1:-1]))
    return circles


def test_no_import_circle_among_hyperplanes_modules():
    circles = import_circles("hyperplane")
    assert not circles, "import circles (each module imports the next, the last the first):\n" \
        + "\n".join(" -> ".join(c) for c in circles)


def test_the_circle_finder_finds_a_circle(tmp_path, monkeypatch):
    pkg = tmp_path / "circled"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("from .c import thing\n")
    (pkg / "c.py").write_text("import circled.a\nthing = 1\n")
    (pkg / "leaf.py").write_text("from . import a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert import_circles("circled") == [["circled.a", "circled.b", "circled.c"]]


def test_every_top_level_module_has_a_layer():
    """A module left out of the layers would be bound by nothing."""
    import tomllib
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = [c for c in config["contracts"] if c["type"] == "layers"]
    named = {name.strip(" ()") for layer in contract["layers"]
             for name in layer.replace(":", "|").split("|")}
    graph = grimp.build_graph("hyperplane", cache_dir=None)
    top = {m.split(".")[1] for m in graph.modules if m.count(".") >= 1}
    assert not sorted(top - named), f"in no layer of pyproject.toml: {sorted(top - named)}"
    assert not sorted(named - top), f"layers naming no module: {sorted(named - top)}"


def test_the_layers_contract_is_kept():
    """`lint-imports` over this checkout (PYTHONPATH first, so it reads this tree's source)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    r = subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command;"
                        " lint_imports_command()", "--config", str(ROOT / "pyproject.toml"),
                        "--no-cache"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "Contracts: 1 kept, 0 broken." in r.stdout, r.stdout[-2000:]
