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


@pytest.hookimpl(trylast=True)     # after pytest-benchmark's table
def pytest_terminal_summary(terminalreporter, config):
    """The per-operation figures of each benchmark (pytest-benchmark shows per-call times)."""
    session = getattr(config, "_benchmarksession", None)
    rows = [(b.name, k, v) for b in getattr(session, "benchmarks", []) or []
            for k, v in (b.extra_info or {}).items()]
    if not rows:
        return
    tr = terminalreporter
    tr.section("per operation (medians)")
    width = max(len(name) for name, _, _ in rows)
    for name, what, value in rows:
        tr.write_line(f"{name:{width}}  {value:>12,.2f}  {what}" if isinstance(value, float)
                      else f"{name:{width}}  {value:>12,}  {what}")
