"""The pytest plugin: a ``hyperplane_lab`` fixture, a running ``hyperplane.Lab`` per test (or
per module), always removed; a failing test's report shows what the lab looked like.

Installed with the package (entry point ``pytest11``: ``hyperplane``); without an install,
load it with ``-p hyperplane.pytest_plugin``. Reference: docs/lab-testing.md.

Which lab, in this order:

- the closest ``@pytest.mark.hyperplane_lab(config=..., scope=...)`` marker (on the test, its
  class or its module's ``pytestmark``): ``config`` a TOML path (relative to the test file),
  a dict of the TOML's tables or a ``hyperplane.Config``; ``scope`` "function" or "module";
- the ini options ``hyperplane_lab_config`` (a path, relative to the ini file) and
  ``hyperplane_lab_scope``;
- the built-in lab, a new one per test.

Each lab gets a fresh prefix, so parallel runs (pytest-xdist) never collide. When the machine
cannot run a lab (not root, a kernel without network namespaces, AF_PACKET or IPv6) the tests
that use the fixture are skipped with the reason.
"""

from __future__ import annotations

import atexit
import json
import os
from pathlib import Path
from typing import Any, Generator, Iterator

import pytest

from .api import ConfigLike, Lab, missing_requirements
from .config import Config

MARKER = "hyperplane_lab"
INI_CONFIG, INI_SCOPE = "hyperplane_lab_config", "hyperplane_lab_scope"
SCOPES = ("function", "module")
_LAB = pytest.StashKey[Lab]()
_LIVE: dict[str, Lab] = {}           # prefix -> lab, every lab this process has up


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(INI_CONFIG, "the lab config (TOML) of the hyperplane_lab fixture, relative "
                              "to the ini file (default: the built-in lab)", default="")
    parser.addini(INI_SCOPE, "the hyperplane_lab fixture's scope: function (a lab per test, "
                             "the default) or module (one lab per test module)",
                  default="function")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{MARKER}(config=None, scope='function'): the lab of the hyperplane_lab "
                   "fixture: a TOML path (relative to the test file), a dict or a "
                   "hyperplane.Config; a lab per test (function) or per module (module)")


def _settings(request: pytest.FixtureRequest) -> tuple[ConfigLike, str, str]:
    """(config, scope, key): key names the config, so a module's tests share a lab only when
    they ask for the same one."""
    marker = request.node.get_closest_marker(MARKER)
    kwargs: dict[str, Any] = dict(marker.kwargs) if marker else {}
    if marker and marker.args:
        kwargs.setdefault("config", marker.args[0])
    config: ConfigLike = kwargs.get("config")
    if config is None:
        ini = str(request.config.getini(INI_CONFIG) or "")
        if ini:
            base = request.config.inipath.parent if request.config.inipath else \
                request.config.rootpath
            config = base / ini
    elif isinstance(config, (str, os.PathLike)):
        config = Path(request.path).parent / config
    scope = str(kwargs.get("scope") or request.config.getini(INI_SCOPE) or "function")
    if scope not in SCOPES:
        raise pytest.UsageError(f"hyperplane_lab: scope is function or module, not {scope!r}")
    if config is None:
        key = "built-in"
    elif isinstance(config, Config):
        key = f"config-{id(config)}"
    elif isinstance(config, (str, os.PathLike)):
        key = str(Path(config).resolve())
    else:
        key = json.dumps(config, sort_keys=True, default=str)
    return config, scope, key


def _up(config: ConfigLike) -> Lab:
    missing = missing_requirements()
    if missing:
        pytest.skip("a hyperplane lab needs " + "; ".join(missing))
    lab = Lab.up(config)
    _LIVE[lab.prefix] = lab
    return lab


def _down(lab: Lab) -> None:
    _LIVE.pop(lab.prefix, None)
    lab.down()


@pytest.fixture(scope="module")
def _hyperplane_module_labs() -> Iterator[dict[str, Lab]]:
    """The module-scoped labs of one test module, by config key."""
    labs: dict[str, Lab] = {}
    try:
        yield labs
    finally:
        for lab in labs.values():
            _down(lab)


@pytest.fixture
def hyperplane_lab(request: pytest.FixtureRequest) -> Generator[Lab, None, None]:
    """A running ``hyperplane.Lab`` (see the module's docstring for which one); removed after
    the test (or the module), also when it failed or was interrupted."""
    config, scope, key = _settings(request)
    if scope == "module":
        labs: dict[str, Lab] = request.getfixturevalue("_hyperplane_module_labs")
        if key not in labs:
            labs[key] = _up(config)
        lab = labs[key]
        request.node.stash[_LAB] = lab
        yield lab
        return
    lab = _up(config)
    request.node.stash[_LAB] = lab
    try:
        yield lab
    finally:
        _down(lab)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, Any, None]:
    """A failing test that used a lab gets a report section with the lab's connection
    table, counters, ENIs and the data plane's log tail (taken before the lab goes)."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    lab = item.stash.get(_LAB, None)
    if lab is not None and report.failed and call.when == "call":
        report.sections.append((f"hyperplane lab {lab.prefix}", lab.report()))


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """After Ctrl-C, or a teardown that never ran: no lab of this process stays up."""
    _down_all()


def _down_all() -> None:
    for lab in list(_LIVE.values()):
        try:
            _down(lab)
        except Exception as e:      # keep removing the others
            print(f"hyperplane: removing lab {lab.prefix!r} failed: {e}")


atexit.register(_down_all)
