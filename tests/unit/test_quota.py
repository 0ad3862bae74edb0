"""Per-function quotas and early drop (docs/semantics.md section 13), against the model and
the C core alike (NatClass)."""

import framegen as fg
import pytest
from test_model import DST, ENI, ENI_B, SRC, SRC_B, Flow, inb, make, out, refused
from hyperplane.vocab import F_ASSURED, FORWARD, IN, OUT, R

MAC_A, MAC_B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"


def two_functions(NatClass, **kw):
    """SRC (function A, with SRC's IPv6 address too) and SRC_B (function B) in one group."""
    nat = make(NatClass, **kw)
    nat.add_source(SRC_B, 0)
    return nat


def answered(reason):
    """A refusal answered at once (test_police.py): the frame goes back to the inside."""
    return (FORWARD, R[reason], 0, -1)


def stats_of(nat, addr):
    (s,) = [s for s in nat.function_stats() if s["addr"] == addr]
    return s


def established(flow, now=0):
    assert flow.send(OUT, "S", now=now)[0] == FORWARD
    assert flow.send(IN, "SA", now=now)[0] == FORWARD
    assert flow.send(OUT, "A", now=now)[0] == FORWARD
    assert flow.conn().flags & F_ASSURED


def test_connection_quota_refuses_only_the_function_over_it(NatClass):
    nat = two_functions(NatClass)
    nat.set_quota(SRC, max_connections=3)
    for sport in range(1, 4):
        assert Flow(nat, sport=sport).send(OUT, "S")[0] == FORWARD
    assert Flow(nat, sport=4).send(OUT, "S") == answered("FUNCTION_LIMIT")   # a RST
    assert Flow(nat, proto=fg.UDP, sport=4).send(OUT) == refused("FUNCTION_LIMIT")
    # The other function is not limited; known connections of the first still pass.
    assert Flow(nat, src=SRC_B, sport=4).send(OUT, "S")[0] == FORWARD
    assert Flow(nat, sport=1).send(OUT, "S")[0] == FORWARD
    a = stats_of(nat, SRC)
    assert (a["connections"], a["created"], a["refused_connections"]) == (3, 3, 2)
    assert stats_of(nat, SRC_B)["refused_connections"] == 0
    assert nat.counters()["drop.FUNCTION_LIMIT"] == 2


def test_a_functions_addresses_share_one_quota(NatClass):
    nat = NatClass()
    nat.group_add_eni(nat.add_group(), nat.add_eni(ENI, "fd00:1::4"))
    nat.add_source(SRC, 0, mac=MAC_A)
    nat.add_source("fd00:200::11", 0, allow_v6=True, mac=MAC_A)
    nat.set_quota("fd00:200::11", max_connections=1)
    assert Flow(nat, sport=1, mac=MAC_A).send(OUT, "S")[0] == FORWARD
    six = Flow(nat, src="fd00:200::11", dst="fd00:9::9", sport=2, mac=MAC_A)
    assert six.send(OUT, "S") == answered("FUNCTION_LIMIT")
    (only,) = nat.function_stats()
    assert (only["addr"], only["connections"], only["max_connections"]) == (SRC, 1, 1)


def test_expiry_gives_the_quota_back(NatClass):
    nat = two_functions(NatClass)
    nat.set_quota(SRC, max_connections=1)
    Flow(nat, proto=fg.UDP, sport=1).send(OUT, now=0)
    assert Flow(nat, proto=fg.UDP, sport=2).send(OUT, now=0) == refused("FUNCTION_LIMIT")
    assert len(nat.expire(10**9)) == 1
    assert stats_of(nat, SRC)["connections"] == 0
    assert Flow(nat, proto=fg.UDP, sport=2).send(OUT, now=10**9)[0] == FORWARD


def test_port_quota_per_pool(NatClass):
    """max_ports counts the ports a function holds in one pool: a mapped port shared by
    several connections (endpoint-independent) counts once; another pool counts apart."""
    nat = two_functions(NatClass, port_range=(7000, 7009))
    nat.set_quota(SRC, max_ports=2)
    for sport in (1, 2):
        assert Flow(nat, proto=fg.UDP, sport=sport).send(OUT)[0] == FORWARD
    # The same inside endpoint to another destination reuses its mapping: no new port.
    assert Flow(nat, proto=fg.UDP, sport=1, dst="10.0.9.10").send(OUT)[0] == FORWARD
    assert Flow(nat, proto=fg.UDP, sport=3).send(OUT) == refused("FUNCTION_LIMIT")
    assert Flow(nat, proto=fg.TCP, sport=3).send(OUT, "S")[0] == FORWARD     # TCP pool
    assert Flow(nat, proto=fg.UDP, src=SRC_B, sport=3).send(OUT)[0] == FORWARD
    a = stats_of(nat, SRC)
    assert (a["ports"], a["refused_ports"], a["connections"]) == (3, 1, 4)
    # A new ENI in the group is a fresh pool for the function.
    nat.group_add_eni(0, nat.add_eni(ENI_B))
    assert Flow(nat, proto=fg.UDP, sport=3).send(OUT)[0] == FORWARD


def test_a_pool_the_function_filled_alone_is_exhausted_not_over_quota(NatClass):
    """A quota of the whole pool (ports_share = 1.0): the function that took every port of
    its group's only ENI is short of ports, not over its share. The NAT says so
    (PORTS_EXHAUSTED, a punt: the control plane adds an ENI) rather than refusing it
    (FUNCTION_LIMIT, answered with ICMP: nothing would grow the group), and the next flow
    takes the new ENI's ports. Issue 6's load test found this: its group never scaled out."""
    nat = make(NatClass, port_range=(7000, 7003))
    nat.set_quota(SRC, max_ports=4)
    for sport in range(1, 5):
        assert Flow(nat, proto=fg.UDP, sport=sport).send(OUT)[0] == FORWARD
    assert Flow(nat, proto=fg.UDP, sport=5).send(OUT) == refused("PORTS_EXHAUSTED")
    assert Flow(nat, sport=5).send(OUT, "S")[0] == FORWARD       # TCP: a pool of its own
    a = stats_of(nat, SRC)
    assert (a["refused_ports"], a["ports_exhausted"]) == (0, 1)
    nat.group_add_eni(0, nat.add_eni(ENI_B))
    for sport in range(5, 9):
        assert Flow(nat, proto=fg.UDP, sport=sport).send(OUT)[0] == FORWARD
    assert {c.eni for c in nat.connections() if c.sport >= 5 and c.proto == fg.UDP} == {1}
    # Both pools full, both at its quota: exhausted again (the group grows once more).
    assert Flow(nat, proto=fg.UDP, sport=9).send(OUT) == refused("PORTS_EXHAUSTED")
    # A pool with a port left that the function may not take is its quota, as before.
    nat2 = two_functions(NatClass, port_range=(7000, 7003))
    nat2.set_quota(SRC, max_ports=2)
    for sport in (1, 2):
        assert Flow(nat2, proto=fg.UDP, sport=sport).send(OUT)[0] == FORWARD
    assert Flow(nat2, proto=fg.UDP, sport=3).send(OUT) == refused("FUNCTION_LIMIT")
    for sport in (1, 2):
        assert Flow(nat2, proto=fg.UDP, src=SRC_B, sport=sport).send(OUT)[0] == FORWARD
    # Now full, with the others' ports in it: the group is out of ports, for everyone.
    assert Flow(nat2, proto=fg.UDP, sport=3).send(OUT) == refused("PORTS_EXHAUSTED")


def test_a_function_over_its_share_makes_a_group_that_can_grow_grow(NatClass):
    """A function at its share of every pool of its group: while the group can take one more
    ENI, it is short of ports (PORTS_EXHAUSTED, a punt: the control plane adds one, on which
    it has its share again), not refused; the other function keeps its share on every ENI.
    Only a group that cannot grow refuses it (FUNCTION_LIMIT)."""
    nat = two_functions(NatClass, port_range=(7000, 7009))
    nat.set_quota(SRC, max_ports=2)
    nat.set_quota(SRC_B, max_ports=2)
    assert nat.eni_share_used(0) == 0.0
    assert Flow(nat, proto=fg.UDP, sport=1).send(OUT)[0] == FORWARD
    assert nat.eni_share_used(0) == 0.5                      # one of its two
    assert Flow(nat, proto=fg.UDP, sport=2).send(OUT)[0] == FORWARD
    assert nat.eni_share_used(0) == 1.0
    assert Flow(nat, proto=fg.UDP, sport=3).send(OUT) == refused("FUNCTION_LIMIT")
    nat.group_set_can_grow(0, True)
    assert Flow(nat, proto=fg.UDP, sport=3).send(OUT) == refused("PORTS_EXHAUSTED")
    a = stats_of(nat, SRC)
    assert (a["refused_ports"], a["ports_exhausted"]) == (1, 1)
    assert nat.eni_counters(0)["port_errors"] == 1
    # The other function's share is untouched.
    for sport in (1, 2):
        assert Flow(nat, proto=fg.UDP, src=SRC_B, sport=sport).send(OUT)[0] == FORWARD
    nat.group_add_eni(0, nat.add_eni(ENI_B))
    for sport in (3, 4):
        assert Flow(nat, proto=fg.UDP, sport=sport).send(OUT)[0] == FORWARD
    assert {c.eni for c in nat.connections() if c.src == SRC and c.sport >= 3} == {1}
    assert (nat.eni_share_used(0), nat.eni_share_used(1)) == (1.0, 1.0)
    assert Flow(nat, proto=fg.UDP, src=SRC_B, sport=3).send(OUT)[0] == FORWARD
    nat.group_set_can_grow(0, False)                         # at its limit now
    assert Flow(nat, proto=fg.UDP, sport=5).send(OUT) == refused("FUNCTION_LIMIT")
    with pytest.raises(ValueError):
        nat.eni_share_used(2)


def test_ports_count_on_every_eni_a_function_holds_them(NatClass):
    """A function moved to another group keeps its ports on the old group's ENIs: its
    quota counts them all, past the 64 ENIs one group may have."""
    nat = make(NatClass, port_range=(7000, 7000))
    nat.add_group()
    for i in range(65):
        if i == 64:
            nat.set_source_group(SRC, 1)
        if i:
            nat.group_add_eni(0 if i < 64 else 1, nat.add_eni(f"10.0.1.{i + 5}"))
        assert Flow(nat, proto=fg.UDP, sport=i + 1).send(OUT)[0] == FORWARD, i
    assert len({c.eni for c in nat.connections()}) == 65
    assert stats_of(nat, SRC)["ports"] == 65


def test_port_quota_per_connection_mapping(NatClass):
    nat = two_functions(NatClass, port_range=(7000, 7009), mapping="per-connection")
    nat.set_quota(SRC, max_ports=1)
    assert Flow(nat, proto=fg.UDP, sport=1).send(OUT, now=0)[0] == FORWARD
    assert Flow(nat, proto=fg.UDP, sport=1, dst="10.0.9.10").send(OUT) == \
        refused("FUNCTION_LIMIT")
    nat.expire(10**9)
    assert stats_of(nat, SRC)["ports"] == 0
    assert Flow(nat, proto=fg.UDP, sport=1, dst="10.0.9.10").send(OUT, now=10**9)[0] == FORWARD


def test_full_table_drops_the_oldest_unassured_first(NatClass):
    nat = two_functions(NatClass, capacity=4)
    keep = Flow(nat, src=SRC_B, sport=1)
    established(keep, now=0)
    old = Flow(nat, proto=fg.UDP, sport=2)
    old.send(OUT, now=10)
    young = Flow(nat, sport=3)
    young.send(OUT, "S", now=20)
    established(Flow(nat, sport=4), now=5)       # assured
    assert len(nat) == 4
    newcomer = Flow(nat, src=SRC_B, sport=5)
    assert newcomer.send(OUT, "S", now=30)[0] == FORWARD
    alive = {c.sport for c in nat.connections()}
    assert alive == {1, 3, 4, 5}                 # the UDP flow seen at 10 went
    assert nat.counters()["conn_early_dropped"] == 1
    assert stats_of(nat, SRC)["early_dropped"] == 1
    (record,) = nat.expire(30)                   # its record went to the journal
    assert record.sport == 2
    # Then the SYN seen at 20; then only assured connections are left: refused.
    assert Flow(nat, src=SRC_B, sport=6).send(OUT, "S", now=40)[0] == FORWARD
    assert {c.sport for c in nat.connections()} == {1, 4, 5, 6}
    newcomer.send(IN, "SA", now=41)
    newcomer.send(OUT, "A", now=41)              # assured: only 6 is left to drop
    assert Flow(nat, src=SRC_B, sport=7).send(OUT, "S", now=50)[0] == FORWARD   # took 6
    assert Flow(nat, src=SRC_B, sport=8).send(OUT, "S", now=60)[0] == FORWARD   # took 7
    assert {c.sport for c in nat.connections()} == {1, 4, 5, 8}


def test_full_table_of_assured_connections_refuses(NatClass):
    nat = two_functions(NatClass, capacity=2)
    established(Flow(nat, sport=1))
    established(Flow(nat, src=SRC_B, sport=2))
    assert Flow(nat, src=SRC_B, sport=3).send(OUT, "S", now=1) == answered("TABLE_FULL")
    assert stats_of(nat, SRC_B)["table_full"] == 1
    assert nat.counters()["conn_early_dropped"] == 0


def test_quota_arguments(NatClass):
    nat = make(NatClass)
    with pytest.raises(ValueError):
        nat.set_quota("10.1.1.1", max_connections=1)
    with pytest.raises(ValueError):
        nat.set_quota(SRC, max_connections=-1)
    nat.set_quota(SRC, max_connections=5, max_ports=6)
    s = stats_of(nat, SRC)
    assert (s["max_connections"], s["max_ports"]) == (5, 6)
    nat.recount_quotas()
    assert stats_of(nat, SRC)["connections"] == 0


def test_stats_show_who_was_refused():
    from hyperplane.render import function_rows
    rows = function_rows([{"name": "flood", "addr": SRC, "owner": 0, "max_connections": 32,
                           "max_ports": 0, "connections": 32, "ports": 32, "created": 40,
                           "refused_connections": 7, "refused_ports": 0, "table_full": 1,
                           "ports_exhausted": 0, "early_dropped": 8}])
    assert rows[0] == "functions"
    assert rows[3].split() == ["flood", "32/32", "32", "(max", "-/pool)", "40", "7", "1", "0",
                               "8"]


# -- frames from an ENI the slow path would see (section 13) -----------------------------------

def test_ttl_expiring_from_an_eni_is_punted_only_for_a_tracked_flow(NatClass):
    nat = make(NatClass)
    flow = Flow(nat, proto=fg.UDP, sport=1)
    flow.send(OUT)
    tracked = fg.udp(DST, ENI, 443, flow.nat_port, ttl=1)
    assert inb(nat, tracked) == refused("TTL_EXCEEDED")
    assert inb(nat, fg.udp(DST, ENI, 443, flow.nat_port + 1, ttl=1)) == \
        refused("IN_NO_MATCH_UDP")
    assert inb(nat, fg.tcp(DST, ENI, 443, 9, "S", ttl=1)) == refused("IN_UNSOLICITED_SYN")
    assert inb(nat, fg.udp(DST, "10.0.7.7", 443, flow.nat_port, ttl=1)) == \
        refused("IN_NOT_ENI_ADDR")
    nat.group_add_eni(0, nat.add_eni(ENI_B))
    assert inb(nat, tracked, eni=1) == refused("IN_NO_MATCH_UDP")     # not its ENI
    # From the functions' side TTL <= 1 is still the slow path's (time exceeded).
    assert out(nat, fg.udp(SRC, DST, 2, 3, ttl=1)) == refused("TTL_EXCEEDED")
    # Nothing changed: the flow goes on; an expired flow is not tracked.
    assert len(nat) == 1 and flow.send(IN)[0] == FORWARD
    assert inb(nat, tracked, now=10**9) == refused("IN_NO_MATCH_UDP")


def test_fragments_from_an_eni_must_be_addressed_to_one(NatClass):
    nat = make(NatClass)
    assert inb(nat, fg.udp(DST, ENI, 443, 9, frag=0x2000)) == refused("FRAGMENT")
    assert inb(nat, fg.udp(DST, "10.0.7.7", 443, 9, frag=0x2000)) == refused("IN_NOT_ENI_ADDR")
    assert inb(nat, fg.udp("fd00:9::9", "fd00:7::7", 443, 9, ext=(44,))) == \
        refused("IN_NOT_ENI_ADDR")
    assert inb(nat, fg.udp("fd00:9::9", "fd00:1::4", 443, 9, ext=(44,))) == refused("FRAGMENT")
    assert out(nat, fg.udp(SRC, "10.0.7.7", 1, 2, frag=0x2000)) == refused("FRAGMENT")


# -- a port in quarantine stays charged to its function (section 13) ---------------------------

QUARANTINE = 60_000
CLOSE_MS = 10_000              # CLOSE's timeout (the aws profile): a reset connection's


def reset_connections(nat, src, sports, now=0):
    """Opens, establishes and resets one TCP connection per source port, then expires them:
    their ports go to quarantine at now + CLOSE_MS (returned)."""
    for sport in sports:
        flow = Flow(nat, src=src, sport=sport)
        established(flow, now=now)
        assert flow.send(OUT, "R", now=now)[0] == FORWARD
    gone = now + CLOSE_MS
    assert len(nat.expire(gone)) == len(sports)
    return gone


def test_quarantined_ports_count_against_the_function_that_held_them(NatClass):
    """A function at its share that resets its connections keeps its ports charged while
    they are in quarantine: it cannot take its share again beside them (a group that cannot
    grow refuses it, one that can grows), and the other function keeps its own share."""
    nat = two_functions(NatClass, port_range=(7000, 7009), quarantine_ms=QUARANTINE)
    nat.set_quota(SRC, max_ports=2)
    nat.set_quota(SRC_B, max_ports=2)
    t = reset_connections(nat, SRC, (1, 2))
    assert nat.pool_stats(0, 4, 6) == {"size": 10, "free": 8, "in_use": 0, "quarantined": 2}
    assert stats_of(nat, SRC)["ports"] == 2 and stats_of(nat, SRC)["connections"] == 0
    assert nat.eni_share_used(0) == 1.0
    assert Flow(nat, sport=3).send(OUT, "S", now=t) == answered("FUNCTION_LIMIT")
    nat.group_set_can_grow(0, True)
    assert Flow(nat, sport=3).send(OUT, "S", now=t) == refused("PORTS_EXHAUSTED")
    for sport in (1, 2):                                     # the other's share is whole
        assert Flow(nat, src=SRC_B, sport=sport).send(OUT, "S", now=t)[0] == FORWARD
    assert stats_of(nat, SRC_B)["ports"] == 2
    nat.group_add_eni(0, nat.add_eni(ENI_B))                 # the group grew: its share there
    for sport in (3, 4):
        flow = Flow(nat, sport=sport)
        assert flow.send(OUT, "S", now=t)[0] == FORWARD and flow.eni == 1
    assert stats_of(nat, SRC)["ports"] == 4
    a = stats_of(nat, SRC)
    assert (a["refused_ports"], a["ports_exhausted"]) == (1, 1)


def test_the_charge_ends_with_the_quarantine(NatClass):
    nat = two_functions(NatClass, port_range=(7000, 7009), quarantine_ms=QUARANTINE)
    nat.set_quota(SRC, max_ports=2)
    t = reset_connections(nat, SRC, (1, 2))
    assert Flow(nat, sport=3).send(OUT, "S", now=t + QUARANTINE - 1) == \
        answered("FUNCTION_LIMIT")
    assert stats_of(nat, SRC)["ports"] == 2
    # A new connection ends the due quarantines of the pool before its quota check.
    assert Flow(nat, sport=3).send(OUT, "S", now=t + QUARANTINE)[0] == FORWARD
    assert stats_of(nat, SRC)["ports"] == 1
    assert nat.pool_stats(0, 4, 6)["quarantined"] == 0
    # expire() ends them too, without any new connection.
    nat = two_functions(NatClass, port_range=(7000, 7009), quarantine_ms=QUARANTINE)
    nat.set_quota(SRC, max_ports=2)
    t = reset_connections(nat, SRC, (1, 2))
    nat.expire(t + QUARANTINE - 1)
    assert stats_of(nat, SRC)["ports"] == 2
    nat.expire(t + QUARANTINE)
    assert stats_of(nat, SRC)["ports"] == 0
    assert nat.pool_stats(0, 4, 6) == {"size": 10, "free": 10, "in_use": 0, "quarantined": 0}


def test_a_port_not_quarantined_is_not_charged(NatClass):
    """UDP, and TCP that never reached ESTABLISHED, give their port back at once, charge and
    all; so does every port with no quarantine."""
    nat = two_functions(NatClass, port_range=(7000, 7009), quarantine_ms=QUARANTINE)
    nat.set_quota(SRC, max_ports=2)
    Flow(nat, proto=fg.UDP, sport=1).send(OUT, now=0)
    Flow(nat, sport=2).send(OUT, "S", now=0)
    nat.expire(10**7)
    assert stats_of(nat, SRC)["ports"] == 0
    nat = two_functions(NatClass, port_range=(7000, 7009), quarantine_ms=0)
    nat.set_quota(SRC, max_ports=2)
    t = reset_connections(nat, SRC, (1, 2))
    assert stats_of(nat, SRC)["ports"] == 0
    assert Flow(nat, sport=3).send(OUT, "S", now=t)[0] == FORWARD


def test_more_due_quarantines_than_one_drain_are_all_handed_back(NatClass):
    """A pool ends at most 64 quarantines at a time (bounded work): 100 due at once are
    handed back over two expire() calls, or as new connections need them, each charge to
    its own function; C and model alike (the exact figures are both's)."""
    nat = two_functions(NatClass, port_range=(7000, 7199), quarantine_ms=QUARANTINE)
    nat.set_quota(SRC, max_ports=150)
    nat.set_quota(SRC_B, max_ports=150)
    t = reset_connections(nat, SRC, range(1, 71))
    assert reset_connections(nat, SRC_B, range(1, 31)) == t
    assert (stats_of(nat, SRC)["ports"], stats_of(nat, SRC_B)["ports"]) == (70, 30)
    assert nat.pool_stats(0, 4, 6)["quarantined"] == 100
    nat.expire(t + QUARANTINE)                   # the oldest 64: all of SRC's first ones
    assert (stats_of(nat, SRC)["ports"], stats_of(nat, SRC_B)["ports"]) == (6, 30)
    assert nat.pool_stats(0, 4, 6) == {"size": 200, "free": 164, "in_use": 0,
                                       "quarantined": 36}
    nat.expire(t + QUARANTINE)
    assert (stats_of(nat, SRC)["ports"], stats_of(nat, SRC_B)["ports"]) == (0, 0)
    assert nat.pool_stats(0, 4, 6) == {"size": 200, "free": 200, "in_use": 0, "quarantined": 0}
    # The same through new connections: each ends up to 64 before its quota check.
    nat = two_functions(NatClass, port_range=(7000, 7199), quarantine_ms=QUARANTINE)
    nat.set_quota(SRC, max_ports=100)
    nat.set_quota(SRC_B, max_ports=30)
    t = reset_connections(nat, SRC, range(1, 71))
    reset_connections(nat, SRC_B, range(1, 31))
    assert Flow(nat, src=SRC_B, sport=100).send(OUT, "S", now=t + QUARANTINE - 1) == \
        answered("FUNCTION_LIMIT")
    assert Flow(nat, src=SRC_B, sport=100).send(OUT, "S", now=t + QUARANTINE) == \
        answered("FUNCTION_LIMIT")            # 64 ended, all SRC's: B still at its share
    assert stats_of(nat, SRC)["ports"] == 6
    assert Flow(nat, src=SRC_B, sport=100).send(OUT, "S", now=t + QUARANTINE)[0] == FORWARD
    assert (stats_of(nat, SRC)["ports"], stats_of(nat, SRC_B)["ports"]) == (0, 1)
    assert nat.pool_stats(0, 4, 6) == {"size": 200, "free": 199, "in_use": 1, "quarantined": 0}
