"""The connection table (docs/semantics.md sections 2 and 7), in plain Python.

One entry per connection, reachable from two keys, like Linux conntrack's tuplehash:
- the original tuple (family, proto, inside addr, dst addr, inside port, dst port)
- the reply tuple    (family, proto, dst addr, ENI addr, dst port, external port)

The C core hashes both into one open-addressing table; here two dicts do the same job. Each
state keeps its connections in the order they were last touched (an insertion-ordered dict
used as an LRU list), so expiry looks only at the oldest connection of each state.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..connection import Connection, FlowInterval, addr_str
from ..vocab import UDP_STREAM_MS, F_REPLY_SEEN, F_ASSURED, F_CLOSER_REPLY, F_FIN_SEEN, F_SYN_REPLY, IN, OUT, S, STATES
from .packet import TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN
from .tcp import new_window

EARLY_DROP_SCAN = 8     # entries looked at from the head of each state's list

ORIG, REPLY = OUT, IN       # the direction a tuple or a packet goes in


@dataclass(eq=False)
class Entry:
    """A live connection. Addresses are 16 bytes (IPv4 in the first 4), as in the flow key."""
    id: int
    family: int
    proto: int
    src: bytes              # inside address
    dst: bytes              # destination in the customer VPC
    sport: int
    dport: int
    eni: int
    nat_addr: bytes         # the ENI's address for this family
    nat_port: int
    state: int
    start_s: int
    last_seen_ms: int
    flags: int = 0
    packets: list = field(default_factory=lambda: [0, 0])     # [ORIG, REPLY]
    bytes: list = field(default_factory=lambda: [0, 0])
    win: list = field(default_factory=new_window)              # TCP: [ORIG, REPLY] TcpDir
    owner: int = 0          # the function (Source.owner) the connection belongs to
    reply_ms: int = 0       # UDP: the first reply's now_ms, mod 2**32
    # The flow-log interval (section 2.4), per direction: first and last packet (now_ms mod
    # 2**32), the OR of AWS tcp-flags, whether a packet went that way, and where the counters
    # stood at the last harvest (packets mod 2**32).
    first_ms: list = field(default_factory=lambda: [0, 0])
    last_ms: list = field(default_factory=lambda: [0, 0])
    tcp_flags: list = field(default_factory=lambda: [0, 0])
    seen: list = field(default_factory=lambda: [False, False])
    base_packets: list = field(default_factory=lambda: [0, 0])
    base_bytes: list = field(default_factory=lambda: [0, 0])

    def orig_key(self) -> tuple:
        return (self.family, self.proto, self.src, self.dst, self.sport, self.dport)

    def reply_key(self) -> tuple:
        return (self.family, self.proto, self.dst, self.nat_addr, self.dport, self.nat_port)

    def flow_note(self, d: int, tcp_flags: int, now_ms: int) -> None:
        """A packet forwarded in direction d: the interval's first and last packet, flags."""
        if not self.seen[d]:
            self.seen[d] = True
            self.first_ms[d] = now_ms & 0xFFFFFFFF
        self.last_ms[d] = now_ms & 0xFFFFFFFF
        self.tcp_flags[d] |= aws_tcp_flags(tcp_flags)

    def flow_reset(self) -> None:
        """A new interval: the counters as they are become the base."""
        self.base_packets = [p & 0xFFFFFFFF for p in self.packets]
        self.base_bytes = list(self.bytes)
        self.tcp_flags = [0, 0]
        self.seen = [False, False]

    def flow_interval(self, d: int) -> FlowInterval | None:
        if not self.seen[d]:
            return None
        ref = self.last_seen_ms & 0xFFFFFFFF    # no packet of the interval is later
        return FlowInterval(
            packets=(self.packets[d] - self.base_packets[d]) & 0xFFFFFFFF,
            bytes=self.bytes[d] - self.base_bytes[d],
            first_ms=self.last_seen_ms - ((ref - self.first_ms[d]) & 0xFFFFFFFF),
            last_ms=self.last_seen_ms - ((ref - self.last_ms[d]) & 0xFFFFFFFF),
            tcp_flags=self.tcp_flags[d])

    def snapshot(self, expired: bool = False) -> Connection:
        """The Connection value Python callers see. The record of an expired connection
        carries id -1: its id is free again, and the next new connection takes it."""
        return Connection(
            id=-1 if expired else self.id, family=self.family, proto=self.proto,
            src=addr_str(self.family, self.src), dst=addr_str(self.family, self.dst),
            sport=self.sport, dport=self.dport, eni=self.eni,
            nat_addr=addr_str(self.family, self.nat_addr), nat_port=self.nat_port,
            state=STATES[self.state], flags=self.flags,
            packets_out=self.packets[ORIG], packets_in=self.packets[REPLY],
            bytes_out=self.bytes[ORIG], bytes_in=self.bytes[REPLY],
            start_s=self.start_s, last_seen_ms=self.last_seen_ms, owner=self.owner,
            flow_out=self.flow_interval(ORIG), flow_in=self.flow_interval(REPLY))


def aws_tcp_flags(f: int) -> int:
    """What VPC Flow Logs report of a segment's flags: FIN 1, SYN 2, RST 4, and ACK (16) only
    beside SYN (SYN-ACK is 18); PSH, URG, ECE, CWR and a lone ACK are not reported."""
    return (f & (TCP_FIN | TCP_SYN | TCP_RST)) | (TCP_ACK if f & TCP_SYN and f & TCP_ACK else 0)


class ConnTable:
    def __init__(self, capacity: int, timeouts_ms: list[int]):
        self.capacity = capacity
        self.timeouts_ms = timeouts_ms          # indexed by state
        self.conns: dict[int, Entry] = {}       # id -> entry
        self.by_orig: dict[tuple, int] = {}     # original tuple -> id
        self.by_reply: dict[tuple, int] = {}    # reply tuple -> id
        # Ids are slot numbers: fresh ones count up from 0, a freed one is reused first
        # (the last freed is the first reused, a stack).
        self.next_fresh_id = 0
        self.freed_ids: list[int] = []
        # One LRU list per state: id -> None, oldest touched first.
        self.lru: list[dict[int, None]] = [{} for _ in STATES]

    def __len__(self) -> int:
        return len(self.conns)

    def full(self) -> bool:
        return len(self.conns) >= self.capacity

    def lookup(self, key: tuple, direction: int) -> Entry | None:
        """The connection whose tuple in this direction (ORIG or REPLY) is key, or None."""
        index = self.by_orig if direction == ORIG else self.by_reply
        cid = index.get(key)
        return None if cid is None else self.conns[cid]

    def insert(self, family, proto, src, dst, sport, dport, eni, nat_addr, nat_port,
               state, now_ms) -> Entry | None:
        """Adds a connection; None when the table is full (it never evicts)."""
        if self.full():
            return None
        if self.freed_ids:
            cid = self.freed_ids.pop()
        else:
            cid = self.next_fresh_id
            self.next_fresh_id += 1
        entry = Entry(id=cid, family=family, proto=proto, src=src, dst=dst, sport=sport,
                      dport=dport, eni=eni, nat_addr=nat_addr, nat_port=nat_port, state=state,
                      start_s=(now_ms // 1000) & 0xFFFFFFFF, last_seen_ms=now_ms)
        self.conns[cid] = entry
        self.by_orig[entry.orig_key()] = cid
        self.by_reply[entry.reply_key()] = cid
        self.lru[state][cid] = None
        return entry

    def delete(self, entry: Entry) -> None:
        del self.conns[entry.id]
        del self.by_orig[entry.orig_key()]
        del self.by_reply[entry.reply_key()]
        del self.lru[entry.state][entry.id]
        self.freed_ids.append(entry.id)

    def touch(self, entry: Entry, new_state: int, now_ms: int) -> None:
        """Marks activity: last_seen = now, and to the tail of its (new) state's list."""
        del self.lru[entry.state][entry.id]
        entry.state = new_state
        entry.last_seen_ms = now_ms
        self.lru[new_state][entry.id] = None

    def is_expired(self, entry: Entry, now_ms: int) -> bool:
        return now_ms >= entry.last_seen_ms + self.timeouts_ms[entry.state]

    def next_expired(self, now_ms: int) -> Entry | None:
        """The next connection to expire: states in enum order, oldest touched first.

        Within one state the list is in touch order, so when its oldest entry has not
        expired, none of the others has either.
        """
        for state_list in self.lru:
            if state_list:
                oldest = self.conns[next(iter(state_list))]
                if self.is_expired(oldest, now_ms):
                    return oldest
        return None

    def early_drop_victim(self) -> Entry | None:
        """The unassured connection to drop to make room in a full table: the oldest among
        the first EARLY_DROP_SCAN entries of each state's list (Linux's early_drop), as
        hp_ct_early_drop_victim; None when every entry looked at is assured."""
        victim = None
        for state_list in self.lru:
            for n, cid in enumerate(state_list):
                if n >= EARLY_DROP_SCAN:
                    break
                conn = self.conns[cid]
                if not conn.flags & F_ASSURED:
                    if victim is None or conn.last_seen_ms < victim.last_seen_ms:
                        victim = conn
                    break      # the list is oldest first: later entries are younger
        return victim


# ---------------------------------------------------------------------------------------------
# State machines (section 2.2). Both return (new state, new flags).
# ---------------------------------------------------------------------------------------------

def tcp_event(tcp_flags: int) -> str:
    if tcp_flags & TCP_RST:
        return "RST"
    if tcp_flags & TCP_SYN:
        return "SYNACK" if tcp_flags & TCP_ACK else "SYN"
    if tcp_flags & TCP_FIN:
        return "FIN"
    if tcp_flags & TCP_ACK:
        return "ACK"
    return "NONE"


def tcp_transition(state: int, flags: int, event: str, d: int) -> tuple[int, int]:
    """The TCP state after a segment with this event travelling in direction d."""
    # The side that sent the first FIN; only meaningful once FIN_SEEN is set.
    closer = REPLY if flags & F_CLOSER_REPLY else ORIG

    if event == "RST":
        return S["CLOSE"], flags

    if event == "SYN":
        # (A SYN from the inside in TIME_WAIT or CLOSE never gets here: it reopens.)
        if d == REPLY and state == S["SYN_SENT"]:
            return state, flags | F_SYN_REPLY      # simultaneous open (Linux SYN_SENT2)
        return state, flags

    if event == "SYNACK":
        if d == REPLY and state in (S["SYN_SENT"], S["SYN_RECV"]):
            return S["SYN_RECV"], flags
        if d == ORIG and state == S["SYN_SENT"] and flags & F_SYN_REPLY:
            return S["SYN_RECV"], flags            # simultaneous open: our side's SYN|ACK
        return state, flags

    if event == "FIN":
        if state in (S["SYN_RECV"], S["ESTABLISHED"]):
            flags |= F_FIN_SEEN
            if d == REPLY:
                flags |= F_CLOSER_REPLY
            return S["FIN_WAIT"], flags
        if state in (S["FIN_WAIT"], S["CLOSE_WAIT"]) and d != closer:
            return S["LAST_ACK"], flags
        return state, flags

    if event == "ACK":
        if state == S["SYN_RECV"] and d == ORIG:
            return S["ESTABLISHED"], flags | F_ASSURED
        if state == S["FIN_WAIT"] and d != closer:
            return S["CLOSE_WAIT"], flags
        if state == S["LAST_ACK"] and d == closer:
            return S["TIME_WAIT"], flags
        return state, flags

    return state, flags                         # NONE: no flags we act on


def udp_transition(state: int, flags: int, d: int, reply_ms: int,
                   now_ms: int) -> tuple[int, int, int]:
    """UDP has two states: no stream yet, and a stream, once a packet comes UDP_STREAM_MS
    after the first reply (a lone query and its answer stay UDP_FIRST). Returns (state, flags,
    reply_ms): the first reply's time, mod 2**32 as the core keeps it."""
    if state != S["UDP_FIRST"]:
        return state, flags, reply_ms
    if not flags & F_REPLY_SEEN:
        return state, flags, (now_ms & 0xFFFFFFFF) if d == REPLY else reply_ms
    if ((now_ms - reply_ms) & 0xFFFFFFFF) >= UDP_STREAM_MS:
        return S["UDP_STREAM"], flags | F_ASSURED, reply_ms
    return state, flags, reply_ms
