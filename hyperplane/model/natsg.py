"""The NAT's Lambda-facing extras, mirroring csrc/nat/natsg.c, secgroup.c and reject.c: security-
group rule sets, the reject journal, per-ENI counters and the idle-timeout RST."""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass, field

from ..connection import addr_bytes
from ..vocab import REASONS
from .packet import PROTO_TCP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, Packet, ones_sum, put_u16

REJECT_RING = 8192
REASON_ORDER = {name: i for i, name in enumerate(REASONS)}
RST_PER_S, RST_BURST = 1000, 100


# -- security groups ----------------------------------------------------------------------------

@dataclass
class RuleSet:
    rules: list            # (proto, port_lo, port_hi, family, network bytes (16), plen)
    hits: list


def compile_rules(rules) -> RuleSet:
    """As _compile_rules and hp_sg_set_new: validated, host bits cleared."""
    out = []
    for rule in rules:
        proto, lo, hi, family, prefix, plen = rule
        fam, raw = addr_bytes(prefix)
        if (fam != family or proto not in (0, 6, 17) or not 0 <= lo <= hi <= 65535
                or not 0 <= plen <= (32 if fam == 4 else 128)):
            raise ValueError(f"bad security-group rule {tuple(rule)!r}")
        net = int.from_bytes(raw, "big") & ~((1 << (128 - plen)) - 1)
        out.append((proto, lo, hi, fam, net, plen))
    return RuleSet(out, [0] * len(out))


def sg_match(rs: RuleSet, family: int, proto: int, dst: bytes, dport: int) -> int:
    """The first rule that lets this new connection out, or -1."""
    addr = int.from_bytes(dst, "big")
    for i, (rproto, lo, hi, fam, net, plen) in enumerate(rs.rules):
        if fam != family or (rproto and (rproto != proto or not lo <= dport <= hi)):
            continue
        if addr & ~((1 << (128 - plen)) - 1) == net:
            return i
    return -1


# -- per-ENI counters ---------------------------------------------------------------------------

@dataclass
class EniCounters:
    packets: list = field(default_factory=lambda: [0, 0])       # [OUT, IN]
    bytes: list = field(default_factory=lambda: [0, 0])
    attempts: list = field(default_factory=lambda: [0, 0])      # [TCP, UDP]
    established: list = field(default_factory=lambda: [0, 0])
    active: list = field(default_factory=lambda: [0, 0])
    port_errors: int = 0
    idle_timeouts: int = 0
    drops: int = 0
    rst_sent: int = 0
    drops_by_reason: dict = field(default_factory=dict)      # reason name -> drops

    def drop(self, reason: str) -> None:
        self.drops += 1
        self.drops_by_reason[reason] = self.drops_by_reason.get(reason, 0) + 1

    def as_dict(self) -> dict:
        per_proto = lambda v: {"tcp": v[0], "udp": v[1]}
        return {"packets_out": self.packets[0], "packets_in": self.packets[1],
                "bytes_out": self.bytes[0], "bytes_in": self.bytes[1],
                "attempts": per_proto(self.attempts),
                "established": per_proto(self.established),
                "active": per_proto(self.active), "port_errors": self.port_errors,
                "idle_timeouts": self.idle_timeouts, "drops": self.drops,
                "rst_sent": self.rst_sent,
                "drops_by_reason": {r: n for r, n in sorted(self.drops_by_reason.items(),
                                                           key=lambda x: REASON_ORDER[x[0]])}}


# -- the reject journal -------------------------------------------------------------------------

class RejectRing:
    """Bounded; a full ring loses the new record and counts it (the writer never waits)."""

    def __init__(self):
        self.records: deque = deque()

    def push(self, record) -> bool:
        if len(self.records) >= REJECT_RING:
            return False
        self.records.append(record)
        return True

    def take(self, max_records: int) -> list:
        n = min(max_records, REJECT_RING, len(self.records))
        return [self.records.popleft() for _ in range(n)]


# -- the idle-timeout RST -----------------------------------------------------------------------

class RateLimit:
    """Token bucket in thousandths of a token, as hp_rate."""

    def __init__(self, per_s=RST_PER_S, burst=RST_BURST):
        self.per_s, self.burst = per_s, burst
        self.milli, self.last_ms = burst * 1000, 0

    def take(self, now_ms: int) -> bool:
        cap = self.burst * 1000
        if now_ms > self.last_ms:
            elapsed = min(now_ms - self.last_ms, cap)
            self.milli = min(cap, self.milli + elapsed * self.per_s)
            self.last_ms = now_ms
        if self.milli < 1000:
            return False
        self.milli -= 1000
        return True


def build_rst(frame, pkt: Packet) -> None:
    """The segment becomes the RST answering it (RFC 793 reset generation), as hp_rst_build."""
    b, v4 = pkt.base, pkt.family == 4
    ip, l4 = b + pkt.l3, b + pkt.l4
    flags = pkt.tcp_flags
    seq, ack = struct.unpack_from("!II", frame, l4 + 4)
    seg_len = (pkt.l3len - (pkt.l4 - pkt.l3) - pkt.l4hdr + bool(flags & TCP_SYN)
               + bool(flags & TCP_FIN))
    n = 4 if v4 else 16
    src, dst = pkt.src[:n], pkt.dst[:n]
    frame[b:b + 12] = frame[b + 6:b + 12] + frame[b:b + 6]
    if b:
        frame[0:b] = bytes(b)
    frame[ip:] = bytes(len(frame) - ip)
    if v4:
        hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0x4000, 64, 6, 0, dst, src))
        put_u16(hdr, 10, ~ones_sum(hdr) & 0xFFFF)
    else:
        hdr = bytearray(struct.pack("!IHBB16s16s", 0x60000000, 20, 6, 64, dst, src))
    if flags & TCP_ACK:
        seq_ack, out_flags = (ack, 0), TCP_RST
    else:
        seq_ack, out_flags = (0, (seq + seg_len) & 0xFFFFFFFF), TCP_RST | TCP_ACK
    tcp = bytearray(struct.pack("!HHIIBBHHH", pkt.dport, pkt.sport, *seq_ack, 5 << 4, out_flags,
                                0, 0, 0))
    pseudo = ones_sum(bytes(hdr[12:20] if v4 else hdr[8:40]) + bytes([0, 6, 0, 20]))
    put_u16(tcp, 16, ~ones_sum(bytes(tcp) + pseudo.to_bytes(2, "big")) & 0xFFFF)
    frame[ip:ip + len(hdr) + 20] = hdr + tcp


def is_rst(flags: int) -> bool:
    return bool(flags & TCP_RST)


__all__ = ["REJECT_RING", "RuleSet", "compile_rules", "sg_match", "EniCounters", "RejectRing",
           "RateLimit", "build_rst", "is_rst", "PROTO_TCP"]
