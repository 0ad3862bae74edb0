"""Per-connection flow-log intervals kept by the NAT (docs/semantics.md 2.4): first and last
packet, OR'd AWS tcp-flags, packets and bytes per direction since the last harvest; the
harvest; per-ENI drops by reason; IdleTimeoutCount. Against the model and the C core alike."""

import pytest

import framegen as fg
from hyperplane.connection import FlowInterval
from hyperplane.model.conntrack import aws_tcp_flags
from hyperplane.vocab import DROP, FORWARD, IN, OUT, PROFILES, R
from test_model import DST, ENI, SRC, inb, make, out

AWS = {k: v * 1000 for k, v in PROFILES["aws"].items()}
C_ISN, S_ISN = 1000, 5000


def session(nat, t0, close=True, sport=40000):
    """A handshake, 10 bytes out, their ACK, and (close) a FIN each way, 100 ms apart from
    t0. Returns the external port."""
    syn = fg.tcp(SRC, DST, sport, 443, "S", seq=C_ISN)
    assert out(nat, syn, t0)[0] == FORWARD
    port = fg.fields(syn)["sport"]
    c = lambda flags, seq, ack, **kw: fg.tcp(SRC, DST, sport, 443, flags, seq=seq, ack=ack, **kw)
    s = lambda flags, seq, ack: fg.tcp(DST, ENI, 443, port, flags, seq=seq, ack=ack)
    steps = [(IN, s("SA", S_ISN, C_ISN + 1)), (OUT, c("A", C_ISN + 1, S_ISN + 1)),
             (OUT, c("PA", C_ISN + 1, S_ISN + 1, payload=b"x" * 10)),
             (IN, s("A", S_ISN + 1, C_ISN + 11))]
    if close:
        steps += [(OUT, c("FA", C_ISN + 11, S_ISN + 1)), (IN, s("FA", S_ISN + 1, C_ISN + 12)),
                  (OUT, c("A", C_ISN + 12, S_ISN + 2))]
    for i, (d, frame) in enumerate(steps, 1):
        res = out(nat, frame, t0 + 100 * i) if d == OUT else inb(nat, frame, t0 + 100 * i)
        assert res[0] == FORWARD, (i, res)
    return port


def test_aws_tcp_flags():
    assert [aws_tcp_flags(fg.tcp_flags(f)) for f in ("S", "SA", "A", "PA", "F", "FA", "R", "RA")] \
        == [2, 18, 0, 0, 1, 1, 4, 4]
    assert aws_tcp_flags(fg.tcp_flags("S") | 0x40) == 2          # SYN+ECE: SYN


def test_harvest_gives_first_and_last_packet_flags_and_counts_per_direction(NatClass):
    nat = make(NatClass)
    session(nat, 1000)
    (c,) = nat.flow_harvest()
    # Out: S A PA FA A (40 bytes each, PA 50) from 1000 to 1700; in: SA A FA, 1100 to 1600.
    assert c.flow_out == FlowInterval(packets=5, bytes=210, first_ms=1000, last_ms=1700,
                                      tcp_flags=2 | 1)
    assert c.flow_in == FlowInterval(packets=3, bytes=120, first_ms=1100, last_ms=1600,
                                     tcp_flags=18 | 1)
    assert nat.flow_harvest() == []                   # reset: nothing since


def test_listings_do_not_reset_and_the_next_interval_has_only_new_traffic(NatClass):
    nat = make(NatClass)
    port = session(nat, 1000, close=False)
    for _ in range(2):                                # conntrack listings, lookups: no reset
        (c,) = nat.connections()
        assert nat.connections_page(0, 10)[0] == [c] if hasattr(nat, "connections_page") else c
        assert nat.get(c.id) == c
        assert nat.lookup(SRC, DST, 40000, 443, 6, OUT, 2000) == c
    assert c.flow_out.packets == 3 and c.flow_in.packets == 2
    (h,) = nat.flow_harvest()
    assert h == c
    (c,) = nat.connections()
    assert c.flow_out is None and c.flow_in is None and c.packets_out == 3   # totals stay
    # The next interval: one segment in at 5000, two out at 6000 and 7500.
    assert inb(nat, fg.tcp(DST, ENI, 443, port, "PA", seq=S_ISN + 1, ack=C_ISN + 11,
                           payload=b"y" * 4), 5000)[0] == FORWARD
    for t in (6000, 7500):
        assert out(nat, fg.tcp(SRC, DST, 40000, 443, "A", seq=C_ISN + 11, ack=S_ISN + 5),
                   t)[0] == FORWARD
    (h,) = nat.flow_harvest()
    assert h.flow_in == FlowInterval(1, 44, 5000, 5000, 0)
    assert h.flow_out == FlowInterval(2, 80, 6000, 7500, 0)
    assert (h.packets_out, h.packets_in) == (5, 3)


def test_harvest_pages(NatClass):
    nat = make(NatClass, capacity=64)
    for i in range(5):
        assert out(nat, fg.udp(SRC, DST, 2000 + i, 53), 100 + i)[0] == FORWARD
    out(nat, fg.udp(SRC, DST, 2001, 53), 200)
    pages, cursor = [], 0
    while cursor is not None:
        page, cursor = nat.flow_harvest_page(cursor, 2)
        assert len(page) <= 2
        pages += page
    assert sorted((c.sport, c.flow_out.packets, c.flow_out.first_ms, c.flow_out.last_ms)
                  for c in pages) == [(2000, 1, 100, 100), (2001, 2, 101, 200),
                                      (2002, 1, 102, 102), (2003, 1, 103, 103),
                                      (2004, 1, 104, 104)]
    assert nat.flow_harvest_page(0, 10) == ([], None)
    with pytest.raises(ValueError):
        nat.flow_harvest_page(0, 0)


def test_an_expired_connection_carries_its_last_interval(NatClass):
    nat = make(NatClass)
    session(nat, 1000, close=False)
    nat.flow_harvest()
    assert out(nat, fg.tcp(SRC, DST, 40000, 443, "A", seq=C_ISN + 11, ack=S_ISN + 1),
               3000)[0] == FORWARD
    (gone,) = nat.expire(3000 + AWS["ESTABLISHED"])
    assert gone.id == -1 and gone.flow_in is None
    assert gone.flow_out == FlowInterval(1, 40, 3000, 3000, 0)
    # Harvested just before: an expiry without traffic since has no interval left.
    nat2 = make(NatClass)
    session(nat2, 1000, close=False)
    nat2.flow_harvest()
    (gone,) = nat2.expire(10**9)
    assert gone.flow_out is None and gone.flow_in is None


def test_a_reopened_connection_ends_its_interval_and_starts_a_new_one(NatClass):
    nat = make(NatClass)
    session(nat, 1000)                                # ends in TIME_WAIT
    assert out(nat, fg.tcp(SRC, DST, 40000, 443, "S", seq=90000), 9000)[0] == FORWARD
    (old,) = nat.expire(9000)                         # the journal: the old connection
    assert old.flow_out.packets == 5 and old.flow_out.tcp_flags == 3
    (new,) = nat.flow_harvest()
    assert new.flow_out == FlowInterval(1, 40, 9000, 9000, 2) and new.flow_in is None


def test_interval_times_across_the_32_bit_wrap(NatClass):
    nat = make(NatClass)
    t0 = 2**32 - 150                                  # the core keeps now_ms mod 2**32
    session(nat, t0, close=False)
    (c,) = nat.flow_harvest()
    assert (c.flow_out.first_ms, c.flow_out.last_ms) == (t0, t0 + 300)
    assert (c.flow_in.first_ms, c.flow_in.last_ms) == (t0 + 100, t0 + 400)


# -- per-ENI drops by reason ---------------------------------------------------------------------

def test_eni_drops_by_reason_add_up_to_its_drops(NatClass):
    nat = make(NatClass)
    nat.set_group_rules(0, [(17, 53, 53, 4, "0.0.0.0", 0)])
    assert out(nat, fg.tcp(SRC, DST, 1, 22, "S"))[1] == R["SG_DENIED"]      # charged to ENI 0
    assert inb(nat, fg.udp(DST, ENI, 53, 4000))[1] == R["IN_NO_MATCH_UDP"]
    assert inb(nat, fg.tcp(DST, ENI, 53, 4000, "S"))[1] == R["IN_UNSOLICITED_SYN"]
    assert inb(nat, fg.tcp(DST, ENI, 53, 4000, "SF"))[1] == R["TCP_BAD_FLAGS"]
    bad = fg.udp(DST, ENI, 53, 4000)
    bad[24] ^= 0xFF                                   # the IPv4 header checksum
    assert inb(nat, bad)[1] == R["IPV4_BAD_CHECKSUM"]
    assert inb(nat, fg.udp(DST, ENI, 53, 4000, ttl=1))[1] == R["IN_NO_MATCH_UDP"]
    assert out(nat, fg.tcp(SRC, DST, 1, 23, "SF"))[0] == DROP    # inside: not the ENI's
    c = nat.eni_counters(0)
    assert c["drops_by_reason"] == {"IPV4_BAD_CHECKSUM": 1, "IN_NO_MATCH_UDP": 2,
                                    "IN_UNSOLICITED_SYN": 1, "TCP_BAD_FLAGS": 1, "SG_DENIED": 1}
    assert c["drops"] == sum(c["drops_by_reason"].values()) == 6


# -- IdleTimeoutCount ------------------------------------------------------------------------------

def late_segment(nat, t):
    return out(nat, fg.tcp(SRC, DST, 40000, 443, "PA", seq=C_ISN + 11, ack=S_ISN + 1,
                           payload=b"z"), t)


def test_a_connection_that_gets_the_idle_rst_counts_as_idle_timeout(NatClass):
    nat = make(NatClass)
    session(nat, 0, close=False)
    assert late_segment(nat, AWS["ESTABLISHED"] + 1000) == (FORWARD, R["TCP_NOT_SYN"], 0, -1)
    c = nat.eni_counters(0)
    assert (c["idle_timeouts"], c["rst_sent"]) == (1, 1)
    assert nat.counters()["rst_sent"] == 1


def test_expired_by_housekeeping_first_then_rst_counts_once(NatClass):
    nat = make(NatClass)
    session(nat, 0, close=False)
    assert len(nat.expire(AWS["ESTABLISHED"] + 400)) == 1       # its last packet at 400
    assert late_segment(nat, AWS["ESTABLISHED"] + 1000)[1] == R["TCP_NOT_SYN"]
    c = nat.eni_counters(0)
    # The RST is counted in total only: the lookup did not see which ENI it was.
    assert (c["idle_timeouts"], c["rst_sent"], nat.counters()["rst_sent"]) == (1, 0, 1)


def test_idle_timeout_counts_half_closed_but_not_closed_or_unestablished(NatClass):
    nat = make(NatClass)
    port = session(nat, 0, close=False)
    assert inb(nat, fg.tcp(DST, ENI, 443, port, "FA", seq=S_ISN + 1, ack=C_ISN + 11),
               500)[0] == FORWARD                 # the server closes: the function has not
    assert [c.state for c in nat.connections()] == ["FIN_WAIT"]
    nat.expire(10**7)
    assert nat.eni_counters(0)["idle_timeouts"] == 1
    session(nat, 10**7, sport=40001)              # closed both ways: TIME_WAIT
    assert out(nat, fg.tcp(SRC, DST, 40002, 443, "S"), 10**7)[0] == FORWARD   # never answered
    nat.expire(10**8)
    assert nat.eni_counters(0)["idle_timeouts"] == 1
