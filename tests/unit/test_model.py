"""The NAT contract (docs/semantics.md), tested through the Python API of section 8.

Every test takes `NatClass` (tests/conftest.py), so the one suite runs against the pure-Python
model and against the C core.
"""

import struct

import pytest

import framegen as fg
from hyperplane.connection import Connection
from hyperplane.vocab import (COUNTERS, DROP, F_ASSURED, F_CLOSER_REPLY, F_FIN_SEEN, F_REPLY_SEEN,
                              FORWARD, IN, OUT, PROFILES, PUNT, R, REASONS, UDP_STREAM_MS)

SRC, SRC6 = "10.200.0.11", "fd00:200::11"       # a function, both families
SRC_B = "10.200.0.12"
ENI, ENI6 = "10.0.1.4", "fd00:1::4"
ENI_B, ENI_B6 = "10.0.2.4", "fd00:2::4"
DST, DST6 = "10.0.9.9", "fd00:9::9"             # a server in the customer VPC
AWS = {k: v * 1000 for k, v in PROFILES["aws"].items()}


def make(NatClass, **kw):
    """A NAT with one ENI (both families) in one group, and the function SRC / SRC6."""
    nat = NatClass(**kw)
    eni = nat.add_eni(ENI, ENI6)
    grp = nat.add_group()
    nat.group_add_eni(grp, eni)
    nat.add_source(SRC, grp)
    nat.add_source(SRC6, grp, allow_v6=True)
    return nat


def out(nat, frame, now=0, vnet=False):
    (res,) = nat.translate([frame], OUT, now, vnet=vnet)
    return res


def inb(nat, frame, now=0, eni=0, vnet=False):
    (res,) = nat.translate([frame], IN, now, eni=eni, vnet=vnet)
    return res


def refused(reason):
    name = REASONS[reason] if isinstance(reason, int) else reason
    from hyperplane.vocab import PUNT_REASONS
    return (PUNT if name in PUNT_REASONS else DROP, R[name], 0, -1)


class Flow:
    """One TCP or UDP flow through a NAT: sends segments either way, replies aimed at the
    address and port the NAT chose. TCP segments carry the sequence numbers of two real
    endpoints (each side's next sequence number, and the other's as the ack) unless the
    caller gives seq= or ack=."""

    def __init__(self, nat, proto=fg.TCP, src=SRC, dst=DST, sport=40000, dport=443,
                 mac=None):
        self.nat, self.proto = nat, proto
        self.mac = bytes.fromhex(mac.replace(":", "")) if mac else fg.ETH_SRC
        self.src, self.dst, self.sport, self.dport = src, dst, sport, dport
        self.nat_addr = self.nat_port = None
        self.eni = 0
        self.next_seq = {OUT: 1000, IN: 700000}
        self.spoke = {OUT: False, IN: False}

    def send(self, direction, flags="A", now=0, **kw):
        advance = 0
        if self.proto == fg.TCP:
            bits = fg.tcp_flags(flags)
            kw.setdefault("seq", self.next_seq[direction])
            peer = IN if direction == OUT else OUT
            kw.setdefault("ack", self.next_seq[peer] if self.spoke[peer] else 0)
            if kw["seq"] == self.next_seq[direction] and not bits & fg.RST:
                advance = (len(kw.get("payload", b"")) + bool(bits & fg.SYN)
                           + bool(bits & fg.FIN))
        res = self._send(direction, flags, now, **kw)
        if res[0] == FORWARD and self.proto == fg.TCP:
            self.next_seq[direction] += advance
            self.spoke[direction] = True
        return res

    def _send(self, direction, flags, now, mangle=None, **kw):
        """mangle: called with the frame once built, to damage it."""
        if direction == OUT:
            frame = fg.build(self.src, self.dst, self.proto, self.sport, self.dport, flags=flags,
                             eth_src=self.mac, **kw)
            if mangle:
                mangle(frame)
            res = out(self.nat, frame, now, vnet=kw.get("vnet", False))
            if res[0] == FORWARD:
                f = fg.fields(frame, kw.get("vnet", False))
                self.nat_addr, self.nat_port, self.eni = f["src"], f["sport"], res[2] - 1
        else:
            frame = fg.build(self.dst, self.nat_addr, self.proto, self.dport, self.nat_port,
                             flags=flags, **kw)
            if mangle:
                mangle(frame)
            res = inb(self.nat, frame, now, eni=self.eni, vnet=kw.get("vnet", False))
        self.last_frame = frame
        return res

    def conn(self):
        conns = [c for c in self.nat.connections()
                 if (c.src, c.sport, c.dst, c.dport) == (self.src, self.sport, self.dst,
                                                         self.dport)]
        return conns[0] if conns else None


# -- basic forwarding --------------------------------------------------------------------------

def test_out_then_in_forwards_and_rewrites(NatClass):
    nat = make(NatClass)
    syn = fg.tcp(SRC, DST, 40000, 443, "S", payload=b"hello")
    verdict, reason, port, cid = out(nat, syn, now=5_500)
    assert (verdict, reason, port, cid) == (FORWARD, R["NONE"], 1, 0)
    f = fg.fields(syn)
    assert (f["src"], f["dst"], f["dport"], f["ttl"]) == (ENI, DST, 443, 63)
    assert 536 <= f["sport"] <= 65535
    assert fg.checksums_ok(syn)

    c = nat.get(0)
    assert isinstance(c, Connection)
    assert (c.id, c.family, c.proto, c.src, c.dst, c.sport, c.dport) == \
        (0, 4, 6, SRC, DST, 40000, 443)
    assert (c.eni, c.nat_addr, c.nat_port, c.state) == (0, ENI, f["sport"], "SYN_SENT")
    assert (c.packets_out, c.bytes_out, c.packets_in, c.bytes_in) == (1, 20 + 20 + 5, 0, 0)
    assert (c.start_s, c.last_seen_ms, c.flags) == (5, 5_500, 0)

    synack = fg.tcp(DST, ENI, 443, f["sport"], "SA")
    assert inb(nat, synack, now=6_000) == (FORWARD, R["NONE"], 0, 0)
    g = fg.fields(synack)
    assert (g["src"], g["sport"], g["dst"], g["dport"], g["ttl"]) == (DST, 443, SRC, 40000, 63)
    assert fg.checksums_ok(synack)
    c = nat.get(0)
    assert c.state == "SYN_RECV" and c.flags & F_REPLY_SEEN and c.last_seen_ms == 6_000
    assert (c.packets_in, c.bytes_in) == (1, 40)
    assert len(nat) == 1 and nat.connections() == [c]


def test_batch_results_in_order(NatClass):
    nat = make(NatClass)
    frames = [fg.udp(SRC, DST, 1000 + i, 53) for i in range(3)] + [fg.arp()]
    res = nat.translate(frames, OUT, 0)
    assert [r[3] for r in res] == [0, 1, 2, -1]
    assert res[3] == (PUNT, R["ARP"], 0, -1)


def test_counters_have_every_name(NatClass):
    nat = make(NatClass)
    c = nat.counters()
    assert set(c) == set(COUNTERS) | {f"drop.{r}" for r in REASONS}
    assert all(v == 0 for v in c.values())


def test_forward_counters(NatClass):
    nat = make(NatClass)
    fl = Flow(nat, proto=fg.UDP)
    fl.send(OUT, payload=b"x" * 10)
    fl.send(IN, payload=b"y" * 30)
    fl.send(IN)
    c = nat.counters()
    assert (c["fwd_out_packets"], c["fwd_out_bytes"]) == (1, 28 + 10)
    assert (c["fwd_in_packets"], c["fwd_in_bytes"]) == (2, 28 + 30 + 28)
    assert c["conn_created"] == 1


def test_connection_ids_reuse_last_removed_first(NatClass):
    nat = make(NatClass)
    for i in range(4):
        assert out(nat, fg.udp(SRC, DST, 1000 + i, 53), now=0)[3] == i
    # Keep 0 and 2 alive, let 1 and 3 expire (1 touched before 3).
    now = AWS["UDP_FIRST"] - 1
    out(nat, fg.udp(SRC, DST, 1000, 53), now=now)
    out(nat, fg.udp(SRC, DST, 1002, 53), now=now)
    gone = nat.expire(AWS["UDP_FIRST"])
    assert [c.sport for c in gone] == [1001, 1003]
    assert [c.id for c in gone] == [-1, -1]           # the ids are free again
    assert out(nat, fg.udp(SRC, DST, 2000, 53), now=now + 1)[3] == 3
    assert out(nat, fg.udp(SRC, DST, 2001, 53), now=now + 1)[3] == 1
    assert out(nat, fg.udp(SRC, DST, 2002, 53), now=now + 1)[3] == 4


# -- TCP state machine (2.2) -------------------------------------------------------------------

O, I = OUT, IN
EST = [(O, "S"), (I, "SA"), (O, "A")]
PATHS = {
    "SYN_SENT": [(O, "S")],
    "SYN_RECV": [(O, "S"), (I, "SA")],
    "ESTABLISHED": EST,
    "FIN_WAIT/o": EST + [(O, "FA")],               # /o: the inside host closed first
    "FIN_WAIT/r": EST + [(I, "FA")],               # /r: the server closed first
    "CLOSE_WAIT/o": EST + [(O, "FA"), (I, "A")],
    "CLOSE_WAIT/r": EST + [(I, "FA"), (O, "A")],
    "LAST_ACK/o": EST + [(O, "FA"), (I, "A"), (I, "FA")],
    "LAST_ACK/r": EST + [(I, "FA"), (O, "A"), (O, "FA")],
    "TIME_WAIT/o": EST + [(O, "FA"), (I, "A"), (I, "FA"), (O, "A")],
    "TIME_WAIT/r": EST + [(I, "FA"), (O, "A"), (O, "FA"), (I, "A")],
    "CLOSE": EST + [(I, "R")],
}

TRANSITIONS = [
    # RST: any state -> CLOSE, either direction
    *[(p, d, "RA", "CLOSE") for p in PATHS for d in (O, I) if (p, d) != ("SYN_SENT", I)],
    *[(p, O, "R", "CLOSE") for p in ("SYN_SENT", "ESTABLISHED", "TIME_WAIT/o")],
    # SYN
    ("SYN_SENT", O, "S", "SYN_SENT"),
    ("SYN_SENT", I, "S", "SYN_SENT"),
    ("TIME_WAIT/o", O, "S", "SYN_SENT"),
    ("TIME_WAIT/r", O, "S", "SYN_SENT"),
    ("CLOSE", O, "S", "SYN_SENT"),
    ("TIME_WAIT/o", I, "S", "TIME_WAIT"),
    ("CLOSE", I, "S", "CLOSE"),
    ("ESTABLISHED", O, "S", "ESTABLISHED"),
    ("SYN_RECV", O, "S", "SYN_RECV"),
    ("FIN_WAIT/o", O, "S", "FIN_WAIT"),
    # SYNACK
    ("SYN_SENT", I, "SA", "SYN_RECV"),
    ("SYN_RECV", I, "SA", "SYN_RECV"),
    ("SYN_SENT", O, "SA", "SYN_SENT"),
    ("ESTABLISHED", I, "SA", "ESTABLISHED"),
    ("TIME_WAIT/o", I, "SA", "TIME_WAIT"),
    # FIN (with or without ACK: FIN ranks above ACK)
    ("SYN_RECV", O, "FA", "FIN_WAIT"),
    ("SYN_RECV", I, "FA", "FIN_WAIT"),
    ("ESTABLISHED", O, "FA", "FIN_WAIT"),
    ("ESTABLISHED", I, "FA", "FIN_WAIT"),
    ("FIN_WAIT/o", I, "FA", "LAST_ACK"),
    ("FIN_WAIT/o", O, "FA", "FIN_WAIT"),
    ("FIN_WAIT/r", O, "FA", "LAST_ACK"),
    ("FIN_WAIT/r", I, "FA", "FIN_WAIT"),
    ("CLOSE_WAIT/o", I, "FA", "LAST_ACK"),
    ("CLOSE_WAIT/o", O, "FA", "CLOSE_WAIT"),
    ("CLOSE_WAIT/r", O, "FA", "LAST_ACK"),
    ("CLOSE_WAIT/r", I, "FA", "CLOSE_WAIT"),
    ("SYN_SENT", O, "FA", "SYN_SENT"),
    ("LAST_ACK/o", I, "FA", "LAST_ACK"),
    ("TIME_WAIT/o", O, "FA", "TIME_WAIT"),
    ("CLOSE", I, "FA", "CLOSE"),
    # ACK
    ("SYN_RECV", O, "A", "ESTABLISHED"),
    ("SYN_RECV", I, "A", "SYN_RECV"),
    ("SYN_SENT", O, "A", "SYN_SENT"),
    ("ESTABLISHED", I, "A", "ESTABLISHED"),
    ("FIN_WAIT/o", I, "A", "CLOSE_WAIT"),
    ("FIN_WAIT/o", O, "A", "FIN_WAIT"),
    ("FIN_WAIT/r", O, "PA", "CLOSE_WAIT"),
    ("FIN_WAIT/r", I, "A", "FIN_WAIT"),
    ("CLOSE_WAIT/o", I, "A", "CLOSE_WAIT"),
    ("LAST_ACK/o", O, "A", "TIME_WAIT"),
    ("LAST_ACK/o", I, "A", "LAST_ACK"),
    ("LAST_ACK/r", I, "A", "TIME_WAIT"),
    ("LAST_ACK/r", O, "A", "LAST_ACK"),
    ("TIME_WAIT/o", O, "A", "TIME_WAIT"),
]


def drive_flow(fl, segments, now=0):
    for d, flags in segments:
        assert fl.send(d, flags, now=now)[0] == FORWARD, (d, flags)
    return fl


def drive(nat, path, now=0):
    fl = drive_flow(Flow(nat), PATHS[path], now)
    assert fl.conn().state == path.split("/")[0]
    return fl


@pytest.mark.parametrize("path,d,flags,expected", TRANSITIONS,
                         ids=[f"{p}-{'OI'[d]}-{f or 'none'}" for p, d, f, _ in TRANSITIONS])
def test_tcp_transition(NatClass, path, d, flags, expected):
    nat = make(NatClass)
    fl = drive(nat, path)
    before = fl.conn()
    res = fl.send(d, flags, now=1000)
    assert res == (FORWARD, R["NONE"], 1 if d == O else 0, before.id)  # forwarded regardless
    after = fl.conn()
    assert after.state == expected
    assert after.last_seen_ms == 1000
    if d == I:
        assert after.flags & F_REPLY_SEEN


def test_tcp_flags_along_the_way(NatClass):
    nat = make(NatClass)
    fl = drive(nat, "ESTABLISHED")
    assert fl.conn().flags == F_REPLY_SEEN | F_ASSURED
    fl.send(I, "FA")
    assert fl.conn().flags == F_REPLY_SEEN | F_ASSURED | F_FIN_SEEN | F_CLOSER_REPLY
    nat = make(NatClass)
    fl = drive(nat, "FIN_WAIT/o")
    assert fl.conn().flags == F_REPLY_SEEN | F_ASSURED | F_FIN_SEEN


@pytest.mark.parametrize("path", ["TIME_WAIT/o", "TIME_WAIT/r", "CLOSE"])
def test_syn_reopening_a_closed_connection_makes_a_new_one(NatClass, path):
    nat = make(NatClass)
    fl = drive(nat, path)
    before = fl.conn()
    created = nat.counters()["conn_created"]
    fl.next_seq[OUT] += 50000                   # the new connection's initial sequence
    assert fl.send(O, "S", now=2000)[0] == FORWARD
    c = fl.conn()
    # The same entry, mapping and port; everything else is the new connection's.
    assert (c.id, c.state, c.flags, c.nat_port) == (before.id, "SYN_SENT", 0, before.nat_port)
    assert (c.packets_out, c.packets_in, c.bytes_in, c.start_s) == (1, 0, 0, 2)
    assert nat.counters()["conn_created"] == created + 1
    # The old one ended: its record is handed out like an expired connection's.
    (old,) = nat.expire(2000)
    assert (old.id, old.state, old.packets_out) == (-1, before.state, before.packets_out)
    fl.send(I, "SA")
    fl.send(O, "A")
    assert fl.conn().state == "ESTABLISHED" and fl.conn().assured
    assert nat.counters()["conn_established"] == 2


def test_conn_established_counted_once(NatClass):
    nat = make(NatClass)
    fl = drive(nat, "ESTABLISHED")
    fl.send(O, "A")
    fl.send(I, "A")
    c = nat.counters()
    assert (c["conn_created"], c["conn_established"]) == (1, 1)


def test_udp_first_then_stream(NatClass):
    # A stream only once a packet comes 2 s (UDP_STREAM_MS) after the first reply, as Linux:
    # a query and its answer keep UDP_FIRST's short timeout.
    nat = make(NatClass)
    fl = Flow(nat, proto=fg.UDP)
    fl.send(OUT, now=0)
    fl.send(OUT, now=10)
    assert (fl.conn().state, fl.conn().flags) == ("UDP_FIRST", 0)
    fl.send(IN, now=100)
    fl.send(OUT, now=100 + UDP_STREAM_MS - 1)
    fl.send(IN, now=100 + UDP_STREAM_MS - 1)
    assert (fl.conn().state, fl.conn().flags) == ("UDP_FIRST", F_REPLY_SEEN)
    fl.send(OUT, now=100 + UDP_STREAM_MS)
    assert (fl.conn().state, fl.conn().flags) == ("UDP_STREAM", F_ASSURED | F_REPLY_SEEN)


def test_udp_query_and_answer_expire_as_first(NatClass):
    nat = make(NatClass)
    fl = Flow(nat, proto=fg.UDP)
    fl.send(OUT, now=0)
    fl.send(IN, now=5)
    assert [c.state for c in nat.expire(5 + AWS["UDP_FIRST"])] == ["UDP_FIRST"]


# -- timeouts and expiry (2.1) -----------------------------------------------------------------

STATE_PATHS = [("SYN_SENT", "SYN_SENT"), ("SYN_RECV", "SYN_RECV"),
               ("ESTABLISHED", "ESTABLISHED"), ("FIN_WAIT", "FIN_WAIT/o"),
               ("CLOSE_WAIT", "CLOSE_WAIT/o"), ("LAST_ACK", "LAST_ACK/r"),
               ("TIME_WAIT", "TIME_WAIT/o"), ("CLOSE", "CLOSE")]


@pytest.mark.parametrize("profile", ["aws", "rfc"])
@pytest.mark.parametrize("state,path", STATE_PATHS)
def test_tcp_timeouts(NatClass, profile, state, path):
    nat = make(NatClass, profile=profile)
    t0 = 1_000_000
    fl = drive(nat, path, now=t0)
    timeout = PROFILES[profile][state] * 1000
    assert nat.expire(t0 + timeout - 1) == []
    assert len(nat) == 1
    (gone,) = nat.expire(t0 + timeout)
    assert (gone.state, gone.last_seen_ms, gone.sport) == (state, t0, fl.sport)
    assert len(nat) == 0 and nat.counters()["conn_expired"] == 1


@pytest.mark.parametrize("profile", ["aws", "rfc"])
def test_udp_timeouts(NatClass, profile):
    nat = make(NatClass, profile=profile)
    first = Flow(nat, proto=fg.UDP, sport=1)
    stream = Flow(nat, proto=fg.UDP, sport=2)
    first.send(OUT, now=0)
    stream.send(OUT, now=0)
    stream.send(IN, now=0)
    stream.send(OUT, now=UDP_STREAM_MS)
    first.send(OUT, now=UDP_STREAM_MS)
    assert stream.conn().state == "UDP_STREAM"
    t_first = PROFILES[profile]["UDP_FIRST"] * 1000
    t_stream = PROFILES[profile]["UDP_STREAM"] * 1000
    assert nat.expire(UDP_STREAM_MS + t_first - 1) == []
    got = nat.expire(UDP_STREAM_MS + t_first)
    assert [c.state for c in got] == (["UDP_FIRST", "UDP_STREAM"] if t_first == t_stream
                                      else ["UDP_FIRST"])
    if t_first != t_stream:
        assert nat.expire(UDP_STREAM_MS + t_stream - 1) == []
        assert [c.state for c in nat.expire(UDP_STREAM_MS + t_stream)] == ["UDP_STREAM"]


def test_timeouts_override(NatClass):
    nat = make(NatClass, timeouts={"ESTABLISHED": 432000, "UDP_FIRST": 0.5})
    fl = drive(nat, "ESTABLISHED", now=0)
    u = Flow(nat, proto=fg.UDP)
    u.send(OUT, now=0)
    assert [c.state for c in nat.expire(499)] == []
    assert [c.state for c in nat.expire(500)] == ["UDP_FIRST"]
    assert nat.expire(432000 * 1000 - 1) == []
    assert [c.sport for c in nat.expire(432000 * 1000)] == [fl.sport]


def test_activity_postpones_expiry(NatClass):
    nat = make(NatClass)
    fl = drive(nat, "ESTABLISHED", now=0)
    fl.send(I, "A", now=100_000)
    assert nat.expire(AWS["ESTABLISHED"]) == []
    assert len(nat.expire(100_000 + AWS["ESTABLISHED"])) == 1


def test_expire_order_and_max(NatClass):
    nat = make(NatClass)
    # UDP_FIRST connections 100, 101, 102 created at 0, 10, 20, then 100 touched again at 30;
    # a TCP SYN_SENT one at 40. All expired by the time we look: SYN_SENT comes first (enum
    # order), then UDP least recently touched first.
    flows = [Flow(nat, proto=fg.UDP, sport=100 + i) for i in range(3)]
    for i, fl in enumerate(flows):
        fl.send(OUT, now=10 * i)
    flows[0].send(OUT, now=30)
    Flow(nat, sport=200).send(OUT, "S", now=40)
    now = 10_000_000
    first = nat.expire(now, max=2)
    assert [(c.proto, c.sport) for c in first] == [(6, 200), (17, 101)]
    rest = nat.expire(now, max=5)
    assert [c.sport for c in rest] == [102, 100]
    assert nat.expire(now) == []


def test_expired_on_lookup_is_a_miss_and_journaled(NatClass):
    nat = make(NatClass)
    fl = Flow(nat, proto=fg.UDP)
    fl.send(OUT, now=0)
    # The reply comes exactly when the connection expires: too late.
    assert fl.send(IN, now=AWS["UDP_FIRST"]) == refused("IN_NO_MATCH_UDP")
    assert len(nat) == 0
    assert nat.counters()["conn_expired"] == 1
    # One millisecond earlier would have been fine.
    nat2 = make(NatClass)
    fl2 = Flow(nat2, proto=fg.UDP)
    fl2.send(OUT, now=0)
    assert fl2.send(IN, now=AWS["UDP_FIRST"] - 1)[0] == FORWARD
    # The journal hands the lazily expired connection to the next expire() call, first.
    other = Flow(nat, proto=fg.UDP, sport=7)
    other.send(OUT, now=AWS["UDP_FIRST"])
    got = nat.expire(10 * AWS["UDP_FIRST"])
    assert [c.sport for c in got] == [fl.sport, 7]
    assert nat.counters()["conn_expired"] == 2
    assert nat.expire(10 * AWS["UDP_FIRST"]) == []


def test_expired_on_outbound_lookup_makes_a_new_connection(NatClass):
    nat = make(NatClass, quarantine_ms=0, port_range=(5000, 5001))
    fl = Flow(nat, proto=fg.UDP)
    fl.send(OUT, now=0)
    first = fl.conn()
    assert fl.send(OUT, now=AWS["UDP_FIRST"])[0] == FORWARD
    second = fl.conn()
    assert second.id == first.id and second.start_s == AWS["UDP_FIRST"] // 1000
    assert (second.packets_out, nat.counters()["conn_created"]) == (1, 2)
    (rec,) = nat.expire(AWS["UDP_FIRST"])
    assert rec.last_seen_ms == 0 and rec.packets_out == 1


def test_journal_overflow_drops_oldest(NatClass):
    nat = make(NatClass, journal_size=2)
    flows = [Flow(nat, proto=fg.UDP, sport=10 + i) for i in range(3)]
    for fl in flows:
        fl.send(OUT, now=0)
    for fl in flows:
        assert fl.send(IN, now=AWS["UDP_FIRST"])[1] == R["IN_NO_MATCH_UDP"]
    c = nat.counters()
    assert (c["conn_expired"], c["journal_overflow"]) == (3, 1)
    assert [x.sport for x in nat.expire(AWS["UDP_FIRST"])] == [11, 12]


# -- ports (section 5) -------------------------------------------------------------------------

def splitmix64(state):
    state = (state + 0x9E3779B97F4A7C15) & (2**64 - 1)
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & (2**64 - 1)
    return state, z ^ (z >> 31)


def test_siphash13_is_cpythons():
    """The model's SipHash-1-3 against an independent one: CPython hashes bytes with it, with
    a zero key when PYTHONHASHSEED=0."""
    import subprocess
    import sys
    from hyperplane.model.portalloc import siphash13
    data = [b"a", b"12345678", b"port draw 123456789"]   # (CPython hashes b"" to 0)
    out = subprocess.run([sys.executable, "-c", f"print([hash(d) for d in {data!r}])"],
                         env={"PYTHONHASHSEED": "0"}, capture_output=True, text=True, check=True)
    want = eval(out.stdout)
    got = [siphash13(0, 0, d) for d in data]
    got = [g - 2**64 if g >= 2**63 else g for g in got]
    assert got == [w if w != -2 else -1 for w in want]


def pool_draws(seed, which, n, lo, hi):
    """The first n ports of the which-th pool created (keys: two SplitMix64 draws each)."""
    from hyperplane.model.portalloc import siphash13
    state = seed
    for _ in range(2 * which):
        state, _ = splitmix64(state)
    state, k0 = splitmix64(state)
    state, k1 = splitmix64(state)
    free, want = list(range(lo, hi + 1)), []
    for draw in range(n):
        r = siphash13(k0, k1, draw.to_bytes(8, "little"))
        i = ((r >> 32) * len(free)) >> 32
        want.append(free[i])
        free[i] = free[-1]
        free.pop()
    return want


@pytest.mark.parametrize("seed", [0, 1, 0xDEADBEEF])
def test_port_choice_is_a_keyed_prf_per_pool(NatClass, seed):
    lo, hi = 1000, 1099
    nat = make(NatClass, port_seed=seed, port_range=(lo, hi), mapping="per-connection")
    got = {proto: [] for proto in (fg.TCP, fg.UDP)}
    for k in range(5):
        for proto in (fg.UDP, fg.TCP):       # interleaved: each pool runs its own counter
            fl = Flow(nat, proto=proto, sport=k + 1)
            fl.send(OUT, "S")
            got[proto].append(fl.nat_port)
    # Pools are made in order IPv4 TCP, IPv4 UDP, IPv6 TCP, IPv6 UDP.
    assert got[fg.TCP] == pool_draws(seed, 0, 5, lo, hi)
    assert got[fg.UDP] == pool_draws(seed, 1, 5, lo, hi)
    assert got[fg.TCP] != got[fg.UDP]


def test_port_exhaustion_punts(NatClass):
    nat = make(NatClass, port_range=(7000, 7001), mapping="per-connection")
    assert Flow(nat, sport=1).send(OUT, "S")[0] == FORWARD
    assert Flow(nat, sport=2).send(OUT, "S")[0] == FORWARD
    assert Flow(nat, sport=3).send(OUT, "S") == (PUNT, R["PORTS_EXHAUSTED"], 0, -1)
    assert nat.counters()["drop.PORTS_EXHAUSTED"] == 1
    assert len(nat) == 2
    # Other pools are independent: UDP and IPv6 still have ports.
    assert Flow(nat, proto=fg.UDP, sport=3).send(OUT)[0] == FORWARD
    assert Flow(nat, src=SRC6, dst=DST6, sport=3).send(OUT, "S")[0] == FORWARD
    assert nat.pool_stats(0, 4, 6) == {"size": 2, "free": 0, "in_use": 2, "quarantined": 0}
    assert nat.pool_stats(0, 4, 17) == {"size": 2, "free": 1, "in_use": 1, "quarantined": 0}
    assert nat.pool_stats(0, 6, 6)["in_use"] == 1


def established_then_expired(nat, sport=1):
    """A TCP connection that reached ESTABLISHED, expired: the time it expired at."""
    drive_flow(Flow(nat, sport=sport), PATHS["ESTABLISHED"])
    assert len(nat.expire(AWS["ESTABLISHED"])) == 1
    return AWS["ESTABLISHED"]


def test_quarantine_delays_reuse(NatClass):
    q = 2 * AWS["TIME_WAIT"]           # the default
    nat = make(NatClass, port_range=(7000, 7000))
    t = established_then_expired(nat)
    assert nat.pool_stats(0, 4, 6) == {"size": 1, "free": 0, "in_use": 0, "quarantined": 1}
    other = Flow(nat, sport=2)
    assert other.send(OUT, "S", now=t + q - 1) == refused("PORTS_EXHAUSTED")
    assert other.send(OUT, "S", now=t + q)[0] == FORWARD
    assert other.nat_port == 7000
    assert nat.pool_stats(0, 4, 6) == {"size": 1, "free": 0, "in_use": 1, "quarantined": 0}


def test_only_established_tcp_is_quarantined(NatClass):
    # A UDP flow (even a stream) or a TCP connection that never reached ESTABLISHED gives its
    # port back at once: nothing late can be mistaken for a new peer's traffic.
    nat = make(NatClass, port_range=(7000, 7000))
    udp = Flow(nat, proto=fg.UDP, sport=1)
    udp.send(OUT, now=0)
    udp.send(IN, now=0)
    udp.send(OUT, now=UDP_STREAM_MS)
    assert udp.conn().state == "UDP_STREAM"
    t = UDP_STREAM_MS + AWS["UDP_STREAM"]
    assert len(nat.expire(t)) == 1
    assert nat.pool_stats(0, 4, 17) == {"size": 1, "free": 1, "in_use": 0, "quarantined": 0}
    assert Flow(nat, proto=fg.UDP, sport=2).send(OUT, now=t)[0] == FORWARD
    syn = Flow(nat, sport=3)
    syn.send(OUT, "S", now=0)
    assert len(nat.expire(AWS["SYN_SENT"])) == 1
    assert nat.pool_stats(0, 4, 6)["free"] == 1
    assert Flow(nat, sport=4).send(OUT, "S", now=AWS["SYN_SENT"])[0] == FORWARD


def test_quarantine_custom_and_zero(NatClass):
    nat = make(NatClass, port_range=(7000, 7000), quarantine_ms=0)
    t = established_then_expired(nat)
    assert nat.pool_stats(0, 4, 6)["free"] == 1
    assert Flow(nat, sport=2).send(OUT, "S", now=t)[0] == FORWARD

    nat = make(NatClass, port_range=(7000, 7000), quarantine_ms=5)
    t = established_then_expired(nat)
    assert Flow(nat, sport=2).send(OUT, "S", now=t + 4)[0] == PUNT
    assert Flow(nat, sport=2).send(OUT, "S", now=t + 5)[0] == FORWARD


def test_default_quarantine_follows_time_wait(NatClass):
    nat = make(NatClass, port_range=(7000, 7000), timeouts={"TIME_WAIT": 1})
    t = established_then_expired(nat)
    assert Flow(nat, sport=2).send(OUT, "S", now=t + 1999)[0] == PUNT
    assert Flow(nat, sport=2).send(OUT, "S", now=t + 2000)[0] == FORWARD


def test_endpoint_independent_mapping(NatClass):
    nat = make(NatClass, quarantine_ms=0)
    a = Flow(nat, proto=fg.UDP, dst=DST, sport=5000)
    b = Flow(nat, proto=fg.UDP, dst="10.0.9.10", dport=53, sport=5000)
    c = Flow(nat, proto=fg.UDP, dst=DST, sport=5001)
    a.send(OUT, now=0)
    c.send(OUT, now=0)
    b.send(OUT, now=10)
    assert a.nat_port == b.nat_port != c.nat_port
    assert nat.pool_stats(0, 4, 17)["in_use"] == 2
    # The mapping lives while any of its connections does.
    assert len(nat.expire(AWS["UDP_FIRST"])) == 2      # a and c
    assert nat.pool_stats(0, 4, 17)["in_use"] == 1
    d = Flow(nat, proto=fg.UDP, dst="10.0.9.11", sport=5000)
    d.send(OUT, now=AWS["UDP_FIRST"])
    assert d.nat_port == a.nat_port
    # The other side of the mapping can answer from either destination's connection.
    assert b.send(IN, now=AWS["UDP_FIRST"])[0] == FORWARD


def test_per_connection_mapping(NatClass):
    nat = make(NatClass, mapping="per-connection")
    a = Flow(nat, proto=fg.UDP, dst=DST, sport=5000)
    b = Flow(nat, proto=fg.UDP, dst="10.0.9.10", sport=5000)
    a.send(OUT)
    b.send(OUT)
    assert a.nat_port != b.nat_port
    assert nat.pool_stats(0, 4, 17)["in_use"] == 2


def test_new_enis_take_new_connections_and_eim_sticks_to_old(NatClass):
    nat = make(NatClass, port_range=(7000, 7000))
    a = Flow(nat, proto=fg.UDP, sport=1)
    a.send(OUT)
    assert Flow(nat, proto=fg.UDP, sport=2).send(OUT) == refused("PORTS_EXHAUSTED")
    eni_b = nat.add_eni(ENI_B, ENI_B6)
    nat.group_add_eni(0, eni_b)
    b = Flow(nat, proto=fg.UDP, sport=2)
    assert b.send(OUT) == (FORWARD, R["NONE"], eni_b + 1, 1)
    assert (b.nat_addr, b.nat_port, b.conn().eni, b.conn().nat_addr) == (ENI_B, 7000, 1, ENI_B)
    # The first endpoint keeps its mapping on the first ENI, towards any destination.
    a2 = Flow(nat, proto=fg.UDP, sport=1, dst="10.0.9.77")
    assert a2.send(OUT)[2] == 1
    assert (a2.nat_addr, a2.nat_port) == (ENI, 7000)
    # Replies must arrive on the ENI that owns the connection.
    assert b.send(IN)[0] == FORWARD
    frame = fg.udp(DST, ENI_B, 443, 7000)
    assert inb(nat, frame, eni=0) == refused("IN_NO_MATCH_UDP")


def test_older_eni_serves_while_the_newest_is_full(NatClass):
    # New connections go to the newest ENI with a free port: an older one whose ports came
    # back takes them while the newest is full; nothing is refused while any has ports.
    nat = make(NatClass, port_range=(7000, 7001), quarantine_ms=0)
    eni_b = nat.add_eni(ENI_B, ENI_B6)
    nat.group_add_eni(0, eni_b)
    flows = [Flow(nat, proto=fg.UDP, sport=s) for s in range(1, 5)]
    for fl in flows:
        assert fl.send(OUT, now=0)[0] == FORWARD
    assert [fl.eni for fl in flows] == [eni_b, eni_b, 0, 0]
    assert Flow(nat, proto=fg.UDP, sport=9).send(OUT, now=0) == refused("PORTS_EXHAUSTED")
    for fl in flows[:2] + flows[3:]:            # all but one of ENI 0's flows go on
        fl.send(OUT, now=10)
    assert len(nat.expire(AWS["UDP_FIRST"])) == 1
    older = Flow(nat, proto=fg.UDP, sport=10)
    assert older.send(OUT, now=AWS["UDP_FIRST"])[0] == FORWARD
    assert older.eni == 0                       # the newest is full, the older has a port
    assert len(nat.expire(10 + AWS["UDP_FIRST"])) == 3
    newest = Flow(nat, proto=fg.UDP, sport=11)
    assert newest.send(OUT, now=10 + AWS["UDP_FIRST"])[0] == FORWARD
    assert newest.eni == eni_b                  # the newest again, its ports came back


def test_a_function_moved_to_another_group_takes_its_enis(NatClass):
    nat = make(NatClass, quarantine_ms=0)
    other = nat.add_group()
    eni_b = nat.add_eni(ENI_B, ENI_B6)
    nat.group_add_eni(other, eni_b)
    old = Flow(nat, proto=fg.UDP, sport=1)
    assert old.send(OUT)[0] == FORWARD and old.eni == 0
    nat.set_source_group(SRC, other)
    new = Flow(nat, proto=fg.UDP, sport=2)
    assert new.send(OUT)[0] == FORWARD and new.eni == eni_b
    assert old.send(OUT)[0] == FORWARD and old.eni == 0         # live ones keep their ENI
    with pytest.raises(ValueError):
        nat.set_source_group("10.9.9.9", other)


def test_retired_eni_takes_no_new_connection(NatClass):
    nat = make(NatClass, quarantine_ms=0)
    eni_b = nat.add_eni(ENI_B, ENI_B6)
    nat.group_add_eni(0, eni_b)
    fl = Flow(nat, proto=fg.UDP, sport=1)
    fl.send(OUT, now=0)
    assert fl.eni == eni_b
    assert nat.group_retire_eni(0, eni_b) is False          # it has a connection
    nat.expire(AWS["UDP_FIRST"])
    assert nat.group_retire_eni(0, eni_b) is True
    with pytest.raises(ValueError):
        nat.group_retire_eni(0, eni_b)                      # no longer in the group
    fl2 = Flow(nat, proto=fg.UDP, sport=2)
    fl2.send(OUT, now=AWS["UDP_FIRST"])
    assert fl2.eni == 0



def test_a_released_eni_gives_its_id_to_the_next(NatClass):
    """Reclaimed ENIs give their id (and, in C, their block of the state) back once nothing
    is left of them, so ENIs can come and go for ever: more than the 1,024 ids a NAT has."""
    quarantine = 10_000
    nat = make(NatClass, quarantine_ms=quarantine)
    eni_b = nat.add_eni(ENI_B, ENI_B6)
    nat.group_add_eni(0, eni_b)
    fl = Flow(nat, proto=fg.UDP, sport=1)
    assert fl.send(OUT, now=0)[0] == FORWARD and fl.eni == eni_b
    with pytest.raises(ValueError):
        nat.release_eni(eni_b)                              # still in its group
    assert nat.group_retire_eni(0, eni_b) is False          # it has a connection
    eni_c = nat.add_eni("10.0.3.4")
    nat.group_add_eni(0, eni_c)
    # The flow's next datagram, past its timeout, journals the old connection (on ENI B) and
    # makes a new one on the group's newest ENI.
    now = AWS["UDP_FIRST"] + 1
    assert fl.send(OUT, now=now)[0] == FORWARD and fl.eni == eni_c
    assert nat.group_retire_eni(0, eni_b) is True
    assert nat.release_eni(eni_b) is False                  # an unread journal record
    assert [c.eni for c in nat.expire(now)] == [eni_b]
    assert nat.release_eni(eni_b) is True
    for bad in (lambda: nat.release_eni(eni_b), lambda: nat.group_add_eni(0, eni_b),
                lambda: nat.pool_stats(eni_b, 4, fg.UDP), lambda: nat.add_eni(ENI_B, eni=0)):
        with pytest.raises(ValueError):
            bad()
    # The lowest free id, new addresses, counters from zero; a TCP connection that reached
    # ESTABLISHED leaves its port in quarantine, which holds the id until it ends.
    eni_d = nat.add_eni("10.0.7.4")
    assert eni_d == eni_b
    assert nat.eni_counters(eni_d)["active"] == {"tcp": 0, "udp": 0}
    nat.group_add_eni(0, eni_d)
    tcp = Flow(nat, sport=2)
    for direction, flags in ((OUT, "S"), (IN, "SA"), (OUT, "A")):
        assert tcp.send(direction, flags, now=now)[0] == FORWARD
    assert tcp.eni == eni_d and tcp.nat_addr == "10.0.7.4"
    assert tcp.conn().state == "ESTABLISHED"
    now += AWS["ESTABLISHED"] + 1
    assert sorted(c.eni for c in nat.expire(now)) == [eni_d, eni_c]
    assert nat.group_retire_eni(0, eni_d) is True
    assert nat.pool_stats(eni_d, 4, fg.TCP)["quarantined"] == 1
    assert nat.release_eni(eni_d) is False                  # its port is in quarantine
    now += quarantine
    nat.expire(now)                                         # which ends
    assert nat.release_eni(eni_d) is True
    assert nat.add_eni("10.0.7.9", eni=5) == 5              # ids skipped over are free
    assert [nat.add_eni(f"10.0.7.{i}") for i in (10, 11)] == [eni_d, 3]
    for e in (eni_d, 3, 5):
        assert nat.release_eni(e) is True
    # Many more ENIs than there are ids, each made, used and released in turn.
    nat.group_retire_eni(0, eni_c)
    for i in range(1100):
        e = nat.add_eni(f"10.1.{i // 250}.{i % 250 + 1}")
        assert e == 1
        nat.group_add_eni(0, e)
        f = Flow(nat, proto=fg.UDP, sport=1000 + i)
        assert f.send(OUT, now=now)[0] == FORWARD and f.eni == e
        assert nat.group_retire_eni(0, e) is False
        now += AWS["UDP_FIRST"]
        assert len(nat.expire(now)) == 1
        assert nat.group_retire_eni(0, e) is True
        assert nat.release_eni(e) is True, i


# -- table capacity ----------------------------------------------------------------------------

def test_full_table_drops_and_never_overwrites(NatClass):
    """A table full of assured connections refuses new ones (unassured ones would be dropped
    early: test_quota.py)."""
    nat = make(NatClass, capacity=2)
    a = Flow(nat, sport=1)
    b = Flow(nat, sport=2)
    for flow in (a, b):
        flow.send(OUT, "S", now=0)
        flow.send(IN, "SA", now=0)
        flow.send(OUT, "A", now=0)
    before = nat.connections()
    assert Flow(nat, sport=3).send(OUT, "S", now=1000) == (FORWARD, R["TABLE_FULL"], 0, -1)
    assert Flow(nat, proto=fg.UDP, sport=3).send(OUT, now=1000) == refused("TABLE_FULL")
    assert sorted(nat.connections(), key=lambda c: c.id) == sorted(before, key=lambda c: c.id)
    assert nat.counters()["drop.TABLE_FULL"] == 2
    # Known connections still pass.
    assert a.send(IN, "A", now=1000)[0] == FORWARD


def test_full_table_expires_to_make_room(NatClass):
    nat = make(NatClass, capacity=2)
    Flow(nat, proto=fg.UDP, sport=1).send(OUT, now=0)
    Flow(nat, sport=2).send(OUT, "S", now=0)
    t = AWS["UDP_FIRST"]
    c = Flow(nat, proto=fg.UDP, sport=3)
    assert c.send(OUT, now=t) == (FORWARD, R["NONE"], 1, 0)    # took the expired one's id
    assert len(nat) == 2 and nat.counters()["conn_expired"] == 1
    assert [x.sport for x in nat.expire(t)] == [1]             # through the journal


# -- refusals on the way out -------------------------------------------------------------------

def test_unknown_source(NatClass):
    nat = make(NatClass)
    assert out(nat, fg.tcp("10.200.0.99", DST, 1, 2, "S")) == refused("UNKNOWN_SOURCE")
    assert out(nat, fg.udp("fd00:200::99", DST6, 1, 2)) == refused("UNKNOWN_SOURCE")
    assert nat.counters()["drop.UNKNOWN_SOURCE"] == 2 and len(nat) == 0


def test_v6_not_allowed(NatClass):
    nat = NatClass()
    eni = nat.add_eni(ENI, ENI6)
    v4only = nat.add_eni(ENI_B, None)
    g1, g2 = nat.add_group(), nat.add_group()
    nat.group_add_eni(g1, eni)
    nat.group_add_eni(g2, eni)
    nat.group_add_eni(g2, v4only)           # g2's newest ENI has no IPv6 address
    nat.add_source("fd00:200::1", g1, allow_v6=False)
    nat.add_source("fd00:200::2", g1, allow_v6=True)
    nat.add_source("fd00:200::3", g2, allow_v6=True)
    nat.add_source("10.200.0.3", g2)
    assert out(nat, fg.udp("fd00:200::1", DST6, 1, 2)) == refused("V6_NOT_ALLOWED")
    assert out(nat, fg.udp("fd00:200::2", DST6, 1, 2))[0] == FORWARD
    assert out(nat, fg.tcp("fd00:200::3", DST6, 1, 2, "S")) == refused("V6_NOT_ALLOWED")
    assert out(nat, fg.udp("10.200.0.3", DST, 1, 2))[:3] == (FORWARD, 0, v4only + 1)


@pytest.mark.parametrize("flags", ["A", "SA", "FA", "R", "RA", "PA"])
def test_tcp_not_syn(NatClass, flags):
    # Dropped; answered with a RST back to the function unless it is one (test_natsg.py).
    nat = make(NatClass)
    want = refused("TCP_NOT_SYN")
    if "R" not in flags:
        want = (FORWARD,) + want[1:]
    assert out(nat, fg.tcp(SRC, DST, 1, 2, flags)) == want
    assert len(nat) == 0


def test_syn_with_other_harmless_flags_opens(NatClass):
    nat = make(NatClass)
    assert out(nat, fg.tcp(SRC, DST, 1, 2, "SP"))[0] == FORWARD


# -- refusals on the way in --------------------------------------------------------------------

def test_unsolicited_inbound(NatClass):
    nat = make(NatClass)
    assert inb(nat, fg.udp(DST, "10.0.1.99", 53, 1000)) == refused("IN_NOT_ENI_ADDR")
    assert inb(nat, fg.tcp(DST6, "fd00:1::99", 53, 1000, "S")) == refused("IN_NOT_ENI_ADDR")
    assert inb(nat, fg.tcp(DST, ENI, 53, 1000, "S")) == refused("IN_UNSOLICITED_SYN")
    assert inb(nat, fg.tcp(DST6, ENI6, 53, 1000, "S")) == refused("IN_UNSOLICITED_SYN")
    for flags in ("SA", "A", "R", "FA"):
        assert inb(nat, fg.tcp(DST, ENI, 53, 1000, flags)) == refused("IN_NO_MATCH_TCP")
    assert inb(nat, fg.tcp(DST, ENI, 53, 1000, "SF")) == refused("TCP_BAD_FLAGS")
    assert inb(nat, fg.udp(DST, ENI, 53, 1000)) == refused("IN_NO_MATCH_UDP")
    # An ENI address of the wrong family is not an ENI address.
    nat2 = NatClass()
    nat2.add_eni(ENI, None)
    assert inb(nat2, fg.udp(DST6, "::ffff:10.0.1.4", 53, 1000)) == refused("IN_NOT_ENI_ADDR")


def test_inbound_needs_the_exact_reply_tuple(NatClass):
    nat = make(NatClass)
    fl = Flow(nat, proto=fg.UDP)
    fl.send(OUT)
    p = fl.nat_port
    assert inb(nat, fg.udp(DST, ENI, 444, p)) == refused("IN_NO_MATCH_UDP")      # other sport
    assert inb(nat, fg.udp("10.0.9.8", ENI, 443, p)) == refused("IN_NO_MATCH_UDP")
    assert inb(nat, fg.tcp(DST, ENI, 443, p, "A")) == refused("IN_NO_MATCH_TCP")  # other proto
    assert inb(nat, fg.udp(DST, ENI, 443, p), eni=1) == refused("IN_NO_MATCH_UDP")
    assert inb(nat, fg.udp(DST, ENI, 443, p)) == (FORWARD, 0, 0, 0)


def test_inbound_on_another_eni_is_a_miss(NatClass):
    nat = make(NatClass)
    nat.add_eni(ENI_B, ENI_B6)
    fl = Flow(nat, sport=9)
    fl.send(OUT, "S")
    frame = fg.tcp(DST, ENI, 443, fl.nat_port, "SA")
    assert inb(nat, frame, eni=1) == refused("IN_NO_MATCH_TCP")
    syn = fg.tcp(DST, ENI, 443, fl.nat_port, "S")
    assert inb(nat, syn, eni=1) == refused("IN_UNSOLICITED_SYN")
    assert fl.conn().state == "SYN_SENT" and fl.conn().packets_in == 0


# -- parsing (section 1) -----------------------------------------------------------------------

@pytest.mark.parametrize("kind", fg.MALFORMED_KINDS)
@pytest.mark.parametrize("direction", [OUT, IN])
def test_malformed(NatClass, kind, direction):
    nat = make(NatClass)
    frame, vnet = fg.malformed(kind)
    original = bytes(frame)
    res = nat.translate([frame], direction, 0, vnet=vnet)
    # From an ENI, what would be punted must be addressed to an ENI first (section 13).
    if direction == IN and kind in ("FRAGMENT", "TTL_EXCEEDED"):
        kind = "IN_NOT_ENI_ADDR"
    assert res == [refused(kind)]
    assert bytes(frame) == original                       # untouched
    counters = nat.counters()
    assert counters[f"drop.{kind}"] == 1
    assert sum(v for k, v in counters.items() if k.startswith("drop.")) == 1


def test_ipv6_fragment_header_punts(NatClass):
    nat = make(NatClass)
    assert out(nat, fg.udp(SRC6, DST6, 1, 2, ext=[0, 44])) == refused("FRAGMENT")


def test_ipv4_more_fragments_and_offset_punt(NatClass):
    nat = make(NatClass)
    assert out(nat, fg.udp(SRC, DST, 1, 2, frag=0x0001)) == refused("FRAGMENT")
    assert out(nat, fg.udp(SRC, DST, 1, 2, frag=0x4000))[0] == FORWARD     # DF is fine


def test_ipv4_options_and_ipv6_extension_headers_pass(NatClass):
    nat = make(NatClass)
    f4 = fg.tcp(SRC, DST, 1, 2, "S", ip_options=b"\x01\x01\x01\x00", payload=b"abc")
    assert out(nat, f4)[0] == FORWARD and fg.checksums_ok(f4)
    f6 = fg.tcp(SRC6, DST6, 1, 2, "S", ext=[0, 43, 60], payload=b"abc")
    assert out(nat, f6)[0] == FORWARD and fg.checksums_ok(f6)
    assert fg.fields(f6)["src"] == ENI6
    eight = fg.udp(SRC6, DST6, 1, 3, ext=[60] * 8)
    assert out(nat, eight)[0] == FORWARD


def test_ipv6_short_extension_chain_is_truncated(NatClass):
    nat = make(NatClass)
    f = fg.udp(SRC6, DST6, 1, 2, ext=[60])
    # Shrink the payload length so fewer than 8 bytes remain for the extension header.
    struct.pack_into("!H", f, 14 + 4, 7)
    assert out(nat, f) == refused("IPV6_EXT_TRUNCATED")


def test_trailing_padding_is_ignored(NatClass):
    nat = make(NatClass)
    f = fg.udp(SRC, DST, 1, 2, payload=b"x")
    f += bytes(20)                                         # Ethernet padding
    assert out(nat, f)[0] == FORWARD
    assert nat.get(0).bytes_out == 29


def test_ttl(NatClass):
    nat = make(NatClass)
    assert out(nat, fg.udp(SRC, DST, 1, 2, ttl=1)) == refused("TTL_EXCEEDED")
    assert out(nat, fg.udp(SRC, DST, 1, 2, ttl=0)) == refused("TTL_EXCEEDED")
    assert out(nat, fg.udp(SRC6, DST6, 1, 2, ttl=1)) == refused("TTL_EXCEEDED")
    f = fg.udp(SRC, DST, 1, 2, ttl=2)
    assert out(nat, f)[0] == FORWARD
    assert fg.fields(f)["ttl"] == 1 and fg.checksums_ok(f)
    f6 = fg.udp(SRC6, DST6, 1, 2, ttl=255)
    assert out(nat, f6)[0] == FORWARD and fg.fields(f6)["ttl"] == 254
    # TTL is checked before the table: an expired connection is not even looked at.
    assert len(nat) == 2


def test_too_big_uses_the_egress_mtu(NatClass):
    nat = make(NatClass, mtu_outside=1000, mtu_inside=1400)
    fl = Flow(nat, proto=fg.UDP)
    assert fl.send(OUT, payload=bytes(1000 - 28))[0] == FORWARD
    assert fl.send(OUT, payload=bytes(1000 - 28 + 1)) == refused("TOO_BIG")
    assert fl.send(IN, payload=bytes(1400 - 28))[0] == FORWARD
    assert fl.send(IN, payload=bytes(1400 - 28 + 1)) == refused("TOO_BIG")
    # TOO_BIG comes before the lookup: no connection needed to get it.
    assert inb(nat, fg.udp(DST, "10.9.9.9", 1, 2, payload=bytes(1500))) == refused("TOO_BIG")
    # GSO super-frames are exempt: the kernel segments them.
    big = fg.tcp(SRC, DST, 1, 2, "S", payload=bytes(5000), gso_type=fg.GSO_TCPV4, gso_size=1000)
    assert out(nat, big, vnet=True)[0] == FORWARD


# -- rewriting and checksums (section 4) -------------------------------------------------------

@pytest.mark.parametrize("proto", [fg.TCP, fg.UDP])
@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("payload", [b"", b"a", b"hello world!" * 7])
def test_checksums_after_rewrite(NatClass, proto, v6, payload):
    nat = make(NatClass)
    fl = Flow(nat, proto=proto, src=SRC6 if v6 else SRC, dst=DST6 if v6 else DST)
    assert fl.send(OUT, "S", payload=payload)[0] == FORWARD
    assert fg.checksums_ok(fl.last_frame)
    f = fg.fields(fl.last_frame)
    assert (f["src"], f["sport"]) == (ENI6 if v6 else ENI, fl.nat_port)
    for flags in ("SA", "A", "FA"):
        assert fl.send(IN, flags, payload=payload)[0] == FORWARD
        assert fg.checksums_ok(fl.last_frame)
        f = fg.fields(fl.last_frame)
        assert (f["dst"], f["dport"], f["ttl"]) == (fl.src, fl.sport, 63)
        if flags == "SA":       # the handshake's ACK opens the server's window for its data
            assert fl.send(OUT, "A")[0] == FORWARD


def test_many_ports_checksums(NatClass):
    """Many different external ports and source ports exercise the carries of RFC 1624."""
    nat = make(NatClass, mapping="per-connection", port_seed=7)
    for i in range(200):
        for proto in (fg.TCP, fg.UDP):
            f = fg.build(SRC, DST, proto, 1 + i * 331 % 65535, 65535 - i, flags="S",
                         payload=bytes([i]) * (i % 7))
            assert out(nat, f)[0] == FORWARD
            assert fg.checksums_ok(f)


def test_udp_zero_checksum_stays_zero(NatClass):
    nat = make(NatClass)
    fl = Flow(nat, proto=fg.UDP)
    fl.send(OUT, zero_csum=True, payload=b"abc")
    assert fg.fields(fl.last_frame)["l4_check"] == 0
    assert fg.ipv4_checksum_ok(fl.last_frame)
    fl.send(IN, zero_csum=True, payload=b"abc")
    assert fg.fields(fl.last_frame)["l4_check"] == 0


def test_udp_checksum_that_becomes_zero_is_sent_as_ffff(NatClass):
    # One port in the pool, so the external port is known in advance: 7000. Pick the payload
    # so that the translated datagram's checksum computes to exactly 0, which UDP must send
    # as 0xffff (0 would mean "no checksum").
    nat = make(NatClass, port_range=(7000, 7000))
    seg = fg.udp(ENI, DST, 7000, 2, payload=b"\0\0", zero_csum=True)[14 + 20:]
    rest = fg.ones_sum(seg, fg.pseudo_sum(fg.packed(ENI), fg.packed(DST), 17, len(seg)))
    word = 0xFFFF - rest
    frame = fg.udp(SRC, DST, 1, 2, payload=struct.pack("!H", word))
    assert out(nat, frame)[0] == FORWARD
    assert fg.fields(frame)["sport"] == 7000
    assert fg.fields(frame)["l4_check"] == 0xFFFF
    assert fg.checksums_ok(frame)


def test_partial_checksum_update(NatClass):
    nat = make(NatClass)
    for src, dst, proto in ((SRC, DST, fg.TCP), (SRC, DST, fg.UDP), (SRC6, DST6, fg.TCP),
                            (SRC6, DST6, fg.UDP)):
        fl = Flow(nat, proto=proto, src=src, dst=dst, sport=proto)
        fl.send(OUT, "S", needs_csum=True, vnet=True, payload=b"data")
        f = fl.last_frame
        assert fg.fields(f, vnet=True)["src"] in (ENI, ENI6)
        assert fg.checksums_ok(f, vnet=True, partial=True)
        assert f[:10] == fg.build(src, dst, proto, proto, 443, flags="S", needs_csum=True,
                                  payload=b"data")[:10]   # the vnet header is kept
        fl.send(IN, "SA", needs_csum=True, vnet=True)
        assert fg.checksums_ok(fl.last_frame, vnet=True, partial=True)
        assert fg.fields(fl.last_frame, vnet=True)["dst"] == src


def test_vnet_without_flags_is_a_normal_frame(NatClass):
    nat = make(NatClass)
    f = fg.udp(SRC, DST, 1, 2, vnet=True)
    assert out(nat, f, vnet=True)[0] == FORWARD
    assert fg.checksums_ok(f, vnet=True)


def test_gso_counts_segments(NatClass):
    nat = make(NatClass)
    # 5000 bytes of TCP payload in 1448-byte segments: 4 segments, each with 40 header bytes.
    f = fg.tcp(SRC, DST, 1, 2, "S", payload=bytes(5000), needs_csum=True,
               gso_type=fg.GSO_TCPV4, gso_size=1448)
    assert out(nat, f, vnet=True)[0] == FORWARD
    c = nat.get(0)
    assert (c.packets_out, c.bytes_out) == (4, 5040 + 3 * 40)
    counters = nat.counters()
    assert (counters["fwd_out_packets"], counters["fwd_out_bytes"]) == (4, 5040 + 3 * 40)
    # An empty GSO frame still counts one packet.
    g = fg.tcp(SRC, DST, 1, 2, "A", gso_type=fg.GSO_TCPV4, gso_size=1448)
    assert out(nat, g, vnet=True)[0] == FORWARD
    assert nat.get(0).packets_out == 5 and nat.get(0).bytes_out == 5040 + 120 + 40
    # UDP GSO: the UDP length field is not checked (it may hold one segment's length).
    u = fg.udp(SRC, DST, 5, 6, payload=bytes(3000), gso_type=fg.GSO_UDP_L4, gso_size=1000)
    struct.pack_into("!H", u, 10 + 14 + 20 + 4, 0xFFFF)
    assert out(nat, u, vnet=True)[0] == FORWARD
    c = nat.get(1)
    assert (c.packets_out, c.bytes_out) == (3, 3028 + 2 * 28)


def test_pool_stats_validates(NatClass):
    nat = make(NatClass)
    assert nat.pool_stats(0, 6, 17) == {"size": 65000, "free": 65000, "in_use": 0,
                                        "quarantined": 0}
    with pytest.raises(ValueError):
        nat.pool_stats(1, 4, 6)                             # no such ENI
    v6only = nat.add_eni(None, "fd00:3::4")
    with pytest.raises(ValueError):
        nat.pool_stats(v6only, 4, 17)                       # no IPv4 address, no IPv4 pool
    assert nat.pool_stats(v6only, 6, 17)["size"] == 65000


# -- topology and API edges --------------------------------------------------------------------

def test_group_without_eni_punts_for_the_control_plane(NatClass):
    nat = NatClass()
    grp = nat.add_group()
    nat.add_source(SRC, grp)
    assert out(nat, fg.tcp(SRC, DST, 1, 2, "S")) == refused("PORTS_EXHAUSTED")
    eni = nat.add_eni(ENI)
    nat.group_add_eni(grp, eni)
    assert out(nat, fg.tcp(SRC, DST, 1, 2, "S"))[0] == FORWARD


def test_group_without_eni_still_checks_in_step_order(NatClass):
    # Section 3: the source, IPv6 permission, pure SYN and table checks come before the port
    # (step 5); only a frame that passes them all is punted for the control plane.
    nat = NatClass(capacity=1)
    empty, full = nat.add_group(), nat.add_group()
    nat.group_add_eni(full, nat.add_eni(ENI, ENI6))
    nat.add_source(SRC, empty)
    nat.add_source("fd00:200::1", empty, allow_v6=False)
    nat.add_source(SRC6, empty, allow_v6=True)
    nat.add_source(SRC_B, full)
    assert out(nat, fg.tcp(SRC, DST, 1, 2, "A"))[1:] == refused("TCP_NOT_SYN")[1:]  # + RST
    assert out(nat, fg.udp("fd00:200::1", DST6, 1, 2)) == refused("V6_NOT_ALLOWED")
    assert out(nat, fg.udp(SRC6, DST6, 1, 2)) == refused("PORTS_EXHAUSTED")
    assert out(nat, fg.udp(SRC_B, DST, 1, 2))[0] == FORWARD         # the table is full now
    assert out(nat, fg.udp(SRC, DST, 1, 2)) == refused("TABLE_FULL")


def test_newest_eni_without_the_family_has_no_ports(NatClass):
    nat = NatClass()
    grp = nat.add_group()
    nat.group_add_eni(grp, nat.add_eni(None, ENI6))
    nat.add_source(SRC, grp)
    assert out(nat, fg.udp(SRC, DST, 1, 2)) == refused("PORTS_EXHAUSTED")


def test_first_source_registration_wins(NatClass):
    nat = make(NatClass)
    other = nat.add_group()
    nat.group_add_eni(other, nat.add_eni(ENI_B))
    nat.add_source(SRC, other)
    assert out(nat, fg.udp(SRC, DST, 1, 2))[2] == 1        # still the first group's ENI


def test_api_argument_errors(NatClass):
    with pytest.raises(ValueError):
        NatClass(mapping="sideways")
    with pytest.raises(ValueError):
        NatClass(port_range=(0, 10))
    with pytest.raises(ValueError):
        NatClass(timeouts={"NOPE": 1})
    nat = NatClass()
    with pytest.raises(ValueError):
        nat.add_eni(None, None)
    with pytest.raises(ValueError):
        nat.add_eni(ENI6)
    with pytest.raises(ValueError):
        nat.group_add_eni(0, 0)
    with pytest.raises(ValueError):
        nat.add_source(SRC, 3)
    with pytest.raises(TypeError):
        nat.translate([bytes(fg.udp(SRC, DST, 1, 2))], OUT, 0)
    with pytest.raises(ValueError):
        nat.translate([], 7, 0)
    assert nat.translate([], OUT, 0) == []
    assert nat.get(0) is None and nat.get(-1) is None and nat.get(10**9) is None


def test_expire_without_collecting(NatClass):
    nat = make(NatClass)
    a = Flow(nat, proto=fg.UDP, sport=1)
    a.send(OUT, now=0)
    Flow(nat, proto=fg.UDP, sport=2).send(OUT, now=0)
    Flow(nat, proto=fg.UDP, sport=3).send(OUT, now=0)
    a.send(IN, now=AWS["UDP_FIRST"])                        # expires 1 into the journal
    assert nat.expire(AWS["UDP_FIRST"], collect=False) == 2
    assert len(nat) == 0
    assert [c.sport for c in nat.expire(AWS["UDP_FIRST"])] == [1]   # the journal remains


def test_lookup_has_no_side_effects(NatClass):
    nat = make(NatClass)
    fl = Flow(nat, proto=fg.UDP)
    fl.send(OUT, now=0)
    c = nat.get(0)
    assert nat.lookup(SRC, DST, fl.sport, fl.dport, 17, OUT, 0) == c
    assert nat.lookup(DST, ENI, fl.dport, fl.nat_port, 17, IN, 0) == c
    assert nat.lookup(DST, ENI, fl.dport, fl.nat_port, 17, OUT, 0) is None    # wrong direction
    assert nat.lookup(SRC, DST, fl.sport, fl.dport, 6, OUT, 0) is None         # wrong protocol
    assert nat.lookup(SRC, DST6, fl.sport, fl.dport, 17, OUT, 0) is None       # mixed families
    # Expired: not found, but not removed either (only translate and expire remove).
    assert nat.lookup(SRC, DST, fl.sport, fl.dport, 17, OUT, AWS["UDP_FIRST"]) is None
    assert len(nat) == 1 and nat.counters()["conn_expired"] == 0


def test_translate_without_mtu_check(NatClass):
    nat = make(NatClass, mtu_outside=576)
    big = fg.udp(SRC, DST, 1, 2, payload=bytes(1000))
    assert out(nat, bytearray(big)) == refused("TOO_BIG")
    (res,) = nat.translate([big], OUT, 0, check_mtu=False)
    assert res[0] == FORWARD and fg.checksums_ok(big)


# -- TCP window tracking (2.3) ------------------------------------------------------------------

def established(NatClass, **kw):
    nat = make(NatClass, **kw)
    fl = drive(nat, "ESTABLISHED")
    fl.send(O, "PA", payload=b"x" * 100)
    fl.send(I, "PA", payload=b"y" * 200)
    return nat, fl


@pytest.mark.parametrize("flags", ["", "F", "P", "SF", "SR", "SRA", "FR", "SFA", "U", "UP",
                                   "FP", "SRFAPU"])
def test_invalid_flag_combinations_are_dropped(NatClass, flags):
    bits = sum({"F": 1, "S": 2, "R": 4, "P": 8, "A": 16, "U": 32}[f] for f in flags)
    nat, fl = established(NatClass)
    before = fl.conn()
    for d in (O, I):
        assert fl.send(d, bits, now=5000) == refused("TCP_BAD_FLAGS")
    assert fl.conn() == before
    assert out(nat, fg.tcp(SRC, DST, 7, 8, bits)) == refused("TCP_BAD_FLAGS")
    assert nat.counters()["drop.TCP_BAD_FLAGS"] == 3


@pytest.mark.parametrize("flags", ["A", "PA", "FA", "SA", "S", "AU", "PAU"])
def test_out_of_window_segments_change_nothing(NatClass, flags):
    nat, fl = established(NatClass)
    before = fl.conn()
    for d in (O, I):
        for delta in (10**6, -10**6, 0x80000000):
            seq = (fl.next_seq[d] + delta) % 2**32
            assert fl.send(d, flags, now=9000, seq=seq) == refused("TCP_OUT_OF_WINDOW")
        # An ack of data never sent is out of window too.
        peer = I if d == O else O
        if "A" in flags:
            assert fl.send(d, flags, now=9000, ack=fl.next_seq[peer] + 5000) == \
                refused("TCP_OUT_OF_WINDOW")
    assert fl.conn() == before                   # no state, timer or counter moved
    assert nat.counters()["drop.TCP_OUT_OF_WINDOW"] == (8 if "A" in flags else 6)
    # The connection goes on, and lives by its last good segment's time.
    assert fl.send(O, "PA", now=9000, payload=b"z")[0] == FORWARD
    assert fl.send(I, "A", now=9000)[0] == FORWARD
    assert fl.conn().state == "ESTABLISHED" and fl.conn().last_seen_ms == 9000


def test_window_edges(NatClass):
    nat, fl = established(NatClass)
    # The server advertised 65535 from the ack it sent: data up to its right edge passes.
    # A retransmission of old data is fine; data far behind what the receiver can hold is not.
    assert fl.send(O, "PA", seq=fl.next_seq[O] - 100, payload=b"a")[0] == FORWARD
    assert fl.send(I, "A", seq=fl.next_seq[I] - 70000) == refused("TCP_OUT_OF_WINDOW")
    edge = fl.next_seq[O] + 65535
    assert fl.send(O, "PA", seq=edge, payload=b"a")[0] == FORWARD
    assert fl.send(O, "PA", seq=edge + 2, payload=b"a") == refused("TCP_OUT_OF_WINDOW")


def test_window_scaling_from_syn_options(NatClass):
    wscale = bytes([3, 3, 7, 0])                # window scale 7, padded
    nat = make(NatClass)
    fl = Flow(nat)
    fl.send(O, "S", tcp_options=wscale)
    fl.send(I, "SA", tcp_options=wscale)
    fl.send(O, "A", window=1000)
    fl.send(I, "A", window=1000)                # the server's window: 1000 << 7 = 128000
    assert fl.send(O, "PA", seq=fl.next_seq[O] + 120000, payload=b"a")[0] == FORWARD
    assert fl.send(O, "PA", seq=fl.next_seq[O] + 200000, payload=b"a") == \
        refused("TCP_OUT_OF_WINDOW")
    # And the function's window is scaled too (its SYN came first, before the server's).
    assert fl.send(I, "PA", seq=fl.next_seq[I] + 120000, payload=b"a")[0] == FORWARD
    # One side only offering it: no scaling either way (RFC 7323).
    nat = make(NatClass)
    fl = Flow(nat)
    fl.send(O, "S", tcp_options=wscale)
    fl.send(I, "SA")
    fl.send(O, "A", window=1000)
    fl.send(I, "A", window=1000)
    assert fl.send(O, "PA", seq=fl.next_seq[O] + 70000, payload=b"a") == \
        refused("TCP_OUT_OF_WINDOW")


def test_sack_blocks_count_as_acks_when_permitted(NatClass):
    sack_perm = bytes([4, 2, 1, 1])
    for permitted in (True, False):
        nat = make(NatClass)
        fl = Flow(nat)
        fl.send(O, "S", tcp_options=sack_perm if permitted else b"")
        fl.send(I, "SA", tcp_options=sack_perm if permitted else b"")
        fl.send(O, "A")
        fl.send(I, "PA", payload=b"d" * 1000)
        # A SACK block whose right edge is past anything the server sent.
        block = struct.pack("!BBBBII", 1, 1, 5, 10, fl.next_seq[I] - 10, fl.next_seq[I] + 9000)
        res = fl.send(O, "A", tcp_options=block)
        assert res == (refused("TCP_OUT_OF_WINDOW") if permitted else res)
        assert permitted or res[0] == FORWARD


def test_rst_closes_only_with_the_exact_sequence_number(NatClass):
    for d in (O, I):
        nat, fl = established(NatClass)
        before = fl.conn()
        for seq in (0xDEADBEEF, fl.next_seq[d] + 1, fl.next_seq[d] - 1, fl.next_seq[d] + 1000):
            for flags in ("R", "RA"):
                assert fl.send(d, flags, now=7000, seq=seq) == refused("TCP_BAD_RST")
        assert fl.conn() == before
        assert nat.counters()["drop.TCP_BAD_RST"] == 8
        assert fl.send(d, "R", now=7000)[0] == FORWARD
        assert fl.conn().state == "CLOSE"


def test_rst_at_the_receivers_last_ack_closes(NatClass):
    # The server lost the connection and answers our segment: its RST carries our ack.
    nat, fl = established(NatClass)
    fl.send(I, "PA", payload=b"q" * 10)         # sent, but the function's ack says less
    fl.send(O, "A", ack=fl.next_seq[I] - 10)
    assert fl.send(I, "R", seq=fl.next_seq[I] - 10)[0] == FORWARD
    assert fl.conn().state == "CLOSE"


def test_rst_answering_the_syn_must_ack_it(NatClass):
    nat = make(NatClass)
    fl = Flow(nat)
    fl.send(O, "S")
    assert fl.send(I, "R", seq=0) == refused("TCP_BAD_RST")        # no ACK
    assert fl.send(I, "RA", seq=0, ack=1000) == refused("TCP_BAD_RST")
    assert fl.conn().state == "SYN_SENT"
    assert fl.send(I, "RA", seq=0, ack=1001)[0] == FORWARD          # connection refused
    assert fl.conn().state == "CLOSE"


def test_simultaneous_open_is_established_and_assured(NatClass):
    nat = make(NatClass)
    fl = Flow(nat)
    fl.send(O, "S")
    assert fl.send(I, "S")[0] == FORWARD        # both sides' SYNs cross (SYN_SENT2)
    assert fl.conn().state == "SYN_SENT"
    fl.next_seq[O] -= 1                         # each side answers with SYN|ACK (same ISN)
    fl.next_seq[I] -= 1
    assert fl.send(O, "SA")[0] == FORWARD
    assert fl.conn().state == "SYN_RECV"
    assert fl.send(I, "SA")[0] == FORWARD
    assert fl.send(O, "A")[0] == FORWARD
    c = fl.conn()
    assert c.state == "ESTABLISHED" and c.assured
    assert nat.counters()["conn_established"] == 1
    # It lives by the established timer, not the SYN_SENT one.
    assert nat.expire(AWS["SYN_SENT"] + 1) == []


# -- TCP as Linux does it today (2.3): SYN-only re-initialisation, ignored replies ---------------

WSCALE7 = bytes([3, 3, 7, 0])                   # window scale 7, padded
SACK_PERM = bytes([4, 2, 1, 1])                 # SACK permitted, padded
TIMESTAMPS = bytes([1, 1, 8, 10]) + bytes(8)


@pytest.mark.parametrize("path,d", [("SYN_SENT", O), ("SYN_RECV", I)])
def test_only_a_syn_reinitialises_a_side(NatClass, path, d):
    """A non-SYN segment past the side's end in SYN_SENT / SYN_RECV is checked like any (and
    refused), not taken for a restart that would clear window scaling and SACK-permitted."""
    nat = make(NatClass)
    fl = Flow(nat)
    fl.send(O, "S", tcp_options=WSCALE7 + SACK_PERM)
    if path == "SYN_RECV":
        fl.send(I, "SA", tcp_options=WSCALE7 + SACK_PERM)
    before = fl.conn()
    far = fl.next_seq[d] + 100000
    assert fl.send(d, "A", seq=far, tcp_options=TIMESTAMPS) == refused("TCP_OUT_OF_WINDOW")
    assert fl.send(d, "PA", seq=far, payload=b"x") == refused("TCP_OUT_OF_WINDOW")
    assert fl.conn() == before
    if path == "SYN_SENT":
        fl.send(I, "SA", tcp_options=WSCALE7)
    fl.send(O, "A", window=1000)
    fl.send(I, "A", window=1000)
    # Window scaling survived: the server's 1000 << 7 lets data 120000 ahead through.
    assert fl.send(O, "PA", seq=fl.next_seq[O] + 120000, payload=b"a")[0] == FORWARD


@pytest.mark.parametrize("path,d", [("SYN_SENT", O), ("SYN_RECV", O), ("SYN_RECV", I)])
def test_a_syn_with_a_new_isn_reinitialises_its_side(NatClass, path, d):
    """A SYN from either side past that side's end, in SYN_SENT or SYN_RECV, starts the side
    again (RFC 793 restart, Linux tcp_init_sender)."""
    nat = make(NatClass)
    fl = Flow(nat)
    fl.send(O, "S")
    if path == "SYN_RECV":
        fl.send(I, "SA")
    flags = "S" if d == O else "SA"
    fl.next_seq[d] += 3_000_000
    assert fl.send(d, flags)[0] == FORWARD
    assert fl.conn().state == path
    # The new sequence numbers are the side's now.
    fl.send(I, "SA") if path == "SYN_SENT" else None
    assert fl.send(O, "A")[0] == FORWARD and fl.send(I, "A")[0] == FORWARD
    assert fl.conn().state == "ESTABLISHED"


def test_a_reply_syn_ack_again_without_wscale_turns_scaling_off(NatClass):
    """The server's SYN|ACK sent again (new ISN) without window scaling: scaling is off both
    ways (RFC 7323, both must offer it), as after a first SYN|ACK without it."""
    nat = make(NatClass)
    fl = Flow(nat)
    fl.send(O, "S", tcp_options=WSCALE7)
    fl.send(I, "SA", tcp_options=WSCALE7)
    fl.next_seq[I] += 3_000_000
    assert fl.send(I, "SA", tcp_options=SACK_PERM)[0] == FORWARD
    fl.send(O, "A", window=1000)
    fl.send(I, "A", window=1000)
    assert fl.send(O, "PA", seq=fl.next_seq[O] + 70000, payload=b"a") == \
        refused("TCP_OUT_OF_WINDOW")


def test_a_reply_ack_in_syn_sent_is_ignored(NatClass):
    """Linux's sIG: an ACK from the server's side before its SYN|ACK goes through, and
    nothing of the connection changes (state, windows, timer, counters); the real SYN|ACK
    is then judged as the first of its side."""
    nat = make(NatClass)
    fl = Flow(nat)
    fl.send(O, "S", now=1000)
    before = fl.conn()
    for seq in (5_000_000, 123):
        res = fl.send(I, "A", now=2000, seq=seq, ack=77)
        assert res[:3] == (FORWARD, R["NONE"], 0)
        f = fg.fields(fl.last_frame)
        assert (f["dst"], f["dport"]) == (SRC, fl.sport) and fg.checksums_ok(fl.last_frame)
    assert fl.conn() == before
    assert nat.counters()["tcp_ignored"] == 2
    assert fl.send(I, "SA", now=3000)[0] == FORWARD
    assert fl.conn().state == "SYN_RECV"
    # After a simultaneous open's SYN the rule is the same (Linux's sS2 column).
    nat = make(NatClass)
    fl = Flow(nat)
    fl.send(O, "S")
    fl.send(I, "S")
    before = fl.conn()
    assert fl.send(I, "A", seq=9_000_000)[0] == FORWARD
    assert fl.conn() == before


def flip_l4_checksum(frame):
    f = fg.fields(frame)
    frame[f["l4"] + (16 if f["proto"] == fg.TCP else 6)] ^= 0x5A


@pytest.mark.parametrize("d", [O, I])
@pytest.mark.parametrize("flags", ["FA", "R", "PA"])
def test_a_bad_l4_checksum_changes_nothing(NatClass, d, flags):
    """An in-window FIN, an exact RST or data whose checksum does not verify: the endpoint
    would discard it, so the NAT drops it before any state or timer sees it."""
    nat, fl = established(NatClass)
    before = fl.conn()
    kw = {"payload": b"z"} if flags == "PA" else {}
    assert fl.send(d, flags, now=5000, mangle=flip_l4_checksum, **kw) == \
        refused("L4_BAD_CHECKSUM")
    assert fl.conn() == before
    assert nat.counters()["drop.L4_BAD_CHECKSUM"] == 1
    if d == I:
        assert nat.eni_counters(0)["drops_by_reason"] == {"L4_BAD_CHECKSUM": 1}
    assert fl.send(d, flags, now=5000, **kw)[0] == FORWARD     # the same, undamaged


def test_a_bad_checksum_opens_nothing(NatClass):
    nat = make(NatClass)
    for proto in (fg.UDP, fg.TCP):
        frame = fg.build(SRC, DST, proto, 4000, 53, flags="S")
        flip_l4_checksum(frame)
        assert out(nat, frame) == refused("L4_BAD_CHECKSUM")
    assert nat.connections() == []


def test_checksums_the_nat_cannot_or_need_not_verify(NatClass):
    nat = make(NatClass)
    # IPv4 UDP without a checksum: none to verify. IPv6 UDP must have one (RFC 8200 8.1).
    assert out(nat, fg.udp(SRC, DST, 4000, 53, zero_csum=True))[0] == FORWARD
    assert out(nat, fg.udp(SRC6, DST6, 4000, 53, zero_csum=True)) == \
        refused("L4_BAD_CHECKSUM")
    # A NEEDS_CSUM frame's field is a partial sum the sender's kernel finishes: carried.
    for proto in (fg.UDP, fg.TCP):
        frame = fg.build(SRC, DST, proto, 4001, 53, flags="S", needs_csum=True, payload=b"p")
        assert out(nat, frame, vnet=True)[0] == FORWARD
        assert fg.checksums_ok(frame, vnet=True, partial=True)


def test_packet_counters_are_64_bit(NatClass):
    nat = make(NatClass)
    fl = Flow(nat, proto=fg.UDP)
    gso = dict(vnet=True, gso_type=fg.GSO_UDP_L4, gso_size=1, payload=b"x" * 1400)
    for _ in range(4):
        fl.send(OUT, **gso)
    assert fl.conn().packets_out == 4 * 1400


# -- anti-spoofing, martians, source routes (section 3) ---------------------------------------

MAC_A, MAC_B = "02:00:00:00:0a:01", "02:00:00:00:0b:01"


def make_bound(NatClass):
    """Two functions with their MACs bound: A (SRC, SRC6) and B (SRC_B)."""
    nat = NatClass()
    eni = nat.add_eni(ENI, ENI6)
    grp = nat.add_group()
    nat.group_add_eni(grp, eni)
    nat.add_source(SRC, grp, mac=MAC_A)
    nat.add_source(SRC6, grp, allow_v6=True, mac=MAC_A)
    nat.add_source(SRC_B, grp, mac=MAC_B)
    return nat


def from_mac(mac, frame):
    frame[6:12] = bytes.fromhex(mac.replace(":", ""))
    return frame


def test_a_function_sends_only_with_its_own_mac_and_addresses(NatClass):
    nat = make_bound(NatClass)
    assert out(nat, from_mac(MAC_A, fg.udp(SRC, DST, 1, 53)))[0] == FORWARD
    assert out(nat, from_mac(MAC_A, fg.udp(SRC6, DST6, 1, 53)))[0] == FORWARD
    assert out(nat, from_mac(MAC_B, fg.udp(SRC_B, DST, 1, 53)))[0] == FORWARD
    # Another function's address, a forged MAC: on new flows and on existing ones (hits).
    for mac, src, dst in ((MAC_A, SRC_B, DST), (MAC_B, SRC, DST), (MAC_B, SRC6, DST6),
                          ("02:00:00:00:66:66", SRC, DST)):
        for sport in (1, 2):
            assert out(nat, from_mac(mac, fg.udp(src, dst, sport, 53))) == \
                refused("SPOOFED_SOURCE")
    assert nat.counters()["drop.SPOOFED_SOURCE"] == 8
    assert len(nat) == 3
    # An address no function has stays UNKNOWN_SOURCE.
    assert out(nat, from_mac(MAC_A, fg.udp("10.200.0.99", DST, 1, 53))) == \
        refused("UNKNOWN_SOURCE")


def test_a_spoofed_rst_does_not_reach_anothers_connection(NatClass):
    nat = make_bound(NatClass)
    fl = drive_flow(Flow(nat, mac=MAC_A), EST)
    fl.mac = bytes.fromhex(MAC_B.replace(":", ""))        # B forges A's address
    assert fl.send(O, "R") == refused("SPOOFED_SOURCE")
    assert fl.send(O, "PA", payload=b"x") == refused("SPOOFED_SOURCE")
    assert fl.conn().state == "ESTABLISHED" and fl.conn().packets_out == 2


def test_connections_record_their_function(NatClass):
    nat = make_bound(NatClass)
    out(nat, from_mac(MAC_A, fg.udp(SRC, DST, 1, 53)))
    out(nat, from_mac(MAC_A, fg.udp(SRC6, DST6, 1, 53)))
    out(nat, from_mac(MAC_B, fg.udp(SRC_B, DST, 1, 53)))
    owners = {c.src: c.owner for c in nat.connections()}
    assert owners[SRC] == owners[SRC6] == 0 and owners[SRC_B] == 2


@pytest.mark.parametrize("dst", ["169.254.169.254", "169.254.0.1", "127.0.0.1", "0.0.0.0",
                                 "224.0.0.251", "239.255.255.250", "255.255.255.255",
                                 "240.0.0.1"])
def test_martian_destinations_v4(NatClass, dst):
    nat = make(NatClass)
    for frame in (fg.udp(SRC, dst, 1, 53), fg.tcp(SRC, dst, 1, 80, "S")):
        assert out(nat, frame) == refused("MARTIAN_DST")
    assert nat.counters()["drop.MARTIAN_DST"] == 2 and len(nat) == 0


@pytest.mark.parametrize("dst", ["::1", "::", "fe80::1", "ff02::1", "ff05::1:3",
                                 "::ffff:10.0.9.9", "fec0::1"])
def test_martian_destinations_v6(NatClass, dst):
    nat = make(NatClass)
    assert out(nat, fg.udp(SRC6, dst, 1, 53)) == refused("MARTIAN_DST")


def test_ordinary_destinations_are_not_martians(NatClass):
    nat = make(NatClass)
    for dst in ("10.0.9.9", "169.253.1.1", "223.255.255.254", "1.1.1.1"):
        assert out(nat, fg.udp(SRC, dst, 1, 53))[0] == FORWARD
    for dst in ("fd00:9::9", "2001:db8::1", "fe00::1"):
        assert out(nat, fg.udp(SRC6, dst, 1, 53))[0] == FORWARD


@pytest.mark.parametrize("option", [b"\x83\x07\x04\x0a\x00\x09\x09\x00",     # LSRR
                                    b"\x89\x07\x04\x0a\x00\x09\x09\x00",     # SSRR
                                    b"\x01\x83\x07\x04\x0a\x00\x09\x09"])    # NOP, LSRR
def test_ipv4_source_routes_are_dropped(NatClass, option):
    nat = make(NatClass)
    for direction in (OUT, IN):
        frame = fg.udp(SRC, DST, 1, 53, ip_options=option)
        assert nat.translate([frame], direction, 0)[0] == refused("SOURCE_ROUTE")
    # Other options (record route, 7) pass.
    assert out(nat, fg.udp(SRC, DST, 1, 53, ip_options=b"\x07\x03\x04\x00"))[0] == FORWARD


def test_ipv6_routing_header_with_segments_left_and_ah_are_dropped(NatClass):
    nat = make(NatClass)
    routed = fg.udp(SRC6, DST6, 1, 53, ext=[43])
    rh = 14 + 40
    routed[rh + 3] = 1                      # segments left
    assert out(nat, routed) == refused("SOURCE_ROUTE")
    assert out(nat, fg.udp(SRC6, DST6, 1, 53, ext=[60, 51])) == refused("SOURCE_ROUTE")
    assert out(nat, fg.udp(SRC6, DST6, 1, 53, ext=[43]))[0] == FORWARD    # 0 segments left


# -- hairpinning (section 3) --------------------------------------------------------------------

def make_two_enis(NatClass, **kw):
    """SRC and SRC6 (group 0) on ENI 0, SRC_B on ENI 1 (group 1); and SRC_C beside SRC."""
    nat = NatClass(**kw)
    e0, e1 = nat.add_eni(ENI, ENI6), nat.add_eni(ENI_B, ENI_B6)
    g0, g1 = nat.add_group(), nat.add_group()
    nat.group_add_eni(g0, e0)
    nat.group_add_eni(g1, e1)
    nat.add_source(SRC, g0)
    nat.add_source(SRC6, g0, allow_v6=True)
    nat.add_source("10.200.0.13", g0)
    nat.add_source("fd00:200::13", g0, allow_v6=True)
    nat.add_source(SRC_B, g1)
    nat.add_source("fd00:200::12", g1, allow_v6=True)
    return nat


def mapped(nat, src, sport, proto=fg.UDP, dst=DST):
    """The (ENI address, external port) the NAT gives src:sport, by sending once."""
    frame = fg.build(src, dst, proto, sport, 9, flags="S")
    assert out(nat, frame)[0] == FORWARD
    f = fg.fields(frame)
    return f["src"], f["sport"]


HAIRPIN_RECEIVERS = {("same ENI", 4): "10.200.0.13", ("same ENI", 6): "fd00:200::13",
                     ("other ENI", 4): SRC_B, ("other ENI", 6): "fd00:200::12"}


def hairpin_pair(NatClass, family, proto, receiver):
    """The NAT, the sender and receiver addresses and their external (address, port)."""
    nat = make_two_enis(NatClass)
    sender = SRC if family == 4 else SRC6
    recv = HAIRPIN_RECEIVERS[receiver, family]
    return nat, sender, recv, mapped(nat, sender, 5000, proto), mapped(nat, recv, 6000, proto)


def hairpin_fields(frame):
    f = fg.fields(frame)
    assert fg.checksums_ok(frame)
    return f["src"], f["sport"], f["dst"], f["dport"]


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("proto", [fg.UDP, fg.TCP])
@pytest.mark.parametrize("receiver", ["same ENI", "other ENI"])
def test_hairpinning(NatClass, family, proto, receiver):
    """Both sides write to each other's external address and port (hole punching, RFC 4787
    section 6): the first is filtered as unsolicited, then everything passes both ways."""
    nat, sender, recv, sender_ext, recv_ext = hairpin_pair(NatClass, family, proto, receiver)
    live = len(nat.connections())
    first = fg.build(sender, recv_ext[0], proto, 5000, recv_ext[1], flags="S", payload=b"hi")
    assert out(nat, first) == refused("IN_NO_MATCH_UDP" if proto == fg.UDP
                                      else "IN_UNSOLICITED_SYN")
    assert len(nat.connections()) == live + 1          # the sender's, not the receiver's
    # The receiver answers to the sender's external address and port: a reply of the
    # sender's connection, delivered with the receiver's external address and port.
    frame = fg.build(recv, sender_ext[0], proto, 6000, sender_ext[1], flags="S", seq=5000,
                     ttl=10)
    assert out(nat, frame)[:3] == (FORWARD, R["NONE"], 0)
    assert hairpin_fields(frame) == (*recv_ext, sender, 5000)
    assert fg.fields(frame)["ttl"] == 9                 # decremented once
    assert nat.counters()["hairpin_packets"] == 1
    if proto == fg.UDP:
        again = fg.build(sender, recv_ext[0], proto, 5000, recv_ext[1], payload=b"hi")
        assert out(nat, again)[:3] == (FORWARD, R["NONE"], 0)
        assert hairpin_fields(again) == (*sender_ext, recv, 6000)
        assert nat.counters()["hairpin_packets"] == 2
        return
    # TCP: a simultaneous open (RFC 793 figure 8) completes on both connections.
    for src, dst, sport, dport, flags, seq, ack in (
            (sender, recv_ext, 5000, 6000, "SA", 1000, 5001),
            (recv, sender_ext, 6000, 5000, "SA", 5000, 1001),
            (sender, recv_ext, 5000, 6000, "A", 1001, 5001),
            (recv, sender_ext, 6000, 5000, "A", 5001, 1001)):
        seg = fg.build(src, dst[0], proto, sport, dst[1], flags=flags, seq=seq, ack=ack)
        assert out(nat, seg)[:3] == (FORWARD, R["NONE"], 0), (src, flags)
        assert hairpin_fields(seg)[2:] == ((recv, 6000) if src == sender else (sender, 5000))
    states = {(c.src, c.dst): c.state for c in nat.connections()}
    assert states[sender, recv_ext[0]] == states[recv, sender_ext[0]] == "ESTABLISHED"


@pytest.mark.parametrize("proto", [fg.UDP, fg.TCP])
@pytest.mark.parametrize("receiver", ["same ENI", "other ENI"])
def test_hairpin_is_filtered_as_from_outside(NatClass, proto, receiver):
    """A receiver with a mapping that never wrote to the sender's external address gets
    nothing on any port of the ENIs, and nothing is created or charged for it; each refusal
    counts for the ENI it was addressed to, by reason."""
    nat, sender, recv, sender_ext, recv_ext = hairpin_pair(NatClass, 4, proto, receiver)
    eni = 0 if receiver == "same ENI" else 1
    reason = "IN_NO_MATCH_UDP" if proto == fg.UDP else "IN_UNSOLICITED_SYN"
    owners = {c.owner for c in nat.connections() if c.src == recv}
    # (The sender's own external port on its own ENI is the STUN case: its own reply.)
    ports = [p for p in (recv_ext[1], recv_ext[1] + 1, 1, 65535, sender_ext[1])
             if (recv_ext[0], p) != sender_ext]
    for port in ports:
        frame = fg.build(sender, recv_ext[0], proto, 5000, port, flags="S")
        copy = bytes(frame)
        assert out(nat, frame) == refused(reason)
        assert bytes(frame) == copy                 # refused on the way back in: left as it came
    assert nat.counters()["hairpin_refused"] == len(ports)
    assert nat.counters()["hairpin_packets"] == 0
    assert nat.eni_counters(eni)["drops_by_reason"].get(reason) == len(ports)
    assert [c for c in nat.connections() if c.src == recv and c.dst != DST] == []
    assert {c.owner for c in nat.connections() if c.src == recv} == owners


def test_hairpin_needs_a_mapping(NatClass):
    nat = make_two_enis(NatClass)
    ext = mapped(nat, SRC, 5000)
    frame = fg.udp(SRC, ENI, 5000, 999)
    copy = bytes(frame)
    assert out(nat, frame) == refused("IN_NO_MATCH_UDP")
    assert bytes(frame) == copy                 # refused on the way back in: left as it came
    assert nat.counters()["hairpin_packets"] == 0
    assert out(nat, fg.tcp(SRC, ENI_B, 5001, 999, "S")) == refused("IN_UNSOLICITED_SYN")
    # TCP to a mapped UDP port, or not a SYN: no.
    assert out(nat, fg.tcp(SRC_B, ext[0], 1, ext[1], "S")) == refused("IN_UNSOLICITED_SYN")
    assert out(nat, fg.tcp(SRC_B, ext[0], 2, ext[1], "A"))[1] == R["TCP_NOT_SYN"]


def test_hairpin_connections_take_no_replies_from_outside(NatClass):
    nat = make_two_enis(NatClass)
    a = mapped(nat, SRC, 5000)
    b = mapped(nat, SRC_B, 6000)
    assert out(nat, fg.udp(SRC, b[0], 5000, b[1])) == refused("IN_NO_MATCH_UDP")
    assert out(nat, fg.udp(SRC_B, a[0], 6000, a[1]))[0] == FORWARD
    # A frame from the customer side forging one ENI's address as its source: not a reply.
    assert inb(nat, fg.udp(a[0], b[0], a[1], b[1]), eni=1) == refused("IN_NO_MATCH_UDP")
    assert inb(nat, fg.udp(b[0], a[0], b[1], a[1]), eni=0) == refused("IN_NO_MATCH_UDP")


def test_no_hairpin_in_per_connection_mode(NatClass):
    nat = make_two_enis(NatClass, mapping="per-connection")
    b = mapped(nat, SRC_B, 6000)
    assert out(nat, fg.udp(SRC, b[0], 5000, b[1])) == refused("IN_NO_MATCH_UDP")
