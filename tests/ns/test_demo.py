"""The demo runs on the public API (hyperplane.Lab) end to end: functions reach the servers by
name through the NAT, unsolicited inbound is dropped and counted, and the lab is gone after.
With --pcap (run_demo(pcap=...)), `tshark -r` reads both sides' captures and the index pairs
every connection's two halves, each the frames tshark finds for it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from conftest import ROOT, new_prefix
from test_api import leftovers


def test_the_demo_runs_and_leaves_nothing(tmp_path):
    prefix = new_prefix()
    r = subprocess.run([sys.executable, "-c", "import sys; from hyperplane.demo import run_demo; "
                        f"sys.exit(run_demo(prefix={prefix!r}, pcap={str(tmp_path)!r}))"],
                       cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout
    assert "api -> web:7 tcp/IPv4: answered" in out, out
    assert "report -> db:7 tcp/IPv4: answered" in out, out
    assert "api -> http://web:8080/: 200" in out, out
    assert "drop.IN_UNSOLICITED_SYN +" in out, out
    assert f"removed lab {prefix!r}" in out
    assert leftovers(prefix) == []
    if shutil.which("tshark") is None:
        return                              # the captures' check needs tshark
    from test_capture import tshark_count
    index = json.loads((tmp_path / "index.json").read_text())
    assert all(tshark_count(tmp_path / f"{side}.pcap") > 0 for side in ("inside", "outside"))
    assert {c["protocol"] for c in index["connections"]} == {"tcp", "udp"}, index
    for c in index["connections"]:
        for side in ("inside", "outside"):
            half = c[side]
            assert half["frames"], c
            assert tshark_count(tmp_path / index[side], half["filter"]) == len(half["frames"]), c
