"""One test suite, two implementations (the msgpack way): tests that take `NatClass` run
against the pure-Python model and against the C core."""

import os
import sys

import pytest

# tests/framegen.py is imported by name from the unit tests.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(params=["model", "c"])
def impl(request):
    return request.param


@pytest.fixture
def NatClass(impl):
    if impl == "c":
        return pytest.importorskip("hyperplane._core").Nat
    from hyperplane.model import Nat
    return Nat
