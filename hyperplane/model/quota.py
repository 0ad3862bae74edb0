"""Per-function quotas (docs/semantics.md section 13), as csrc/nat/quota.c and hp_quota.h.

A function is the owner index of its sources (the first source registered with its MAC). It
may hold at most max_connections connections in the table and max_ports ports of any one ENI
pool (0: no quota). The NAT keeps a function's books only through the hooks of Func (admit,
refused, created, early_dropped, deleted), as nat.c calls hp_quota_*.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ..vocab import R
from .conntrack import Entry
from .packet import Packet, ones_sum, put_u16

REFUSAL_PER_S, REFUSAL_BURST = 1000, 100        # answers to refused new connections
QUOTE_MAX = {4: 576 - 20 - 8, 6: 1280 - 40 - 8}
FUNC_COUNTERS = ("created", "refused_connections", "refused_ports", "table_full",
                 "ports_exhausted", "early_dropped")
# FUNCTION_LIMIT here is a port quota: the connection quota is admit's.
_REFUSAL_COUNTERS = {R["TABLE_FULL"]: "table_full", R["PORTS_EXHAUSTED"]: "ports_exhausted",
                     R["FUNCTION_LIMIT"]: "refused_ports"}


@dataclass
class Func:
    max_connections: int = 0
    max_ports: int = 0
    connections: int = 0
    held: dict = field(default_factory=dict)    # (eni, family, proto) -> ports held
    counters: dict = field(default_factory=lambda: dict.fromkeys(FUNC_COUNTERS, 0))
    rates: dict = field(default_factory=dict)   # is_rst -> its own answer budget (RateLimit)

    def admit(self) -> bool:
        """Whether the function may have one more connection (a refusal is counted)."""
        if self.max_connections == 0 or self.connections < self.max_connections:
            return True
        self.counters["refused_connections"] += 1
        return False

    def refused(self, reason: int) -> int:
        """A new connection refused for lack of resources, counted; returns reason."""
        counter = _REFUSAL_COUNTERS.get(reason)
        if counter:
            self.counters[counter] += 1
        return reason

    def created(self) -> None:
        self.connections += 1
        self.counters["created"] += 1

    def early_dropped(self) -> None:
        self.counters["early_dropped"] += 1

    def deleted(self, conn: Entry, last_ref: bool, quarantine_ms: int) -> int | None:
        """conn is deleted: it no longer counts, and its port (when last_ref: no other
        connection shares it) goes back at once, or stays charged while in quarantine.
        Returns the charge to keep with the quarantined port (its owner; None: none)."""
        self.connections = max(self.connections - 1, 0)
        if not last_ref:
            return None
        if quarantine_ms:
            return conn.owner
        self.port_add((conn.eni, conn.family, conn.proto), -1)
        return None

    def port_ok(self, pool: tuple) -> bool:
        return self.max_ports == 0 or self.held.get(pool, 0) < self.max_ports

    def port_add(self, pool: tuple, delta: int) -> None:
        held = self.held.get(pool, 0) + delta
        self.held[pool] = max(held, 0)

    def stats(self, owner: int, addr: str) -> dict:
        return {"owner": owner, "addr": addr, "max_connections": self.max_connections,
                "max_ports": self.max_ports, "connections": self.connections,
                "ports": sum(self.held.values()), **self.counters}


def build_unreach(frame, pkt: Packet) -> bool:
    """The datagram becomes ICMP destination unreachable, administratively prohibited (type 3
    code 13; ICMPv6 type 1 code 1) from its destination to its source, quoting what fits in
    the frame, as hp_unreach_build. False (frame unchanged) when the frame is too short."""
    b, v4 = pkt.base, pkt.family == 4
    ip = b + pkt.l3
    hl = 20 if v4 else 40
    room = len(frame) - ip
    if room < hl + 8 + (pkt.l4 - pkt.l3) + 8:
        return False
    quote = min(pkt.l3len, room - hl - 8, QUOTE_MAX[pkt.family])
    n = 4 if v4 else 16
    src, dst = pkt.src[:n], pkt.dst[:n]
    frame[b:b + 12] = frame[b + 6:b + 12] + frame[b:b + 6]
    if b:
        frame[0:b] = bytes(b)
    quoted = bytes(frame[ip:ip + quote])
    if v4:
        hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, hl + 8 + quote, 0, 0, 64, 1, 0,
                                    dst, src))
        put_u16(hdr, 10, ~ones_sum(hdr) & 0xFFFF)
        icmp = bytearray([3, 13, 0, 0, 0, 0, 0, 0]) + quoted
        pseudo = b""
    else:
        hdr = bytearray(struct.pack("!IHBB16s16s", 0x60000000, 8 + quote, 58, 64, dst, src))
        icmp = bytearray([1, 1, 0, 0, 0, 0, 0, 0]) + quoted
        pseudo = dst + src + struct.pack("!IxxxB", 8 + quote, 58)
    put_u16(icmp, 2, ~ones_sum(pseudo + bytes(icmp)) & 0xFFFF)
    frame[ip:] = hdr + icmp + bytes(room - hl - 8 - quote)
    return True
