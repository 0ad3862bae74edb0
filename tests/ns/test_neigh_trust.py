"""Neighbours the wire cannot move (issue 15 part 4, docs/semantics.md section 13): a customer
host forges ARP replies, gratuitous ARPs and neighbour advertisements claiming a neighbour the
lab pinned (another host, the subnet gateway) and one it has not resolved yet, and floods
advertisements for random link-local addresses. Nothing is diverted: a function still reaches
every one of them, the unresolved one resolved by the answer to the data plane's own
solicitation, and the slow path counts what it refused."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import detached_lab
from test_v2n import ECHO, TOOLS, cli

LAB = """
[inside]
cidr4 = "10.200.0.0/24"
cidr6 = "fd00:200::/64"

[[subnets]]
name = "app"
cidr4 = "10.0.1.0/24"
cidr6 = "fd00:1::/64"

[[hosts]]
name = "web"
subnet = "app"

[[hosts]]
name = "mallory"
subnet = "app"

[[functions]]
name = "api"
subnets = ["app"]
ipv6 = true
"""
EXTRA4, EXTRA6 = "10.0.1.77", "fd00:1::77"     # on web, unknown to the lab: resolved by ARP / NDP
RANDOM_NAS = 3000

# From mallory's own interface, with its own MAC everywhere (so the frame's source agrees with
# the claim): ARP replies and gratuitous ARPs, unsolicited NAs (override set), then NAs for
# random link-local addresses. argv: ifname, ENI MAC, then the claimed addresses.
FORGE = r"""
import os, socket, sys
from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6NDOptDstLLAddr, IPv6
from scapy.layers.l2 import ARP, Ether
ifname, eni_mac, n_random, claims = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((ifname, 0))
me = s.getsockname()[4].hex(":")
frames = []
for addr in claims:
    if ":" in addr:
        for dst, dmac in (("ff02::1", "33:33:00:00:00:01"), ("fe80::1", eni_mac)):
            frames.append(Ether(src=me, dst=dmac) / IPv6(src=addr, dst=dst, hlim=255)
                          / ICMPv6ND_NA(tgt=addr, R=0, S=0, O=1) / ICMPv6NDOptDstLLAddr(lladdr=me))
    else:
        frames.append(Ether(src=me, dst=eni_mac) / ARP(op=2, hwsrc=me, psrc=addr, hwdst=eni_mac))
        frames.append(Ether(src=me, dst="ff:ff:ff:ff:ff:ff")
                      / ARP(op=1, hwsrc=me, psrc=addr, pdst=addr))
sent = 0
for _ in range(20):
    for f in frames:
        s.send(bytes(f))
        sent += 1
for _ in range(n_random):
    addr = "fe80::" + os.urandom(8).hex(":", 2)
    s.send(bytes(Ether(src=me, dst="33:33:00:00:00:01") / IPv6(src=addr, dst="ff02::1", hlim=255)
                 / ICMPv6ND_NA(tgt=addr, O=1) / ICMPv6NDOptDstLLAddr(lladdr=me)))
    sent += 1
print(sent)
"""


class TrustLab:
    LAB = LAB

    def __init__(self, prefix, tmp_path):
        from hyperplane.lab import Lab
        cfg = tmp_path / "lab.toml"
        cfg.write_text(f'prefix = "{prefix}"\n' + self.LAB)
        self.prefix, self.procs = prefix, []
        cli("up", "--detach", "-c", str(cfg))
        self.lab = Lab.attach(prefix)

    def request(self, what):
        from hyperplane import control
        return control.request(self.prefix, what, timeout=10)

    def echo(self, proto, host, port, fn="api"):
        r = self.lab.exec(fn, TOOLS + ["echo", f"--{proto}", host, str(port), "hi",
                                          "--timeout", "3"], timeout=30)
        return r.returncode == 0

    def close(self):
        for p in self.procs:
            p.kill()
            p.wait()


@pytest.fixture
def trust_lab(tmp_path):
    with detached_lab(lambda prefix: TrustLab(prefix, tmp_path)) as lab:
        yield lab


def test_forged_arp_and_nas_from_a_customer_host_divert_nothing(trust_lab):
    lab = trust_lab
    state = lab.lab.state
    web, mallory = state.host("web"), state.host("mallory")
    subnet = next(s for s in state.subnets if s.name == "app")
    eni = state.enis[0]
    server = lab.lab.popen("web", TOOLS + ["serve", "--tcp", str(ECHO), "--udp", str(ECHO)],
                           stdout=subprocess.PIPE, text=True)
    lab.procs.append(server)
    assert server.stdout.readline().strip() == "ready"

    claims = [web.ipv4, subnet.gateway4, EXTRA4, web.ipv6, subnet.gateway6, EXTRA6]
    r = lab.lab.exec("mallory", [sys.executable, "-c", FORGE, mallory.ifname, eni.mac,
                                 str(RANDOM_NAS)] + claims, timeout=300)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) == 20 * 2 * len(claims) + RANDOM_NAS

    # Every target still answers the function: the pinned ones kept their MACs, the two
    # unknown ones resolve to web (the answer to the data plane's solicitation).
    for host in (web.ipv4, web.ipv6):
        for proto in ("tcp", "udp"):
            assert lab.echo(proto, host, ECHO), f"{proto} to {host} diverted"
    # The two unknown addresses appear on web only now (mallory claimed them before): TCP,
    # as web's unbound UDP server would answer from another of its addresses.
    for argv in (["ip", "addr", "add", f"{EXTRA4}/24", "dev", web.ifname],
                 ["ip", "addr", "add", f"{EXTRA6}/64", "dev", web.ifname, "nodad"]):
        r = lab.lab.exec("web", argv)
        assert r.returncode == 0, r.stderr
    for host in (EXTRA4, EXTRA6):
        assert lab.echo("tcp", host, ECHO), f"tcp to {host} diverted"
    sp = lab.request("stats")["slowpath"]
    print({k: v for k, v in sp.items() if k.startswith(("neigh", "arp", "na_", "nd_"))})
    # Two entries learned (EXTRA4 and EXTRA6, each from web's answer to our solicitation);
    # every claim for a pinned neighbour (web and the gateway, both families) refused; every
    # other NA that reached the slow path (the C policer drops a share of the flood) ignored.
    assert sp.get("neigh_learned", 0) == 2, sp
    assert sp.get("neigh_pinned_kept", 0) > 0, sp
    assert sp.get("neigh_unsolicited_ignored", 0) + sp["neigh_pinned_kept"] + 2 >= \
        sp["na_received"] > RANDOM_NAS // 10, sp
