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
    assert (c["REFUSAL_SENT"], c["drop.FUNCTION_LIMIT"]) == (1, 1)


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
    assert bytes(frame) == before and nat.counters()["REFUSAL_SENT"] == 0


def test_refusals_are_rate_limited(NatClass):
    nat = full_nat(NatClass)
    verdicts = [out(nat, fg.tcp(SRC, DST, 2000 + i, 443, "S"), now=0)[0] for i in range(150)]
    assert verdicts.count(FORWARD) == 100                     # the burst
    assert nat.counters()["REFUSAL_LIMITED"] == 50
    assert out(nat, fg.tcp(SRC, DST, 3000, 443, "S"), now=10)[0] == FORWARD   # 1 per ms


def test_table_full_is_answered_too(NatClass):
    nat = make(NatClass, capacity=1)
    flow = Flow(nat, sport=1)
    for direction, flags in ((OUT, "S"), (IN, "SA"), (OUT, "A")):     # assured: kept
        assert flow.send(direction, flags)[0] == FORWARD
    assert out(nat, fg.tcp(SRC, DST, 2, 443, "S")) == (FORWARD, R["TABLE_FULL"], 0, -1)
    assert out(nat, fg.udp("10.200.0.99", DST, 2, 53, payload=b"z" * 40)) == \
        (DROP, R["UNKNOWN_SOURCE"], 0, -1)                             # not a resource refusal


def test_punt_policer_keeps_a_bucket_per_port_and_reason():
    core = pytest.importorskip("hyperplane._core")
    icmp, arp = R["ICMP"], R["ARP"]
    # 10 per second, burst 3: a flood of ICMP on port 1 takes only its own tokens.
    events = ([(1, icmp, 0)] * 5 + [(1, arp, 0)] * 3 + [(2, icmp, 0)] * 3
              + [(1, icmp, 100), (1, icmp, 100), (1, icmp, 1000)])
    passed, policed = core.police_takes(10, 3, events)
    assert passed == [True] * 3 + [False] * 2 + [True] * 6 + [True, False, True]
    assert policed == {icmp: 3}


def test_neigh_miss_punts_have_a_bigger_bucket_of_their_own():
    # Frames of tracked connections waiting for ARP: a cold neighbour on a busy port punts
    # hundreds at once. set_punt_limit's lower limits leave NEIGH_MISS at its own (512 at once).
    core = pytest.importorskip("hyperplane._core")
    nm, icmp = R["NEIGH_MISS"], R["ICMP"]
    events = [(0, nm, 0)] * 513 + [(0, icmp, 0)] * 4 + [(0, nm, 1)] * 3
    passed, policed = core.police_takes(10, 3, events)
    assert passed == [True] * 512 + [False] + [True] * 3 + [False] + [True, True, False]
    assert policed == {nm: 2, icmp: 1}                   # 2,000 a second: 2 more a ms later
