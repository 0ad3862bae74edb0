"""The NAT itself (docs/semantics.md sections 3 and 8): the pure-Python twin of the C core.

Read it top to bottom: configuration, the topology calls (ENIs, groups, sources), then
translate() and the two directions, then expiry and the read-only views.
"""

from __future__ import annotations

import errno
from collections import deque
from dataclasses import dataclass, field

from .. import errors
from ..connection import Connection, addr_bytes, addr_str, mac_bytes
from ..flowlog import Rejected
from ..natparams import resolve
from ..vocab import (COUNTERS, DEFAULT_PORT_RANGE, DROP, F_ASSURED, F_HAIRPIN, F_REPLY_SEEN, FORWARD,
                     IN, MAX_ENIS, OUT, PUNT, PUNT_REASONS, R, REASONS, S)
from .conntrack import ORIG, REPLY, ConnTable, Entry, tcp_event, tcp_transition, udp_transition
from .packet import (PROTO_TCP, PROTO_UDP, TCP_RST, Packet, ip_dst, is_pure_syn, parse,
                     rewrite, wire_size)
from .portalloc import Pool, SplitMix64
from .quota import REFUSAL_BURST, REFUSAL_PER_S, Func, build_unreach
from .tcp import ignored, in_window, new_connection_window, reopens, rst_acceptable, valid_flags
from .natsg import (EniCounters, RateLimit, RejectRing, build_rst, compile_rules, is_rst,
                    sg_match)
from .tracing import no_trace

GROUP_MAX_ENIS = 64
EXPIRE_WHEN_FULL = 8        # connections a full table tries to expire before it refuses one
SCAN_CHUNK = 16384          # table slots a harvest page scans at most (the core: per lock hold)


IDLE_STATES = (S["ESTABLISHED"], S["FIN_WAIT"], S["CLOSE_WAIT"], S["LAST_ACK"])


def idled_out(conn: Entry) -> bool:
    """IdleTimeoutCount (9.2): an expired TCP connection that had been established and was
    not closed (no FIN both ways, no RST): it went from active to idle."""
    return conn.proto == PROTO_TCP and bool(conn.flags & F_ASSURED) and conn.state in IDLE_STATES


@dataclass
class Eni:
    addr: dict                  # family (4 or 6) -> 16-byte address, or None
    pools: dict = field(default_factory=dict)   # (family, proto) -> Pool, families it has
    free: bool = False          # released (or skipped over): its id goes to the next ENI

    @classmethod
    def released(cls) -> "Eni":
        return cls({4: None, 6: None}, {}, free=True)


@dataclass
class Source:
    group: int
    allow_v6: bool
    mac: bytes | None       # every frame from this address must carry it (None: unchecked)
    owner: int              # the function: index of the first source registered with this MAC


def is_martian(family: int, dst: bytes) -> bool:
    """Destinations a function must not reach through the NAT: loopback, link-local
    (169.254.169.254 too), multicast, broadcast, unspecified and reserved (section 3)."""
    if family == 4:
        return dst[0] in (0, 127) or dst[:2] == b"\xa9\xfe" or dst[0] >= 224
    return (dst[:12] == bytes(12)                            # ::, ::1, ::/96
            or dst[:12] == bytes(10) + b"\xff\xff"          # ::ffff:0:0/96
            or (dst[0] == 0xFE and dst[1] & 0x80)            # fe80::/10, fec0::/10
            or dst[0] == 0xFF)                               # multicast


class Nat:
    def __init__(self, *, capacity=65536, port_range=DEFAULT_PORT_RANGE,
                 mapping="endpoint-independent", profile="aws", timeouts=None,
                 quarantine_ms=None, mtu_inside=1500, mtu_outside=1500, journal_size=4096,
                 port_seed=0, hash_seed=None):
        # The same checks and defaults as the C core (hyperplane/natparams.py). hash_seed
        # only matters to the C table's hashing: dicts need none.
        p = self.params = resolve(
            capacity=capacity, port_range=port_range, mapping=mapping, profile=profile,
            timeouts=timeouts, quarantine_ms=quarantine_ms, mtu_inside=mtu_inside,
            mtu_outside=mtu_outside, journal_size=journal_size, port_seed=port_seed,
            hash_seed=hash_seed)
        self.timeouts_ms = list(p.timeouts_ms)          # indexed by state
        self.per_connection = p.per_connection
        self.port_range = (p.port_lo, p.port_hi)
        self.quarantine_ms = p.quarantine_ms            # default: 2 * TIME_WAIT
        self.mtu = {OUT: p.mtu_outside, IN: p.mtu_inside}   # by direction: the egress side's
        self.journal_size = p.journal_size

        self.table = ConnTable(p.capacity, self.timeouts_ms)
        self.rng = SplitMix64(p.port_seed)
        self.enis: list[Eni] = []
        self.groups: list[list[int]] = []               # ENI ids, oldest first
        self.group_can_grow: list[bool] = []             # the control plane can add an ENI
        self.sources: dict[tuple[int, bytes], Source] = {}
        self.n_sources = 0                              # registrations, duplicates included
        self.mac_owner: dict[bytes, int] = {}           # function MAC -> its owner index
        self.owners: dict[int, bytes | None] = {}       # owner index -> the function's MAC
        self.funcs: dict[int, Func] = {}                # owner index -> quotas and counts
        self.owner_addr: dict[int, str] = {}            # owner index -> its first address
        self.counter = dict.fromkeys(COUNTERS, 0)
        self.drops = [0] * len(REASONS)                 # drops and punts, by reason
        # Connections that expired while nobody was asking (on lookup, or to make room),
        # kept for the next expire() call. Bounded: when full the oldest record goes.
        self.journal: deque[Connection] = deque()
        # Security groups, rejects, per-ENI counters, the idle RST (model/natsg.py).
        self.group_rules: list = []                     # per group: RuleSet or None (allow)
        self.sg_denied: list[int] = []
        self.eni_ctr: list[EniCounters] = []
        self.rejects = RejectRing()
        self.rst_rate = RateLimit()
        self.refusal_rate = RateLimit(REFUSAL_PER_S, REFUSAL_BURST)
        self.trace = no_trace       # called at each decision (model/tracing.py)

    # -- topology ------------------------------------------------------------------------------

    def add_eni(self, v4=None, v6=None, eni=None) -> int:
        """Adds an ENI; returns its id: eni, or the lowest free id when eni is None (free: no
        ENI had it, or its ENI was released)."""
        addrs = {4: None, 6: None}
        for family, text in ((4, v4), (6, v6)):
            if text is not None:
                fam, raw = addr_bytes(text)
                if fam != family:
                    raise ValueError(f"not an IPv{family} address: {text}")
                addrs[family] = raw
        if v4 is None and v6 is None:
            raise ValueError("an ENI needs an IPv4 or an IPv6 address")
        if eni is not None and not 0 <= eni < MAX_ENIS:
            raise ValueError(f"an ENI id is in 0..{MAX_ENIS - 1}, not {eni}")
        if eni is None:
            eni = next((i for i, e in enumerate(self.enis) if e.free), len(self.enis))
        if eni >= MAX_ENIS:
            raise errors.CoreLimit(errno.ENOSPC, "cannot add an ENI (limit reached)")
        if eni < len(self.enis) and not self.enis[eni].free:
            raise errors.refused(f"ENI id {eni} is a live ENI's")
        # A pool per protocol for each family the ENI has an address in.
        lo, hi = self.port_range
        # Each pool's secret key: two draws of the NAT's seeded generator, in this order.
        pools = {(f, proto): Pool(lo, hi, (self.rng.next(), self.rng.next()))
                 for f in (4, 6) if addrs[f] is not None for proto in (PROTO_TCP, PROTO_UDP)}
        while len(self.enis) <= eni:        # ids skipped over are free
            self.enis.append(Eni.released())
            self.eni_ctr.append(EniCounters())
        self.enis[eni] = Eni(addrs, pools)
        self.eni_ctr[eni] = EniCounters()
        return eni

    def release_eni(self, eni: int) -> bool:
        """Gives a reclaimed ENI's id back once nothing is left of it: in no group, no
        connection, no port in use or quarantined, no unread journal or reject record naming
        it. True; False while something is left (nothing changes)."""
        if (not 0 <= eni < len(self.enis) or self.enis[eni].free
                or any(eni in g for g in self.groups)):
            raise errors.refused(f"ENI {eni} is not a live ENI outside every group")
        if (any(self.eni_ctr[eni].active)
                or any(p.stats()["free"] != p.size for p in self.enis[eni].pools.values())
                or any(c.eni == eni for c in self.journal)
                or any(r.eni == eni for r in self.rejects.records)):
            return False
        self.enis[eni] = Eni.released()
        self.eni_ctr[eni] = EniCounters()
        return True

    def add_group(self) -> int:
        self.groups.append([])
        self.group_can_grow.append(False)
        self.group_rules.append(None)
        self.sg_denied.append(0)
        return len(self.groups) - 1

    def group_add_eni(self, group: int, eni: int) -> None:
        if (not 0 <= group < len(self.groups) or not 0 <= eni < len(self.enis)
                or self.enis[eni].free or len(self.groups[group]) >= GROUP_MAX_ENIS):
            raise errors.refused(f"cannot add ENI {eni} to group {group}")
        self.groups[group].append(eni)      # the newest ENI takes new connections

    def group_set_can_grow(self, group: int, can_grow: bool) -> None:
        """Whether the control plane can add an ENI to the group (below its limit): a
        function at its port share of every pool then gets PORTS_EXHAUSTED (the group grows),
        not FUNCTION_LIMIT (section 13)."""
        if not 0 <= group < len(self.groups):
            raise errors.refused(f"no group {group}")
        self.group_can_grow[group] = bool(can_grow)

    def eni_share_used(self, eni: int) -> float:
        """The largest share of its port quota any function holds in one pool of the ENI
        (thousandths, rounded down, as a fraction; 0.0 without quotas)."""
        if not 0 <= eni < len(self.enis):
            raise ValueError(f"no ENI {eni}")
        most = max((min(held * 1000 // f.max_ports, 1000) for f in self.funcs.values()
                    if f.max_ports for (e, *_), held in f.held.items() if e == eni), default=0)
        return most / 1000.0

    def group_retire_eni(self, group: int, eni: int) -> bool:
        if not 0 <= group < len(self.groups) or eni not in self.groups[group]:
            raise errors.refused(f"ENI {eni} is not in group {group}")
        if any(self.eni_ctr[eni].active):
            return False
        self.groups[group].remove(eni)
        return True

    def add_source(self, addr: str, group: int, allow_v6=False, mac=None) -> None:
        if not 0 <= group < len(self.groups):
            raise errors.refused(f"cannot add source {addr} to group {group}")
        key = addr_bytes(addr)
        mac = mac_bytes(mac) if mac is not None else None
        index = self.n_sources
        self.n_sources += 1
        owner = self.mac_owner.setdefault(mac, index) if mac is not None else index
        # Registering an address twice changes nothing: the first registration wins (the
        # C core searches its source list in order).
        self.sources.setdefault(key, Source(group, bool(allow_v6), mac, owner))
        self.owners.setdefault(owner, mac)
        if owner == index:
            self.funcs[owner] = Func()
            self.owner_addr[owner] = addr_str(*key)

    def set_quota(self, addr, max_connections=0, max_ports=0) -> None:
        """Quotas of the function that owns source addr (0: none), section 13."""
        if not (0 <= max_connections < 1 << 32 and 0 <= max_ports < 1 << 32):
            raise ValueError("quotas are 0 .. 2**32-1")
        source = self.sources.get(addr_bytes(addr))
        if source is None:
            raise errors.refused(f"no source {addr}")
        func = self.funcs[source.owner]
        func.max_connections, func.max_ports = max_connections, max_ports

    def recount_quotas(self) -> None:
        """The model's counts are never lost (the C core recounts after attaching)."""

    def function_stats(self) -> list[dict]:
        return [self.funcs[o].stats(o, self.owner_addr[o]) for o in sorted(self.funcs)]

    def set_source_group(self, addr: str, group: int) -> None:
        source = self.sources.get(addr_bytes(addr))
        if source is None or not 0 <= group < len(self.groups):
            raise errors.refused(f"cannot move source {addr} to group {group}")
        source.group = group

    # -- the data path -------------------------------------------------------------------------

    def translate(self, frames, direction, now_ms, eni=0, vnet=False,
                  check_mtu=True) -> list[tuple]:
        """Translates every frame in place; one (verdict, reason, port, conn) per frame.
        check_mtu=False skips the TOO_BIG check (the slow path re-injecting a frame it has
        reassembled, or will fragment itself)."""
        if direction not in (OUT, IN):
            raise ValueError("direction must be vocab.OUT or vocab.IN")
        if any(type(frame) is not bytearray for frame in frames):
            raise TypeError("frames must be bytearrays (they are rewritten in place)")
        mtu = self.mtu[direction] if check_mtu else None
        out = []
        for frame in frames:
            res = self._translate_one(frame, direction, now_ms, eni, vnet, mtu)
            # Every frame dropped on an ENI's port counts for the ENI, by reason.
            if direction == IN and res[0] == DROP and 0 <= eni < len(self.enis):
                self.eni_ctr[eni].drop(REASONS[res[1]])
            out.append(res)
        return out

    def _translate_one(self, frame, direction, now_ms, eni, vnet, mtu) -> tuple:
        reason, pkt = parse(frame, vnet, mtu)
        self.trace("parse", direction=direction, reason=reason, pkt=pkt)
        if direction == IN and reason in (R["TTL_EXCEEDED"], R["FRAGMENT"]):
            return self._refuse(self._in_punt_reason(frame, vnet, reason, pkt, now_ms, eni))
        if reason != R["NONE"]:
            return self._refuse(reason)
        if pkt.proto == PROTO_TCP and not valid_flags(pkt.tcp_flags):
            return self._refuse(R["TCP_BAD_FLAGS"])
        if direction == OUT:
            return self._outbound(frame, pkt, now_ms)
        return self._inbound(frame, pkt, now_ms, eni)

    def _refuse(self, reason: int) -> tuple:
        """Counts a drop or punt; the frame goes nowhere on the fast path."""
        self.drops[reason] += 1
        verdict = PUNT if REASONS[reason] in PUNT_REASONS else DROP
        return (verdict, reason, 0, -1)

    def _outbound(self, frame, pkt: Packet, now_ms: int) -> tuple:
        """A frame from a function, towards the customer VPC."""
        expired = []
        conn = self._lookup(pkt.key(), ORIG, now_ms, expired)
        if conn is not None and not self._mac_matches(self.owners[conn.owner], frame, pkt):
            return self._refuse(R["SPOOFED_SOURCE"])
        if conn is None:
            conn, reason = self._new_connection(frame, pkt, now_ms)
            if conn is None:
                if reason == R["TCP_NOT_SYN"]:
                    return self._idle_rst(frame, pkt, expired[0] if expired else None, now_ms)
                if reason in (R["FUNCTION_LIMIT"], R["TABLE_FULL"]):
                    return self._refusal(frame, pkt, reason, now_ms)
                return self._refuse(reason)
        reason = self._update(conn, ORIG, pkt, now_ms)
        if reason != R["NONE"]:
            return self._refuse(reason)
        if not conn.flags & F_HAIRPIN:
            rewrite(frame, pkt, OUT, conn.nat_addr, conn.nat_port)
            return (FORWARD, R["NONE"], conn.eni + 1, conn.id)
        before = bytes(frame)
        rewrite(frame, pkt, OUT, conn.nat_addr, conn.nat_port)
        result = self._hairpin(frame, pkt, conn, now_ms)
        if result[0] != FORWARD:
            frame[:] = before           # refused on the way back in: it leaves as it came
        return result

    def _hairpin(self, frame, pkt: Packet, sender: Entry, now_ms: int) -> tuple:
        """Hairpinning (RFC 4787 REQ-9 and section 6, RFC 5382 REQ-8): a frame from a function
        to an ENI address, its source already translated, comes back in on that ENI as if from
        outside: only a reply of the receiver's own connection passes, nothing is created for
        the receiver. The TTL was decremented once. A refusal counts for the ENI it was
        addressed to, by reason."""
        key = (pkt.family, pkt.proto, sender.nat_addr, pkt.dst, sender.nat_port, pkt.dport)
        conn = self._lookup(key, REPLY, now_ms)
        reason = (self._no_match_reason(pkt) if conn is None
                  else self._update(conn, REPLY, pkt, now_ms))
        if reason != R["NONE"]:
            self.counter["hairpin_refused"] += 1
            eni = self._eni_of(pkt.family, pkt.dst)
            if eni is not None:
                self.eni_ctr[eni].drop(REASONS[reason])
            return self._refuse(reason)
        rewrite(frame, pkt, IN, conn.src, conn.sport, dec_ttl=0)
        self.counter["hairpin_packets"] += wire_size(pkt)[0]
        return (FORWARD, R["NONE"], 0, conn.id)

    def _eni_of(self, family: int, addr: bytes):
        return next((i for i, e in enumerate(self.enis) if e.addr[family] == addr), None)

    def _inbound(self, frame, pkt: Packet, now_ms: int, eni: int) -> tuple:
        """A frame that arrived on ENI `eni`: only replies of tracked connections pass."""
        conn = self._lookup(pkt.key(), REPLY, now_ms)
        # A reply must come back the way it left; a hairpin connection's only from inside.
        if conn is None or conn.eni != eni or conn.flags & F_HAIRPIN:
            reason = self._unsolicited_reason(pkt)
            self._note_refused_inbound(pkt, eni, reason, now_ms)
            return self._refuse(reason)
        reason = self._update(conn, REPLY, pkt, now_ms)
        if reason != R["NONE"]:
            self._note_refused_inbound(pkt, eni, reason, now_ms)
            return self._refuse(reason)
        rewrite(frame, pkt, IN, conn.src, conn.sport)
        return (FORWARD, R["NONE"], 0, conn.id)

    def _in_punt_reason(self, frame, vnet, reason: int, pkt, now_ms: int, eni: int) -> int:
        """From an ENI (section 13): TTL <= 1 is punted only for a tracked flow, a fragment
        only when addressed to an ENI. Changes nothing."""
        if reason == R["TTL_EXCEEDED"]:
            conn = self.table.lookup(pkt.key(), REPLY)
            if conn is None or self.table.is_expired(conn, now_ms) or conn.eni != eni:
                return self._unsolicited_reason(pkt)
            return reason
        family, dst = ip_dst(frame, vnet)
        if not any(e.addr[family] == dst for e in self.enis):
            return R["IN_NOT_ENI_ADDR"]
        return reason

    def _lookup(self, key: tuple, direction: int, now_ms: int, expired=None) -> Entry | None:
        """The connection whose tuple in this direction is key. One found expired is removed
        (and journaled) on the spot, and the lookup is then a miss (its ENI goes to expired)."""
        conn = self.table.lookup(key, direction)
        self.trace("lookup", key=key, direction=direction, conn=conn, now_ms=now_ms)
        if conn is not None and self.table.is_expired(conn, now_ms):
            if expired is not None:
                expired.append(conn.eni)
            self._expire_conn(conn, now_ms, journal=True)
            return None
        return conn

    def _unsolicited_reason(self, pkt: Packet) -> int:
        if self._eni_of(pkt.family, pkt.dst) is None:
            return R["IN_NOT_ENI_ADDR"]
        return self._no_match_reason(pkt)

    @staticmethod
    def _no_match_reason(pkt: Packet) -> int:
        if pkt.proto == PROTO_UDP:
            return R["IN_NO_MATCH_UDP"]
        if is_pure_syn(pkt.tcp_flags):
            return R["IN_UNSOLICITED_SYN"]
        return R["IN_NO_MATCH_TCP"]

    @staticmethod
    def _mac_matches(mac: bytes | None, frame, pkt: Packet) -> bool:
        """Whether a frame from the inside carries its function's MAC (when it has one)."""
        return mac is None or bytes(frame[pkt.base + 6:pkt.base + 12]) == mac

    def _new_connection(self, frame, pkt: Packet, now_ms: int) -> tuple[Entry | None, int]:
        """Section 3, OUT steps 2-6. Returns (connection, NONE) or (None, reason)."""
        source = self.sources.get((pkt.family, pkt.src))
        self.trace("source", source=source)
        if source is None:
            return None, R["UNKNOWN_SOURCE"]
        if not self._mac_matches(source.mac, frame, pkt):
            return None, R["SPOOFED_SOURCE"]
        if is_martian(pkt.family, pkt.dst):
            return None, R["MARTIAN_DST"]
        group = self.groups[source.group]
        if pkt.family == 6 and not self._v6_allowed(source, group):
            return None, R["V6_NOT_ALLOWED"]
        if pkt.proto == PROTO_TCP and not is_pure_syn(pkt.tcp_flags):
            return None, R["TCP_NOT_SYN"]
        if not self._sg_allows(source.group, pkt, now_ms):
            return None, R["SG_DENIED"]
        func = self.funcs[source.owner]
        if not func.admit():
            return None, R["FUNCTION_LIMIT"]
        # No early drop when the group has no pool to take a port from: no connection anyway.
        may_drop = bool(group) and (pkt.family, pkt.proto) in self.enis[group[-1]].pools
        if not self._make_room(now_ms, may_drop):
            return None, func.refused(R["TABLE_FULL"])
        eni, port = self._choose_port(group, pkt, func, now_ms)
        if port is None:
            # At its share of every pool: a group that can grow grows (the control plane adds
            # an ENI on PORTS_EXHAUSTED); only one that cannot refuses the function.
            if eni == "quota" and not self.group_can_grow[source.group]:
                return None, func.refused(R["FUNCTION_LIMIT"])
            if group:
                self.eni_ctr[group[-1]].port_errors += 1
            return None, func.refused(R["PORTS_EXHAUSTED"])
        state = S["SYN_SENT"] if pkt.proto == PROTO_TCP else S["UDP_FIRST"]
        conn = self.table.insert(pkt.family, pkt.proto, pkt.src, pkt.dst, pkt.sport, pkt.dport,
                                 eni, self.enis[eni].addr[pkt.family], port, state, now_ms)
        conn.owner = source.owner
        func.created()
        if pkt.proto == PROTO_TCP:
            conn.win = new_connection_window(pkt)
        if self._eni_of(pkt.family, pkt.dst) is not None:
            conn.flags |= F_HAIRPIN
        self.counter["conn_created"] += 1
        self.eni_ctr[eni].attempts[pkt.proto == PROTO_UDP] += 1
        self.eni_ctr[eni].active[pkt.proto == PROTO_UDP] += 1
        return conn, R["NONE"]

    def _v6_allowed(self, source: Source, group: list[int]) -> bool:
        if not source.allow_v6:
            return False
        # A group without an ENI yet is not refused here: it gets PORTS_EXHAUSTED below, and
        # the control plane creates its first ENI.
        return not group or self.enis[group[-1]].addr[6] is not None

    def _make_room(self, now_ms: int, may_drop=True) -> bool:
        """Whether the table has room for one more connection (section 13): expired
        connections go first, then (may_drop) the oldest unassured one (Linux's early_drop)."""
        if not self.table.full():
            return True
        self._expire_some(now_ms, EXPIRE_WHEN_FULL, journal=True)
        if not self.table.full():
            return True
        victim = self.table.early_drop_victim() if may_drop else None
        if victim is None:
            return False
        self._journal_add(victim.snapshot(expired=True))
        self.counter["conn_early_dropped"] += 1
        self.funcs[victim.owner].early_dropped()
        self._delete(victim, now_ms)
        return True

    def _choose_port(self, group: list[int], pkt: Packet, func: Func, now_ms: int):
        """(ENI, external port) for a new connection; port None when none is free (or the
        group has no ENI, or its newest ENI no address, so no pool, in this family), and ENI
        "quota" when the function holds its quota of the pool's ports."""
        pool_key = (pkt.family, pkt.proto)
        if not self.per_connection:
            # Endpoint-independent: an inside endpoint keeps its external port, whatever the
            # destination, on whichever ENI of its group first gave it one (oldest first).
            for eni in group:
                pool = self.enis[eni].pools.get(pool_key)
                ext = pool.map_find(pkt.src, pkt.sport) if pool else None
                if ext is not None:
                    pool.ref(ext)
                    self.trace("port", eni=eni, port=ext, why="mapping", pool=pool)
                    return eni, ext
        # The newest ENI with a free port; an older one when the newest is full. A pool the
        # function holds its quota of is passed over: "quota" when that left none and such a
        # pool still had a port for others (one the function filled alone is just full).
        over_quota = False
        for eni in reversed(group):
            pool = self.enis[eni].pools.get(pool_key)
            if pool is None:
                continue
            self._drain(eni, pool_key, pool, now_ms)
            if not func.port_ok((eni,) + pool_key):
                over_quota = over_quota or pool.has_free(now_ms)
                self.trace("port", eni=eni, port=None, why="quota", pool=pool, held=func.held,
                           max_ports=func.max_ports, pool_key=pool_key)
                continue
            ext = pool.alloc()
            self.trace("port", eni=eni, port=ext, why="drawn", pool=pool, held=func.held,
                       max_ports=func.max_ports, pool_key=pool_key)
            if ext is None:
                continue
            func.port_add((eni,) + pool_key, 1)
            if not self.per_connection:
                pool.map_add(ext, pkt.src, pkt.sport)
            return eni, ext
        if over_quota:
            return "quota", None
        return (group[-1] if group else None), None

    def _reopen(self, conn: Entry, pkt: Packet, now_ms: int) -> None:
        """A SYN reopens a closed connection (2.2): the old one ends (its record goes to the
        journal, as an expired one's does) and a new one takes its entry, mapping and port,
        with fresh counters, flags, window and start time."""
        self._journal_add(conn.snapshot(expired=True))
        self.counter["conn_expired"] += 1
        self.counter["conn_created"] += 1
        self.eni_ctr[conn.eni].attempts[0] += 1
        conn.flags &= F_HAIRPIN
        conn.start_s = (now_ms // 1000) & 0xFFFFFFFF
        conn.packets, conn.bytes, conn.win = [0, 0], [0, 0], new_connection_window(pkt)
        conn.flow_reset()                       # the new connection's first interval
        self.table.touch(conn, S["SYN_SENT"], now_ms)

    def _update(self, conn: Entry, d: int, pkt: Packet, now_ms: int) -> int:
        """A packet of this connection in direction d (2.1-2.3): the reason it is refused
        (and nothing changes), or NONE when it goes through."""
        if pkt.proto == PROTO_TCP and ignored(conn.state, d, pkt.tcp_flags, ORIG):
            self.trace("ignored", conn=conn, d=d)
            self.counter["tcp_ignored"] += 1
            self._count_forwarded(conn, d, pkt)
            return R["NONE"]
        if pkt.proto == PROTO_TCP:
            if reopens(conn.state, d, pkt.tcp_flags, ORIG):
                # A new connection: the security group's rules of now decide.
                source = self.sources.get((pkt.family, pkt.src))
                if source is not None and not self._sg_allows(source.group, pkt, now_ms):
                    return R["SG_DENIED"]
                self._reopen(conn, pkt, now_ms)
            if pkt.tcp_flags & TCP_RST:
                acceptable = rst_acceptable(conn.win, d, pkt)
                self.trace("rst", win=conn.win, d=d, pkt=pkt, acceptable=acceptable)
                if not acceptable:
                    return R["TCP_BAD_RST"]
            else:
                win = in_window(conn.win, conn.state, conn.flags, d, pkt, ORIG, self.trace)
                if win is None:
                    return R["TCP_OUT_OF_WINDOW"]
                conn.win = win
            state, flags = tcp_transition(conn.state, conn.flags, tcp_event(pkt.tcp_flags), d)
        else:
            state, flags, conn.reply_ms = udp_transition(conn.state, conn.flags, d,
                                                         conn.reply_ms, now_ms)
        self.trace("state", conn=conn, d=d, old=conn.state, new=state)
        ec = self.eni_ctr[conn.eni]
        if conn.state == S["SYN_RECV"] and state == S["ESTABLISHED"]:
            self.counter["conn_established"] += 1
            ec.established[0] += 1
        if pkt.proto == PROTO_UDP and d == REPLY and not conn.flags & F_REPLY_SEEN:
            ec.established[1] += 1
        conn.flags = flags
        self.table.touch(conn, state, now_ms)

        packets, nbytes = wire_size(pkt)
        conn.packets[d] += packets
        conn.bytes[d] += nbytes
        conn.flow_note(d, pkt.tcp_flags, now_ms)
        if d == REPLY:
            conn.flags |= F_REPLY_SEEN
        self._count_forwarded(conn, d, pkt)
        return R["NONE"]

    def _count_forwarded(self, conn: Entry, d: int, pkt: Packet) -> None:
        """The NAT's and the ENI's FORWARD counters."""
        packets, nbytes = wire_size(pkt)
        side = "out" if d == ORIG else "in"
        self.counter[f"fwd_{side}_packets"] += packets
        self.counter[f"fwd_{side}_bytes"] += nbytes
        self.eni_ctr[conn.eni].packets[d] += packets
        self.eni_ctr[conn.eni].bytes[d] += nbytes

    # -- security groups, rejects, the idle RST (section 9) -------------------------------------

    def _sg_allows(self, group: int, pkt: Packet, now_ms: int) -> bool:
        rs = self.group_rules[group]
        rule = -1 if rs is None else sg_match(rs, pkt.family, pkt.proto, pkt.dst, pkt.dport)
        self.trace("security group", group=group, rules=rs, rule=rule)
        if rs is None:
            return True
        if rule >= 0:
            rs.hits[rule] += 1
            return True
        self.sg_denied[group] += 1
        enis = self.groups[group]
        if enis:
            self.eni_ctr[enis[-1]].drop("SG_DENIED")
            if self.enis[enis[-1]].addr[pkt.family] is not None:   # a record names it
                self._reject(pkt, OUT, enis[-1], "SG_DENIED", now_ms)
        return False

    def _note_refused_inbound(self, pkt: Packet, eni: int, reason: int, now_ms: int) -> None:
        if not 0 <= eni < len(self.enis):
            return
        if REASONS[reason] in ("IN_UNSOLICITED_SYN", "IN_NO_MATCH_TCP", "IN_NO_MATCH_UDP"):
            self._reject(pkt, IN, eni, REASONS[reason], now_ms)

    def _reject(self, pkt: Packet, direction: int, eni: int, reason: str, now_ms: int) -> None:
        fam = pkt.family
        src, dst = addr_str(fam, pkt.src), addr_str(fam, pkt.dst)
        length = min(pkt.l3len, 0xFFFF)
        if direction == OUT:
            rec = Rejected(eni, "egress", fam, pkt.proto, addr_str(fam, self.enis[eni].addr[fam]),
                           dst, pkt.sport, pkt.dport, length, now_ms, pkt.tcp_flags, src, reason)
        else:
            rec = Rejected(eni, "ingress", fam, pkt.proto, src, dst, pkt.sport, pkt.dport,
                           length, now_ms, pkt.tcp_flags, "-", reason)
        if not self.rejects.push(rec):
            self.counter["reject_overflow"] += 1

    def _refusal(self, frame, pkt: Packet, reason: int, now_ms: int) -> tuple:
        """A new connection refused for lack of resources is answered at once (section 13): a
        SYN with a RST, a datagram with ICMP administratively prohibited, rate-limited."""
        result = self._refuse(reason)
        if not self._answer_rate(pkt, rst=False).take(now_ms):
            self.counter["refusal_limited"] += 1
            return result
        if pkt.proto == PROTO_TCP:
            build_rst(frame, pkt)
        elif not build_unreach(frame, pkt):
            return result
        self.counter["refusal_sent"] += 1
        return (FORWARD, reason, 0, -1)

    def _answer_rate(self, pkt: Packet, rst: bool) -> RateLimit:
        """The bucket an answer to pkt is charged to (section 13): its function's own, made
        with the NAT's limits at its first use or when they changed; the NAT's for a source
        of no function."""
        limits = self.rst_rate if rst else self.refusal_rate
        source = self.sources.get((pkt.family, pkt.src))
        func = self.funcs.get(source.owner) if source is not None else None
        if func is None:
            return limits
        r = func.rates.get(rst)
        if r is None or (r.per_s, r.burst) != (limits.per_s, limits.burst):
            r = func.rates[rst] = RateLimit(limits.per_s, limits.burst)
        return r

    def _idle_rst(self, frame, pkt: Packet, eni, now_ms: int) -> tuple:
        """A segment from a function that matches no connection (one that idled out, most
        likely) is dropped and answered with a RST back to it, rate-limited."""
        result = self._refuse(R["TCP_NOT_SYN"])
        if is_rst(pkt.tcp_flags):
            return result
        if not self._answer_rate(pkt, rst=True).take(now_ms):
            self.counter["rst_limited"] += 1
            return result
        build_rst(frame, pkt)
        self.counter["rst_sent"] += 1
        if eni is not None:
            self.eni_ctr[eni].rst_sent += 1
        return (FORWARD, R["TCP_NOT_SYN"], 0, -1)

    def set_group_rules(self, group: int, rules) -> None:
        if not 0 <= group < len(self.groups):
            raise ValueError(f"no group {group}")
        self.group_rules[group] = None if rules is None else compile_rules(list(rules))

    def sg_counters(self, group: int) -> dict:
        if not 0 <= group < len(self.groups):
            raise ValueError(f"no group {group}")
        rs = self.group_rules[group]
        return {"denied": self.sg_denied[group], "rules": None if rs is None else list(rs.hits)}

    def rejected(self, max=8192) -> list:
        return self.rejects.take(max)

    def eni_counters(self, eni: int) -> dict:
        if not 0 <= eni < len(self.enis):
            raise ValueError(f"no ENI {eni}")
        return self.eni_ctr[eni].as_dict()

    def set_rst_limit(self, per_s: int, burst: int) -> None:
        self.rst_rate = RateLimit(per_s, burst)

    # -- expiry --------------------------------------------------------------------------------

    def _expire_conn(self, conn: Entry, now_ms: int, journal: bool) -> Connection:
        """Removes an expired connection, releases its port and returns its last picture;
        journal=True keeps that picture for the next expire() call."""
        record = conn.snapshot(expired=True)
        self.counter["conn_expired"] += 1
        if idled_out(conn):
            self.eni_ctr[conn.eni].idle_timeouts += 1
        self._delete(conn, now_ms)
        if journal:
            self._journal_add(record)
        return record

    def _delete(self, conn: Entry, now_ms: int) -> None:
        """Removes a connection, handing back its port and its place in its function's quota."""
        self.eni_ctr[conn.eni].active[conn.proto == PROTO_UDP] -= 1
        self.table.delete(conn)
        pool = self.enis[conn.eni].pools[(conn.family, conn.proto)]
        # Only a TCP connection that reached ESTABLISHED quarantines its port (TIME_WAIT). A
        # port in quarantine stays charged to its function until the quarantine ends.
        quarantine = self.quarantine_ms if (conn.proto == PROTO_TCP
                                            and conn.flags & F_ASSURED) else 0
        func = self.funcs.get(conn.owner)
        last_ref = self.per_connection or pool.owner[conn.nat_port].refs == 1
        charge = func.deleted(conn, last_ref, quarantine) if func is not None else None
        if self.per_connection:
            pool.release(conn.nat_port, now_ms, quarantine, charge)
        else:
            pool.unref(conn.nat_port, now_ms, quarantine, charge)

    def _drain(self, eni: int, pool_key: tuple, pool, now_ms: int) -> None:
        """Ports whose quarantine ended go free, and their charges back to their functions."""
        for owner in pool.drain(now_ms):
            func = self.funcs.get(owner) if owner is not None else None
            if func is not None:
                func.port_add((eni,) + pool_key, -1)

    def _drain_all(self, now_ms: int) -> None:
        for eni, info in enumerate(self.enis):
            for pool_key, pool in info.pools.items():
                self._drain(eni, pool_key, pool, now_ms)

    def _journal_add(self, record: Connection) -> None:
        if len(self.journal) >= self.journal_size:
            self.counter["journal_overflow"] += 1
            if not self.journal:
                return                          # a journal of size 0 keeps nothing
            self.journal.popleft()
        self.journal.append(record)

    def _expire_some(self, now_ms: int, max_count: int, journal: bool) -> list[Connection]:
        removed = []
        while len(removed) < max_count:
            conn = self.table.next_expired(now_ms)
            if conn is None:
                break
            removed.append(self._expire_conn(conn, now_ms, journal))
        return removed

    def expire(self, now_ms, max=1 << 30, collect=True):
        """Removes up to max expired connections. Returns the journal (connections that
        expired earlier, oldest first) followed by the ones removed now. collect=False
        leaves the journal alone, keeps no records and returns how many were removed."""
        if not collect:
            removed = len(self._expire_some(now_ms, max, journal=False))
            self._drain_all(now_ms)
            return removed
        records = list(self.journal)
        self.journal.clear()
        records += self._expire_some(now_ms, max, journal=False)
        self._drain_all(now_ms)
        return records

    # -- read-only views -----------------------------------------------------------------------

    def lookup(self, src, dst, sport, dport, proto, direction, now_ms) -> Connection | None:
        """The live connection whose original (OUT) or reply (IN) tuple this is, or None.
        A look without side effects: an expired connection is not removed, just not found."""
        family, src_raw = addr_bytes(src)
        dst_family, dst_raw = addr_bytes(dst)
        if family != dst_family or direction not in (OUT, IN):
            return None
        conn = self.table.lookup((family, proto, src_raw, dst_raw, sport, dport), direction)
        if conn is None or self.table.is_expired(conn, now_ms):
            return None
        return conn.snapshot()

    def connections(self) -> list[Connection]:
        return [self.table.conns[cid].snapshot() for cid in sorted(self.table.conns)]

    def _scan(self, cursor, limit, filter):
        """The live entries that pass the filter (hyperplane.ctfilter) from slot cursor on,
        at most limit, scanning at most SCAN_CHUNK slots: (entries, next cursor or None)."""
        from ..ctfilter import ConnFilter
        if limit <= 0:
            raise ValueError("limit must be positive")
        if cursor is None or cursor < 0:
            raise ValueError("cursor must be a non-negative integer")
        flt = filter if isinstance(filter, ConnFilter) else ConnFilter.parse(filter)
        cap = self.table.capacity
        if cursor >= cap:
            return [], None
        end = min(cap, cursor + SCAN_CHUNK)
        found, i = [], cursor
        while i < end and len(found) < limit:
            conn = self.table.conns.get(i)
            if conn is not None and (not flt or flt.matches(conn.snapshot())):
                found.append(conn)
            i += 1
        return found, (i if i < cap else None)

    def connections_page(self, cursor=0, limit=1000, filter=None):
        """As the C core's: up to limit live connections that pass the filter, from slot
        cursor on. (connections, next cursor or None)."""
        found, cursor = self._scan(cursor, limit, filter)
        return [conn.snapshot() for conn in found], cursor

    def count(self, filter=None) -> int:
        if not filter:
            return len(self)
        total, cursor = 0, 0
        while cursor is not None:
            found, cursor = self._scan(cursor, 1 << 30, filter)
            total += len(found)
        return total

    def delete_page(self, cursor=0, limit=1000, filter=None, now_ms=0):
        """As the C core's (section 2.5): removes what passes the filter as an expiry would,
        without counting it expired. (the removed connections as they were, next cursor)."""
        found, cursor = self._scan(cursor, limit, filter)
        removed = []
        for conn in found:
            removed.append(conn.snapshot())     # with its id, as the C core's listing
            self._delete(conn, now_ms)
        return removed, cursor

    def flow_harvest_page(self, cursor=0, limit=1000):
        """As the C core's (section 2.4): connections with traffic since the last harvest
        from slot cursor on, scanning at most SCAN_CHUNK slots, each with its interval as it
        was, their intervals started again. (connections, next cursor or None)."""
        if limit <= 0:
            raise ValueError("limit must be positive")
        if cursor is None or cursor < 0:
            raise ValueError("cursor must be a non-negative integer")
        cap = self.table.capacity
        if cursor >= cap:
            return [], None
        end = min(cap, cursor + SCAN_CHUNK)
        page, i = [], cursor
        while i < end and len(page) < limit:
            conn = self.table.conns.get(i)
            if conn is not None and any(conn.seen):
                page.append(conn.snapshot())
                conn.flow_reset()
            i += 1
        return page, (i if i < cap else None)

    def flow_harvest(self) -> list[Connection]:
        out, cursor = [], 0
        while cursor is not None:
            page, cursor = self.flow_harvest_page(cursor, 4096)
            out.extend(page)
        return out

    def get(self, conn_id) -> Connection | None:
        conn = self.table.conns.get(conn_id)
        return None if conn is None else conn.snapshot()

    def __len__(self) -> int:
        return len(self.table)

    def counters(self) -> dict:
        out = dict(self.counter)
        for reason, name in enumerate(REASONS):
            out[f"drop.{name}"] = self.drops[reason]
        return out

    @property
    def capacity(self) -> int:
        return self.table.capacity

    def pool_stats(self, eni, family, proto) -> dict:
        # As the C core reads them: any family other than 6 means 4, any proto other than
        # 17 means TCP.
        key = (6 if family == 6 else 4, PROTO_UDP if proto == PROTO_UDP else PROTO_TCP)
        pool = self.enis[eni].pools.get(key) if 0 <= eni < len(self.enis) else None
        if pool is None:
            raise ValueError(f"ENI {eni} has no IPv{family} pool")
        return pool.stats()
