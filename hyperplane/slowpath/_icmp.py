"""ICMP errors: translating the ones that quote a tracked flow (RFC 5508 section 4), and
building the ones the slow path originates (time exceeded, fragmentation needed, packet too
big) with scapy."""

from __future__ import annotations

import struct

from scapy.layers.inet import ICMP, IP
from scapy.layers.inet6 import ICMPv6PacketTooBig, ICMPv6TimeExceeded, IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from .. import vocab
from ..vocab import F_HAIRPIN
from ._wire import (PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, IpInfo, csum_replace,
                    ip_packed, ip_str, ipv4_header_fix, ones_sum, checksum, parse_ip,
                    pseudo_sum)

# Error types whose body quotes the offending packet.
ICMP4_ERRORS = {3: "dest_unreach", 11: "time_exceeded", 12: "param_problem"}
ICMP6_ERRORS = {1: "dest_unreach", 2: "packet_too_big", 3: "time_exceeded", 4: "param_problem"}

# Quote sizes for errors we originate: RFC 1812 4.3.2.3 (576 in all) and RFC 4443 2.4(c)
# (as much as fits in the IPv6 minimum MTU).
QUOTE4 = 576 - 20 - 8
QUOTE6 = 1280 - 40 - 8


def icmp_checksum_ok(frame, ip: IpInfo) -> bool:
    body = frame[ip.l4:ip.end]
    if ip.family == 4:
        return ones_sum(body) == 0xFFFF
    return ones_sum(body, pseudo_sum(ip.src, ip.dst, PROTO_ICMPV6, len(body))) == 0xFFFF


def is_error(ip: IpInfo, icmp_type: int) -> bool:
    return icmp_type in (ICMP4_ERRORS if ip.family == 4 else ICMP6_ERRORS)


class Untracked(Exception):
    """The error quotes nothing we track (args[0]: a counter suffix)."""


def translate_error(frame: bytearray, ip: IpInfo, direction: int, nat, now: int, eni: int | None,
                    hairpin_leg: bool = False):
    """Rewrites an ICMP error in place for the other side of the NAT; returns the connection.

    IN (on an ENI port): the quoted packet is one we sent out (ENI address:external port ->
    remote); the error goes to the inside host. OUT (from a function): the quoted packet is a
    reply we delivered (remote -> inside host); the error goes out from the ENI address.
    hairpin_leg: the IN leg of an error that went OUT on a hairpin connection (no ENI port
    saw it; the TTL was decremented on the OUT leg).
    Raises Untracked when it quotes nothing we track (or is malformed)."""
    end = ip.end
    if end - ip.l4 < 8 + 20:
        raise Untracked("malformed")
    if not icmp_checksum_ok(frame, ip):
        raise Untracked("bad_checksum")
    inner = parse_ip(frame, ip.l4 + 8, truncated=True)
    if inner is None or inner.family != ip.family:
        raise Untracked("malformed")
    inner.end = min(inner.end, end)
    ul, proto = inner.l4, inner.proto
    if inner.frag >= 0:                     # IPv6: only a first fragment quotes the ports
        if inner.frag_off:
            raise Untracked("no_ports")
        ul, proto = inner.frag + 8, frame[inner.frag]
    elif inner.frag_off:
        raise Untracked("no_ports")
    if proto not in (PROTO_TCP, PROTO_UDP):
        raise Untracked("not_tcp_udp")
    if ul + 4 > end:
        raise Untracked("malformed")
    sport, dport = struct.unpack_from("!HH", frame, ul)
    conn = nat.lookup(ip_str(inner.dst), ip_str(inner.src), dport, sport, proto, direction, now)
    if conn is None:
        raise Untracked("unsolicited")
    fam = ip.family
    alen = 4 if fam == 4 else 16
    src_off = 12 if fam == 4 else 8
    dst_off = src_off + alen
    if direction == vocab.IN:
        # A hairpin connection's packets never left the NAT: no error from outside quotes one.
        if (eni is not None and conn.eni != eni) or (conn.flags & F_HAIRPIN and not hairpin_leg):
            raise Untracked("unsolicited")
        if ip.dst != inner.src:             # addressed to the ENI address it quotes
            raise Untracked("unsolicited")
        new_addr, new_port = ip_packed(conn.src), conn.sport
        outer_at, inner_at, port_at = ip.l3 + dst_off, inner.l3 + src_off, ul
    else:
        if ip.src != inner.dst:             # sent by the inside host it quotes
            raise Untracked("unsolicited")
        new_addr, new_port = ip_packed(conn.nat_addr), conn.nat_port
        outer_at, inner_at, port_at = ip.l3 + src_off, inner.l3 + dst_off, ul + 2
    if ip.ttl <= 1 and not hairpin_leg:
        raise Untracked("ttl")

    new_port_b = struct.pack("!H", new_port)
    old_inner = bytes(frame[inner_at:inner_at + alen])
    old_port = bytes(frame[port_at:port_at + 2])
    frame[outer_at:outer_at + alen] = new_addr
    frame[inner_at:inner_at + alen] = new_addr
    frame[port_at:port_at + 2] = new_port_b
    if fam == 4:
        # The quoted header's checksum: incremental, so a wrong one stays as wrong.
        c = struct.unpack_from("!H", frame, inner.l3 + 10)[0]
        struct.pack_into("!H", frame, inner.l3 + 10, csum_replace(c, old_inner, new_addr))
    # The quoted L4 checksum, when quoted (RFC 5508 REQ-4 / RFC 5382: update it too).
    at = ul + (16 if proto == PROTO_TCP else 6)
    if at + 2 <= end:
        c = struct.unpack_from("!H", frame, at)[0]
        if not (proto == PROTO_UDP and fam == 4 and c == 0):
            c = csum_replace(c, old_inner + old_port, new_addr + new_port_b)
            if proto == PROTO_UDP and c == 0:
                c = 0xFFFF
            struct.pack_into("!H", frame, at, c)
    # Outer TTL / hop limit, outer header and ICMP checksums.
    if fam == 4:
        frame[ip.l3 + 8] -= not hairpin_leg
        ipv4_header_fix(frame, ip.l3)
    elif not hairpin_leg:
        frame[ip.l3 + 7] -= 1
    frame[ip.l4 + 2:ip.l4 + 4] = b"\0\0"
    body = frame[ip.l4:end]
    if fam == 4:
        value = checksum(body)
    else:
        src = bytes(frame[ip.l3 + 8:ip.l3 + 24])
        dst = bytes(frame[ip.l3 + 24:ip.l3 + 40])
        value = checksum(body, pseudo_sum(src, dst, PROTO_ICMPV6, len(body)))
    struct.pack_into("!H", frame, ip.l4 + 2, value)
    del frame[end:]                         # Ethernet padding
    return conn


def build_error(kind: str, src: str, orig_l3: bytes, family: int, src_mac: bytes,
                dst_mac: bytes, mtu: int = 0) -> bytes:
    """An ICMP error about orig_l3 (the offending packet from its IP header), sent from src to
    the packet's source. kind: "time_exceeded" or "too_big"."""
    if family == 4:
        dst = ip_str(orig_l3[12:16])
        if kind == "time_exceeded":
            icmp = ICMP(type=11, code=0)
        else:
            icmp = ICMP(type=3, code=4, nexthopmtu=mtu)
        pkt = IP(src=src, dst=dst, ttl=64, proto=PROTO_ICMP) / icmp / Raw(orig_l3[:QUOTE4])
        eth_type = 0x0800
    else:
        dst = ip_str(orig_l3[8:24])
        if kind == "time_exceeded":
            icmp = ICMPv6TimeExceeded(code=0)
        else:
            icmp = ICMPv6PacketTooBig(mtu=mtu)
        pkt = IPv6(src=src, dst=dst, hlim=64) / icmp / Raw(orig_l3[:QUOTE6])
        eth_type = 0x86DD
    return bytes(Ether(src=src_mac, dst=dst_mac, type=eth_type) / pkt)
