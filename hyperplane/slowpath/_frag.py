"""IPv4 / IPv6 fragment reassembly (bounded) and fragmentation.

Reassembly follows RFC 791 / RFC 8200 with RFC 5722's rule: a fragment that overlaps another
one (other than an exact duplicate) discards the whole datagram, and fragments of a discarded
datagram are dropped until its timer runs out. Bounded by the number of datagrams in progress
(the oldest is evicted), their age, and the reassembled size.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from dataclasses import dataclass, field

from ._wire import ETH_LEN, IPV6_FRAG, IpInfo, ipv4_header_fix, parse_ip


@dataclass
class _Datagram:
    deadline: int
    family: int
    pieces: dict = field(default_factory=dict)   # offset -> payload bytes
    total: int = -1                              # payload length, once the last fragment came
    head: bytes = b""                            # Ethernet + IP header (+ unfragmentable part)
    nh_rel: int = -1                             # IPv6: next-header byte in head, relative
    first_nh: int = -1                           # IPv6: the fragment header's next header
    have_first: bool = False
    dead: bool = False                           # overlapped: drop the rest
    max_frag: int = 0                            # largest fragment seen (L3 bytes)
    ident: int = 0
    size: int = 0                                # payload bytes held


@dataclass
class Reassembled:
    frame: bytearray          # Ethernet frame of the whole datagram
    max_frag: int             # largest fragment's L3 length, for refragmenting
    ident: int
    unfrag_len: int           # IPv6: IPv6 header + unfragmentable extension headers


class Reassembler:
    """add() a fragment: returns ("done", Reassembled), ("wait", None) or ("drop", why).
    why is one of: malformed, overlap, too_big, dead (a fragment of a discarded datagram).
    expire(now) returns how many datagrams timed out; evicted counts the too_many evictions.
    max_datagrams bounds each scope (the port a fragment came in by) on its own: a port that
    floods fragments evicts its own oldest datagrams, never another port's."""

    def __init__(self, max_datagrams=64, timeout_ms=2000, max_size=65535):
        self.max_datagrams = max_datagrams
        self.timeout_ms = timeout_ms
        self.max_size = max_size
        self.queues: OrderedDict[tuple, _Datagram] = OrderedDict()
        self.evicted = 0

    def __len__(self):
        return len(self.queues)

    def expire(self, now: int) -> int:
        gone = [k for k, d in self.queues.items() if now >= d.deadline]
        timed_out = 0
        for k in gone:
            d = self.queues.pop(k)
            timed_out += not d.dead
        return timed_out

    def add(self, frame, info: IpInfo, scope, now: int):
        if info.family == 4:
            key = (scope, 4, info.src, info.dst, info.proto, info.ident)
            hl = info.l4 - info.l3
            payload = bytes(frame[info.l4:info.end])
            offset, more = info.frag_off, info.mf
            l3len = info.end - info.l3
        else:
            key = (scope, 6, info.src, info.dst, info.ident)
            fh = info.frag
            payload = bytes(frame[fh + 8:info.end])
            offset, more = info.frag_off, info.mf
            l3len = info.end - info.l3
        if more and (len(payload) % 8 or not payload):
            return "drop", "malformed"
        end = offset + len(payload)

        d = self.queues.get(key)
        if d is not None and now >= d.deadline:
            del self.queues[key]
            d = None
        if d is None:
            mine = [k for k in self.queues if k[0] == scope]
            if len(mine) >= self.max_datagrams:     # this port's budget: the others keep theirs
                del self.queues[mine[0]]
                self.evicted += 1
            d = self.queues[key] = _Datagram(now + self.timeout_ms, info.family, ident=info.ident)
        if d.dead:
            return "drop", "dead"

        # The reassembled datagram's size: header (+ unfragmentable part) + payload.
        head_len = hl if info.family == 4 else (info.frag - info.l3)
        limit = self.max_size - hl if info.family == 4 else self.max_size - (head_len - 40)
        if end > limit:
            self._kill(key, d)
            return "drop", "too_big"
        if not more:
            if d.total >= 0 and d.total != end:
                self._kill(key, d)
                return "drop", "overlap"
            if any(o + len(p) > end for o, p in d.pieces.items()):
                self._kill(key, d)
                return "drop", "overlap"
            d.total = end
        elif d.total >= 0 and end > d.total:
            self._kill(key, d)
            return "drop", "overlap"
        for o, p in d.pieces.items():
            if o < end and offset < o + len(p):
                if o == offset and p == payload:
                    return "wait", None            # an exact duplicate changes nothing
                self._kill(key, d)
                return "drop", "overlap"
        d.pieces[offset] = payload
        d.size += len(payload)
        d.max_frag = max(d.max_frag, l3len)
        if offset == 0:
            d.have_first = True
            if info.family == 4:
                d.head = bytes(frame[:info.l4])
            else:
                d.head = bytes(frame[:info.frag])
                d.nh_rel = info.nh_pos
                d.first_nh = frame[info.frag]
        if d.total < 0 or not d.have_first or d.size != d.total:
            return "wait", None
        del self.queues[key]
        return "done", self._build(d)

    def _kill(self, key, d: _Datagram) -> None:
        d.dead = True
        d.pieces.clear()
        d.size = 0
        self.queues.move_to_end(key)

    @staticmethod
    def _build(d: _Datagram) -> Reassembled:
        payload = b"".join(d.pieces[o] for o in sorted(d.pieces))
        frame = bytearray(d.head) + payload
        l3 = ETH_LEN
        if d.family == 4:
            hl = (frame[l3] & 15) * 4
            struct.pack_into("!H", frame, l3 + 2, hl + len(payload))
            struct.pack_into("!H", frame, l3 + 6, struct.unpack_from("!H", frame, l3 + 6)[0] & 0x4000)
            ipv4_header_fix(frame, l3)
            return Reassembled(frame, d.max_frag, d.ident, hl)
        frame[d.nh_rel] = d.first_nh
        struct.pack_into("!H", frame, l3 + 4, len(frame) - l3 - 40)
        return Reassembled(frame, d.max_frag, d.ident, len(d.head) - l3)


# -- fragmentation --------------------------------------------------------------------------------

def _copied_options(options: bytes) -> bytes:
    """The IPv4 options that go into every fragment (copied flag set), padded to 4 bytes."""
    out, i = b"", 0
    while i < len(options):
        kind = options[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= len(options) or options[i + 1] < 2:
            break
        length = options[i + 1]
        if kind & 0x80:
            out += options[i:i + length]
        i += length
    return out + b"\0" * (-len(out) % 4)


def fragment4(frame, mtu: int) -> list[bytearray]:
    """Fragments an IPv4 frame (Ethernet header at 0) into frames whose IP length <= mtu."""
    l3 = ETH_LEN
    info = parse_ip(frame, l3)
    if info is None or info.family != 4:
        raise ValueError("not an IPv4 frame")
    if info.end - l3 <= mtu:
        return [bytearray(frame)]
    eth = bytes(frame[:l3])
    hdr = bytes(frame[l3:info.l4])
    payload = bytes(frame[info.l4:info.end])
    later = hdr[:20] + _copied_options(hdr[20:])
    base_off = info.frag_off
    base_mf = info.mf
    flags_df = 0            # a frame we fragment cannot keep DF
    out = []
    pos = 0
    while pos < len(payload):
        h = hdr if pos == 0 else later
        room = (mtu - len(h)) & ~7
        if room <= 0:
            raise ValueError(f"MTU {mtu} too small to fragment")
        chunk = payload[pos:pos + room]
        last = pos + len(chunk) >= len(payload)
        more = (not last) or base_mf
        hb = bytearray(h)
        hb[0] = 0x40 | (len(h) // 4)
        struct.pack_into("!H", hb, 2, len(h) + len(chunk))
        struct.pack_into("!H", hb, 6, flags_df | (0x2000 if more else 0) | ((base_off + pos) // 8))
        f = bytearray(eth) + hb + chunk
        ipv4_header_fix(f, l3)
        out.append(f)
        pos += len(chunk)
    return out


def unfragmentable_len(frame) -> tuple[int, int]:
    """(length of the IPv6 header + unfragmentable extension headers, offset of the next-header
    byte that names what follows them). Unfragmentable: everything up to and including the
    routing header if there is one, else the hop-by-hop header if there is one (RFC 8200 4.5)."""
    l3 = ETH_LEN
    nh, p = frame[l3 + 6], l3 + 40
    end, end_pos = p, l3 + 6
    count = 0
    while nh in (0, 43, 60, 51) and p + 8 <= len(frame) and count < 8:
        size = (frame[p + 1] + 2) * 4 if nh == 51 else (frame[p + 1] + 1) * 8
        if nh in (0, 43):
            end, end_pos = p + size, p
        nh, p = frame[p], p + size
        count += 1
    return end - l3, end_pos


def fragment6(frame, mtu: int, ident: int, unfrag_len: int | None = None) -> list[bytearray]:
    """Fragments an IPv6 frame into frames whose IP length <= mtu, with fragment headers
    carrying ident. unfrag_len: the IPv6 header + unfragmentable extension headers (None:
    worked out from the frame)."""
    l3 = ETH_LEN
    info = parse_ip(frame, l3)
    if info is None or info.family != 6:
        raise ValueError("not an IPv6 frame")
    if info.end - l3 <= mtu:
        return [bytearray(frame)]
    computed, nh_pos = unfragmentable_len(frame)
    if unfrag_len is None:
        unfrag_len = computed
    elif unfrag_len != computed:
        # Find the next-header byte of the last header inside the given unfragmentable part.
        nh, nh_pos, p = frame[l3 + 6], l3 + 6, l3 + 40
        while p < l3 + unfrag_len:
            size = (frame[p + 1] + 2) * 4 if nh == 51 else (frame[p + 1] + 1) * 8
            nh, nh_pos, p = frame[p], p, p + size
    eth = bytes(frame[:l3])
    unfrag = bytearray(frame[l3:l3 + unfrag_len])
    first_nh = frame[nh_pos]
    unfrag[nh_pos - l3] = IPV6_FRAG
    rest = bytes(frame[l3 + unfrag_len:info.end])
    room = (mtu - len(unfrag) - 8) & ~7
    if room <= 0:
        raise ValueError(f"MTU {mtu} too small to fragment")
    out = []
    pos = 0
    while pos < len(rest):
        chunk = rest[pos:pos + room]
        more = pos + len(chunk) < len(rest)
        hb = bytearray(unfrag)
        struct.pack_into("!H", hb, 4, len(unfrag) - 40 + 8 + len(chunk))
        fh = struct.pack("!BBHI", first_nh, 0, pos | (1 if more else 0), ident)
        out.append(bytearray(eth) + hb + fh + chunk)
        pos += len(chunk)
    return out
