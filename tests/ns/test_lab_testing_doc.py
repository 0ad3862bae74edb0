"""docs/lab-testing.md's worked example runs as written: its files, extracted from the page
into a folder outside the repository, pass under plain `python -m pytest` there, with only the
package and its plugin (as installed; from this tree when it is not)."""

from __future__ import annotations

import os
import subprocess
import sys

from docfiles import ROOT, plugin_args, write_example


def test_the_worked_example_passes_outside_the_repository(tmp_path):
    folder = tmp_path / "my-service-tests"
    folder.mkdir()
    write_example(folder)
    assert ROOT not in folder.parents
    env = {**os.environ, "PYTHONPATH": str(ROOT)}     # the code under test, installed or not
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q",
                        *plugin_args()], cwd=folder, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "1 passed" in r.stdout, r.stdout
