"""Every error Hyperplane raises on purpose: one root, ``HyperplaneError``, so a caller can write
``except hyperplane.HyperplaneError``. Each class keeps the builtin base its callers relied on
before there was a root (``ConfigError`` is still a ``ValueError``, ``CoreError`` an ``OSError``).

The C core's return codes become exceptions here and nowhere else: functions of the data plane
and the ring return ``-errno`` (``errno_error``); the NAT's own functions return the small codes
named below.

A leaf module: it imports nothing of Hyperplane.
"""

from __future__ import annotations

import errno
import os

# Return codes of the NAT's functions (csrc/nat/hp_nat.h) that are not -errno.
NAT_REFUSED = -1        # a bad id or address, a full fixed-size array
ENI_MISMATCH = -2       # hp_nat_eni_prepare: the state file's ENI has other addresses
ENI_BUSY = -2           # hp_nat_group_retire_eni: the ENI still has connections
ENI_IN_USE = -3         # hp_nat_eni_prepare: the id asked for is a live ENI's


class HyperplaneError(Exception):
    """The root of every error Hyperplane raises on purpose."""


class ConfigError(HyperplaneError, ValueError):
    """A configuration problem: ``field`` names the setting, ``problem`` says what is wrong.

    A file's validation reports every problem it finds in one ConfigError: ``errors`` lists
    them (each a ConfigError of one field, in the order found: each table's own settings,
    then the checks across the lab); ``field``, ``problem`` and the message's start are the
    first one's, and the message ends with the fields of the others.
    An error of one problem has ``errors == (itself,)``."""

    def __init__(self, field: str, problem: str, source: str | None = None):
        self.field = field
        self.problem = problem
        self.source = source
        self.errors: tuple[ConfigError, ...] = (self,)
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{field}: {problem}")

    @classmethod
    def of(cls, errors: "list[ConfigError]") -> "ConfigError":
        """One error that carries ``errors`` (at least one)."""
        first, more = errors[0], len(errors) - 1
        if not more:
            return first
        e = cls(first.field, first.problem + f" (and {more} more problem{'s' * (more > 1)}: "
                                              + ", ".join(x.field for x in errors[1:]) + ")",
                first.source)
        e.problem = first.problem
        e.errors = tuple(errors)
        return e


class LabError(HyperplaneError, RuntimeError):
    """The lab cannot do what was asked (no room for another ENI, unknown subnet, ...)."""


class ControlError(HyperplaneError, RuntimeError):
    """The data plane did not answer, or answered with an error."""


class ErrorAnswer(ControlError):
    """The data plane answered with an error."""


class NotRunning(ControlError):
    """Nothing listens on the control socket: the data plane is not running."""


class RuntimeFailure(HyperplaneError):
    """Starting or stopping failed in a way the user can act on (the message says how)."""


class CliError(HyperplaneError):
    """A command of the CLI failed in a way the user can act on (not root, an ambiguous or
    missing lab, or one of the errors above re-raised): printed without a traceback, the
    process exits with ``code``."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


class CoreError(HyperplaneError, OSError):
    """A call into the C core failed; ``errno`` and ``strerror`` as an ``OSError``'s."""


class CoreMemoryError(CoreError, MemoryError):
    """The C core could not allocate what the call needs."""


class CoreRefused(CoreError, ValueError):
    """The C core refused the call's arguments (an unknown id, a bad address or state)."""


class StateMismatch(CoreRefused):
    """The state file kept across a restart does not fit the lab (ENIs in another order, with
    other addresses): restarting will not help."""


class CoreLimit(CoreError, RuntimeError):
    """A fixed bound of the C core is reached (ENIs, groups, neighbour entries)."""


# How -errno return codes map to the classes above; other codes give a plain CoreError.
_BY_ERRNO: dict[int, type[CoreError]] = {
    errno.ENOMEM: CoreMemoryError,
    errno.EINVAL: CoreRefused,
    errno.ENOENT: CoreRefused,
    errno.ENOSPC: CoreLimit,
}


def errno_error(rc: int, what: str, detail: str = "") -> CoreError:
    """The exception for a C call that returned ``rc`` = -errno (< 0). ``what`` names the call,
    ``detail`` is the core's own message when it has one."""
    code = -rc
    return _BY_ERRNO.get(code, CoreError)(code, f"{what}: {detail or os.strerror(code)}")


def refused(what: str) -> CoreRefused:
    """The exception for a NAT function that returned NAT_REFUSED; ``what`` says what failed."""
    return CoreRefused(errno.EINVAL, what)
