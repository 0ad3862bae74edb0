"""Hyperplane: a userspace V2N NAT data plane (Lambda's Hyperplane ENI) on network namespaces."""

__version__ = "0.1.0"
"""The package's version, as `hyperplane --version` prints it."""

from .errors import (CliError, ConfigError, ControlError, CoreError, CoreLimit,  # noqa: E402
                     CoreMemoryError, CoreRefused, ErrorAnswer, HyperplaneError, LabError,
                     NotRunning, RuntimeFailure, StateMismatch)

__all__ = [
    "CliError", "ConfigError", "ControlError", "CoreError", "CoreLimit", "CoreMemoryError",
    "CoreRefused", "ErrorAnswer", "HyperplaneError", "LabError", "NotRunning",
    "RuntimeFailure", "StateMismatch", "__version__",
]
