"""Byte-level helpers for the slow path: MACs, checksums (RFC 1071 / 1624), IP header parsing.

Everything here works on bytes / bytearrays of an Ethernet frame (no virtio-net header) and
never raises on short or malformed input: the parsers return None instead.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

ETH_LEN = 14
ETH_P_IP, ETH_P_ARP, ETH_P_IPV6 = 0x0800, 0x0806, 0x86DD
PROTO_ICMP, PROTO_TCP, PROTO_UDP, PROTO_ICMPV6 = 1, 6, 17, 58
IPV6_EXT = (0, 43, 60, 51)          # hop-by-hop, routing, destination options, AH
IPV6_FRAG = 44
IPV6_MAX_EXT = 8

BROADCAST_MAC = b"\xff" * 6
VNET_LEN = 10
VNET_NEEDS_CSUM = 1


def mac_bytes(mac) -> bytes:
    if isinstance(mac, (bytes, bytearray)):
        if len(mac) != 6:
            raise ValueError("a MAC address is 6 bytes")
        return bytes(mac)
    parts = str(mac).replace("-", ":").split(":")
    if len(parts) != 6:
        raise ValueError(f"not a MAC address: {mac!r}")
    return bytes(int(p, 16) for p in parts)


def mac_str(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def ip_str(raw: bytes) -> str:
    return str(ipaddress.ip_address(bytes(raw)))


def ip_packed(addr) -> bytes:
    return ipaddress.ip_address(addr).packed


# -- checksums -----------------------------------------------------------------------------------

def ones_sum(data, initial: int = 0) -> int:
    """Ones' complement sum over 16-bit big-endian words, folded, not inverted."""
    if len(data) % 2:
        data = bytes(data) + b"\0"
    s = initial + sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s > 0xFFFF:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def checksum(data, initial: int = 0) -> int:
    return ~ones_sum(data, initial) & 0xFFFF


def pseudo_sum(src: bytes, dst: bytes, proto: int, length: int) -> int:
    if len(src) == 4:
        return ones_sum(src + dst + struct.pack("!BBH", 0, proto, length))
    return ones_sum(src + dst + struct.pack("!IxxxB", length, proto))


def csum_replace(check: int, old: bytes, new: bytes) -> int:
    """RFC 1624 eq. 3: the checksum after the words `old` became `new` (even lengths)."""
    s = ~check & 0xFFFF
    for (w,) in struct.iter_unpack("!H", old):
        s += ~w & 0xFFFF
    for (w,) in struct.iter_unpack("!H", new):
        s += w
    while s > 0xFFFF:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ipv4_header_fix(buf: bytearray, l3: int) -> None:
    """Recomputes an IPv4 header checksum in place."""
    hlen = (buf[l3] & 15) * 4
    buf[l3 + 10:l3 + 12] = b"\0\0"
    struct.pack_into("!H", buf, l3 + 10, checksum(buf[l3:l3 + hlen]))


# -- parsing ---------------------------------------------------------------------------------------

@dataclass
class IpInfo:
    """Where things are in an IP packet. Offsets count from the start of the buffer."""
    family: int
    l3: int
    l4: int                 # first byte after the header chain (the upper layer, or the fragment)
    end: int                # end of the packet as its length fields say (<= len(buffer))
    proto: int              # upper-layer protocol (IPv6: the last next header)
    src: bytes
    dst: bytes
    ttl: int
    frag: int = -1          # IPv6: offset of the fragment header, else -1
    nh_pos: int = -1        # IPv6: offset of the next-header byte that names l4's header
    df: bool = False        # IPv4: don't fragment
    mf: bool = False        # IPv4 / IPv6 fragment: more fragments
    frag_off: int = 0       # fragment offset in bytes
    ident: int = 0          # IPv4 identification / IPv6 fragment identification

    @property
    def src_str(self) -> str:
        return ip_str(self.src)

    @property
    def dst_str(self) -> str:
        return ip_str(self.dst)

    @property
    def is_fragment(self) -> bool:
        return self.mf or self.frag_off != 0 or self.frag >= 0


def parse_ip(buf, l3: int = ETH_LEN, truncated: bool = False) -> IpInfo | None:
    """Parses the IPv4 / IPv6 header at l3. truncated: the packet may be cut short (a packet
    quoted in an ICMP error): then `end` is clamped to the buffer and lengths are not checked."""
    avail = len(buf) - l3
    if avail < 1:
        return None
    version = buf[l3] >> 4
    if version == 4:
        if avail < 20:
            return None
        ihl = (buf[l3] & 15) * 4
        total = struct.unpack_from("!H", buf, l3 + 2)[0]
        if ihl < 20 or ihl > avail:
            return None
        if total < ihl or (total > avail and not truncated):
            return None
        frag = struct.unpack_from("!H", buf, l3 + 6)[0]
        return IpInfo(4, l3, l3 + ihl, l3 + min(total, avail), buf[l3 + 9],
                      bytes(buf[l3 + 12:l3 + 16]), bytes(buf[l3 + 16:l3 + 20]), buf[l3 + 8],
                      df=bool(frag & 0x4000), mf=bool(frag & 0x2000),
                      frag_off=(frag & 0x1FFF) * 8,
                      ident=struct.unpack_from("!H", buf, l3 + 4)[0])
    if version == 6:
        if avail < 40:
            return None
        plen = struct.unpack_from("!H", buf, l3 + 4)[0]
        if 40 + plen > avail:
            if not truncated:
                return None
            plen = avail - 40
        end = l3 + 40 + plen
        nh, nh_pos, p = buf[l3 + 6], l3 + 6, l3 + 40
        info = IpInfo(6, l3, p, end, nh, bytes(buf[l3 + 8:l3 + 24]),
                      bytes(buf[l3 + 24:l3 + 40]), buf[l3 + 7])
        count = 0
        while nh in IPV6_EXT or nh == IPV6_FRAG:
            count += 1
            if count > IPV6_MAX_EXT or p + 8 > end:
                return None
            if nh == IPV6_FRAG:
                info.frag = p
                fo = struct.unpack_from("!H", buf, p + 2)[0]
                info.frag_off = fo & 0xFFF8
                info.mf = bool(fo & 1)
                info.ident = struct.unpack_from("!I", buf, p + 4)[0]
                # The chain stops here: what follows is (a piece of) the fragmentable part.
                info.l4, info.nh_pos, info.proto = p, nh_pos, nh
                return info
            size = (buf[p + 1] + 2) * 4 if nh == 51 else (buf[p + 1] + 1) * 8
            if p + size > end:
                return None
            nh, nh_pos, p = buf[p], p, p + size
        info.l4, info.nh_pos, info.proto = p, nh_pos, nh
        return info
    return None


def l3_bytes(buf, info: IpInfo) -> bytes:
    return bytes(buf[info.l3:info.end])


def complete_partial_csum(frame: bytearray, vnet: bytes | None) -> bool:
    """Finishes a NEEDS_CSUM checksum in place (the field holds the pseudo-header sum).
    Returns True when it did something."""
    if not vnet or len(vnet) != VNET_LEN or not vnet[0] & VNET_NEEDS_CSUM:
        return False
    start, off = struct.unpack_from("<HH", vnet, 6)
    if start + off + 2 > len(frame):
        raise ValueError("partial checksum outside the frame")
    info = parse_ip(frame)
    end = info.end if info is not None else len(frame)
    value = checksum(frame[start:end])
    if info is not None and info.proto == PROTO_UDP and value == 0:
        value = 0xFFFF
    struct.pack_into("!H", frame, start + off, value)
    return True


def in_networks(addr: bytes, networks) -> bool:
    ip = ipaddress.ip_address(bytes(addr))
    return any(ip.version == n.version and ip in n for n in networks)
