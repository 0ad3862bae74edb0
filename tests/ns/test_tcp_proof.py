"""Packets prove themselves (issue 7) in a running lab: blind RSTs and segments outside the
window from the customer host are dropped and counted while the connection keeps working
(also past the CLOSE timeout) and a real RST closes it; hairpinning between two functions on
one ENI; spoofed sources and forged MACs reach nothing; martian destinations are dropped."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import time

import pytest

from test_observe import wait_for
from test_v2n import ECHO, TOOLS, running_lab

# CLOSE is short, so "past the CLOSE timeout" takes 2 s; ESTABLISHED long enough for a test.
TIMEOUTS = """
[nat.timeouts]
CLOSE = 2
TIME_WAIT = 1
SYN_SENT = 2
ESTABLISHED = 120
"""
# Two more IPv6 functions for hairpinning over IPv6: peer6 on api's ENI, far6 on its own.
EXTRA_FUNCTIONS = """
[[functions]]
name = "peer6"
subnets = ["app"]
security_groups = ["sg-web"]
ipv6 = true

[[functions]]
name = "far6"
subnets = ["cache"]
security_groups = ["sg-web"]
ipv6 = true
"""

# Holds one TCP connection to the echo server: "up" once connected, then per stdin line an
# echo ("ok", "closed" or the error's name); the line "rst" closes with an RST (linger 0).
HOLDER = """
import socket, struct, sys
host, port = sys.argv[1], int(sys.argv[2])
s = socket.create_connection((host, port), timeout=5)
s.sendall(b"a"); s.recv(100)
print("up", s.getsockname()[1], flush=True)
for line in sys.stdin:
    if line.strip() == "rst":
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
        print("reset", flush=True)
        continue
    try:
        s.sendall(b"b")
        print("ok" if s.recv(100) else "closed", flush=True)
    except OSError as e:
        print(type(e).__name__, flush=True)
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    with running_lab(tmp_path_factory.mktemp("tcp"), timeouts=TIMEOUTS + EXTRA_FUNCTIONS) as r:
        for host in ("db", "cache"):        # where the other ENIs' functions get mappings
            echo = r.serve(host, *TOOLS, "serve", "--tcp", str(ECHO), "--udp", str(ECHO))
            assert echo.stdout.readline().strip() == "ready"
        yield r


def nat_counters(run):
    return run.stats()["nat"]


def scapy(run, host, code):
    r = run.exec(host, [sys.executable, "-c", "from scapy.all import *\nconf.verb = 0\n" + code])
    assert r.returncode == 0, r.stderr


def send_behind_guard(run, frames):
    """Sends frames from the functions' bridge device itself, past the lab's per-port guard
    (hyperplane/lab/portguard.py): what the data plane does with them if one got through."""
    from hyperplane.lab import netns
    from hyperplane.lab.names import if_lambda_bridge, ns_lambda
    code = (f"from scapy.all import *\nconf.verb = 0\n"
            f"sendp([{', '.join(frames)}], iface='{if_lambda_bridge(run.prefix)}')")
    r = netns.exec(ns_lambda(run.prefix), [sys.executable, "-c", code], timeout=20)
    assert r.returncode == 0, r.stderr


def guard_drops(run, fn):
    from hyperplane.lab import portguard
    index = [f.name for f in run.state.functions].index(fn)
    return portguard.drops(run.prefix)[index]


class Holder:
    def __init__(self, run, fn, host, port):
        self.p = run.lab.popen(fn, [sys.executable, "-c", HOLDER, host, str(port)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        run.servers.append(self.p)
        first = self.p.stdout.readline().split()
        assert first and first[0] == "up", first
        self.sport = int(first[1])

    def ask(self, line="x"):
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()
        return self.p.stdout.readline().strip()


def conn_of(run, sport, dport=ECHO):
    found = [c for c in run.conntrack() if c["protocol"] == "tcp" and c["sport"] == sport
             and c["dport"] == dport]
    return found[0] if found else None


@pytest.mark.parametrize("family", [4, 6])
def test_blind_segments_are_dropped_and_a_real_rst_closes(run, family):
    web = run.state.host("web")
    eni = run.state.enis_of(run.state.function("api").group)[0]
    dst = web.ipv4 if family == 4 else web.ipv6
    h = Holder(run, "api", dst, ECHO)
    c = wait_for(lambda: conn_of(run, h.sport), "the connection in conntrack")
    assert c["state"] == "ESTABLISHED"
    before = nat_counters(run)
    ip = (f"IP(src='{web.ipv4}', dst='{c['nat_addr']}')" if family == 4
          else f"IPv6(src='{web.ipv6}', dst='{c['nat_addr']}')")
    seg = f"Ether(dst='{eni.mac}')/{ip}/TCP(sport={ECHO}, dport={c['nat_port']}, "
    # A blind RST, data far outside the window, and flag combinations no stack sends.
    scapy(run, "web", f"sendp([{seg}flags='R', seq=0xdeadbeef), {seg}flags='RA', seq=12345),"
                      f" {seg}flags='PA', seq=0x7fff0000, ack=1)/Raw(b'evil'),"
                      f" {seg}flags='SF'), {seg}flags=''), {seg}flags='SR')], iface='eth0')")
    after = wait_for(lambda: (lambda n: n if n["drop.TCP_BAD_FLAGS"] >= before["drop.TCP_BAD_FLAGS"] + 3 else None)(nat_counters(run)), "the drops counted")
    assert after["drop.TCP_BAD_RST"] >= before["drop.TCP_BAD_RST"] + 2
    assert after["drop.TCP_OUT_OF_WINDOW"] >= before["drop.TCP_OUT_OF_WINDOW"] + 1
    assert conn_of(run, h.sport)["state"] == "ESTABLISHED"
    time.sleep(2.5)                                   # past the CLOSE timeout
    assert h.ask() == "ok"
    assert conn_of(run, h.sport)["state"] == "ESTABLISHED"
    # The function's own kernel resets the connection: exact sequence number, it closes.
    assert h.ask("rst") == "reset"
    wait_for(lambda: (conn_of(run, h.sport) or {}).get("state") == "CLOSE", "CLOSE")


# Hairpin receivers by (family, ENI): worker shares api's ENI, report has its own (subnet
# data); peer6 and far6 (added to this lab) are the IPv6 pair. Each receiver gets its mapping
# from a host in its own subnet, then listens on the same port.
HAIRPIN_RECEIVERS = {(4, "same ENI"): ("worker", "web"), (4, "other ENI"): ("report", "db"),
                     (6, "same ENI"): ("peer6", "web"), (6, "other ENI"): ("far6", "cache")}
HAIRPIN_CASES = sorted(HAIRPIN_RECEIVERS)


def same_addr(a, b):
    return ipaddress.ip_address(a) == ipaddress.ip_address(b)


def mapping_of(run, fn, family, proto, sport):
    f = run.state.function(fn)
    src = f.ipv4 if family == 4 else f.ipv6
    return wait_for(lambda: [c for c in run.conntrack() if c["protocol"] == proto
                             and same_addr(c["src"], src) and c["sport"] == sport],
                    f"{fn}'s {proto} mapping")[0]


def hairpin_setup(run, family, where):
    fn, host = HAIRPIN_RECEIVERS[family, where]
    h = run.state.host(host)
    eni_fn = run.state.enis_of(run.state.function("api").group)[0]
    wildcard, af = ("0.0.0.0", "AF_INET") if family == 4 else ("::", "AF_INET6")
    return fn, (h.ipv4 if family == 4 else h.ipv6), eni_fn, wildcard, af


# One UDP socket of a function: it gets a mapping from a host (sends once, gets the echo),
# then obeys stdin: "send ADDR PORT TEXT", "recv SECONDS" (prints the datagram and its
# source, or "timeout"), "drain SECONDS" (prints how many datagrams came), "sweep ADDR"
# (one datagram to every port of ADDR, paced so that no ring overflows).
UDP_PEER = """
import socket, sys, time
af, wildcard, port, host, echo = sys.argv[1:6]
s = socket.socket(getattr(socket, af), socket.SOCK_DGRAM)
s.bind((wildcard, int(port)))
s.settimeout(5)
s.sendto(b"hello", (host, int(echo)))
s.recvfrom(100)
print("mapped", flush=True)
for line in sys.stdin:
    cmd, *arg = line.split()
    if cmd == "send":
        s.sendto(arg[2].encode(), (arg[0], int(arg[1])))
        print("sent", flush=True)
    elif cmd in ("recv", "drain"):
        s.settimeout(float(arg[0]))
        got = []
        try:
            while not got or cmd == "drain":
                data, peer = s.recvfrom(100)
                got.append(f"{data.decode()} {peer[0]} {peer[1]}")
        except socket.timeout:
            pass
        print(len(got) if cmd == "drain" else (got or ["timeout"])[0], flush=True)
    elif cmd == "sweep":
        for p in range(1, 65536):
            s.sendto(b"sweep", (arg[0], p))
            if p % 500 == 0:
                time.sleep(0.005)
        print("swept", flush=True)
"""


class UdpPeer:
    def __init__(self, run, fn, family, port, host_addr):
        wildcard, af = ("0.0.0.0", "AF_INET") if family == 4 else ("::", "AF_INET6")
        self.proc = run.lab.popen(fn, [sys.executable, "-c", UDP_PEER, af, wildcard, str(port),
                                       host_addr, str(ECHO)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        run.servers.append(self.proc)
        assert self.proc.stdout.readline().strip() == "mapped"
        self.mapping = mapping_of(run, fn, family, "udp", port)
        self.ext = (self.mapping["nat_addr"], self.mapping["nat_port"])

    def ask(self, *words):
        self.proc.stdin.write(" ".join(map(str, words)) + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def send_to(self, other, text):
        assert self.ask("send", *other.ext, text) == "sent"

    def recv(self, seconds=3.0):
        return self.ask("recv", seconds).split()


@pytest.mark.parametrize("family,where", HAIRPIN_CASES)
def test_udp_hairpin_between_functions(run, family, where):
    """Hole punching (RFC 4787 section 6): api's first datagram to the receiver's external
    address and port is filtered as unsolicited (the receiver never wrote to api); once the
    receiver writes to api's external address and port, each side sees the other's external
    address and port, both ways."""
    fn, host_addr, api_eni, wildcard, af = hairpin_setup(run, family, where)
    port = 40100 + HAIRPIN_CASES.index((family, where))
    receiver = UdpPeer(run, fn, family, port, host_addr)
    api = UdpPeer(run, "api", family, port + 100, run.state.host("web").ipv4 if family == 4
                  else run.state.host("web").ipv6)
    before = nat_counters(run)
    api.send_to(receiver, "knock")
    wait_for(lambda: nat_counters(run)["hairpin_refused"] >= before["hairpin_refused"] + 1,
             "hairpin_refused")
    assert receiver.recv(0.5) == ["timeout"]
    receiver.send_to(api, "punch")
    assert api.recv() == ["punch", *map(str, receiver.ext)]
    api.send_to(receiver, "via-hairpin")
    got, peer_addr, peer_port = receiver.recv()
    assert got == "via-hairpin"
    assert same_addr(peer_addr, api_eni.ipv4 if family == 4 else api_eni.ipv6)
    assert int(peer_port) == api.ext[1]                # api's external port, as outside sees it
    wait_for(lambda: nat_counters(run)["hairpin_packets"] >= before["hairpin_packets"] + 2,
             "hairpin_packets")


@pytest.mark.parametrize("family,where", HAIRPIN_CASES)
def test_tcp_hairpin_between_functions(run, family, where):
    """A TCP simultaneous open through hairpinning: api's SYN to the receiver's external
    address and port is filtered as unsolicited; the receiver's SYN to api's external address
    and port (from its mapped port) meets api's connection, and both connect."""
    fn, host_addr, api_eni, wildcard, af = hairpin_setup(run, family, where)
    port = 40300 + HAIRPIN_CASES.index((family, where))
    # The receiver holds a connection from its port to a host (its mapping), then connects
    # from that port to the address and port it reads on stdin.
    bound = f"""
import socket, sys
def bound(port):
    s = socket.socket(socket.{af})
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("{wildcard}", port))
    s.settimeout(15)
    return s
"""
    receiver = run.lab.popen(fn, [sys.executable, "-c", bound + f"""
c = bound({port}); c.connect(("{host_addr}", {ECHO})); c.sendall(b"m"); c.recv(10)
print("ready", flush=True)
addr, dport = sys.stdin.readline().split()
s = bound({port}); s.connect((addr, int(dport)))
s.sendall(b"tcp-hairpin")
print(s.recv(200).decode(), *s.getpeername()[:2], flush=True)
"""], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    run.servers.append(receiver)
    assert receiver.stdout.readline().strip() == "ready"
    w = mapping_of(run, fn, family, "tcp", port)
    before = nat_counters(run)
    # api holds one too, so that its external port outlives a SYN_SENT that times out.
    web = run.state.host("web")
    api = run.lab.popen("api", [sys.executable, "-c", bound + f"""
c = bound({port + 100}); c.connect(("{web.ipv4 if family == 4 else web.ipv6}", {ECHO}))
c.sendall(b"m"); c.recv(10)
s = bound({port + 100}); s.connect(("{w['nat_addr']}", {w['nat_port']}))
data = s.recv(100)
s.sendall(data + b" " + " ".join(map(str, s.getpeername()[:2])).encode())
"""], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run.servers.append(api)
    wait_for(lambda: nat_counters(run)["hairpin_refused"] > before["hairpin_refused"],
             "api's first SYN refused")
    a = mapping_of(run, "api", family, "tcp", port + 100)
    receiver.stdin.write(f"{a['nat_addr']} {a['nat_port']}\n")
    receiver.stdin.flush()
    line = receiver.stdout.readline()
    assert line, [c for c in run.conntrack() if c["protocol"] == "tcp"
                  and {c["sport"], c["nat_port"]} & {port, port + 100, w["nat_port"]}]
    text, seen_by_api_addr, seen_by_api_port, peer_addr, peer_port = line.split()
    assert api.wait(timeout=10) == 0, api.stderr.read()
    assert text == "tcp-hairpin"
    assert same_addr(peer_addr, a["nat_addr"]) and int(peer_port) == a["nat_port"]
    assert same_addr(seen_by_api_addr, w["nat_addr"]) and int(seen_by_api_port) == w["nat_port"]
    assert same_addr(a["nat_addr"], api_eni.ipv4 if family == 4 else api_eni.ipv6)
    # SYN, SYN|ACK, ACK, data both ways at least.
    wait_for(lambda: nat_counters(run)["hairpin_packets"] >= before["hairpin_packets"] + 5,
             "hairpin_packets")


def test_spoofed_sources_and_forged_macs_reach_nothing(run):
    from conftest import Tap
    api, report = run.state.function("api"), run.state.function("report")
    web = run.state.host("web")
    gw = run.state.inside
    before = nat_counters(run)["drop.SPOOFED_SOURCE"]
    tap = Tap(web.ns, "eth0")
    frames = [f"Ether(dst='{gw.mac}', src='{api.mac}')/IP(src='{report.ipv4}', dst='{web.ipv4}')/UDP(sport=999, dport={ECHO})/Raw(b'spoof4')",
              f"Ether(dst='{gw.mac}', src='02:00:00:00:66:66')/IP(src='{api.ipv4}', dst='{web.ipv4}')/UDP(sport=998, dport={ECHO})/Raw(b'spoof-mac')"]
    if api.ipv6 and report.ipv6:
        frames.append(f"Ether(dst='{gw.mac}', src='{api.mac}')/IPv6(src='{report.ipv6}', dst='{web.ipv6}')/UDP(sport=997, dport={ECHO})/Raw(b'spoof6')")
    guarded = guard_drops(run, "api")
    try:
        scapy(run, "api", f"sendp([{', '.join(frames)}], iface='eth0')")
        assert guard_drops(run, "api") == guarded + len(frames), "the port guard let one pass"
        send_behind_guard(run, frames)
        leaked = [f for f in tap.frames(1.0) if b"spoof" in f]
    finally:
        tap.close()
    assert not leaked, "a spoofed frame reached the customer host"
    assert nat_counters(run)["drop.SPOOFED_SOURCE"] >= before + len(frames)


def slowpath_counters(run):
    return run.stats()["slowpath"]


def test_forged_arp_and_ndp_claims_divert_nothing(run):
    """api claims worker's IPv4 and peer6's IPv6 address (gratuitous ARP, unsolicited NA with
    the override flag) and the gateway's: the claims are ignored and counted, and the replies
    of worker's and peer6's traffic still go to their own MACs, none to api's. The claims go
    to the data plane's MAC only and from the bridge itself, past the port guard (which would
    drop them: see test_port_guard_keeps_the_functions_neighbour_caches)."""
    from conftest import Tap
    api, worker, peer6 = (run.state.function(n) for n in ("api", "worker", "peer6"))
    gw, web = run.state.inside, run.state.host("web")
    before = slowpath_counters(run)

    def garp(addr):
        return (f"Ether(src='{api.mac}', dst='{gw.mac}')/ARP(op=2, hwsrc='{api.mac}', "
                f"psrc='{addr}', hwdst='ff:ff:ff:ff:ff:ff', pdst='{addr}')")

    def unsolicited_na(addr):
        return (f"Ether(src='{api.mac}', dst='{gw.mac}')/IPv6(src='{addr}', "
                f"dst='ff02::1', hlim=255)/ICMPv6ND_NA(tgt='{addr}', R=0, S=0, O=1)"
                f"/ICMPv6NDOptDstLLAddr(lladdr='{api.mac}')")
    claims = [garp(worker.ipv4), garp(gw.gateway4), unsolicited_na(peer6.ipv6),
              unsolicited_na(gw.gateway6)]
    tap = Tap(api.ns, "eth0")
    try:
        send_behind_guard(run, claims)
        after = wait_for(lambda: (lambda c: c if c.get("neigh_claim_ignored", 0)
                                  >= before.get("neigh_claim_ignored", 0) + 2 else None)(
            slowpath_counters(run)), "the claims counted")
        assert after.get("arp_conflict", 0) > before.get("arp_conflict", 0)
        assert after.get("nd_conflict", 0) > before.get("nd_conflict", 0)
        for fn, dst in (("worker", web.ipv4), ("peer6", web.ipv6)):
            for proto in ("udp", "tcp"):
                r = run.echo(fn, proto, dst, text=f"claimed-{fn}-{proto}")
                assert r.returncode == 0, (fn, proto, r.stderr)
                assert r.stdout.strip() == f"claimed-{fn}-{proto}"
        api_mac = bytes.fromhex(api.mac.replace(":", ""))
        diverted = [f for f in tap.frames(0.5) if f[:6] == api_mac and b"claimed-" in f]
        assert not diverted, "a reply went to the MAC that forged the claim"
    finally:
        tap.close()


def neighbours(run, fn):
    """(address, MAC) of each neighbour entry on a function's eth0 that has a MAC."""
    r = run.exec(fn, ["ip", "-j", "neigh", "show", "dev", "eth0"])
    assert r.returncode == 0, r.stderr
    return {(n["dst"], n["lladdr"]) for n in json.loads(r.stdout) if "lladdr" in n}


def test_port_guard_keeps_the_functions_neighbour_caches(run):
    """api broadcasts claims for the gateway's and the other functions' addresses (gratuitous
    ARP requests and replies, unsolicited NAs with the override flag to all nodes): the lab's
    port guard drops each one at api's bridge port and counts it, worker's and peer6's
    neighbour entries (for the gateway, made by traffic first) keep their MACs, and their
    traffic still reaches the customer through the NAT."""
    api, worker, peer6 = (run.state.function(n) for n in ("api", "worker", "peer6"))
    gw, web = run.state.inside, run.state.host("web")
    for fn, dst in (("worker", web.ipv4), ("peer6", web.ipv6)):
        assert run.echo(fn, "udp", dst, text="warm").returncode == 0
    cache = {fn: neighbours(run, fn) for fn in ("worker", "peer6")}
    assert (gw.gateway4, gw.mac) in cache["worker"], cache
    assert (gw.gateway6, gw.mac) in cache["peer6"], cache

    def garp(op, addr):
        return (f"Ether(src='{api.mac}', dst='ff:ff:ff:ff:ff:ff')/ARP(op={op}, hwsrc='{api.mac}', "
                f"psrc='{addr}', hwdst='00:00:00:00:00:00', pdst='{addr}')")

    def unsolicited_na(addr):
        return (f"Ether(src='{api.mac}', dst='33:33:00:00:00:01')/IPv6(src='{addr}', "
                f"dst='ff02::1', hlim=255)/ICMPv6ND_NA(tgt='{addr}', R=1, S=0, O=1)"
                f"/ICMPv6NDOptDstLLAddr(lladdr='{api.mac}')")

    def na_from_own_address(addr):   # api's own source, a target it does not own
        return (f"Ether(src='{api.mac}', dst='33:33:00:00:00:01')/IPv6(src='{api.ipv6}', "
                f"dst='ff02::1', hlim=255)/ICMPv6ND_NA(tgt='{addr}', R=1, S=0, O=1)"
                f"/ICMPv6NDOptDstLLAddr(lladdr='{api.mac}')")
    claims = [garp(op, a) for op in (1, 2) for a in (gw.gateway4, worker.ipv4)]
    claims += [make(a) for make in (unsolicited_na, na_from_own_address)
               for a in (gw.gateway6, peer6.ipv6)]
    before = guard_drops(run, "api")
    scapy(run, "api", f"sendp([{', '.join(claims)}], iface='eth0')")
    assert guard_drops(run, "api") == before + len(claims)
    for fn in ("worker", "peer6"):
        now = neighbours(run, fn)
        assert cache[fn] <= now and not any(mac == api.mac for _, mac in now), (fn, now)
    for fn, dst in (("worker", web.ipv4), ("peer6", web.ipv6)):
        for proto in ("udp", "tcp"):
            r = run.echo(fn, proto, dst, text=f"guarded-{fn}-{proto}")
            assert r.returncode == 0, (fn, proto, r.stderr)
            assert r.stdout.strip() == f"guarded-{fn}-{proto}"


def test_classic_stun_client_reports_hairpinning(run):
    """RFC 3489 STUN (Debian's stun-client / stun-server): the server on host web with a
    second address, the client in api; it finds an endpoint-independent mapping and that the
    NAT hairpins (its own mapped address reaches it)."""
    web = run.state.host("web")
    second = str(ipaddress.ip_address(web.ipv4) + 1)
    r = subprocess.run(["ip", "-n", web.ns, "addr", "add", f"{second}/24", "dev", web.ifname],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    try:
        server = run.serve("web", "stund", "-h", web.ipv4, "-a", second)
        wait_for(lambda: subprocess.run(["ip", "netns", "exec", web.ns, "ss", "-lun"],
                                        capture_output=True, text=True).stdout.count(":3478")
                 >= 2, "stund listening")
        assert server.poll() is None
        r = run.exec("api", ["stun", web.ipv4, "-v"], timeout=30)
        report = r.stdout + r.stderr
        assert "hairpin = 1" in report, report[-2000:]
        assert "Independent Mapping" in report and "will hairpin" in report, report[-2000:]
    finally:
        subprocess.run(["ip", "-n", web.ns, "addr", "del", f"{second}/24", "dev", web.ifname],
                       capture_output=True)


@pytest.mark.parametrize("dst", ["169.254.169.254", "224.0.0.251"])
def test_martian_destinations_are_dropped_and_counted(run, dst):
    api = run.state.function("api")
    gw = run.state.inside
    before = nat_counters(run)["drop.MARTIAN_DST"]
    scapy(run, "api", f"sendp(Ether(dst='{gw.mac}', src='{api.mac}')/IP(src='{api.ipv4}', "
                      f"dst='{dst}')/UDP(sport=996, dport=80), iface='eth0')")
    wait_for(lambda: nat_counters(run)["drop.MARTIAN_DST"] > before, "MARTIAN_DST")


def test_simultaneous_open_is_established_assured_and_outlives_syn_sent(run):
    """api connects to web:40500 from port 40600 while web connects to api's external address
    and port from 40500: both SYNs cross (web's kernel must not reset api's first SYN, so an
    nft rule in web's namespace drops its RSTs). Then idle past the SYN_SENT timeout (2 s)."""
    web = run.state.host("web")
    api = run.state.function("api")
    nft = ("table inet tcpproof {\n chain out {\n  type filter hook output priority 0;\n"
           "  tcp flags rst drop\n }\n}\n")
    r = subprocess.run(["ip", "netns", "exec", web.ns, "nft", "-f", "-"], input=nft,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    try:
        client = run.lab.popen("api", [sys.executable, "-c", f"""
import socket, sys, time
s = socket.socket(); s.bind(("0.0.0.0", 40600)); s.settimeout(10)
s.connect(("{web.ipv4}", 40500))
print("connected", flush=True)
s.sendall(b"one"); print(s.recv(10).decode(), flush=True)
sys.stdin.readline()
s.sendall(b"two"); print(s.recv(10).decode(), flush=True)
sys.stdin.readline()
"""], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        run.servers.append(client)
        c = wait_for(lambda: [x for x in run.conntrack() if x["protocol"] == "tcp"
                              and x["src"] == api.ipv4 and x["sport"] == 40600], "api's SYN")[0]
        peer = run.lab.popen("web", [sys.executable, "-c", f"""
import socket
s = socket.socket(); s.bind(("0.0.0.0", 40500)); s.settimeout(10)
s.connect(("{c['nat_addr']}", {c['nat_port']}))
while data := s.recv(10):
    s.sendall(data)
"""], stdout=subprocess.PIPE, text=True)
        run.servers.append(peer)
        assert client.stdout.readline().strip() == "connected"
        assert client.stdout.readline().strip() == "one"
        c = wait_for(lambda: [x for x in run.conntrack() if x["id"] == c["id"]
                              and x["state"] == "ESTABLISHED" and x["assured"]], "ESTABLISHED")[0]
        time.sleep(3)                                 # longer than SYN_SENT (2 s)
        client.stdin.write("\n")
        client.stdin.flush()
        assert client.stdout.readline().strip() == "two"
        assert [x for x in run.conntrack() if x["id"] == c["id"]][0]["state"] == "ESTABLISHED"
    finally:
        subprocess.run(["ip", "netns", "exec", web.ns, "nft", "delete", "table", "inet",
                        "tcpproof"], capture_output=True)


# Last in the module: its 65,534 connections make every later listing slow for 30 s.
def test_hairpin_sweep_of_a_shared_eni_reaches_no_one(run):
    """api sends one datagram from one port to every port of its shared ENI's address: worker
    and peer6, whose mappings are on that ENI but who never wrote to api, get nothing; each
    datagram is refused and counted. Then worker writes to api, and api's next datagram
    reaches it (the sweep would have been seen)."""
    web = run.state.host("web")
    shared = run.state.enis_of(run.state.function("api").group)[0].ipv4
    receivers = [UdpPeer(run, fn, 4, 40600 + i, web.ipv4)
                 for i, fn in enumerate(("worker", "peer6"))]
    assert all(same_addr(r.ext[0], shared) for r in receivers)
    api = UdpPeer(run, "api", 4, 40610, web.ipv4)
    before = nat_counters(run)["hairpin_refused"]
    assert api.ask("sweep", shared) == "swept"
    # Every port but api's own (its own mapping answers it, as STUN's hairpin test wants).
    wait_for(lambda: nat_counters(run)["hairpin_refused"] >= before + 65534, "every refusal",
             timeout=20)
    assert [r.ask("drain", 1) for r in receivers] == ["0", "0"]
    assert api.ask("drain", 0.5) == "1"                 # its own datagram to its own mapping
    worker = receivers[0]
    worker.send_to(api, "punch")
    assert api.recv()[0] == "punch"
    api.send_to(worker, "now")
    assert worker.recv() == ["now", *map(str, api.ext)]
