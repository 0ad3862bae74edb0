"""`hyperplane bench --quick` end to end (root): every test through every middle, the table,
bench.json and bench.png, and nothing of its lab left behind. Figures are not asserted (the
machine is shared); that each one was measured, is."""

from __future__ import annotations

import json
import subprocess
import sys

from hyperplane.benchmark.middles import MIDDLES
from hyperplane.benchmark.suite import METRICS
from hyperplane.lab import netns

from conftest import ROOT, new_prefix

HP_ONLY = {"dataplane-cpu-per-mpkt-udp64"}


def test_quick_bench_measures_every_test_through_every_middle(tmp_path):
    prefix = new_prefix()
    out = tmp_path / "out"
    try:
        r = subprocess.run([sys.executable, "-m", "hyperplane.cli", "bench", "--quick",
                            "--prefix", prefix, "--out", str(out)], cwd=ROOT,
                           capture_output=True, text=True, timeout=600)
    finally:
        left = [n for n in netns.list_namespaces() if n.startswith(f"{prefix}-")]
    assert r.returncode == 0, r.stderr[-3000:]
    assert left == []
    doc = json.loads((out / "bench.json").read_text())
    got = {(row["test"], row["middle"]): row for row in doc["results"]}
    # a middle this kernel cannot build (flowtables) is missing, and says why
    assert set(doc["middles"]) | set(doc["middles_unavailable"]) == set(MIDDLES)
    built = [m for m in MIDDLES if m in doc["middles"]]
    for metric, (unit, _) in METRICS.items():
        for middle in (("hyperplane",) if metric in HP_ONLY else built):
            row = got.get((metric, middle))
            assert row is not None, (metric, middle)
            assert row["unit"] == unit
            # a zero-loss search on a busy machine may find no loss-free rate: 0 is a result
            if metric.endswith("-zeroloss"):
                assert row["value"] >= 0, (metric, middle, row)
            else:
                assert row["value"] > 0, (metric, middle, row)
            if middle == "kernel-nat" and row["value"]:
                assert row["ratio_to_kernel_nat"] == 1.0
    # every table row printed, and a chart drawn
    for metric in METRICS:
        assert metric in r.stdout
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the table-scale flows were all in both NATs' tables while they were measured
    for s in doc["samples"]:
        if s["test"].startswith("scale-") and s["middle"] != "routing":
            assert s["live_after"] >= s["flows"], (s["test"], s["middle"], s["live_after"])
