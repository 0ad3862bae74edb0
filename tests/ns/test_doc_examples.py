"""The lab examples of the pages run as written: the README's and the how-to guides' test
files (their ``# file:`` blocks), written into a folder outside the repository, pass under
plain ``python -m pytest`` there with only the package and its plugin (docs/lab-testing.md's
worked example has its own test, test_lab_testing_doc.py); and each script example that brings
up a ``hyperplane.Lab`` runs (those that need no lab run in tests/unit/test_docs.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from docfiles import ROOT, example_files, plugin_args, write_example
from docsnippets import script_blocks

PAGES = ["README.md", "docs/howto/connection-reset.md"]


@pytest.mark.parametrize("page", PAGES)
def test_the_pages_lab_tests_pass_outside_the_repository(page, tmp_path):
    doc = ROOT / page
    tests = [name for name in example_files(doc) if name.startswith("test_")]
    assert tests, f"{page}: no test file among its '# file:' blocks"
    folder = tmp_path / "examples"
    folder.mkdir()
    write_example(folder, doc)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}     # the code under test, installed or not
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rs",
                        *plugin_args()], cwd=folder, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    summary = r.stdout.strip().splitlines()[-1]
    expected = sum(len(re.findall(r"^def test_", (folder / name).read_text(), re.M))
                   for name in tests)
    assert re.search(rf"\b{expected} passed\b", summary) and "skipped" not in summary, r.stdout



@pytest.mark.parametrize("page, code", script_blocks(needs_lab=True))
def test_the_pages_lab_scripts_run(page, code, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{page}:\n{code}\n{r.stdout[-3000:]}{r.stderr[-3000:]}"
