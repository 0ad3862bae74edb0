"""The package as a user gets it: an sdist and a wheel built the way `pip` or `python -m build`
builds them (isolated, the wheel from the sdist, so the sdist is complete), installed into a
fresh virtual environment outside this checkout, where `python -m hyperplane --version` and
`import hyperplane._core` work; the wheel carries every module and every data file of the
package.

Slow (the C core is compiled twice, and the dependencies come from the package index): it
lives outside tests/unit so the everyday unit run stays quick; CI runs the whole of tests/."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "hyperplane"
# What the wheel must carry besides the modules: the built-in lab, the benchmark's C sender,
# the type stubs and their marker (PEP 561).
DATA_PATTERNS = ("*.toml", "benchmark/*.c", "*.pyi", "py.typed")
TIMEOUT_S = 1200

pytest.importorskip("build")


def version() -> str:
    """hyperplane.__version__ as this checkout writes it (the one place)."""
    ns: dict = {}
    for line in (PACKAGE / "__init__.py").read_text().splitlines():
        if line.startswith("__version__"):
            exec(line, ns)
    return ns["__version__"]


def run(argv, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run([str(a) for a in argv], capture_output=True, text=True,
                       timeout=TIMEOUT_S, **kw)
    assert r.returncode == 0, f"{argv}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def clean_env() -> dict:
    """No PYTHONPATH, and no virtual environment of the caller's: only what was installed."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "build", "--outdir", out, ROOT], cwd=ROOT, env=clean_env())
    return out


def fresh_venv(where: Path, install: Path) -> Path:
    """A new virtual environment with ``install`` (a wheel or an sdist); its python."""
    run([sys.executable, "-m", "venv", where], env=clean_env())
    python = where / "bin" / "python"
    run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", install],
        env=clean_env(), cwd=where)
    return python


def check_installed(python: Path, cwd: Path) -> None:
    """Run from outside the checkout: the installed package answers, not this tree."""
    r = run([python, "-m", "hyperplane", "--version"], cwd=cwd, env=clean_env())
    assert r.stdout.strip() == f"hyperplane {version()}"
    r = run([python, "-c", "import importlib.metadata, hyperplane, hyperplane._core as c; "
             "print(importlib.metadata.version('hyperplane')); print(hyperplane.__file__); "
             "print(c.__file__)"], cwd=cwd, env=clean_env())
    meta_version, init, core = r.stdout.split()
    assert meta_version == version()
    venv = python.parent.parent
    assert Path(init).is_relative_to(venv) and Path(core).is_relative_to(venv), r.stdout


def test_the_wheel_carries_every_module_and_data_file(dist):
    wheel = next(dist.glob("hyperplane-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    wanted = [p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts]
    for pattern in DATA_PATTERNS:
        wanted += PACKAGE.glob(pattern)
    missing = sorted(str(p.relative_to(ROOT)) for p in wanted
                     if str(p.relative_to(ROOT)) not in names)
    assert not missing, f"not in {wheel.name}: {missing}"
    assert any(n.startswith("hyperplane/_core.") and n.endswith(".so") for n in names)
    assert f"hyperplane-{version()}.dist-info/licenses/LICENSE" in names
    metadata = zipfile.ZipFile(wheel).read(f"hyperplane-{version()}.dist-info/METADATA").decode()
    assert f"Version: {version()}\n" in metadata and "Requires-Python: >=3.11" in metadata


def test_the_sdist_carries_the_c_core_and_the_license(dist):
    sdist = next(dist.glob("hyperplane-*.tar.gz"))
    top = f"hyperplane-{version()}"
    names = set(tarfile.open(sdist).getnames())
    wanted = ["LICENSE", "pyproject.toml", "setup.py", "hyperplane/_core.pyx"]
    wanted += [str(p.relative_to(ROOT)) for p in (ROOT / "csrc").glob("*/*.[ch]")]
    missing = [w for w in wanted if f"{top}/{w}" not in names]
    assert not missing, f"not in {sdist.name}: {missing}"


def test_the_wheel_installs_into_a_fresh_venv_and_runs(dist, tmp_path):
    python = fresh_venv(tmp_path / "venv", next(dist.glob("hyperplane-*.whl")))
    check_installed(python, tmp_path)


def test_the_sdist_installs_into_a_fresh_venv_and_runs(dist, tmp_path):
    python = fresh_venv(tmp_path / "venv", next(dist.glob("hyperplane-*.tar.gz")))
    check_installed(python, tmp_path)
