"""The documentation site builds with ``mkdocs build --strict`` (a broken link, a page left out
of the nav or a reference to a removed name fails), its reference pages match the code they
describe, and the README stays a front page.

A new page under docs/ goes into ``nav`` in mkdocs.yml; a new public name of ``hyperplane``
needs a docstring (the Python API page is generated from them)."""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

from docsnippets import DOCS, README, ROOT, fenced, pages, script_blocks

README_MAX_BYTES = 8 * 1024


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site, built once for this module, strictly."""
    out = tmp_path_factory.mktemp("site")
    result = _build(ROOT / "mkdocs.yml", out)
    assert result.returncode == 0, (
        "mkdocs build --strict failed (a new page goes into nav in mkdocs.yml; links are "
        "relative to the page):\n" + result.stdout + result.stderr)
    return out


def _build(config: Path, out: Path) -> subprocess.CompletedProcess:
    """mkdocs build as CI runs it (not --quiet: it stops --strict from counting warnings)."""
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(out)],
        cwd=ROOT, env=dict(os.environ, NO_MKDOCS_2_WARNING="1"), capture_output=True,
        text=True, timeout=600)


def test_a_broken_link_fails_the_build(tmp_path):
    """The build command itself turns a broken link into a failure."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.md").write_text("# Home\n\n[gone](gone.md)\n")
    (tmp_path / "mkdocs.yml").write_text("site_name: t\nnav:\n  - index.md\n")
    result = _build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0 and "gone.md" in result.stderr, result.stderr


def test_the_site_builds_strictly(site):
    for page in ["index.html", "semantics/index.html", "reference/python/index.html",
                 "reference/config/index.html", "observability/index.html"]:
        assert (site / page).is_file(), page


# --- the Python API page ------------------------------------------------------------------

def _sections(page: str) -> dict[str, str]:
    """{object path: the HTML of its documentation} for each object mkdocstrings rendered."""
    heads = list(re.finditer(r'<h[2-6] id="(hyperplane\.[\w.]+)" class="doc doc-heading"', page))
    return {m[1]: page[m.end():(heads[i + 1].start() if i + 1 < len(heads) else len(page))]
            for i, m in enumerate(heads)}


def _text(fragment: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", " ", fragment))


def _public_names(module) -> list[str]:
    """The names ``from module import *`` gives, as griffe (mkdocstrings) reads them too."""
    if hasattr(module, "__all__"):
        return list(module.__all__)
    return [name for name, value in vars(module).items()
            if not name.startswith("_") and not isinstance(value, types.ModuleType)]


def test_the_api_reference_lists_every_public_name_with_its_docstring(site):
    import hyperplane

    names = _public_names(hyperplane)
    page = (site / "reference" / "python" / "index.html").read_text()
    sections = _sections(page)
    documented = {path.split(".", 1)[1] for path in sections if path.count(".") == 1}
    missing = [n for n in names if n not in documented]
    assert not missing, f"in hyperplane.__all__, not on the API page: {missing}"
    stale = sorted(n for n in documented - set(names) if not n.startswith("__"))
    assert not stale, f"on the API page, not in hyperplane.__all__: {stale}"
    for name in names:
        body = sections[f"hyperplane.{name}"]
        prose = re.search(r'<div class="doc doc-contents[^"]*">(.*?)(?:<div class="doc doc-children">|$)',
                          body, re.S)
        assert prose and re.search(r"<p>", prose[1]) and _text(prose[1]).strip(), \
            f"hyperplane.{name} has no docstring on the API page"


# --- the README ---------------------------------------------------------------------------

def test_the_readme_is_a_front_page():
    size = len(README.read_bytes())
    assert size < README_MAX_BYTES, f"README.md is {size} bytes: move detail into docs/"


def test_the_readmes_links_resolve():
    text = README.read_text()
    targets = re.findall(r"\]\(([^)\s#]+)(?:#[^)]*)?\)", text)
    assert targets
    broken = [t for t in targets if not re.match(r"[a-z]+:", t) and not (ROOT / t).exists()]
    assert not broken, f"README.md links to missing files: {broken}"


# --- reference pages that restate the code ------------------------------------------------

def test_the_exit_codes_page_lists_the_clis_codes():
    from hyperplane import cli

    codes = {value for name, value in vars(cli).items()
             if name.startswith("EXIT_") and isinstance(value, int)}
    page = (DOCS / "reference" / "exit-codes.md").read_text()
    listed = {int(c) for c in re.findall(r"^\| `(\d+)` \|", page, re.M)}
    assert codes == listed, f"cli: {sorted(codes)}, exit-codes.md: {sorted(listed)}"
    from hyperplane import runfolder
    assert f"{runfolder.EXIT_CANNOT_START} (`EX_CONFIG`)" in page


def test_every_lab_config_in_the_docs_validates_as_it_stands():
    """Each TOML block of every page (the config reference's full example, the guides' labs,
    observability's options) passes the parser `hyperplane up` uses."""
    from hyperplane.config import loads_config

    pages = sorted(DOCS.rglob("*.md"))
    checked = 0
    for page in pages:
        for block in fenced(page, "toml"):
            loads_config(block, source=str(page.relative_to(ROOT)))
            checked += 1
    assert checked >= 3


# Fields of the typed config whose TOML key has another name, or that are a table's own key.
_CONFIG_KEYS = {"vpc_id": "id", "subnets": "vpc.subnets", "security_groups": "vpc.security_groups",
                "fields": "format", "name": None, "id": None}


def _config_fields(cls, seen=None):
    """Every field of the typed config, walking into the dataclasses it is made of."""
    import dataclasses
    import typing

    seen = set() if seen is None else seen
    if cls in seen:
        return
    seen.add(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        yield cls.__name__, f.name
        for inner in re.findall(r"\b([A-Z]\w*Config|EgressRule)\b", str(hints[f.name])):
            yield from _config_fields(getattr(sys.modules[cls.__module__], inner), seen)


def test_the_config_reference_shows_every_key_of_the_schema():
    """The full example names every field of ``hyperplane.config.Config`` (a new setting
    cannot go undocumented)."""
    from hyperplane.config import Config

    page = (DOCS / "reference" / "config.md").read_text()
    example = fenced(DOCS / "reference" / "config.md", "toml")[0]
    missing = []
    for owner, name in _config_fields(Config):
        key = _CONFIG_KEYS.get(name, name)
        if key is None:
            continue
        last = key.rsplit(".", 1)[-1]
        if not re.search(rf"\b{re.escape(last)}\b", example):
            missing.append(f"{owner}.{name}")
    assert not missing, f"config fields not in docs/reference/config.md: {missing}"
    assert "--8<--" in page      # the built-in lab is included from the file itself


def test_the_readmes_python_example_is_a_ten_line_lab_test():
    """The front page's example is one test file of at most ten lines; it runs as a test in
    tests/ns/test_doc_examples.py."""
    blocks = re.findall(r"^```python\n# file: (\S+)\n(.*?)^```$", README.read_text(), re.M | re.S)
    assert len(blocks) == 1, blocks
    name, body = blocks[0]
    assert name.startswith("test_") and "def test_" in body
    assert len(body.strip().splitlines()) + 1 <= 10, body


# Calls of the semantics' interface listings that only the C core offers (the text says so).
C_CORE_ONLY = {"events"}


def test_the_semantics_interface_listings_name_methods_that_exist():
    """docs/semantics.md lists the Nat interface as Python calls: each one exists on the C
    core and, but where the text says the C core alone has it, on the reference model."""
    from hyperplane._core import Nat as CoreNat
    from hyperplane.model import Nat as ModelNat

    called = set()
    for block in fenced(DOCS / "semantics.md", "python"):
        called |= set(re.findall(r"\bnat\.(\w+)\(", block))
    assert {"translate", "expire", "connections"} <= called
    assert [n for n in sorted(called) if not hasattr(CoreNat, n)] == []
    assert [n for n in sorted(called - C_CORE_ONLY) if not hasattr(ModelNat, n)] == []


# --- the code examples of the pages ---------------------------------------------------------

def test_every_python_example_is_valid_python():
    import ast

    for page in pages():
        for block in fenced(page, "python"):
            ast.parse(block, filename=str(page.relative_to(ROOT)))


@pytest.mark.parametrize("purepython", ["0", "1"])
def test_the_scripts_of_the_pages_run_as_written(purepython, tmp_path):
    """Each script example that needs no lab runs, with the C core and with the model."""
    scripts = script_blocks(needs_lab=False)
    assert scripts
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HYPERPLANE_PUREPYTHON": purepython}
    for page, code in scripts:
        r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, f"{page}:\n{code}\n{r.stdout}{r.stderr}"


def test_the_run_folder_page_names_every_file_of_the_run_folder():
    from hyperplane import runfolder

    paths = runfolder.RunPaths(prefix="P", dir=Path("/run/hyperplane"))
    names = {getattr(paths, attr).name for attr, value in vars(runfolder.RunPaths).items()
             if isinstance(value, property)}
    assert len(names) >= 8
    page = (DOCS / "reference" / "runtime.md").read_text()
    missing = sorted(n for n in names if f"`{n}" not in page)
    assert not missing, f"run-folder files not in docs/reference/runtime.md: {missing}"


def _expanded(text: str) -> set[str]:
    """The names in backticks of a page, ``a_{b,c}_d`` written out as ``a_b_d`` and ``a_c_d``."""
    import itertools

    names = set()
    for name in re.findall(r"`([a-z_{},]+)`", text):
        parts = re.split(r"\{([^}]*)\}", name)
        choices = [[p] if i % 2 == 0 else p.split(",") for i, p in enumerate(parts)]
        names |= {"".join(c) for c in itertools.product(*choices)}
    return names


def test_the_metrics_page_names_every_metric_family():
    """Every family hyperplane/metrics.py exports has its row in docs/observability.md."""
    from hyperplane import metrics

    source = (ROOT / "hyperplane" / "metrics.py").read_text()
    families = {f for f in re.findall(r'\.family\(\s*"(hyperplane_[a-z_]+)"', source)
                if not f.endswith("_")}
    families |= {"hyperplane_eni_" + metrics._snake(aws) for aws, *_ in metrics.ENI_METRICS}
    assert len(families) >= 25
    documented = _expanded((DOCS / "observability.md").read_text())
    missing = sorted(f for f in families if f not in documented and f + "_total" not in documented)
    assert not missing, f"metrics not in docs/observability.md: {missing}"


def test_the_flow_log_page_names_every_field():
    from hyperplane.config.model import FLOW_LOG_FIELDS

    page = (DOCS / "observability.md").read_text()
    missing = [f for f in FLOW_LOG_FIELDS if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", page)]
    assert not missing, f"flow-log fields not in docs/observability.md: {missing}"
