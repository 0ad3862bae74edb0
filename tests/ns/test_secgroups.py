"""Security groups, REJECT records and the idle-timeout RST in a running lab (issue 9.3-9.5).

One lab: function `fn` in a group whose egress rules allow TCP 7 to the subnet (IPv4 and IPv6)
and UDP 7 to the members of sg-servers (host web); echo servers on web listen on 7 (allowed)
and 8 (denied). ESTABLISHED connections idle out after 3 s; flow logs every second.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from conftest import detached_lab
from test_observe import wait_for
from test_v2n import TOOLS, cli

ALLOWED, DENIED = 7, 8
IDLE_S = 3
FIELDS = " ".join("${%s}" % f for f in (
    "interface-id srcaddr dstaddr srcport dstport protocol packets bytes action "
    "flow-direction pkt-srcaddr tcp-flags").split())
LAB = """
[inside]
cidr4 = "10.200.0.0/24"
cidr6 = "fd00:200::/64"

[hyperplane]
timeouts = {{ ESTABLISHED = {idle} }}

[hyperplane.flow_logs]
interval_s = 1
format = "{fields}"

[vpc.subnets.a]
cidr4 = "10.1.1.0/24"
cidr6 = "fd01:1::/64"

[vpc.security_groups.sg-echo]
egress = [
  {{ protocol = "tcp", port = 7, cidr4 = "10.1.1.0/24" }},
  {{ protocol = "tcp", port = 7, cidr6 = "fd01:1::/64" }},
  {{ protocol = "udp", port = 7, security_group_id = "sg-servers" }},
]

[vpc.security_groups.sg-servers]
egress = []

[hosts.web]
subnet = "a"
security_group_ids = ["sg-servers"]

[functions.fn]
subnet_ids = ["a"]
security_group_ids = ["sg-echo"]
ipv6_allowed_for_dual_stack = true
"""
# A TCP client that holds its connection: one echo, "up", then per stdin line one more echo;
# prints "ok" or the error's name.
HOLDER = """
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
s = socket.create_connection((host, port), timeout=5)
s.sendall(b"a\\n"); s.recv(100)
print("up", flush=True)
for line in sys.stdin:
    try:
        s.sendall(b"b\\n")
        got = s.recv(100)
        print("ok" if got else "closed", flush=True)
    except OSError as e:
        print(type(e).__name__, flush=True)
"""


class SgLab:
    def __init__(self, prefix, tmp_path):
        from hyperplane.lab import Lab
        cfg = tmp_path / "lab.toml"
        cfg.write_text(f'prefix = "{prefix}"\n' + LAB.format(idle=IDLE_S, fields=FIELDS))
        self.prefix = prefix
        self.procs = []
        cli("up", "--detach", "-c", str(cfg))
        self.lab = Lab.attach(prefix)
        self.state = self.lab.state
        self.web = self.state.host("web")
        self.fn = self.state.function("fn")
        self.eni = self.state.enis[0]
        for port in (ALLOWED, DENIED):
            p = self.popen("web", TOOLS + ["serve", "--tcp", str(port), "--udp", str(port)],
                           stdout=subprocess.PIPE, text=True)
            assert p.stdout.readline().strip() == "ready"

    def popen(self, name, argv, **kw):
        p = self.lab.popen(name, argv, **kw)
        self.procs.append(p)
        return p

    def echo(self, proto, host, port):
        r = self.lab.exec("fn", TOOLS + ["echo", f"--{proto}", host, str(port), "hi",
                                         "--timeout", "1"], timeout=20)
        return r.returncode == 0

    def request(self, command, **args):
        from hyperplane import control
        return control.request(self.prefix, command, **args)

    def group(self):
        (g,) = self.request("secgroups")["groups"]
        return g

    def close(self):
        for p in self.procs:
            p.kill()
            p.wait()


@pytest.fixture(scope="module")
def sg(tmp_path_factory):
    with detached_lab(lambda prefix: SgLab(prefix, tmp_path_factory.mktemp("sg"))) as lab:
        yield lab


def flow_records(lab):
    from hyperplane import flowlog
    from hyperplane import runfolder
    folder = runfolder.paths(lab.prefix).flow_logs
    return [r for p in sorted(folder.glob("eni-*.log*")) for r in flowlog.parse(p)]


@pytest.mark.parametrize("family", [4, 6])
def test_allowed_and_denied_ports(sg, family):
    web = sg.web.ipv4 if family == 4 else sg.web.ipv6
    before = sg.group()
    assert sg.echo("tcp", web, ALLOWED) and sg.echo("udp", web, ALLOWED)
    assert not sg.echo("tcp", web, DENIED) and not sg.echo("udp", web, DENIED)
    after = sg.group()
    # TCP retransmits its SYN: each one is a denied attempt.
    assert after["denied"] - before["denied"] >= 2
    hits = [a - b for a, b in zip(after["rule_hits"], before["rule_hits"])]
    # Rules: tcp/7 IPv4, tcp/7 IPv6, then udp/7 to web's IPv4 and IPv6 (the group reference).
    assert hits[0 if family == 4 else 1] == 1 and sum(hits[2:]) == 1, hits
    stats = sg.request("stats")
    assert stats["nat"]["drop.SG_DENIED"] >= after["denied"]
    assert stats["per_eni"][str(sg.eni.id)]["drops"] >= after["denied"]
    pkt_src = sg.fn.ipv4 if family == 4 else sg.fn.ipv6
    eni_addr = sg.eni.ipv4 if family == 4 else sg.eni.ipv6
    wait_for(lambda: [r for r in flow_records(sg)
                      if r["action"] == "REJECT" and r["flow-direction"] == "egress"
                      and r["pkt-srcaddr"] == pkt_src and r["srcaddr"] == eni_addr
                      and r["dstport"] == str(DENIED)], "egress REJECT records")


def test_inbound_is_refused_and_logged(sg):
    """The rules are egress only and replies pass; a connection from the VPC to the ENI does
    not: an nmap SYN scan of the ENI (scapy where nmap is missing) gives REJECT records."""
    eni = sg.eni.ipv4
    if shutil.which("nmap"):
        r = sg.lab.exec("web", ["nmap", "-n", "-Pn", "-sS", "-p", "20-29", "--max-retries", "0",
                                eni], timeout=60)
        assert r.returncode == 0, r.stderr
        assert "filtered" in r.stdout and "open " not in r.stdout, r.stdout
    else:
        scan = ("from scapy.all import IP, TCP, send\n"
                f"send(IP(dst='{eni}')/TCP(sport=40000, dport=(20, 29), flags='S'), verbose=0)")
        assert sg.lab.exec("web", [sys.executable, "-c", scan], timeout=60).returncode == 0
    recs = wait_for(lambda: [r for r in flow_records(sg)
                             if r["action"] == "REJECT" and r["flow-direction"] == "ingress"
                             and r["dstaddr"] == eni and 20 <= int(r["dstport"]) <= 29],
                    "ingress REJECT records of the scan")
    assert {int(r["dstport"]) for r in recs} == set(range(20, 30))
    assert all(r["srcaddr"] == sg.web.ipv4 and r["tcp-flags"] == "2" for r in recs)


def test_rule_change_leaves_live_connections_alone(sg):
    holder = sg.popen("fn", [sys.executable, "-c", HOLDER, sg.web.ipv4, str(ALLOWED)],
                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "up"
    group = sg.group()
    key, rules = group["group"], group["rules"]
    try:
        sg.request("set-rules", group=key, rules=[r for r in rules if r[0] != 6])   # no TCP
        holder.stdin.write("again\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "ok"         # the live connection goes on
        assert not sg.echo("tcp", sg.web.ipv4, ALLOWED)          # a new one does not
        assert sg.echo("udp", sg.web.ipv4, ALLOWED)
    finally:
        sg.request("set-rules", group=key, rules=rules)
    assert sg.echo("tcp", sg.web.ipv4, ALLOWED)


@pytest.mark.parametrize("family", [4, 6])
def test_idled_out_connection_gets_a_rst(sg, family):
    web, me = (sg.web.ipv4, sg.fn.ipv4) if family == 4 else (sg.web.ipv6, sg.fn.ipv6)
    holder = sg.popen("fn", [sys.executable, "-c", HOLDER, web, str(ALLOWED)],
                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "up"

    def gone():
        from hyperplane import control
        conns = [c for page in control.listing(sg.prefix, "conntrack") for c in page]
        return not any(c["src"] == me and c["dport"] == ALLOWED and c["proto"] == 6
                       and c["state"] == "ESTABLISHED" for c in conns)

    wait_for(gone, "the connection to idle out", timeout=IDLE_S + 10)
    before = sg.request("stats")
    holder.stdin.write("late\n")
    holder.stdin.flush()
    assert holder.stdout.readline().strip() == "ConnectionResetError"
    after = sg.request("stats")
    assert after["nat"]["rst_sent"] > before["nat"]["rst_sent"]
    assert after["nat"]["drop.TCP_NOT_SYN"] > before["nat"]["drop.TCP_NOT_SYN"]
    assert after["per_eni"][str(sg.eni.id)]["idle_timeouts"] >= 1
