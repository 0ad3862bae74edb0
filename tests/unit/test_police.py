"""Refusals answered at once and the punt policer (docs/semantics.md section 13); the
refusals against the model and the C core alike."""

from socket import AF_INET, AF_INET6, inet_pton

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6DestUnreach, IPv6
from scapy.layers.l2 import Ether
from scapy.utils import checksum

import framegen as fg
from test_model import DST, SRC, Flow, make, out
from hyperplane.vocab import DROP, FORWARD, IN, OUT, R


def checksums_verify(pkt):
    """Every checksum of the answer sums to all ones, computed over its raw bytes."""
    ip = pkt.payload
    raw = bytes(ip.payload)[:(ip.len - 20) if isinstance(ip, IP) else ip.plen]
    if isinstance(ip, IP):
        if checksum(bytes(ip)[:20]) != 0:
            return False
        if ip.proto == 1:
            return checksum(raw) == 0
        pseudo = inet_pton(AF_INET, ip.src) + inet_pton(AF_INET, ip.dst) + bytes([0, ip.proto])
    else:
        pseudo = inet_pton(AF_INET6, ip.src) + inet_pton(AF_INET6, ip.dst) + bytes([0, ip.nh])
    return checksum(pseudo + len(raw).to_bytes(2, "big") + raw) == 0


def full_nat(NatClass, **kw):
    """A NAT whose one function is at its quota of one connection."""
    nat = make(NatClass, **kw)
    nat.set_quota(SRC, max_connections=1)
    assert out(nat, fg.udp(SRC, DST, 1, 53))[0] == FORWARD
    return nat


def test_refused_syn_gets_a_rst_from_the_destination(NatClass):
    nat = full_nat(NatClass)
    frame = fg.tcp(SRC, DST, 40000, 443, "S", seq=1000, payload=b"x" * 5)
    assert out(nat, frame) == (FORWARD, R["FUNCTION_LIMIT"], 0, -1)
    a = Ether(bytes(frame))
    assert (a.src, a.dst) == ("02:00:00:00:00:01", "02:00:00:00:00:02")     # swapped
    assert (a[IP].src, a[IP].dst, a[TCP].sport, a[TCP].dport) == (DST, SRC, 443, 40000)
    assert (str(a[TCP].flags), a[TCP].seq, a[TCP].ack) == ("RA", 0, 1006)
    assert checksums_verify(a)
    c = nat.counters()
    assert (c["refusal_sent"], c["drop.FUNCTION_LIMIT"]) == (1, 1)


def test_refused_datagram_gets_icmp_admin_prohibited(NatClass):
    nat = full_nat(NatClass)
    frame = fg.udp(SRC, DST, 5000, 53, payload=b"q" * 40)
    sent = bytes(Ether(bytes(frame))[IP])
    assert out(nat, frame) == (FORWARD, R["FUNCTION_LIMIT"], 0, -1)
    a = Ether(bytes(frame))
    assert (a[IP].src, a[IP].dst, a[ICMP].type, a[ICMP].code) == (DST, SRC, 3, 13)
    quoted = bytes(a[ICMP].payload)[:a[IP].len - 28]
    assert len(quoted) == len(sent) - 28 and sent.startswith(quoted)   # what fits in the frame
    assert checksums_verify(a)


def test_refused_datagram6_gets_icmpv6_admin_prohibited(NatClass):
    nat = make(NatClass)
    nat.set_quota("fd00:200::11", max_connections=1)
    assert out(nat, fg.udp("fd00:200::11", "fd00:9::9", 1, 53))[0] == FORWARD
    frame = fg.udp("fd00:200::11", "fd00:9::9", 5000, 53, payload=b"q" * 60)
    assert out(nat, frame) == (FORWARD, R["FUNCTION_LIMIT"], 0, -1)
    a = Ether(bytes(frame))
    assert (a[IPv6].dst, a[ICMPv6DestUnreach].type, a[ICMPv6DestUnreach].code) == (
        "fd00:200::11", 1, 1)
    assert checksums_verify(a)


def test_a_datagram_too_short_to_quote_is_only_dropped(NatClass):
    nat = full_nat(NatClass)
    frame = fg.udp(SRC, DST, 5000, 53, payload=b"q")
    before = bytes(frame)
    assert out(nat, frame) == (DROP, R["FUNCTION_LIMIT"], 0, -1)
    assert bytes(frame) == before and nat.counters()["refusal_sent"] == 0


def test_refusals_are_rate_limited(NatClass):
    nat = full_nat(NatClass)
    verdicts = [out(nat, fg.tcp(SRC, DST, 2000 + i, 443, "S"), now=0)[0] for i in range(150)]
    assert verdicts.count(FORWARD) == 100                     # the burst
    assert nat.counters()["refusal_limited"] == 50
    assert out(nat, fg.tcp(SRC, DST, 3000, 443, "S"), now=10)[0] == FORWARD   # 1 per ms


def test_table_full_is_answered_too(NatClass):
    nat = make(NatClass, capacity=1)
    flow = Flow(nat, sport=1)
    for direction, flags in ((OUT, "S"), (IN, "SA"), (OUT, "A")):     # assured: kept
        assert flow.send(direction, flags)[0] == FORWARD
    assert out(nat, fg.tcp(SRC, DST, 2, 443, "S")) == (FORWARD, R["TABLE_FULL"], 0, -1)
    assert out(nat, fg.udp("10.200.0.99", DST, 2, 53, payload=b"z" * 40)) == \
        (DROP, R["UNKNOWN_SOURCE"], 0, -1)                             # not a resource refusal


def punt_frames(mac):
    """One frame of each punt class from mac: ping, ARP, NS, ICMP error, a fragment."""
    from scapy.layers.inet6 import ICMPv6ND_NS
    from scapy.layers.l2 import ARP
    ip = IP(src="10.200.0.11", dst="10.200.0.1")
    return {"echo": bytes(Ether(src=mac) / ip / ICMP(type=8)),
            "arp": bytes(Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / ARP(psrc="10.200.0.11")),
            "ndp": bytes(Ether(src=mac) / IPv6(src="fe80::1", dst="ff02::1:ff00:1", hlim=255)
                         / ICMPv6ND_NS(tgt="fd00:200::1")),
            "error": bytes(Ether(src=mac) / ip / ICMP(type=3, code=1) / bytes(28)),
            "frag": bytes(Ether(src=mac) / IP(src="10.200.0.11", dst="10.0.9.9", flags="MF")
                          / UDP())}


def test_punt_policer_keeps_a_bucket_per_source_and_class():
    """One function's ping flood on the shared inside port takes its own echo tokens only:
    its ARP, NDP and ICMP errors, and the other function's pings, keep theirs."""
    core = pytest.importorskip("hyperplane._core")
    icmp, arp, ttl = R["ICMP"], R["ARP"], R["TTL_EXCEEDED"]
    a, b = punt_frames("02:00:00:00:00:11"), punt_frames("02:00:00:00:00:12")
    # 10 per second, burst 3.
    events = ([(1, icmp, a["echo"], 0)] * 5 + [(1, arp, a["arp"], 0)] * 3
              + [(1, icmp, a["ndp"], 0)] * 3 + [(1, icmp, a["error"], 0)] * 3
              + [(1, ttl, a["echo"], 0)] * 0 + [(1, icmp, b["echo"], 0)] * 3
              + [(2, icmp, a["echo"], 0)] * 3
              + [(1, icmp, a["echo"], 100), (1, icmp, a["echo"], 100), (1, icmp, a["echo"], 1000)])
    passed, policed = core.police_takes(10, 3, events)
    assert passed == [True] * 3 + [False] * 2 + [True] * 15 + [True, False, True]
    assert policed == {icmp: 3}


def test_made_up_source_macs_share_one_budget():
    """A neighbour that makes up a MAC per frame gets a few buckets of its own (admission, 16
    at once) and then shares its port's stranger bucket; a source that had punted before keeps
    its own budget."""
    core = pytest.importorskip("hyperplane._core")
    icmp = R["ICMP"]
    known = punt_frames("02:00:00:00:00:11")["echo"]
    flood = [punt_frames(f"06:00:00:00:{i >> 8:02x}:{i & 255:02x}")["echo"] for i in range(200)]
    events = [(1, icmp, known, 0)] + [(1, icmp, f, 0) for f in flood] + [(1, icmp, known, 0)]
    passed, policed = core.police_takes(10, 3, events)
    assert passed[0] and passed[-1]
    assert sum(passed[1:-1]) == 15 + 3           # 15 more admitted, then a shared burst of 3
    assert policed == {icmp: 200 - 18}


def test_neigh_miss_punts_have_a_bigger_bucket_of_their_own():
    # Frames of tracked connections waiting for ARP: a cold neighbour on a busy port punts
    # hundreds at once. set_punt_limit's lower limits leave NEIGH_MISS at its own (512 at once).
    core = pytest.importorskip("hyperplane._core")
    nm, icmp = R["NEIGH_MISS"], R["ICMP"]
    ping = punt_frames("02:00:00:00:00:11")["echo"]
    events = ([(0, nm, ping, 0)] * 513 + [(0, icmp, ping, 0)] * 4 + [(0, nm, ping, 1)] * 3)
    passed, policed = core.police_takes(10, 3, events)
    assert passed == [True] * 512 + [False] + [True] * 3 + [False] + [True, True, False]
    assert policed == {nm: 2, icmp: 1}                   # 2,000 a second: 2 more a ms later


def test_each_function_has_its_own_refusal_and_idle_rst_budget(NatClass):
    """A function refused over and over (here at a quota of one connection) spends its own
    answer budget (burst 100), not the other function's: the other's refusals and idle RSTs
    are still answered. Both cores alike."""
    other = "10.200.0.12"
    nat = full_nat(NatClass)
    nat.add_source(other, 0)
    nat.set_quota(other, max_connections=1)
    assert out(nat, fg.udp(other, DST, 1, 53))[0] == FORWARD
    answered = [out(nat, fg.tcp(SRC, DST, 40000 + i, 443, "S"))[0] == FORWARD
                for i in range(150)]
    assert sum(answered) == 100 and not any(answered[100:])       # its burst, then silence
    assert out(nat, fg.tcp(other, DST, 40000, 443, "S")) == (FORWARD, R["FUNCTION_LIMIT"], 0, -1)
    # Idle RSTs: a segment of no connection from each; SRC's budget spent apart from refusals.
    assert out(nat, fg.tcp(other, DST, 41000, 443, "A"))[0] == FORWARD
    assert out(nat, fg.tcp(SRC, DST, 41000, 443, "A"))[0] == FORWARD
    c = nat.counters()
    assert c["refusal_limited"] == 50 and c["rst_sent"] == 2
