"""Opt-in smoke run of the end-to-end benchmark (bench/e2e.py): HP_E2E=1, root.

Checks only that the harness works — both paths carry traffic through their NAT, every figure
is measured, and nothing of the lab is left behind. The figures themselves are reported, not
asserted (`make bench-e2e` prints them).

    sudo HP_E2E=1 python -m pytest bench/test_e2e.py -m e2e -q
"""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.environ.get("HP_E2E") != "1",
                       reason="end-to-end benchmark: opt in with HP_E2E=1"),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
]


def test_e2e_smoke(tmp_path):
    import e2e
    from hyperplane.lab import netns

    prefix = "bt" + os.urandom(1).hex()
    out = tmp_path / "e2e.json"
    try:
        rc = e2e.main(["--seconds", "2", "--repeat", "1", "--json", str(out),
                       "--prefix", prefix])
    finally:
        left = [n for n in netns.list_namespaces() if n.startswith(f"{prefix}-")]
    assert rc == 0
    assert left == []
    doc = json.loads(out.read_text())
    for key, row in doc["summary"].items():
        assert row["hyperplane_median"] > 0, key
        assert row["kernel_median"] > 0, key
        assert row["ratio"] is not None, key
    assert doc["masquerade_rule_packets"] > 0
