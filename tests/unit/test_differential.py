"""Differential property tests: the C core (hyperplane._core.Nat) against the pure-Python
reference model (hyperplane.model.Nat).

Hypothesis draws a small NAT (few ports, few table slots, short timeouts, so exhaustion, full
tables and expiry all happen), a topology, and a sequence of operations: frames out and in,
built from a small universe of addresses and ports so that lookups hit, replies aimed at the
ports the NAT chose, whole TCP sessions, malformed and corrupted frames, clock ticks, expire
calls and new ENIs. Both implementations get identical calls; after every call they must
agree on the results, every rewritten byte, the connections, the counters and the pools.

Operations are drawn up front as plain tuples (one draw for the whole sequence, which keeps
Hypothesis fast); numbers that pick from lists known only at run time (translations seen so
far, ENIs) are taken modulo the list's length.

HP_DIFF_EXAMPLES (default 3000) is the number of examples across the tests of this file.
"""

import os
import struct

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

core = pytest.importorskip("hyperplane._core")  # CI always builds it; this guards a bare tree

import framegen as fg  # noqa: E402
from hyperplane.model import Nat as ModelNat  # noqa: E402
from hyperplane.vocab import FORWARD, IN, OUT, STATES  # noqa: E402

TOTAL_EXAMPLES = int(os.environ.get("HP_DIFF_EXAMPLES", "3000"))


def diff_settings(share):
    return settings(max_examples=max(1, int(TOTAL_EXAMPLES * share)), deadline=None,
                    derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# -- the universe frames are drawn from ---------------------------------------------------------

SOURCES = {4: ["10.200.0.1", "10.200.0.2", "10.200.0.3"], 6: ["fd00:200::1", "fd00:200::2"]}
UNKNOWN_SOURCE = {4: "10.200.0.77", 6: "fd00:200::77"}
DESTS = {4: ["10.0.9.1", "10.0.9.2"], 6: ["fd00:9::1", "fd00:9::2"]}
# What functions may send to: the destinations, and a martian of each family now and then.
OUT_DESTS = {4: DESTS[4] * 4 + ["169.254.169.254", "224.0.0.251"],
             6: DESTS[6] * 4 + ["fe80::1", "ff02::1"]}
# Source MACs: the one framegen uses by default, and two others (forged, or another function).
MACS = [fg.ETH_SRC, bytes.fromhex("020000000a01"), bytes.fromhex("020000000b01")]
NOT_ENI = {4: "10.0.1.99", 6: "fd00:1::99"}
INSIDE_PORTS = [1000, 1001, 40000]
DEST_PORTS = [53, 443]
FLAGS = ["S", "S", "SA", "A", "A", "PA", "F", "FA", "R", "RA", "", "SF", "SR", "P"]
# TCP numbers: sequence and ack numbers around the ones the sessions use (1000 inside,
# 700000 outside), the 2^32 wrap and far away; windows; SYN options (window scale, SACK
# permitted, a SACK block, junk).
SEQS = [1000, 1001, 1002, 1101, 0, 700000, 700001, 700101, 66000, 0xFFFFFFF0, 0x80000000 + 1000]
WINDOWS = [65535, 65535, 0, 1, 512]
TCP_OPTIONS = [b"", b"", bytes([3, 3, 7, 0]), bytes([4, 2, 1, 1]), bytes([4, 2, 3, 3, 14, 0, 0, 0]),
               bytes([1, 1, 5, 10]) + (700050).to_bytes(4, "big") + (700400).to_bytes(4, "big"),
               bytes([1, 1, 5, 10]) + (1000).to_bytes(4, "big") + (1200).to_bytes(4, "big"),
               bytes([3, 2, 9, 0]), bytes([3, 3]) + b"\xff\x00", bytes([2, 4, 5, 180])]
TCP_NUMBERS = st.tuples(st.sampled_from(SEQS), st.sampled_from(SEQS), st.sampled_from(WINDOWS),
                        st.sampled_from(TCP_OPTIONS))
MAX_ENIS = 4
SESSIONS = [
    "o:S i:SA o:A", "o:S i:SA o:A o:FA i:A i:FA o:A", "o:S i:SA o:A i:FA o:A o:FA i:A",
    "o:S i:SA o:A o:FA i:FA o:A i:A", "o:S i:RA", "o:S i:SA o:A o:R o:S i:SA o:A",
    "o:S i:SA o:A o:FA i:FA o:A o:S", "o:S o:S i:SA i:SA o:A i:PA+ o:PA+",
    # simultaneous open; blind (~: sequence number off) and exact RSTs; data out of window
    "o:S i:S o:SA= i:SA= o:A i:PA+ o:PA+", "o:S i:S i:SA= o:SA= o:A i:A",
    "o:S i:SA o:A i:R~ o:PA+ i:RA~ o:R~ i:R", "o:S i:SA o:A o:PA~ i:PA~ i:FA~ o:A i:PA+",
    "o:S i:SA o:A i:PA+ o:A o:FA i:A i:FA o:A o:S~ o:S i:SA",
    # Linux's rules of today: a reply ACK in SYN_SENT ignored; only a SYN re-initialises a
    # side (a non-SYN past its end is checked, a SYN from either side restarts it)
    "o:S i:A~ i:A i:SA o:A", "o:S i:S i:A~ o:SA= i:SA= o:A", "o:S o:A~ o:PA~ i:SA o:A",
    "o:S i:SA i:PA~ i:A~ o:A", "o:S i:SA o:S~ i:SA~ o:A i:A", "o:S i:SA i:SA~ o:A i:PA+",
]


def eni_addr(i, family):
    return f"10.0.{i + 1}.4" if family == 4 else f"fd00:{i + 1}::4"


def pick(items, n):
    return items[n % len(items)]


# -- strategies: everything a step needs, as plain tuples ------------------------------------

INDEX = st.integers(0, 255)            # picks from a list known only at run time
# Security-group rules over the universe: (proto, port_lo, port_hi, family, prefix, plen).
RULES = [(0, 0, 0, 4, "0.0.0.0", 0), (0, 0, 0, 6, "::", 0), (6, 443, 443, 4, "10.0.9.0", 24),
         (17, 53, 53, 4, "10.0.9.2", 32), (6, 1, 500, 6, "fd00:9::1", 128),
         (17, 0, 65535, 6, "fd00:9::", 64), (6, 53, 53, 4, "10.0.9.1", 31)]
BOOL = st.booleans()
FLAGS_ST = st.one_of(st.sampled_from(FLAGS), st.integers(0, 255))
TTL = st.sampled_from([64] * 12 + [2, 1, 0, 255])
FAMILY = st.sampled_from([4, 6])
PROTO = st.sampled_from([fg.TCP, fg.UDP])
VNET = st.sampled_from([False, False, False, True])
PAYLOAD = st.tuples(st.sampled_from([0, 0, 1, 7, 60, 150, 200]), st.integers(0, 255))
# Optional features: (needs_csum, gso_type, gso_size, ip options / ext headers, zero UDP csum)
EXTRAS = st.one_of(
    st.just(None), st.just(None),
    st.tuples(BOOL, st.sampled_from([0, 0, fg.GSO_TCPV4, fg.GSO_TCPV6, fg.GSO_UDP_L4]),
              st.sampled_from([0, 1, 64, 100, 1448]),
              st.one_of(st.just(()), st.lists(st.sampled_from([0, 43, 60, 51]), min_size=1,
                                              max_size=3).map(tuple)),
              BOOL))
# (family, proto, src, dst, sport, dport, flags, payload, ttl, extras)
OUT_FRAME = st.tuples(st.sampled_from([4, 4, 6]), PROTO, INDEX, INDEX,
                      st.sampled_from(INSIDE_PORTS), st.sampled_from(DEST_PORTS),
                      st.one_of(st.just("S"), FLAGS_ST),
                      PAYLOAD, TTL, EXTRAS, TCP_NUMBERS, st.sampled_from([0] * 8 + [1, 2]))
# (which translation, flags, payload, ttl, extras, wrong ENI?, which ENI)
REPLY = st.tuples(INDEX, FLAGS_ST, PAYLOAD, TTL, EXTRAS, st.integers(0, 9), INDEX, TCP_NUMBERS)
# (family, proto, src, ENI address, dport, port, flags, payload, ttl, extras)
IN_FRAME = st.tuples(FAMILY, PROTO, INDEX, INDEX, st.sampled_from(DEST_PORTS), INDEX, FLAGS_ST,
                     PAYLOAD, TTL, EXTRAS, TCP_NUMBERS)
# (kind, where, xor, 16-bit value, extension)
MUTATION = st.tuples(st.sampled_from(["flip", "flip", "set16", "truncate", "extend"]),
                     st.integers(0, 10**4), st.integers(1, 255),
                     st.sampled_from([0, 1, 7, 8, 0xFFFF, 40, 20, 0x2000, 0x3FFF]),
                     st.integers(1, 30))
MUTATIONS = st.lists(MUTATION, min_size=1, max_size=3)
DIRECTION = st.sampled_from([OUT, IN])
TICK = st.sampled_from([0, 1, 499, 999, 1000, 1001, 5000, 30000, 120000, 400000, 10**7])
SESSION_TICKS = st.lists(st.sampled_from([0, 0, 0, 0, 1, 1000, 30000, 130000]),
                         min_size=8, max_size=8)

STEP = st.one_of(
    st.tuples(st.just("out"), VNET, st.lists(OUT_FRAME, min_size=1, max_size=4)),
    st.tuples(st.just("out"), VNET, st.lists(OUT_FRAME, min_size=1, max_size=2)),
    st.tuples(st.just("reply"), VNET, st.lists(REPLY, min_size=1, max_size=3)),
    st.tuples(st.just("reply"), VNET, st.lists(REPLY, min_size=1, max_size=2)),
    st.tuples(st.just("in"), VNET, st.lists(IN_FRAME, min_size=1, max_size=3), INDEX),
    st.tuples(st.just("session"), VNET, FAMILY, INDEX, INDEX, st.sampled_from(INSIDE_PORTS),
              st.sampled_from(DEST_PORTS), st.sampled_from(SESSIONS), SESSION_TICKS,
              st.tuples(st.sampled_from(SEQS), st.sampled_from(TCP_OPTIONS),
                        st.sampled_from(TCP_OPTIONS))),
    st.tuples(st.just("malformed"), st.sampled_from(fg.MALFORMED_KINDS), DIRECTION),
    st.tuples(st.just("corrupt"), VNET, st.just(OUT), OUT_FRAME, MUTATIONS, BOOL),
    st.tuples(st.just("corrupt"), VNET, st.just(IN), REPLY, MUTATIONS, BOOL),
    # function to function through an ENI address (hairpinning): (seen, src, sport, flags, ...)
    st.tuples(st.just("hairpin"), VNET, INDEX, INDEX, st.sampled_from(INSIDE_PORTS),
              st.one_of(st.sampled_from(["S", "SA", "A", "PA"]), FLAGS_ST), TCP_NUMBERS,
              st.sampled_from([64, 2])),
    st.tuples(st.just("tick"), TICK),
    st.tuples(st.just("tick"), TICK),
    st.tuples(st.just("expire"), st.sampled_from([None, 0, 1, 2, 8]),
              st.sampled_from([True, True, True, False])),
    st.tuples(st.just("rules"), INDEX, st.none() | st.lists(st.sampled_from(RULES), max_size=4)),
    st.tuples(st.just("add_eni"), st.sampled_from([(True, True), (True, False), (False, True)]),
              INDEX),
    # the flow-log harvest, in pages of this many connections (None: one call for all)
    st.tuples(st.just("harvest"), st.sampled_from([None, 1, 2, 1000])),
    st.tuples(st.just("harvest"), st.sampled_from([None, 1, 2, 1000])),
    # (source, max connections, max ports per pool): 0 is no quota
    st.tuples(st.just("quota"), INDEX, st.integers(0, 3), st.integers(0, 2)),
    # whether a group can take one more ENI (a function at its share then makes it grow)
    st.tuples(st.just("can_grow"), INDEX, BOOL),
)


@st.composite
def configs(draw):
    lo = draw(st.sampled_from([1, 1000, 65530]))
    size = draw(st.integers(1, 6))
    timeouts = draw(st.one_of(
        st.none(),
        st.dictionaries(st.sampled_from(STATES[1:]),
                        st.sampled_from([0.001, 0.5, 1, 1.5, 2, 5, 30]), max_size=10)))
    return dict(
        capacity=draw(st.sampled_from([1, 2, 3, 4, 5, 6, 10])),
        port_range=(lo, min(65535, lo + size - 1)),
        mapping=draw(st.sampled_from(["endpoint-independent", "per-connection"])),
        profile=draw(st.sampled_from(["aws", "rfc"])),
        timeouts=timeouts,
        quarantine_ms=draw(st.sampled_from([None, 0, 1, 1000, 5000])),
        mtu_inside=draw(st.sampled_from([1500] * 6 + [100, 68])),
        mtu_outside=draw(st.sampled_from([1500] * 6 + [120, 68])),
        journal_size=draw(st.integers(0, 4)),
        port_seed=draw(st.integers(0, 2**64 - 1)),
        hash_seed=draw(st.one_of(st.none(), st.tuples(st.integers(0, 2**64 - 1),
                                                      st.integers(0, 2**64 - 1)))),
    )


# ENIs (which families), groups (lists of ENIs, maybe empty), sources (group, allow_v6). The
# unregistered source is UNKNOWN_SOURCE.
TOPOLOGY = st.tuples(
    st.lists(st.sampled_from([(True, True)] * 4 + [(True, False), (False, True)]),
             min_size=1, max_size=3),
    st.lists(st.one_of(st.lists(INDEX, min_size=1, max_size=3),
                       st.lists(INDEX, min_size=1, max_size=3), st.just([])),
             min_size=1, max_size=2),
    st.lists(st.tuples(INDEX, st.sampled_from([True, True, False]),
                       st.sampled_from([None, None, 0, 0, 0, 1])), min_size=5, max_size=5),
    st.lists(st.none() | st.lists(st.sampled_from(RULES), max_size=4), max_size=2),
)


# -- frames from specs ------------------------------------------------------------------------

def frame_kw(vnet, proto, family, payload, extras, numbers=None):
    pay_len, pay_byte = payload
    kw = {"payload": bytes([pay_byte]) * pay_len, "vnet": vnet}
    if numbers is not None and proto == fg.TCP:
        kw["seq"], kw["ack"], kw["window"], kw["tcp_options"] = numbers
    if extras is not None:
        needs_csum, gso_type, gso_size, ext, zero = extras
        if vnet:
            kw.update(needs_csum=needs_csum, gso_type=gso_type, gso_size=gso_size)
        if ext:
            if family == 4:     # a loose source route when the draw has an AH in it
                kw["ip_options"] = (b"\x83\x07\x04\x0a\x00\x09\x09\x00" if 51 in ext
                                    else b"\x01\x01\x01\x00")
            else:
                kw["ext"] = ext
        kw["zero_csum"] = zero and proto == fg.UDP and family == 4
    return kw


def out_frame(spec, vnet):
    family, proto, src, dst, sport, dport, flags, payload, ttl, extras, numbers, mac = spec
    srcs = SOURCES[family] * 4 + [UNKNOWN_SOURCE[family]]
    return fg.build(pick(srcs, src), pick(OUT_DESTS[family], dst), proto, sport, dport,
                    flags=flags, ttl=ttl, eth_src=MACS[mac],
                    **frame_kw(vnet, proto, family, payload, extras, numbers))


def fix_l4_checksum(frame, vnet):
    """Makes a complete TCP / UDP checksum right again (what it covers: the TCP segment, the
    UDP datagram by its own length), when the frame still has one where it should be."""
    if vnet and frame and frame[0] & 1:
        return                                  # NEEDS_CSUM: a partial sum, not checked
    try:
        f = fg.fields(frame, vnet)
    except (IndexError, KeyError, struct.error, ValueError):    # mangled past reading
        return
    l4, end, proto = f["l4"], min(f["end"], len(frame)), f["proto"]
    at = l4 + (16 if proto == fg.TCP else 6)
    if proto not in (fg.TCP, fg.UDP) or at + 2 > end:
        return
    length = end - l4 if proto == fg.TCP else struct.unpack_from("!H", frame, l4 + 4)[0]
    if length > end - l4 or (proto == fg.UDP and f["l4_check"] == 0 and f["family"] == 4):
        return
    struct.pack_into("!H", frame, at, 0)
    ps = fg.pseudo_sum(fg.packed(f["src"]), fg.packed(f["dst"]), proto, length)
    c = fg.checksum(frame[l4:l4 + length], ps)
    struct.pack_into("!H", frame, at, 0xFFFF if proto == fg.UDP and c == 0 else c)


def mutate(frame, mutations, fix_checksum, vnet):
    """A corrupted copy: flipped bytes, a 16-bit field set, a truncation or trailing bytes;
    with fix_checksum the IPv4 header and L4 checksums are made right again, to reach later
    checks (without, most copies end at L4_BAD_CHECKSUM)."""
    frame = bytearray(frame)
    for kind, where, xor, value, extension in mutations:
        if kind == "flip" and frame:
            frame[where % len(frame)] ^= xor
        elif kind == "set16" and len(frame) >= 2:
            struct.pack_into("!H", frame, where % (len(frame) - 1), value)
        elif kind == "truncate":
            del frame[where % (len(frame) + 1):]
        elif kind == "extend":
            frame += bytes(extension)
    l3 = (fg.VNET_LEN if vnet else 0) + 14
    if fix_checksum and len(frame) >= l3 + 20 and frame[l3] >> 4 == 4:
        hlen = max(20, (frame[l3] & 15) * 4)
        struct.pack_into("!H", frame, l3 + 10, 0)
        struct.pack_into("!H", frame, l3 + 10, fg.checksum(frame[l3:l3 + hlen]))
    if fix_checksum:
        fix_l4_checksum(frame, vnet)
    return frame


# -- the two implementations side by side -----------------------------------------------------

class Pair:
    """The same NAT twice, the model and the C core, fed identical calls."""

    def __init__(self, cfg):
        self.m = ModelNat(**cfg)
        self.c = core.Nat(**cfg)
        self.enis = []              # per ENI: {4: addr or None, 6: addr or None}
        self.n_groups = 0

    def call(self, name, *args, **kw):
        out = []
        for nat in (self.m, self.c):
            try:
                out.append(("ok", getattr(nat, name)(*args, **kw)))
            except Exception as e:  # both must fail alike
                out.append(("raises", type(e).__name__))
        note(f"{name}{args}{kw} -> {out[0]}")
        assert out[0] == out[1], f"{name}{args}{kw}: model {out[0]} != C {out[1]}"
        return out[0][1] if out[0][0] == "ok" else None

    def add_eni(self, v4, v6):
        i = len(self.enis)
        addrs = {4: eni_addr(i, 4) if v4 else None, 6: eni_addr(i, 6) if v6 else None}
        assert self.call("add_eni", addrs[4], addrs[6]) == i
        self.enis.append(addrs)
        return i

    def build(self, topology):
        eni_families, groups, sources, rule_sets = topology
        for v4, v6 in eni_families:
            self.add_eni(v4, v6)
        for g, members in enumerate(groups):
            assert self.call("add_group") == g
            for e in members:
                self.call("group_add_eni", g, e % len(self.enis))
        self.n_groups = len(groups)
        for g, rules in enumerate(rule_sets):
            self.call("set_group_rules", g % self.n_groups, rules)
        for addr, (group, allow_v6, mac) in zip(SOURCES[4] + SOURCES[6], sources):
            self.call("add_source", addr, group % self.n_groups, allow_v6=allow_v6,
                      mac=None if mac is None else MACS[mac])

    def translate(self, frames, direction, now, eni=0, vnet=False):
        fm = [bytearray(f) for f in frames]
        fc = [bytearray(f) for f in frames]
        rm = self.m.translate(fm, direction, now, eni=eni, vnet=vnet)
        rc = self.c.translate(fc, direction, now, eni=eni, vnet=vnet)
        note(f"translate({[bytes(f).hex() for f in frames]}, {'OUT' if direction == OUT else 'IN'}"
             f", {now}, eni={eni}, vnet={vnet}) -> {rm}")
        assert rm == rc, f"results: model {rm} != C {rc}"
        for i, (a, b) in enumerate(zip(fm, fc)):
            assert a == b, f"frame {i} rewritten differently:\nmodel {a.hex()}\nC     {b.hex()}"
        return rm, fm

    def check(self):
        """Everything observable must agree."""
        cm = sorted(self.m.connections(), key=lambda c: c.id)
        cc = sorted(self.c.connections(), key=lambda c: c.id)
        assert cm == cc, f"connections:\nmodel {cm}\nC     {cc}"
        assert len(self.m) == len(self.c) == len(cm)
        for c in cm:
            assert self.c.get(c.id) == c
        assert self.m.counters() == self.c.counters()
        assert self.m.rejected() == self.c.rejected()
        for e in range(len(self.enis)):
            assert self.m.eni_counters(e) == self.c.eni_counters(e), e
            assert self.m.eni_share_used(e) == self.c.eni_share_used(e), e
        for g in range(self.n_groups):
            assert self.m.sg_counters(g) == self.c.sg_counters(g), g
        assert self.m.function_stats() == self.c.function_stats()
        for e, addrs in enumerate(self.enis):
            for family in (4, 6):
                if addrs[family] is not None:
                    for proto in (6, 17):
                        assert self.m.pool_stats(e, family, proto) == \
                            self.c.pool_stats(e, family, proto), (e, family, proto)


class Run:
    """Plays drawn steps on a Pair, remembering translations so replies can aim at them."""

    def __init__(self, pair, now):
        self.pair, self.now = pair, now
        self.seen = []              # (family, proto, nat_addr, nat_port, dst, dport, eni)

    def remember(self, results, frames, vnet):
        for (verdict, _, port, _), f in zip(results, frames):
            if verdict == FORWARD and port > 0:
                x = fg.fields(f, vnet)
                self.seen.append((x["family"], x["proto"], x["src"], x["sport"], x["dst"],
                                  x["dport"], port - 1))

    def reply_frame(self, spec, vnet):
        which, flags, payload, ttl, extras, wrong, eni_pick, numbers = spec
        family, proto, nat_addr, nat_port, dst, dport, eni = pick(self.seen, which)
        frame = fg.build(dst, nat_addr, proto, dport, nat_port, flags=flags, ttl=ttl,
                         **frame_kw(vnet, proto, family, payload, extras, numbers))
        if wrong == 0:
            eni = eni_pick % (len(self.pair.enis) + 1)             # the wrong ENI, maybe
        return frame, eni

    def in_frame(self, spec, vnet):
        family, proto, src, dst, dport, port, flags, payload, ttl, extras, numbers = spec
        dsts = [a[family] for a in self.pair.enis if a[family]] + [NOT_ENI[family]]
        lo, hi = self.pair.m.port_range
        return fg.build(pick(DESTS[family], src), pick(dsts, dst), proto, dport,
                        pick((lo, hi, 1000), port), flags=flags, ttl=ttl,
                        **frame_kw(vnet, proto, family, payload, extras, numbers))

    def step(self, step):
        pair, op = self.pair, step[0]
        if op == "out":
            _, vnet, specs = step
            frames = [out_frame(s, vnet) for s in specs]
            self.remember(*pair.translate(frames, OUT, self.now, vnet=vnet), vnet)
        elif op == "reply" and self.seen:
            _, vnet, specs = step
            frames, enis = zip(*[self.reply_frame(s, vnet) for s in specs])
            # One batch arrives on one ENI port.
            pair.translate(list(frames), IN, self.now, eni=enis[0], vnet=vnet)
        elif op == "in":
            _, vnet, specs, eni = step
            frames = [self.in_frame(s, vnet) for s in specs]
            pair.translate(frames, IN, self.now, eni=eni % (len(pair.enis) + 1), vnet=vnet)
        elif op == "session":
            self.session(*step[1:])
        elif op == "hairpin" and self.seen:
            _, vnet, which, src, sport, flags, numbers, ttl = step
            family, proto, nat_addr, nat_port, _, _, _ = pick(self.seen, which)
            frame = fg.build(pick(SOURCES[family], src), nat_addr, proto, sport, nat_port,
                             flags=flags, ttl=ttl,
                             **frame_kw(vnet, proto, family, (3, 7), None, numbers))
            self.remember(*pair.translate([frame], OUT, self.now, vnet=vnet), vnet)
        elif op == "malformed":
            _, kind, direction = step
            frame, vnet = fg.malformed(kind)
            pair.translate([frame], direction, self.now, vnet=vnet)
        elif op == "corrupt" and (step[2] == OUT or self.seen):
            _, vnet, direction, spec, mutations, fix = step
            if direction == OUT:
                base, eni = out_frame(spec, vnet), 0
            else:
                base, eni = self.reply_frame(spec, vnet)
            frame = mutate(base, mutations, fix, vnet)
            pair.translate([frame], direction, self.now, eni=eni, vnet=vnet)
        elif op == "tick":
            self.now += step[1]
        elif op == "expire":
            _, limit, collect = step
            kw = {} if limit is None else {"max": limit}
            pair.call("expire", self.now, collect=collect, **kw)
        elif op == "harvest":
            if step[1] is None:
                pair.call("flow_harvest")
            else:
                cursor = 0
                while cursor is not None:
                    _, cursor = pair.call("flow_harvest_page", cursor, step[1])
        elif op == "rules":
            pair.call("set_group_rules", step[1] % pair.n_groups, step[2])
        elif op == "quota":
            _, source, conns, ports = step
            addrs = SOURCES[4] + SOURCES[6]
            pair.call("set_quota", addrs[source % len(addrs)], max_connections=conns,
                      max_ports=ports)
        elif op == "can_grow":
            pair.call("group_set_can_grow", step[1] % pair.n_groups, step[2])
        elif op == "add_eni" and len(pair.enis) < MAX_ENIS:
            _, (v4, v6), group = step
            pair.call("group_add_eni", group % pair.n_groups, pair.add_eni(v4, v6))
        pair.check()

    def session(self, vnet, family, src, dst, sport, dport, script, ticks, numbers):
        """A whole exchange on one flow, replies aimed at the port the NAT chose, with the
        sequence numbers two real endpoints would use: handshakes, simultaneous opens,
        closes from either side, resets, port reuse after TIME_WAIT. A segment is `d:flags`
        with suffixes: `+` carries 100 bytes, `~` has its sequence number 100000 off, `=`
        repeats the side's last sequence number (a SYN|ACK after a SYN)."""
        src, dst = pick(SOURCES[family], src), pick(DESTS[family], dst)
        isn, opts_o, opts_i = numbers
        nxt = {OUT: isn, IN: 700000}
        spoke = {OUT: False, IN: False}
        nat_addr = nat_port = None
        eni = 0
        for segment, tick in zip(script.split(), ticks):
            d, flags = segment.split(":")
            direction = OUT if d == "o" else IN
            payload = b"p" * 100 if "+" in flags else b""
            seq = nxt[direction] - (1 if "=" in flags else 0) + (100000 if "~" in flags else 0)
            flags = flags.strip("+~=")
            peer = IN if direction == OUT else OUT
            kw = dict(seq=seq % 2**32, ack=nxt[peer] % 2**32 if spoke[peer] else 0,
                      payload=payload, vnet=vnet,
                      tcp_options=(opts_o if d == "o" else opts_i) if "S" in flags else b"")
            self.now += tick
            if d == "o":
                frame = fg.tcp(src, dst, sport, dport, flags, **kw)
                (res,), (f,) = self.pair.translate([frame], OUT, self.now, vnet=vnet)
                self.remember([res], [f], vnet)
                if res[0] == FORWARD:
                    x = fg.fields(f, vnet)
                    nat_addr, nat_port, eni = x["src"], x["sport"], res[2] - 1
            elif nat_addr is not None:
                frame = fg.tcp(dst, nat_addr, dport, nat_port, flags, **kw)
                (res,), _ = self.pair.translate([frame], IN, self.now, eni=eni, vnet=vnet)
            else:
                continue
            if res[0] == FORWARD and seq == nxt[direction] and "R" not in flags:
                nxt[direction] += len(payload) + ("S" in flags) + ("F" in flags)
                spoke[direction] = True
            self.pair.check()


@diff_settings(0.75)
@given(cfg=configs(), topology=TOPOLOGY, start=st.sampled_from([0, 1_000_000, 2**40]),
       steps=st.lists(STEP, min_size=10, max_size=40))
def test_model_and_core_agree(cfg, topology, start, steps):
    pair = Pair(cfg)
    pair.build(topology)
    pair.check()
    run = Run(pair, start)
    for step in steps:
        run.step(step)
    # In the end everything expires, and both say so in the same order.
    pair.call("expire", run.now + 10**9)
    pair.check()
    assert len(pair.m) == 0


# -- ports in quarantine, charged to their functions (docs/semantics.md 13) --------------------

CHURN = st.one_of(
    # (source, connections opened, established and reset, who resets, whether they are
    # expired once reset, into quarantine)
    st.tuples(st.just("churn"), INDEX, st.sampled_from([1, 3, 30, 70]),
              st.sampled_from(["o", "i"]), st.sampled_from([True, True, False])),
    st.tuples(st.just("tick"), st.sampled_from([0, 1, 1000, 10_000, 60_000, 10**6])),
    st.tuples(st.just("expire"), st.sampled_from([None, None, 1, 8]), BOOL),
    st.tuples(st.just("quota"), INDEX, st.sampled_from([0, 2, 30, 64, 100])),
    st.tuples(st.just("can_grow"), BOOL),
    st.tuples(st.just("add_eni")),
)


def churn(pair, now, src, count, resetter, first_sport):
    """count TCP connections from src, each opened, established and reset, as a function
    churning connections does; the NAT's verdicts must agree, checked once at the end."""
    family = 6 if ":" in src else 4
    dst = DESTS[family][0]
    for sport in range(first_sport, first_sport + count):
        (res,), (syn,) = pair.translate([fg.tcp(src, dst, sport, 443, "S", seq=1000)], OUT, now)
        if res[0] != FORWARD:
            continue
        x, eni = fg.fields(syn), res[2] - 1
        pair.translate([fg.tcp(dst, x["src"], 443, x["sport"], "SA", seq=700000, ack=1001)],
                       IN, now, eni=eni)
        pair.translate([fg.tcp(src, dst, sport, 443, "A", seq=1001, ack=700001)], OUT, now)
        if resetter == "o":
            pair.translate([fg.tcp(src, dst, sport, 443, "R", seq=1001, ack=0)], OUT, now)
        else:
            pair.translate([fg.tcp(dst, x["src"], 443, x["sport"], "R", seq=700001, ack=0)],
                           IN, now, eni=eni)


@settings(max_examples=max(1, TOTAL_EXAMPLES // 100), deadline=None, derandomize=True,
          database=None, suppress_health_check=[HealthCheck.too_slow])
@given(size=st.sampled_from([100, 200]), quarantine=st.sampled_from([1000, 60_000]),
       mapping=st.sampled_from(["endpoint-independent", "per-connection"]),
       seed=st.integers(0, 2**64 - 1), steps=st.lists(CHURN, min_size=5, max_size=20))
def test_quarantine_charges_agree(size, quarantine, mapping, seed, steps):
    """Functions churning TCP connections into quarantine, with quotas, many quarantines due
    at once (more than one drain ends), growth and expiry: the model and the C core agree on
    every function's charges and every pool after each step."""
    pair = Pair(dict(capacity=512, port_range=(1000, 999 + size), quarantine_ms=quarantine,
                     mapping=mapping, port_seed=seed))
    pair.build(([(True, True)], [[0]], [(0, True, None)] * 5, []))
    sources, now, sport = SOURCES[4] + SOURCES[6], 0, 2000
    for step in steps:
        op = step[0]
        if op == "churn":
            churn(pair, now, pick(sources, step[1]), step[2], step[3], sport)
            sport += step[2]
            if step[4]:
                now += 10_000                   # CLOSE's timeout
                pair.call("expire", now)
        elif op == "tick":
            now += step[1]
        elif op == "expire":
            kw = {} if step[1] is None else {"max": step[1]}
            pair.call("expire", now, collect=step[2], **kw)
        elif op == "quota":
            pair.call("set_quota", pick(sources, step[1]), max_ports=step[2])
        elif op == "can_grow":
            pair.call("group_set_can_grow", 0, step[1])
        elif len(pair.enis) < MAX_ENIS:
            pair.call("group_add_eni", 0, pair.add_eni(True, True))
        pair.check()
    for _ in range(size // 64 + 2):            # everything expires and every charge goes back
        now += 10**7
        pair.call("expire", now)
    pair.check()
    assert all(s["ports"] == 0 for s in pair.m.function_stats())


# -- parsing on its own: anything at all as a frame --------------------------------------------

ANY_FRAME = st.one_of(
    st.tuples(st.just("mutated"), OUT_FRAME, MUTATIONS, BOOL),
    st.tuples(st.just("mutated"), OUT_FRAME, MUTATIONS, BOOL),
    st.tuples(st.just("mutated"), OUT_FRAME, MUTATIONS, BOOL),
    st.tuples(st.just("bytes"), BOOL, st.sampled_from([b"\x08\x00", b"\x86\xdd", b"\x08\x06",
                                                       b"\x12\x34"]), st.binary(max_size=80)),
    st.tuples(st.just("malformed"), st.sampled_from(fg.MALFORMED_KINDS)),
)


def any_frame(spec, vnet):
    if spec[0] == "bytes":
        _, head, ethertype, rest = spec
        head = fg.vnet_header() if vnet and head else b""
        return bytearray(head + fg.ETH_DST + fg.ETH_SRC + ethertype + rest)
    if spec[0] == "malformed":
        return fg.malformed(spec[1])[0]
    _, out_spec, mutations, fix = spec
    return mutate(out_frame(out_spec, vnet), mutations, fix, vnet)


@diff_settings(0.25)
@given(seed=st.integers(0, 2**64 - 1), vnet=BOOL,
       specs=st.lists(ANY_FRAME, min_size=1, max_size=8),
       replies=st.lists(st.tuples(FLAGS_ST, MUTATIONS, BOOL), min_size=8, max_size=8))
def test_parse_and_rewrite_agree(seed, vnet, specs, replies):
    pair = Pair(dict(capacity=4, port_range=(1000, 1003), mtu_inside=200, mtu_outside=300,
                     port_seed=seed))
    pair.build(([(True, True)], [[0]], [(0, True, None)] * 5, []))
    res, fm = pair.translate([any_frame(s, vnet) for s in specs], OUT, 0, vnet=vnet)
    # Whatever went out, its reply (and a corrupted reply) must come back through both alike.
    back = []
    for (verdict, _, _, _), f, (flags, mutations, fix) in zip(res, fm, replies):
        if verdict == FORWARD:
            reply = fg.reply_to(f, vnet=vnet, flags=flags)
            back += [reply, mutate(reply, mutations, fix, vnet)]
    if back:
        pair.translate(back, IN, 1, vnet=vnet)
    pair.check()
