"""Fixtures for the benchmarks (the set-ups themselves are in setups.py)."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from setups import filled_c_nat  # noqa: E402


@pytest.fixture(scope="session")
def nat_10k():
    return filled_c_nat(10_000)


@pytest.fixture(scope="session")
def nat_1m():
    return filled_c_nat(1_000_000)
