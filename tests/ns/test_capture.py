"""Captures on both sides of the NAT in a running lab: `tshark -r` reads both pcaps, the index
pairs every connection's halves (each packet once on each side), and `hyperplane trace --live`
traces a packet a function really sent, model and C core agreeing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import pytest

from test_observe import running_lab
from test_v2n import CLI, ECHO, TOOLS

pytestmark = pytest.mark.skipif(shutil.which("tshark") is None,
                                reason="tshark is missing (scripts/install-system-deps)")


def tshark_count(path, display_filter=None) -> int:
    argv = ["tshark", "-r", str(path), "-T", "fields", "-e", "frame.number"]
    if display_filter:
        argv += ["-Y", display_filter]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return len(r.stdout.split())


def echo(lab, proto: str, host: str) -> None:
    r = lab.exec("api", TOOLS + ["echo", f"--{proto}", host, str(ECHO), "hello", "--timeout", "3"],
                 timeout=20)
    assert r.returncode == 0, r.stderr


@pytest.fixture(scope="module")
def echo_lab():
    with running_lab("", ["--tcp", str(ECHO), "--udp", str(ECHO)]) as lab:
        yield lab


def test_both_sides_pcaps_and_index(echo_lab, tmp_path):
    import hyperplane
    lab = echo_lab
    web = lab.state.host("web")
    with hyperplane.Lab.attach(lab.prefix).capture(tmp_path) as cap:
        for proto in ("tcp", "udp"):
            echo(lab, proto, web.ipv4)
        echo(lab, "udp", web.ipv6)
    index = json.loads((tmp_path / "index.json").read_text())
    inside, outside = tmp_path / "inside.pcap", tmp_path / "outside.pcap"
    assert tshark_count(inside) >= 10 and tshark_count(outside) >= 10
    ours = [c for c in index["connections"] if c["inside"]["tuple"].endswith(f":{ECHO}")]
    assert {c["protocol"] for c in ours} == {"tcp", "udp"} and len(ours) >= 3, index
    for c in ours:
        n_in, n_out = len(c["inside"]["frames"]), len(c["outside"]["frames"])
        # Every packet crossed the NAT once: the same count on each side, as tshark finds it.
        assert n_in == n_out >= 2, c
        assert tshark_count(inside, c["inside"]["filter"]) == n_in
        assert tshark_count(outside, c["outside"]["filter"]) == n_out
    assert cap.counts["inside"] == tshark_count(inside)


def test_trace_live_from_a_function(echo_lab):
    lab = echo_lab
    web = lab.state.host("web")
    tracer = subprocess.Popen(CLI + ["trace", "--live", "--from", "api", "--prefix", lab.prefix,
                                     "--timeout", "20"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "waiting up to" in tracer.stderr.readline()
        deadline = time.monotonic() + 20
        while tracer.poll() is None and time.monotonic() < deadline:
            echo(lab, "udp", web.ipv4)      # until the capture has caught one
        out, err = tracer.communicate(timeout=30)
    finally:
        if tracer.poll() is None:
            tracer.kill()
    assert tracer.returncode == 0, err
    assert "trace: captured live from api" in out
    assert "model  FORWARD NONE" in out and "agree" in out
