"""A tiny, fast builder of Ethernet / IPv4 / IPv6 / TCP / UDP frames with correct checksums.

No scapy: the property tests build thousands of frames. Checksums are computed here from
scratch (not with the model's helpers), so the tests check the model against an independent
implementation. Every builder returns a fresh bytearray.
"""

from __future__ import annotations

import functools
import ipaddress
import struct

ETH_DST = bytes.fromhex("020000000001")
ETH_SRC = bytes.fromhex("020000000002")
ETH_P_IP, ETH_P_ARP, ETH_P_IPV6 = 0x0800, 0x0806, 0x86DD
TCP, UDP = 6, 17

FIN, SYN, RST, PSH, ACK, URG = 1, 2, 4, 8, 16, 32
_FLAG_LETTERS = {"F": FIN, "S": SYN, "R": RST, "P": PSH, "A": ACK, "U": URG}

VNET_LEN = 10
NEEDS_CSUM = 1
GSO_NONE, GSO_TCPV4, GSO_UDP, GSO_TCPV6, GSO_UDP_L4 = 0, 1, 3, 4, 5


@functools.lru_cache(maxsize=None)
def packed(addr: str) -> bytes:
    return ipaddress.ip_address(addr).packed


def family(addr: str) -> int:
    return 4 if len(packed(addr)) == 4 else 6


def tcp_flags(flags) -> int:
    """'SA' -> SYN|ACK; an int passes through."""
    if isinstance(flags, int):
        return flags
    value = 0
    for letter in flags:
        value |= _FLAG_LETTERS[letter]
    return value


# -- checksums ----------------------------------------------------------------------------------

def ones_sum(data, initial: int = 0) -> int:
    """Ones' complement sum, folded to 16 bits, not inverted."""
    if len(data) % 2:
        data = bytes(data) + b"\0"
    s = initial + sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s > 0xFFFF:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def checksum(data, initial: int = 0) -> int:
    return ~ones_sum(data, initial) & 0xFFFF


def pseudo_sum(src: bytes, dst: bytes, proto: int, length: int) -> int:
    """Folded sum of the IPv4 / IPv6 pseudo header."""
    if len(src) == 4:
        ph = src + dst + struct.pack("!BBH", 0, proto, length)
    else:
        ph = src + dst + struct.pack("!IxxxB", length, proto)
    return ones_sum(ph)


# -- headers ------------------------------------------------------------------------------------

def vnet_header(flags=0, gso_type=0, hdr_len=0, gso_size=0, csum_start=0, csum_offset=0) -> bytes:
    return struct.pack("<BBHHHH", flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)


def eth_header(ethertype: int, src: bytes = ETH_SRC) -> bytes:
    return ETH_DST + src + struct.pack("!H", ethertype)


def ipv4_header(src: bytes, dst: bytes, proto: int, payload_len: int, ttl=64, ident=0,
                frag=0, options=b"", tos=0) -> bytes:
    ihl = 5 + len(options) // 4
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, tos, ihl * 4 + payload_len, ident, frag, ttl,
                      proto, 0, src, dst) + options
    return hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]


def ipv6_header(src: bytes, dst: bytes, next_header: int, payload_len: int, hop_limit=64) -> bytes:
    return struct.pack("!IHBB16s16s", 0x60000000, payload_len, next_header, hop_limit, src, dst)


def ext_header(next_header: int, kind: int = 60, length_units: int = 0) -> bytes:
    """One IPv6 extension header of `kind` (0, 43, 60, 44, 51) that chains to next_header.
    Length in its own units: 8-byte units beyond the first 8, AH: 4-byte units minus 2."""
    if kind == 51:
        size = (length_units + 2) * 4
    elif kind == 44:
        size = 8
    else:
        size = (length_units + 1) * 8
    return bytes([next_header, length_units]) + bytes(size - 2)


def tcp_header(sport, dport, flags="S", seq=1000, ack=0, window=65535, options=b"") -> bytes:
    doff = 5 + len(options) // 4
    return struct.pack("!HHIIBBHHH", sport, dport, seq, ack, doff << 4, tcp_flags(flags),
                       window, 0, 0) + options


def udp_header(sport, dport, length) -> bytes:
    return struct.pack("!HHHH", sport, dport, length, 0)


# -- whole frames ---------------------------------------------------------------------------

def build(src: str, dst: str, proto: int, sport: int, dport: int, *, flags="S", payload=b"",
          ttl=64, vnet=False, needs_csum=False, gso_type=0, gso_size=0, zero_csum=False,
          ip_options=b"", ext=(), frag=0, tcp_options=b"", seq=1000, ack=0,
          window=65535, eth_src=ETH_SRC) -> bytearray:
    """A TCP or UDP frame with every checksum right.

    vnet: prefix a virtio-net header (implied by needs_csum or gso_type). needs_csum: the L4
    checksum field holds the pseudo-header sum and the header says so, as Linux hands over
    frames whose checksum is not yet computed. ext: IPv6 extension header kinds, in order.
    zero_csum: UDP without a checksum.
    """
    s, d = packed(src), packed(dst)
    if proto == TCP:
        l4 = bytearray(tcp_header(sport, dport, flags, seq=seq, ack=ack, window=window,
                                  options=tcp_options) + payload)
        check_at = 16
    else:
        l4 = bytearray(udp_header(sport, dport, 8 + len(payload)) + payload)
        check_at = 6
    if needs_csum:
        value = pseudo_sum(s, d, proto, len(l4))
    elif proto == UDP and zero_csum:
        value = 0
    else:
        value = checksum(l4, pseudo_sum(s, d, proto, len(l4)))
        if proto == UDP and value == 0:
            value = 0xFFFF
    struct.pack_into("!H", l4, check_at, value)

    if len(s) == 4:
        l3 = ipv4_header(s, d, proto, len(l4), ttl=ttl, options=ip_options, frag=frag)
        frame = eth_header(ETH_P_IP, eth_src) + l3
    else:
        chain = b""
        kinds = list(ext)
        for i, kind in enumerate(kinds):
            nxt = kinds[i + 1] if i + 1 < len(kinds) else proto
            chain += ext_header(nxt, kind)
        first = kinds[0] if kinds else proto
        l3 = ipv6_header(s, d, first, len(chain) + len(l4), hop_limit=ttl)
        frame = eth_header(ETH_P_IPV6, eth_src) + l3 + chain
    l4_offset = len(frame)
    frame = bytearray(frame) + l4
    if vnet or needs_csum or gso_type:
        hdr = vnet_header(NEEDS_CSUM if needs_csum else 0, gso_type,
                          l4_offset + (len(l4) - len(payload)), gso_size,
                          l4_offset if needs_csum else 0, check_at if needs_csum else 0)
        frame = bytearray(hdr) + frame
    return frame


def tcp(src, dst, sport, dport, flags="S", **kw) -> bytearray:
    return build(src, dst, TCP, sport, dport, flags=flags, **kw)


def udp(src, dst, sport, dport, **kw) -> bytearray:
    return build(src, dst, UDP, sport, dport, **kw)


def arp() -> bytearray:
    return bytearray(eth_header(ETH_P_ARP) + bytes(28))


# -- reading frames back ------------------------------------------------------------------------

def offsets(frame, vnet=False):
    """(eth, l3, l4, family, proto) offsets into the frame, for well-formed frames."""
    eth = VNET_LEN if vnet else 0
    l3 = eth + 14
    if frame[l3] >> 4 == 4:
        return eth, l3, l3 + (frame[l3] & 15) * 4, 4, frame[l3 + 9]
    nh, p = frame[l3 + 6], l3 + 40
    while nh in (0, 43, 60, 51):
        size = (frame[p + 1] + 2) * 4 if nh == 51 else (frame[p + 1] + 1) * 8
        nh, p = frame[p], p + size
    return eth, l3, p, 6, nh


def fields(frame, vnet=False) -> dict:
    """The addresses, ports, TTL and checksums of a TCP/UDP frame."""
    _, l3, l4, fam, proto = offsets(frame, vnet)
    if fam == 4:
        src, dst, ttl = frame[l3 + 12:l3 + 16], frame[l3 + 16:l3 + 20], frame[l3 + 8]
        end = l3 + struct.unpack_from("!H", frame, l3 + 2)[0]
    else:
        src, dst, ttl = frame[l3 + 8:l3 + 24], frame[l3 + 24:l3 + 40], frame[l3 + 7]
        end = l3 + 40 + struct.unpack_from("!H", frame, l3 + 4)[0]
    sport, dport = struct.unpack_from("!HH", frame, l4)
    check_at = l4 + (16 if proto == TCP else 6)
    return {"family": fam, "proto": proto, "src": str(ipaddress.ip_address(bytes(src))),
            "dst": str(ipaddress.ip_address(bytes(dst))), "sport": sport, "dport": dport,
            "ttl": ttl, "l4_check": struct.unpack_from("!H", frame, check_at)[0],
            "l3": l3, "l4": l4, "end": end}


def ipv4_checksum_ok(frame, vnet=False) -> bool:
    _, l3, _, fam, _ = offsets(frame, vnet)
    if fam != 4:
        return True
    return ones_sum(frame[l3:l3 + (frame[l3] & 15) * 4]) == 0xFFFF


def l4_checksum_ok(frame, vnet=False, partial=False) -> bool:
    """Recomputes the TCP/UDP checksum in full. partial: the field must hold the pseudo-header
    sum (a NEEDS_CSUM frame) instead of the final checksum."""
    f = fields(frame, vnet)
    s, d = packed(f["src"]), packed(f["dst"])
    seg = bytes(frame[f["l4"]:f["end"]])
    ps = pseudo_sum(s, d, f["proto"], len(seg))
    if partial:
        return f["l4_check"] == ps
    if f["proto"] == UDP and f["family"] == 4 and f["l4_check"] == 0:
        return True                                   # no checksum
    return ones_sum(seg, ps) == 0xFFFF


def checksums_ok(frame, vnet=False, partial=False) -> bool:
    return ipv4_checksum_ok(frame, vnet) and l4_checksum_ok(frame, vnet, partial)


def reply_to(frame, vnet=False, flags="SA", payload=b"", **kw) -> bytearray:
    """A frame going back the other way: source and destination swapped (ports too)."""
    f = fields(frame, vnet)
    if f["proto"] == TCP:
        return tcp(f["dst"], f["src"], f["dport"], f["sport"], flags=flags, payload=payload,
                   vnet=vnet, **kw)
    return udp(f["dst"], f["src"], f["dport"], f["sport"], payload=payload, vnet=vnet, **kw)


# -- malformed frames ---------------------------------------------------------------------------

def fix_ipv4_checksum(frame, vnet=False) -> bytearray:
    l3 = (VNET_LEN if vnet else 0) + 14
    hlen = (frame[l3] & 15) * 4
    struct.pack_into("!H", frame, l3 + 10, 0)
    struct.pack_into("!H", frame, l3 + 10, checksum(frame[l3:l3 + hlen]))
    return frame


def _v4(proto=UDP, **kw):
    return build("10.200.0.11", "10.0.9.9", proto, 4000, 80, **kw)


def _v6(proto=UDP, **kw):
    return build("fd00:200::11", "fd00:9::9", proto, 4000, 80, **kw)


def _poke(frame, offset, data, fix=True):
    frame[offset:offset + len(data)] = data
    return fix_ipv4_checksum(frame) if fix and frame[14] >> 4 == 4 else frame


def _set_doff(frame, l4, doff):
    frame[l4 + 12] = doff << 4
    return frame


def malformed(kind: str) -> tuple[bytearray, bool]:
    """A frame that fails exactly the parse check `kind` (a reason name); (frame, vnet)."""
    ip4, ip6 = 14, 14
    if kind == "VNET_TRUNCATED":
        return bytearray(9), True
    if kind == "ETH_TRUNCATED":
        return bytearray(13), False
    if kind == "ARP":
        return arp(), False
    if kind == "ETHERTYPE":
        return bytearray(eth_header(0x88CC) + bytes(46)), False
    if kind == "IPV4_TRUNCATED":
        return bytearray(_v4()[:14 + 19]), False
    if kind == "IPV4_BAD_VERSION":
        f = _v4()
        f[ip4] = 0x55
        return fix_ipv4_checksum(f), False
    if kind == "IPV4_BAD_IHL":
        f = _v4()
        f[ip4] = 0x44
        return fix_ipv4_checksum(f), False
    if kind == "IPV4_BAD_TOTAL_LEN":
        f = _v4()
        return _poke(f, ip4 + 2, struct.pack("!H", len(f) - 14 + 1)), False
    if kind == "IPV4_BAD_CHECKSUM":
        f = _v4()
        f[ip4 + 10] ^= 0x55
        return f, False
    if kind == "FRAGMENT":
        return _v4(frag=0x2000), False
    if kind == "IPV6_TRUNCATED":
        return bytearray(_v6()[:14 + 39]), False
    if kind == "IPV6_BAD_VERSION":
        f = _v6()
        f[ip6] = 0x40
        return f, False
    if kind == "IPV6_BAD_PAYLOAD_LEN":
        f = _v6()
        struct.pack_into("!H", f, ip6 + 4, len(f) - 14 - 40 + 1)
        return f, False
    if kind == "IPV6_EXT_TOO_MANY":
        return _v6(ext=[60] * 9), False
    if kind == "IPV6_EXT_TRUNCATED":
        f = _v6(ext=[60])
        f[ip6 + 40 + 1] = 200                         # claims far more than the packet holds
        return f, False
    if kind == "ICMP":
        f = _v4()
        return _poke(f, ip4 + 9, b"\x01"), False
    if kind == "PROTO":
        f = _v4()
        return _poke(f, ip4 + 9, b"\x84"), False     # SCTP
    if kind == "L4_TRUNCATED":
        f = _v4(proto=TCP)
        del f[14 + 20 + 19:]
        return _poke(f, ip4 + 2, struct.pack("!H", 20 + 19)), False
    if kind == "TCP_BAD_DOFF":
        return _set_doff(_v4(proto=TCP), 14 + 20, 4), False
    if kind == "UDP_BAD_LEN":
        f = _v4(payload=b"abcd")
        struct.pack_into("!H", f, 14 + 20 + 4, 7)
        return f, False
    if kind == "VNET_BAD_CSUM":
        f = _v4(proto=TCP, needs_csum=True)
        struct.pack_into("<H", f, 8, 6)              # csum_offset 6 on a TCP frame
        return f, True
    if kind == "TTL_EXCEEDED":
        return _v4(ttl=1), False
    if kind == "TOO_BIG":
        return _v4(payload=bytes(1500 - 28 + 1)), False
    raise ValueError(kind)


MALFORMED_KINDS = (
    "VNET_TRUNCATED", "ETH_TRUNCATED", "ARP", "ETHERTYPE", "IPV4_TRUNCATED", "IPV4_BAD_VERSION",
    "IPV4_BAD_IHL", "IPV4_BAD_TOTAL_LEN", "IPV4_BAD_CHECKSUM", "FRAGMENT", "IPV6_TRUNCATED",
    "IPV6_BAD_VERSION", "IPV6_BAD_PAYLOAD_LEN", "IPV6_EXT_TOO_MANY", "IPV6_EXT_TRUNCATED",
    "ICMP", "PROTO", "L4_TRUNCATED", "TCP_BAD_DOFF", "UDP_BAD_LEN", "VNET_BAD_CSUM",
    "TTL_EXCEEDED", "TOO_BIG",
)
