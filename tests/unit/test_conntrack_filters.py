"""Filtered listings, counts, deletion (the C core and the reference model alike: NatClass)
and the event stream (C core) of the connection table (hyperplane.ctfilter, csrc/nat/conntrack.c
hp_ct_scan, csrc/nat/events.c), checked against the pure-Python filter on the same connections."""

import itertools
import random

import framegen as fg
import pytest
from test_model import DST, DST6, ENI, SRC, SRC6, SRC_B, Flow, make, out
from hyperplane._core import Nat
from hyperplane.ctfilter import ConnFilter
from hyperplane.vocab import FORWARD, IN, OUT, R

DST_B = "10.0.9.10"


def mixed_table(n_udp=60, n_tcp=40, NatClass=Nat):
    """UDP and TCP connections of two functions to two servers, some answered (assured TCP)."""
    nat = make(NatClass)
    nat.add_source(SRC_B, 0)
    rnd = random.Random(7)
    flows = []
    for i in range(n_udp):
        src = (SRC, SRC_B, SRC6)[i % 3]
        dst = DST6 if src == SRC6 else (DST, DST_B)[i % 2]
        f = Flow(nat, proto=fg.UDP, src=src, dst=dst, sport=20000 + i, dport=53 + i % 4)
        assert f.send(OUT, now=1)[0] == FORWARD
        if rnd.random() < 0.5:
            assert f.send(IN, now=2)[0] == FORWARD
        flows.append(f)
    for i in range(n_tcp):
        f = Flow(nat, src=(SRC, SRC_B)[i % 2], dst=(DST, DST_B)[i % 3 == 0], sport=30000 + i,
                 dport=443)
        assert f.send(OUT, "S", now=1)[0] == FORWARD
        if i % 2:
            assert f.send(IN, "SA", now=2)[0] == FORWARD
            assert f.send(OUT, "A", now=3)[0] == FORWARD
        flows.append(f)
    return nat, flows


def listed(nat, spec, limit=7):
    """Every page of a filtered listing (small pages: the cursor is exercised)."""
    out, cursor = [], 0
    while cursor is not None:
        page, cursor = nat.connections_page(cursor, limit, filter=spec)
        out += page
    return out


SPECS = [
    {}, {"proto": "udp"}, {"proto": "tcp", "state": "ESTABLISHED"}, {"dst": DST_B},
    {"proto": "udp", "dst": DST_B}, {"src": "10.200.0.0/24"}, {"family": 6},
    {"dst": "fd00:9::/64"}, {"dport": 53}, {"dport": "53-54"}, {"sport": [30000, 30009]},
    {"assured": True}, {"assured": False}, {"state": ["SYN_SENT", "UDP_FIRST"]},
    {"eni": 0}, {"eni": 1}, {"owner": 0}, {"nat_addr": ENI}, {"nat_port": [0, 65535]},
    {"proto": "tcp", "src": SRC_B, "dport": 443, "assured": True},
]


@pytest.mark.parametrize("spec", SPECS, ids=[str(s) for s in SPECS])
def test_filtered_listing_and_count_agree_with_the_python_filter(spec, NatClass):
    nat, _ = mixed_table(NatClass=NatClass)
    everything = nat.connections()
    want = sorted(c.id for c in everything if ConnFilter.parse(spec).matches(c))
    assert sorted(c.id for c in listed(nat, spec)) == want
    assert nat.count(spec) == len(want)
    assert want or spec in ({"eni": 1},)        # the specs select something, but one


def test_the_filter_keys_are_checked():
    nat, _ = mixed_table(3, 0)
    for spec, word in [({"proto": "icmp"}, "proto"), ({"state": "OPEN"}, "state"),
                       ({"dst": "10.0.0.300"}, "dst"), ({"dport": "9-1"}, "dport"),
                       ({"colour": "red"}, "colour"), ({"assured": "yes"}, "assured"),
                       ({"family": 4, "src": SRC6}, "src")]:
        with pytest.raises(ValueError, match=word):
            nat.count(spec)
    assert ConnFilter.parse(ConnFilter.parse(SPECS[-1]).to_dict()) == ConnFilter.parse(SPECS[-1])


def test_delete_removes_what_matches_and_frees_the_tuple(NatClass):
    nat, flows = mixed_table(NatClass=NatClass)
    spec = {"proto": "udp", "dst": DST_B}
    doomed = {c.id for c in nat.connections() if ConnFilter.parse(spec).matches(c)}
    deleted, cursor = [], 0
    while cursor is not None:
        page, cursor = nat.delete_page(cursor, 5, filter=spec, now_ms=10)
        deleted += page
    assert {c.id for c in deleted} == doomed and doomed
    assert nat.count(spec) == 0
    assert len(nat) == 100 - len(doomed)
    # A deleted UDP flow's next datagram from the inside is a new connection; its reply is
    # unsolicited in between.
    gone = next(f for f in flows if f.proto == fg.UDP and f.dst == DST_B)
    assert gone.send(IN, now=11)[0] != FORWARD
    assert gone.send(OUT, now=12)[0] == FORWARD
    assert nat.count(spec) == 1


def test_a_deleted_assured_tcp_port_goes_to_quarantine(NatClass):
    nat = make(NatClass, quarantine_ms=60000)
    f = Flow(nat, sport=40000)
    for direction, flags in ((OUT, "S"), (IN, "SA"), (OUT, "A")):
        assert f.send(direction, flags, now=1)[0] == FORWARD
    before = nat.pool_stats(0, 4, 6)
    (gone,), _ = nat.delete_page(0, 10, filter={"proto": "tcp"}, now_ms=5)
    after = nat.pool_stats(0, 4, 6)
    assert gone.assured and after["quarantined"] == before["quarantined"] + 1
    assert after["in_use"] == before["in_use"] - 1
    # The next segment of the deleted connection matches nothing and is not a SYN: dropped,
    # answered with a RST to the function (docs/semantics.md 2.5, 9.2).
    assert f.send(OUT, "A", now=6) == (FORWARD, R["TCP_NOT_SYN"], 0, -1)


def test_events_new_update_destroy_in_order_with_both_tuples():
    nat = make(Nat)
    reader = nat.events()
    f = Flow(nat, sport=41000)
    for direction, flags in ((OUT, "S"), (IN, "SA"), (OUT, "A"), (OUT, "FA"), (IN, "FA"),
                             (OUT, "A")):
        assert f.send(direction, flags, now=5)[0] == FORWARD
    events, lost = reader.read()
    assert lost == 0
    kinds = [(e.type, e.old_state, e.conn.state) for e in events]
    assert kinds[0] == ("NEW", None, "SYN_SENT")
    assert ("UPDATE", "SYN_SENT", "SYN_RECV") in kinds
    assert ("UPDATE", "SYN_RECV", "ESTABLISHED") in kinds
    assert kinds[-1][2] == "TIME_WAIT"
    assert [e.seq for e in events] == sorted(e.seq for e in events)
    assured = next(e for e in events if e.conn.assured)
    assert assured.conn.state == "ESTABLISHED"
    nat.delete_page(0, 10, now_ms=6)
    (destroy,), _ = reader.read()
    assert (destroy.type, destroy.reason) == ("DESTROY", "DELETED")
    assert destroy.conn.original == (SRC, 41000, DST, 443)
    assert destroy.conn.reply == (DST, 443, ENI, f.nat_port)


def test_events_say_why_a_connection_ended():
    nat = make(Nat)
    reader = nat.events({"proto": "udp"})
    Flow(nat, proto=fg.UDP, sport=1).send(OUT, now=0)
    tcp = Flow(nat, sport=2)
    tcp.send(OUT, "S", now=0)
    tcp.send(IN, "SA", now=0)
    tcp.send(OUT, "R", now=0)
    nat.expire(10**9)
    events, _ = reader.read()
    assert [(e.type, e.reason) for e in events] == [("NEW", None), ("DESTROY", "EXPIRED")]
    reader_tcp = nat.events({"proto": "tcp"})
    tcp.send(OUT, "S", now=10**9)
    tcp.send(IN, "SA", now=10**9)
    tcp.send(OUT, "R", now=10**9)
    nat.expire(2 * 10**9)
    events, _ = reader_tcp.read()
    assert events[-1].reason == "RESET" and events[-1].conn.state == "CLOSE"


def test_a_reader_that_falls_a_ring_behind_is_told_how_many_it_lost():
    nat = make(Nat, capacity=1 << 17)
    slow = nat.events()
    n = 70000                                # more NEW events than the ring holds
    frames = [fg.udp(SRC, DST, 1 + i % 60000, 1000 + i // 60000) for i in range(n)]
    for at in range(0, n, 4096):
        nat.translate(frames[at:at + 4096], OUT, 0)
    got, lost = [], 0
    for _ in range(100):
        events, l = slow.read()
        lost += l
        got += events
        if not events:
            break
    assert lost > 0 and lost + len(got) == n and slow.lost == lost
    assert [e.seq for e in got] == list(range(lost + 1, n + 1))
