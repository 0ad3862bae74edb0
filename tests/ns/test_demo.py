"""The demo runs on the public API (hyperplane.Lab) end to end: functions reach the servers by
name through the NAT, unsolicited inbound is dropped and counted, and the lab is gone after."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT, new_prefix
from test_api import leftovers


def test_the_demo_runs_and_leaves_nothing():
    prefix = new_prefix()
    r = subprocess.run([sys.executable, "-c", "import sys; from hyperplane.demo import run_demo; "
                        f"sys.exit(run_demo(prefix={prefix!r}))"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout
    assert "api -> web:7 tcp/IPv4: answered" in out, out
    assert "report -> db:7 tcp/IPv4: answered" in out, out
    assert "api -> http://web:8080/: 200" in out, out
    assert "drop.IN_UNSOLICITED_SYN +" in out, out
    assert f"removed lab {prefix!r}" in out
    assert leftovers(prefix) == []
