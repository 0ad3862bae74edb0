"""Hyperplane: a userspace V2N NAT data plane (Lambda's Hyperplane ENI) on network namespaces.

The public API (reference: docs/api.md):

- ``hyperplane.Lab``: a running lab for tests, ``with hyperplane.Lab.up("lab.toml") as lab:``;
- ``hyperplane.Nat``: the NAT itself, no namespaces needed; the C core
  (``hyperplane._core.Nat``), or the pure-Python reference model (``hyperplane.model.Nat``)
  when the environment has ``HYPERPLANE_PUREPYTHON=1``: one interface, the same results;
- ``hyperplane.Connection``: a tracked connection, as both of them and ``Lab.connections``
  return it;
- ``hyperplane.Counting``: the counter deltas of ``Lab.counting()``;
- ``hyperplane.Config`` and ``hyperplane.load_config``: a lab's typed configuration;
- ``hyperplane.HyperplaneError``: the root of every error raised on purpose (``ConfigError``,
  ``LabError``, ``ControlError``, ``NotRunning``, ``RuntimeFailure``, ``CoreError``, ...).

The pytest plugin (``hyperplane.pytest_plugin``, docs/lab-testing.md) gives tests a
``hyperplane_lab`` fixture.
"""

import os
from typing import TYPE_CHECKING

__version__ = "0.1.0"
"""The package's version, as `hyperplane --version` prints it."""

from .errors import (CliError, ConfigError, ControlError, CoreError, CoreLimit,  # noqa: E402
                     CoreMemoryError, CoreRefused, ErrorAnswer, HyperplaneError, LabError,
                     NotRunning, RuntimeFailure, StateMismatch)
from .api import CommandFailed, Counting, Lab, WaitTimeout  # noqa: E402
from .config import Config, load_config  # noqa: E402
from .connection import Connection  # noqa: E402

PUREPYTHON = os.environ.get("HYPERPLANE_PUREPYTHON", "") not in ("", "0")
"""Whether ``hyperplane.Nat`` is the pure-Python reference model (``HYPERPLANE_PUREPYTHON=1``
in the environment at import) rather than the C core."""

if TYPE_CHECKING:
    from ._core import Nat
elif PUREPYTHON:
    from .model import Nat
else:
    try:
        from ._core import Nat
    except ImportError as _missing:     # the extension is not built: the rest still imports
        _CORE_MISSING = _missing

        def __getattr__(name: str) -> object:
            if name == "Nat":
                raise ImportError("hyperplane.Nat: the C core hyperplane._core is not built "
                                  "(make build), or set HYPERPLANE_PUREPYTHON=1 for the "
                                  f"reference model ({_CORE_MISSING})") from _CORE_MISSING
            raise AttributeError(f"module 'hyperplane' has no attribute {name!r}")

__all__ = [
    "CliError", "CommandFailed", "Config", "ConfigError", "Connection", "ControlError",
    "CoreError", "CoreLimit", "CoreMemoryError", "CoreRefused", "Counting", "ErrorAnswer",
    "HyperplaneError", "Lab", "LabError", "Nat", "NotRunning", "PUREPYTHON", "RuntimeFailure",
    "StateMismatch", "WaitTimeout", "__version__", "load_config",
]
