"""No one takes more than a share (issue 8): per-function quotas with fast refusals, in a
running lab (docs/semantics.md section 13).

- A small table (64 connections, each function at most half): `flood` opens connections until
  it is refused; its refused connects fail at once (a RST: ECONNREFUSED; an ICMP administratively
  prohibited for UDP: EHOSTUNREACH), `calm` still connects, and `stats` says who was refused.
"""

from __future__ import annotations

import errno
import json
import subprocess
import sys

import pytest

from conftest import detached_lab
from test_secgroups import SgLab
from test_v2n import TOOLS, cli

ECHO = 7
CAPACITY = 64
FLOOD_ATTEMPTS = 60
LAB = """
[inside]
cidr4 = "10.200.0.0/24"

[hyperplane]
capacity = {capacity}

[vpc.subnets.a]
cidr4 = "10.1.1.0/24"

[hosts.web]
subnet = "a"

[functions.flood]
subnet_ids = ["a"]

[functions.calm]
subnet_ids = ["a"]
"""

# Opens TCP connections to host:port and keeps them, timing each refused one; then connected
# UDP sockets, each sending one datagram and waiting for the answer or the error. Prints one
# JSON line, then holds everything until stdin closes.
FLOOD = r"""
import json, socket, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
held, tcp, udp = [], [], []
for _ in range(n):
    s = socket.socket()
    s.settimeout(5)
    t = time.monotonic()
    try:
        s.connect((host, port))
        held.append(s)
    except OSError as e:
        tcp.append([e.errno, (time.monotonic() - t) * 1000])
        s.close()
for _ in range(10):
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.settimeout(5)
    u.connect((host, port))
    t = time.monotonic()
    try:
        u.send(b"q" * 64)
        u.recv(100)
        udp.append([0, (time.monotonic() - t) * 1000])
    except OSError as e:
        udp.append([e.errno, (time.monotonic() - t) * 1000])
    u.close()
print(json.dumps({"held": len(held), "tcp": tcp, "udp": udp}), flush=True)
sys.stdin.read()
"""


class QuotaLab(SgLab):
    """SgLab's helpers (popen, request, close) over this file's lab."""

    def __init__(self, prefix, tmp_path, capacity):
        from hyperplane.lab import Lab
        cfg = tmp_path / "lab.toml"
        cfg.write_text(f'prefix = "{prefix}"\n' + LAB.format(capacity=capacity))
        self.prefix = prefix
        self.procs = []
        cli("up", "--detach", "-c", str(cfg))
        self.lab = Lab.attach(prefix)
        self.web = self.lab.state.host("web")
        self.eni = self.lab.state.enis[0]
        p = self.popen("web", TOOLS + ["serve", "--tcp", str(ECHO), "--udp", str(ECHO + 1)],
                       stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "ready"

    def stats(self):
        return self.request("stats")


@pytest.fixture
def quota_lab(tmp_path):
    with detached_lab(lambda prefix: QuotaLab(prefix, tmp_path, CAPACITY)) as lab:
        yield lab


def test_a_flooding_function_is_refused_fast_and_others_still_connect(quota_lab):
    lab = quota_lab
    flood = lab.popen("flood", [sys.executable, "-c", FLOOD, lab.web.ipv4, str(ECHO),
                                str(FLOOD_ATTEMPTS)], stdin=subprocess.PIPE,
                      stdout=subprocess.PIPE, text=True)
    report = json.loads(flood.stdout.readline())
    # Its share: half the table.
    assert report["held"] == CAPACITY // 2, report
    refused = report["tcp"]
    assert len(refused) == FLOOD_ATTEMPTS - CAPACITY // 2
    assert {e for e, _ in refused} == {errno.ECONNREFUSED}, refused
    # Fast: answered by a RST, not a SYN retransmitted (1 s) or a connect timeout.
    times = sorted(ms for _, ms in refused)
    print(f"refused connect(): median {times[len(times) // 2]:.1f} ms, max {times[-1]:.1f} ms")
    assert times[len(times) // 2] < 100 and times[-1] < 1000, times
    udp = report["udp"]      # the serve --udp port echoes; these are refused before it
    assert {e for e, _ in udp} == {errno.EHOSTUNREACH}, udp
    assert max(ms for _, ms in udp) < 1000, udp

    # The other function still gets through, while flood holds its share.
    r = lab.lab.exec("calm", TOOLS + ["echo", "--tcp", lab.web.ipv4, str(ECHO), "hi",
                                      "--timeout", "2"], timeout=20)
    assert r.returncode == 0, r.stderr

    by_name = {f["name"]: f for f in lab.stats()["functions"]}
    f, c = by_name["flood"], by_name["calm"]
    assert f["max_connections"] == c["max_connections"] == CAPACITY // 2
    assert f["refused_connections"] >= len(refused) + len(udp)
    assert f["connections"] == CAPACITY // 2
    assert c["refused_connections"] == 0 and c["created"] >= 1
    assert lab.stats()["nat"]["refusal_sent"] >= len(refused) + len(udp)
    flood.stdin.close()
    flood.wait(timeout=10)

