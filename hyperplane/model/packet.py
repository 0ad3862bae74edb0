"""One frame: parse it (docs/semantics.md section 1), count it (2.1), rewrite it (section 4).

Offsets in a Packet (l3, l4) count from the start of the Ethernet header, as a virtio-net
header's csum_start does; `base` is where that Ethernet header starts inside the frame (10
when the frame carries a virtio-net header, else 0).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..vocab import OUT, R

VNET_HDR_LEN = 10
VNET_F_NEEDS_CSUM = 1
GSO_NONE, GSO_UDP_L4 = 0, 5

ETH_HDR_LEN = 14
ETH_P_IP, ETH_P_ARP, ETH_P_IPV6 = 0x0800, 0x0806, 0x86DD

PROTO_ICMP, PROTO_TCP, PROTO_UDP, PROTO_ICMPV6 = 1, 6, 17, 58

TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK = 1, 2, 4, 8, 16

# IPv6 extension headers the parser walks over: hop-by-hop, routing, destination options,
# fragment and authentication header. Any other next-header value ends the chain.
IPV6_EXT_HEADERS = (0, 43, 60, 44, 51)
IPV6_ROUTING, IPV6_FRAGMENT, IPV6_AUTH = 43, 44, 51
IPV4_LSRR, IPV4_SSRR = 131, 137
IPV6_MAX_EXT_HEADERS = 8


@dataclass
class Packet:
    """What the parser learned about a frame that the NAT can handle (TCP or UDP)."""
    base: int           # where the Ethernet header starts in the frame
    family: int         # 4 or 6
    proto: int          # 6 or 17
    l3: int             # offset of the IP header (from the Ethernet header)
    l4: int             # offset of the TCP/UDP header
    l3len: int          # IP total length (IPv6: 40 + payload length)
    l4hdr: int          # TCP data offset * 4, or 8 for UDP
    src: bytes          # 16 bytes; IPv4 in the first 4, the rest zero (the flow-key layout)
    dst: bytes
    sport: int
    dport: int
    tcp_flags: int      # 0 for UDP
    tcp_seq: int        # TCP: sequence and acknowledgment numbers, window, options bytes
    tcp_ack: int
    tcp_win: int
    tcp_options: bytes
    partial_csum: bool  # the L4 checksum field holds a partial (pseudo-header) sum
    gso_type: int
    gso_size: int

    def key(self) -> tuple:
        """The flow key: (family, proto, src, dst, sport, dport)."""
        return (self.family, self.proto, self.src, self.dst, self.sport, self.dport)

    @property
    def addr_len(self) -> int:
        return 4 if self.family == 4 else 16


def u16(buf, off: int) -> int:
    return buf[off] << 8 | buf[off + 1]


def put_u16(buf, off: int, value: int) -> None:
    buf[off] = value >> 8
    buf[off + 1] = value & 0xFF


def pad16(addr: bytes) -> bytes:
    """An address as the flow key stores it: 16 bytes, IPv4 in the first 4."""
    return bytes(addr) + bytes(16 - len(addr))


# ---------------------------------------------------------------------------------------------
# Parsing. parse() returns (reason, packet): reason R["NONE"] and a Packet when the frame is
# TCP or UDP the NAT can handle, otherwise the reason it is dropped or punted and None.
# ---------------------------------------------------------------------------------------------

def parse(frame, vnet: bool, mtu: int | None) -> tuple[int, Packet | None]:
    """mtu: of the side the frame leaves on; None skips the TOO_BIG check."""
    # Step 1: the virtio-net header, when the batch carries one.
    vflags = gso_type = gso_size = csum_start = csum_offset = 0
    base = 0
    if vnet:
        if len(frame) < VNET_HDR_LEN:
            return R["VNET_TRUNCATED"], None
        vflags, gso_type, _hdr_len, gso_size, csum_start, csum_offset = \
            struct.unpack_from("<BBHHHH", frame, 0)
        base = VNET_HDR_LEN
    length = len(frame) - base          # bytes from the Ethernet header on

    # Steps 2-4: Ethernet.
    if length < ETH_HDR_LEN:
        return R["ETH_TRUNCATED"], None
    ethertype = u16(frame, base + 12)
    if ethertype == ETH_P_ARP:
        return R["ARP"], None
    if ethertype not in (ETH_P_IP, ETH_P_IPV6):
        return R["ETHERTYPE"], None

    # Steps 5-10: the IP header. Both helpers return (reason, l3 fields).
    l3 = ETH_HDR_LEN
    if ethertype == ETH_P_IP:
        reason, ip = _parse_ipv4(frame, base, l3, length - l3)
    else:
        reason, ip = _parse_ipv6(frame, base, l3, length - l3)
    if reason != R["NONE"]:
        return reason, None
    family, proto, l4, l4len, l3len, src, dst, ttl = ip

    # Steps 11-15: the transport header.
    if proto == (PROTO_ICMP if family == 4 else PROTO_ICMPV6):
        return R["ICMP"], None
    if proto not in (PROTO_TCP, PROTO_UDP):
        return R["PROTO"], None
    at = base + l4
    if l4len < (20 if proto == PROTO_TCP else 8):
        return R["L4_TRUNCATED"], None
    tcp_flags = tcp_seq = tcp_ack = tcp_win = 0
    tcp_options = b""
    if proto == PROTO_TCP:
        doff = frame[at + 12] >> 4
        if doff < 5 or doff * 4 > l4len:
            return R["TCP_BAD_DOFF"], None
        l4hdr = doff * 4
        tcp_flags = frame[at + 13]
        tcp_seq, tcp_ack, _, tcp_win = struct.unpack_from("!IIHH", frame, at + 4)
        tcp_options = bytes(frame[at + 20:at + l4hdr])
    else:
        l4hdr = 8
        udp_len = u16(frame, at + 4)
        # A UDP GSO super-frame carries the length of one segment, not of the whole frame.
        if gso_type != GSO_UDP_L4 and (udp_len < 8 or udp_len > l4len):
            return R["UDP_BAD_LEN"], None

    # Step 16: a partial checksum must point at this frame's L4 checksum field.
    partial = bool(vnet and vflags & VNET_F_NEEDS_CSUM)
    if partial:
        want_offset = 16 if proto == PROTO_TCP else 6
        if csum_start != l4 or csum_offset != want_offset:
            return R["VNET_BAD_CSUM"], None
    # Step 16a: a complete L4 checksum must verify, before any state or timer sees the frame
    # (the endpoint would discard it); a partial one cannot be checked and is carried, nor a
    # GSO frame's (its segments get theirs when they are cut).
    elif (gso_type == GSO_NONE
          and not _l4_checksum_ok(frame, base, family, proto, l3, l4, l3len)):
        return R["L4_BAD_CHECKSUM"], None

    # Steps 17-18: what the slow path must answer with ICMP. TTL_EXCEEDED comes with the
    # packet: from an ENI, only a tracked flow's is punted (section 13).
    if mtu is not None and gso_type == GSO_NONE and l3len > mtu and ttl > 1:
        return R["TOO_BIG"], None
    return R["TTL_EXCEEDED"] if ttl <= 1 else R["NONE"], Packet(
        base=base, family=family, proto=proto, l3=l3, l4=l4, l3len=l3len, l4hdr=l4hdr,
        src=src, dst=dst, sport=u16(frame, at), dport=u16(frame, at + 2),
        tcp_flags=tcp_flags, tcp_seq=tcp_seq, tcp_ack=tcp_ack, tcp_win=tcp_win,
        tcp_options=tcp_options, partial_csum=partial, gso_type=gso_type, gso_size=gso_size)


def _l4_checksum_ok(frame, base: int, family: int, proto: int, l3: int, l4: int,
                    l3len: int) -> bool:
    """RFC 768 / 793 / 8200 8.1: the pseudo header and the segment (TCP) or the datagram (UDP,
    its own length) sum to 0xFFFF. IPv4 UDP without a checksum (0) passes, IPv6 UDP does not."""
    at = base + l4
    length = l3len - (l4 - l3) if proto == PROTO_TCP else u16(frame, at + 4)
    if proto == PROTO_UDP and u16(frame, at + 6) == 0:
        return family == 4
    alen = 4 if family == 4 else 16
    addrs = base + l3 + (12 if family == 4 else 8)
    pseudo = ones_sum(frame[addrs:addrs + 2 * alen]) + proto + length
    return fold(pseudo + ones_sum(frame[at:at + length])) == 0xFFFF


def _ipv4_source_routed(options) -> bool:
    """Whether IPv4 options carry a loose or strict source route; a malformed length ends
    the walk."""
    i = 0
    while i < len(options):
        kind = options[i]
        if kind == 0:
            return False
        if kind == 1:
            i += 1
            continue
        if len(options) - i < 2 or not 2 <= options[i + 1] <= len(options) - i:
            return False
        if kind in (IPV4_LSRR, IPV4_SSRR):
            return True
        i += options[i + 1]
    return False


def _parse_ipv4(frame, base: int, l3: int, avail: int):
    at = base + l3
    if avail < 20:
        return R["IPV4_TRUNCATED"], None
    if frame[at] >> 4 != 4:
        return R["IPV4_BAD_VERSION"], None
    hlen = (frame[at] & 0x0F) * 4
    if hlen < 20 or hlen > avail:
        return R["IPV4_BAD_IHL"], None
    total = u16(frame, at + 2)
    if total < hlen or total > avail:
        return R["IPV4_BAD_TOTAL_LEN"], None
    if ones_sum(frame[at:at + hlen]) != 0xFFFF:     # a correct header sums to all ones
        return R["IPV4_BAD_CHECKSUM"], None
    if _ipv4_source_routed(frame[at + 20:at + hlen]):
        return R["SOURCE_ROUTE"], None
    frag = u16(frame, at + 6)
    if frag & 0x3FFF:                               # MF flag or a fragment offset
        return R["FRAGMENT"], None
    src = pad16(frame[at + 12:at + 16])
    dst = pad16(frame[at + 16:at + 20])
    ttl, proto = frame[at + 8], frame[at + 9]
    return R["NONE"], (4, proto, l3 + hlen, total - hlen, total, src, dst, ttl)


def _parse_ipv6(frame, base: int, l3: int, avail: int):
    at = base + l3
    if avail < 40:
        return R["IPV6_TRUNCATED"], None
    if frame[at] >> 4 != 6:
        return R["IPV6_BAD_VERSION"], None
    payload_len = u16(frame, at + 4)
    if 40 + payload_len > avail:
        return R["IPV6_BAD_PAYLOAD_LEN"], None
    end = l3 + 40 + payload_len
    next_header = frame[at + 6]
    p = l3 + 40                                     # offset of the current header
    count = 0
    while next_header in IPV6_EXT_HEADERS:
        count += 1
        if count > IPV6_MAX_EXT_HEADERS:
            return R["IPV6_EXT_TOO_MANY"], None
        if end - p < 8:
            return R["IPV6_EXT_TRUNCATED"], None
        if next_header == IPV6_FRAGMENT:
            return R["FRAGMENT"], None
        if next_header == IPV6_AUTH:
            ext_len = (frame[base + p + 1] + 2) * 4
        else:
            ext_len = (frame[base + p + 1] + 1) * 8
        if p + ext_len > end:
            return R["IPV6_EXT_TRUNCATED"], None
        if next_header == IPV6_AUTH or (next_header == IPV6_ROUTING and frame[base + p + 3] > 0):
            return R["SOURCE_ROUTE"], None          # AH; a routing header with segments left
        next_header = frame[base + p]
        p += ext_len
    src = bytes(frame[at + 8:at + 24])
    dst = bytes(frame[at + 24:at + 40])
    hop_limit = frame[at + 7]
    return R["NONE"], (6, next_header, p, end - p, 40 + payload_len, src, dst, hop_limit)


def ip_dst(frame, vnet: bool) -> tuple[int, bytes]:
    """(family, 16-byte destination) of a frame whose IP header parsed (a fragment's)."""
    at = (VNET_HDR_LEN if vnet else 0) + ETH_HDR_LEN
    if u16(frame, at - 2) == ETH_P_IPV6:
        return 6, bytes(frame[at + 24:at + 40])
    return 4, pad16(frame[at + 16:at + 20])


def is_pure_syn(tcp_flags: int) -> bool:
    """SYN without ACK, RST or FIN: the only segment that may open a connection."""
    return tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN) == TCP_SYN


# ---------------------------------------------------------------------------------------------
# Counting (section 2.1): a GSO super-frame stands for several packets on the wire, each with
# its own copy of the headers.
# ---------------------------------------------------------------------------------------------

def wire_size(pkt: Packet) -> tuple[int, int]:
    """(packets, bytes) that the frame counts for."""
    if pkt.gso_type == GSO_NONE or pkt.gso_size == 0:
        return 1, pkt.l3len
    hdrs = pkt.l4 + pkt.l4hdr - pkt.l3
    payload = pkt.l3len - hdrs
    segs = max(1, -(-payload // pkt.gso_size))      # ceil division
    return segs, pkt.l3len + (segs - 1) * hdrs


# ---------------------------------------------------------------------------------------------
# Checksums (RFC 1071 sums, RFC 1624 incremental updates), over 16-bit big-endian words.
# ---------------------------------------------------------------------------------------------

def fold(s: int) -> int:
    """Adds the carries back in until the sum fits in 16 bits (ones' complement addition)."""
    while s > 0xFFFF:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def ones_sum(data) -> int:
    """Ones' complement sum of a buffer, folded, not inverted (odd length: zero padded)."""
    data = bytes(data)
    if len(data) % 2:
        data += b"\0"
    return fold(sum(struct.unpack("!%dH" % (len(data) // 2), data)))


def words(data) -> list[int]:
    return [u16(data, i) for i in range(0, len(data), 2)]


def csum_replace(check: int, old_words, new_words) -> int:
    """RFC 1624 eq. 3: the checksum after the old words were replaced by the new ones."""
    s = ~check & 0xFFFF
    for w in old_words:
        s += ~w & 0xFFFF
    for w in new_words:
        s += w
    return ~fold(s) & 0xFFFF


def partial_replace(check: int, old_words, new_words) -> int:
    """Same update on a partial checksum: the field holds a plain (not inverted) sum."""
    s = check
    for w in old_words:
        s += ~w & 0xFFFF
    for w in new_words:
        s += w
    return fold(s)


# ---------------------------------------------------------------------------------------------
# Rewriting (section 4): OUT rewrites the source address and port, IN the destination ones.
# ---------------------------------------------------------------------------------------------

def rewrite(frame, pkt: Packet, direction: int, addr: bytes, port: int, dec_ttl=1) -> None:
    """Rewrites the frame in place. addr is 16 bytes (flow-key layout) or 4 for IPv4.
    dec_ttl=0 leaves the TTL / hop limit alone (a hairpinned frame's second pass)."""
    l3 = pkt.base + pkt.l3
    l4 = pkt.base + pkt.l4
    n = pkt.addr_len
    if direction == OUT:
        addr_at = l3 + (12 if pkt.family == 4 else 8)
        port_at = l4
    else:
        addr_at = l3 + (16 if pkt.family == 4 else 24)
        port_at = l4 + 2
    old_addr = bytes(frame[addr_at:addr_at + n])
    new_addr = bytes(addr[:n])
    old_port = u16(frame, port_at)

    frame[addr_at:addr_at + n] = new_addr
    put_u16(frame, port_at, port)

    # TTL / hop limit. Only IPv4 has a header checksum; it covers the TTL and the address.
    if pkt.family == 4:
        old_ttl_word = u16(frame, l3 + 8)           # TTL and protocol share one word
        frame[l3 + 8] -= dec_ttl
        new_ttl_word = u16(frame, l3 + 8)
        check = u16(frame, l3 + 10)
        put_u16(frame, l3 + 10, csum_replace(check, words(old_addr) + [old_ttl_word],
                                             words(new_addr) + [new_ttl_word]))
    else:
        frame[l3 + 7] -= dec_ttl

    # The L4 checksum covers the addresses (through the pseudo header) and the ports.
    check_at = l4 + (16 if pkt.proto == PROTO_TCP else 6)
    check = u16(frame, check_at)
    if pkt.partial_csum:
        # Whoever finishes the checksum sums the ports later: only the addresses change here.
        new_check = partial_replace(check, words(old_addr), words(new_addr))
    elif pkt.proto == PROTO_UDP and pkt.family == 4 and check == 0:
        new_check = 0                               # IPv4 UDP without a checksum stays so
    else:
        new_check = csum_replace(check, words(old_addr) + [old_port],
                                 words(new_addr) + [port])
        if pkt.proto == PROTO_UDP and new_check == 0:
            new_check = 0xFFFF                      # 0 would mean "no checksum" for UDP
    put_u16(frame, check_at, new_check)
