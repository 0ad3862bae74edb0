"""Punt policing per source and class (issue 15 part 3, docs/semantics.md section 13): one
function floods the gateway with ARP requests and pings on the shared inside port; another
function, its neighbour cache flushed, still resolves the gateway, still gets its own pings
answered, and still connects through the NAT. The flood is policed in C, by source and class."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import detached_lab
from test_neigh_trust import TrustLab
from test_v2n import ECHO, TOOLS

LAB = """
[inside]
cidr4 = "10.200.0.0/24"

[[subnets]]
name = "app"
cidr4 = "10.0.1.0/24"

[[hosts]]
name = "web"
subnet = "app"

[[functions]]
name = "flood"
subnets = ["app"]

[[functions]]
name = "calm"
subnets = ["app"]
"""

# ARP requests for the gateway and pings to it, from the function's own MAC and address (the
# port guard lets those by), about 20,000 frames a second until stdin closes; prints the count.
FLOOD = r"""
import select, socket, sys, time
from scapy.layers.inet import ICMP, IP
from scapy.layers.l2 import ARP, Ether
mac, addr, gw, gw_mac = sys.argv[1:5]
frames = [bytes(Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=mac, psrc=addr, pdst=gw)),
          bytes(Ether(src=mac, dst=gw_mac) / IP(src=addr, dst=gw) / ICMP(type=8) / (b"p" * 32))]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
print("flooding", flush=True)
sent = 0
while not select.select([sys.stdin], [], [], 0)[0]:
    for _ in range(20):
        s.send(frames[sent & 1])
        sent += 1
    time.sleep(0.001)
print(sent, flush=True)
"""


# Echo requests to argv[1], one at a time, each waited for up to a second; prints the answers.
PING = r"""
import os, select, socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
answered = 0
for seq in range(int(sys.argv[2])):
    body = struct.pack("!BBHHH", 8, 0, 0, os.getpid() & 0xFFFF, seq) + b"calm" * 8
    csum = sum(struct.unpack("!%dH" % (len(body) // 2), body))
    csum = (csum >> 16) + (csum & 0xFFFF)
    body = body[:2] + struct.pack("!H", ~(csum + (csum >> 16)) & 0xFFFF) + body[4:]
    s.sendto(body, (sys.argv[1], 0))
    while select.select([s], [], [], 1.0)[0]:
        reply = s.recv(2048)
        if reply[20] == 0 and struct.unpack("!HH", reply[24:28]) == (os.getpid() & 0xFFFF, seq):
            answered += 1
            break
print(answered)
"""


class FairnessLab(TrustLab):
    LAB = LAB


@pytest.fixture
def fair_lab(tmp_path):
    with detached_lab(lambda prefix: FairnessLab(prefix, tmp_path)) as lab:
        yield lab


def test_a_flooding_function_leaves_the_others_neighbour_resolution_working(fair_lab):
    lab = fair_lab
    state = lab.lab.state
    flood, calm, web = state.function("flood"), state.function("calm"), state.host("web")
    gw, gw_mac = state.inside.gateway4, state.inside.mac
    server = lab.lab.popen("web", TOOLS + ["serve", "--tcp", str(ECHO), "--udp", str(ECHO)],
                           stdout=subprocess.PIPE, text=True)
    lab.procs.append(server)
    assert server.stdout.readline().strip() == "ready"
    before = lab.request("stats")["dataplane"]
    flooder = lab.lab.popen("flood", [sys.executable, "-c", FLOOD, flood.mac, flood.ipv4, gw,
                                      gw_mac], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    lab.procs.append(flooder)
    assert flooder.stdout.readline().strip() == "flooding"
    try:
        for attempt in range(3):
            # calm forgets the gateway's MAC each time: it must ARP again through the flood.
            r = lab.lab.exec("calm", ["ip", "neigh", "flush", "dev", "eth0"])
            assert r.returncode == 0, r.stderr
            for proto in ("tcp", "udp"):
                assert lab.echo(proto, web.ipv4, ECHO, fn="calm"), (attempt, proto)
        r = lab.lab.exec("calm", [sys.executable, "-c", PING, gw, "5"], timeout=30)
        assert r.returncode == 0 and int(r.stdout) == 5, (r.stdout, r.stderr)
    finally:
        flooder.stdin.write("stop\n")
        flooder.stdin.flush()
        sent = int(flooder.stdout.readline())
        flooder.wait(timeout=10)
    after = lab.request("stats")["dataplane"]
    policed = {k: after[k] - before[k] for k in after
               if k.startswith("policed_class.") and after[k] > before[k]}
    print(f"flood sent {sent} frames; policed by class {policed}")
    assert sent > 10_000
    assert policed.get("policed_class.ARP", 0) > sent // 4, policed
    assert policed.get("policed_class.ECHO", 0) > sent // 4, policed
