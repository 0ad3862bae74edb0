"""The C core's refusals and token buckets (docs/semantics.md section 12)."""

from socket import AF_INET, AF_INET6, inet_pton

import pytest
from scapy.utils import checksum
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6DestUnreach, IPv6
from scapy.layers.l2 import Ether

core = pytest.importorskip("hyperplane._core")

FN_MAC, GW_MAC = "02:00:00:00:00:11", "02:00:00:00:00:01"


def answer(pkt):
    out = core.refusal(bytes(Ether(src=FN_MAC, dst=GW_MAC) / pkt))
    return None if out is None else Ether(out)


def checksums_verify(pkt):
    """Every checksum of the answer sums to all ones, computed over its raw bytes."""
    ip = pkt.payload
    raw = bytes(ip.payload)
    if isinstance(ip, IP):
        ok = checksum(bytes(ip)[:20]) == 0
        pseudo = inet_pton(AF_INET, ip.src) + inet_pton(AF_INET, ip.dst) + bytes([0, ip.proto])
    else:
        ok = True
        pseudo = inet_pton(AF_INET6, ip.src) + inet_pton(AF_INET6, ip.dst) + bytes([0, ip.nh])
    pseudo += len(raw).to_bytes(2, "big")
    if isinstance(ip, IP) and ip.proto == 1:
        return ok and checksum(raw) == 0
    return ok and checksum(pseudo + raw) == 0


def test_syn_gets_a_rst_from_the_destination():
    a = answer(IP(src="10.200.0.11", dst="10.0.9.9", ttl=64)
               / TCP(sport=40000, dport=443, flags="S", seq=1000, options=[("MSS", 1460)]))
    assert (a.src, a.dst) == (GW_MAC, FN_MAC)
    assert (a[IP].src, a[IP].dst, a[TCP].sport, a[TCP].dport) == ("10.0.9.9", "10.200.0.11",
                                                                  443, 40000)
    assert (str(a[TCP].flags), a[TCP].seq, a[TCP].ack) == ("RA", 0, 1001)
    assert checksums_verify(a)


def test_syn6_gets_a_rst():
    a = answer(IPv6(src="fd00:200::11", dst="fd00:9::9") / TCP(sport=1, dport=2, flags="S",
                                                                seq=5))
    assert (a[IPv6].src, a[IPv6].dst, str(a[TCP].flags), a[TCP].ack) == (
        "fd00:9::9", "fd00:200::11", "RA", 6)
    assert checksums_verify(a)


def test_udp_gets_icmp_admin_prohibited_quoting_it():
    sent = IP(src="10.200.0.11", dst="10.0.9.9") / UDP(sport=5000, dport=53) / (b"q" * 30)
    a = answer(sent)
    assert (a[IP].src, a[IP].dst, a[ICMP].type, a[ICMP].code) == ("10.0.9.9", "10.200.0.11",
                                                                   3, 13)
    assert bytes(a[ICMP].payload) == bytes(sent)
    assert checksums_verify(a)


def test_udp6_gets_icmpv6_admin_prohibited():
    sent = IPv6(src="fd00:200::11", dst="fd00:9::9") / UDP(sport=5000, dport=53) / (b"x" * 2000)
    a = answer(sent)
    assert (a[ICMPv6DestUnreach].type, a[ICMPv6DestUnreach].code) == (1, 1)
    assert len(a[IPv6]) <= 1280                  # quotes what fits in the minimum MTU
    assert checksums_verify(a)


@pytest.mark.parametrize("pkt", [
    IP(src="10.200.0.11", dst="10.0.9.9") / TCP(flags="A"),          # not a SYN
    IP(src="10.200.0.11", dst="10.0.9.9") / TCP(flags="R"),
    IP(src="10.200.0.11", dst="10.0.9.9") / TCP(flags="SA"),
    IP(src="10.200.0.11", dst="10.0.9.9", frag=10) / UDP(),         # a later fragment
    IP(src="10.200.0.11", dst="10.0.9.9") / ICMP(),
])
def test_no_answer(pkt):
    assert answer(pkt) is None


def test_truncated_frames_get_no_answer():
    whole = bytes(Ether(src=FN_MAC, dst=GW_MAC) / IP(src="10.200.0.11", dst="10.0.9.9")
                  / TCP(flags="S"))
    for n in range(len(whole)):
        assert core.refusal(whole[:n]) is None


def test_bucket_grants_the_burst_then_the_rate():
    # 10 per second, burst 3: three at once, then one every 100 ms.
    times = [0, 0, 0, 0, 50, 100, 150, 200, 200, 10_000, 10_000, 10_000, 10_000]
    assert core.bucket_takes(10, 3, times) == [True, True, True, False, False, True, False,
                                               True, False, True, True, True, False]


def test_bucket_rate_zero_is_unlimited():
    assert all(core.bucket_takes(0, 1, [0] * 100))
