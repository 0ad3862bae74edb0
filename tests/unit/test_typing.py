"""Types users see: ``mypy --strict`` passes on the worked example of docs/lab-testing.md
(through the package's py.typed and the extension's stubs), and the stubs declare every
public name of the extension."""

from __future__ import annotations

import ast
import inspect
import os
import subprocess
import sys
import types

import pytest

from docfiles import ROOT, write_example


def test_mypy_strict_passes_on_the_worked_example(tmp_path):
    pytest.importorskip("mypy")
    files = [p for p in write_example(tmp_path) if p.suffix == ".py"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}    # the package as a user has it installed
    r = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental",
                        "--cache-dir", str(tmp_path / ".mypy_cache"), *map(str, files)],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Success: no issues found in 2 source files" in r.stdout


def test_mypy_strict_sees_a_wrong_use_of_the_api(tmp_path):
    """The check is not vacuous: a call with a wrong type fails it."""
    pytest.importorskip("mypy")
    (tmp_path / "test_wrong.py").write_text(
        "import hyperplane\n\n\n"
        "def test_wrong(hyperplane_lab: hyperplane.Lab) -> None:\n"
        "    hyperplane_lab.address('api', family='six')\n"
        "    n: int = hyperplane.Nat(capacity=16).connections()\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental",
                        "--cache-dir", str(tmp_path / ".mypy_cache"), "test_wrong.py"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 1, r.stdout + r.stderr
    assert 'Argument "family"' in r.stdout and "list[Connection]" in r.stdout, r.stdout


def _stub_params(path) -> dict[str, list[str]]:
    """{"Class.method" or "function": its parameter names} of a stub file (self left out)."""
    out: dict[str, list[str]] = {}
    for node in ast.parse(path.read_text()).body:
        scopes = [(f"{node.name}.", node.body)] if isinstance(node, ast.ClassDef) else \
            [("", [node])]
        for head, body in scopes:
            for f in body:
                if isinstance(f, ast.FunctionDef):
                    a = f.args
                    names = [x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
                    out[head + f.name] = [n for n in names if n != "self"]
    return out


def _stub_names(path) -> dict[str, set[str]]:
    """{top-level name: names declared in its body} of a stub file."""
    def name_of(node) -> list[str]:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            return [node.name]
        if isinstance(node, ast.AnnAssign):
            return [node.target.id]
        if isinstance(node, ast.Assign):
            return [t.id for t in node.targets]
        return []
    out: dict[str, set[str]] = {}
    for node in ast.parse(path.read_text()).body:
        for name in name_of(node):
            body = node.body if isinstance(node, ast.ClassDef) else []
            out[name] = {n for child in body for n in name_of(child)}
    return out


def test_the_stubs_declare_every_public_name_of_the_extension():
    core = pytest.importorskip("hyperplane._core")
    declared = _stub_names(ROOT / "hyperplane" / "_core.pyi")
    # the names the extension defines itself, not the modules and names it imports
    own = [n for n, v in vars(core).items() if not n.startswith("_")
           and not isinstance(v, types.ModuleType)
           and getattr(v, "__module__", core.__name__) == core.__name__]
    missing = [n for n in own if n not in declared]
    for cls in ("Nat", "Ring", "DataPlane"):
        missing += [f"{cls}.{n}" for n in dir(getattr(core, cls))
                    if not n.startswith("_") and n not in declared.get(cls, set())]
    assert not missing, f"declare these in hyperplane/_core.pyi: {missing}"


def test_the_stubs_name_the_parameters_the_extension_takes():
    core = pytest.importorskip("hyperplane._core")
    stubbed = _stub_params(ROOT / "hyperplane" / "_core.pyi")
    differ = []
    for qualname, names in stubbed.items():
        owner, _, attr = qualname.rpartition(".")
        obj = getattr(getattr(core, owner) if owner else core, attr, None)
        if attr.startswith("_") or not callable(obj):
            continue
        try:
            params = inspect.signature(obj).parameters.values()
        except (TypeError, ValueError):        # no signature recorded for it
            continue
        real = [p.name for p in params if p.name != "self"
                and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if real != names[:len(real)] or (len(names) > len(real) and not any(
                p.kind == p.VAR_KEYWORD for p in params)):
            differ.append(f"{qualname}: stub {names}, extension {real}")
    assert not differ, "hyperplane/_core.pyi is out of date:\n" + "\n".join(differ)
