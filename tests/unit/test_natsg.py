"""Security groups, the reject journal, per-ENI counters and the idle-timeout RST
(docs/semantics.md section 9), against the model and the C core alike (NatClass)."""

import struct

import pytest

import framegen as fg
from hyperplane.flowlog import Rejected
from test_model import DST, DST6, ENI, ENI6, SRC, SRC6, inb, out
from test_model import make as make_nat
from hyperplane.vocab import DROP, FORWARD, IN, OUT, PROFILES, R

OTHER, OTHER6 = "10.0.8.8", "fd00:8::8"
EST_MS = PROFILES["aws"]["ESTABLISHED"] * 1000

# (proto, port_lo, port_hi, family, prefix, plen), as lab.secgroups.SgRule
HTTPS_TO_DST = [(6, 443, 443, 4, "10.0.9.0", 24), (6, 443, 443, 6, "fd00:9::", 64)]
DNS_ANYWHERE = [(17, 53, 53, 4, "0.0.0.0", 0)]


def make(NatClass, rules=None, **kw):
    """test_model's NAT (one ENI, group 0, SRC and SRC6), with these egress rules."""
    nat = make_nat(NatClass, **kw)
    if rules is not None:
        nat.set_group_rules(0, rules)
    return nat


def handshake(nat, src, dst, sport, dport, now=0):
    """SYN out, SYN-ACK in, ACK out; returns the translated SYN."""
    syn = fg.tcp(src, dst, sport, dport, "S")
    assert out(nat, syn, now)[0] == FORWARD
    f = fg.fields(syn)
    assert inb(nat, fg.tcp(dst, f["src"], dport, f["sport"], "SA"), now)[0] == FORWARD
    assert out(nat, fg.tcp(src, dst, sport, dport, "A"), now)[0] == FORWARD
    return f


# -- security groups ---------------------------------------------------------------------------

def test_without_rules_everything_goes_out(NatClass):
    nat = make(NatClass)
    assert out(nat, fg.udp(SRC, OTHER, 1, 9999))[0] == FORWARD
    assert nat.sg_counters(0) == {"denied": 0, "rules": None}


@pytest.mark.parametrize("src,dst,other", [(SRC, DST, OTHER), (SRC6, DST6, OTHER6)])
def test_rules_allow_and_deny_both_families(NatClass, src, dst, other):
    nat = make(NatClass, HTTPS_TO_DST + DNS_ANYWHERE)
    assert out(nat, fg.tcp(src, dst, 1000, 443, "S"))[0] == FORWARD
    assert out(nat, fg.tcp(src, dst, 1001, 80, "S")) == (DROP, R["SG_DENIED"], 0, -1)
    assert out(nat, fg.tcp(src, other, 1002, 443, "S")) == (DROP, R["SG_DENIED"], 0, -1)
    dns = out(nat, fg.udp(src, other, 1003, 53))
    assert dns[0] == (FORWARD if src == SRC else DROP)     # the DNS rule is IPv4 only
    v4 = src == SRC
    assert nat.sg_counters(0) == {"denied": 2 + (not v4),
                                  "rules": [int(v4), int(not v4), int(v4)]}
    assert nat.counters()["drop.SG_DENIED"] == 2 + (not v4)
    assert len(nat) == 1 + v4
    assert nat.eni_counters(0)["drops"] == 2 + (not v4)


def test_replies_pass_and_unsolicited_inbound_does_not(NatClass):
    nat = make(NatClass, HTTPS_TO_DST)
    f = handshake(nat, SRC, DST, 1000, 443)
    assert inb(nat, fg.tcp(DST, f["src"], 443, f["sport"], "PA", payload=b"x"))[0] == FORWARD
    # The rules are egress only: a connection from DST is refused as unsolicited.
    assert inb(nat, fg.tcp(DST, ENI, 443, 2000, "S")) == (DROP, R["IN_UNSOLICITED_SYN"], 0, -1)


def test_rule_change_applies_to_new_connections_only(NatClass):
    nat = make(NatClass, HTTPS_TO_DST)
    f = handshake(nat, SRC, DST, 1000, 443)
    nat.set_group_rules(0, DNS_ANYWHERE)                 # HTTPS no longer allowed
    assert out(nat, fg.tcp(SRC, DST, 1000, 443, "PA", payload=b"y"))[0] == FORWARD
    assert inb(nat, fg.tcp(DST, f["src"], 443, f["sport"], "A"))[0] == FORWARD
    assert out(nat, fg.tcp(SRC, DST, 1001, 443, "S"))[1] == R["SG_DENIED"]
    assert nat.sg_counters(0) == {"denied": 1, "rules": [0]}   # new rules, new counters
    nat.set_group_rules(0, [])                           # no rule: nothing goes out
    assert out(nat, fg.udp(SRC, DST, 1002, 53))[1] == R["SG_DENIED"]
    nat.set_group_rules(0, None)                         # back to allow-all
    assert out(nat, fg.udp(SRC, DST, 1002, 53))[0] == FORWARD


def test_any_protocol_rule_and_prefix_bits(NatClass):
    # proto 0 means every protocol and port; host bits past plen are ignored.
    nat = make(NatClass, [(0, 0, 0, 4, "10.0.9.77", 30)])
    assert out(nat, fg.udp(SRC, "10.0.9.78", 1, 7))[0] == FORWARD
    assert out(nat, fg.tcp(SRC, "10.0.9.79", 2, 65535, "S"))[0] == FORWARD
    assert out(nat, fg.udp(SRC, "10.0.9.80", 3, 7))[1] == R["SG_DENIED"]


@pytest.mark.parametrize("rule", [(6, 10, 9, 4, "10.0.0.0", 8), (1, 0, 0, 4, "10.0.0.0", 8),
                                  (6, 1, 2, 4, "10.0.0.0", 33), (6, 1, 2, 6, "10.0.0.0", 8),
                                  (6, 1, 70000, 4, "10.0.0.0", 8)])
def test_bad_rules_are_refused(NatClass, rule):
    nat = make(NatClass, HTTPS_TO_DST)
    with pytest.raises(ValueError):
        nat.set_group_rules(0, [rule])
    with pytest.raises(ValueError):
        nat.set_group_rules(5, [])
    assert nat.sg_counters(0)["rules"] == [0, 0]         # the old set stays


# -- the reject journal ------------------------------------------------------------------------

def test_rejects_record_unsolicited_inbound_and_denials(NatClass):
    nat = make(NatClass, HTTPS_TO_DST)
    inb(nat, fg.tcp(OTHER, ENI, 5555, 22, "S"), now=10)
    inb(nat, fg.tcp(OTHER, ENI, 5555, 23, "A"), now=11)
    inb(nat, fg.udp(OTHER6, ENI6, 5555, 161, payload=b"abc"), now=12)
    inb(nat, fg.udp(OTHER, "10.0.1.99", 5555, 161), now=13)      # not ours: no record
    out(nat, fg.tcp(SRC, OTHER, 4000, 25, "S"), now=14)
    got = nat.rejected()
    assert got == [
        Rejected(0, "ingress", 4, 6, OTHER, ENI, 5555, 22, 40, 10, 2, "-", "IN_UNSOLICITED_SYN"),
        Rejected(0, "ingress", 4, 6, OTHER, ENI, 5555, 23, 40, 11, 16, "-", "IN_NO_MATCH_TCP"),
        Rejected(0, "ingress", 6, 17, OTHER6, ENI6, 5555, 161, 51, 12, 0, "-",
                 "IN_NO_MATCH_UDP"),
        Rejected(0, "egress", 4, 6, ENI, OTHER, 4000, 25, 40, 14, 2, SRC, "SG_DENIED"),
    ]
    assert nat.rejected() == []
    assert nat.eni_counters(0)["drops"] == 5             # all arrived on, or left by, ENI 0


def test_reject_journal_is_bounded_and_counts_overflow(NatClass):
    nat = make(NatClass)
    frames = [fg.udp(OTHER, ENI, 5555, p) for p in range(1, 8200)]
    nat.translate(frames, IN, 0, eni=0)
    assert nat.counters()["reject_overflow"] == 8199 - 8192
    first = nat.rejected(2)
    assert [r.dport for r in first] == [1, 2]
    assert len(nat.rejected()) == 8190


# -- per-ENI counters --------------------------------------------------------------------------

def test_eni_counters(NatClass):
    nat = make(NatClass, port_range=(1000, 1001))
    f = handshake(nat, SRC, DST, 1000, 443)
    out(nat, fg.tcp(SRC, DST, 1000, 443, "PA", payload=b"x" * 10))
    out(nat, fg.udp(SRC, DST, 7, 53, payload=b"q"))
    inb(nat, fg.udp(DST, ENI, 53, nat.connections()[-1].nat_port, payload=b"r"))
    inb(nat, fg.udp(DST, ENI, 53, nat.connections()[-1].nat_port, payload=b"r"))
    for sport in (8, 9):                                   # two UDP ports: the second fails
        out(nat, fg.udp(SRC, DST, sport, 53))
    c = nat.eni_counters(0)
    assert c["attempts"] == {"tcp": 1, "udp": 2} and c["active"] == {"tcp": 1, "udp": 2}
    assert c["established"] == {"tcp": 1, "udp": 1}
    assert c["port_errors"] == 1
    assert (c["packets_out"], c["packets_in"]) == (5, 3)
    assert c["bytes_out"] == 40 * 2 + 50 + 29 + 28 and c["bytes_in"] == 40 + 29 * 2
    nat.expire(EST_MS + 1)
    c = nat.eni_counters(0)
    assert c["idle_timeouts"] == 1 and c["active"] == {"tcp": 0, "udp": 0}
    with pytest.raises(ValueError):
        nat.eni_counters(1)
    assert f


# -- the idle-timeout RST ----------------------------------------------------------------------

@pytest.mark.parametrize("src,dst", [(SRC, DST), (SRC6, DST6)])
@pytest.mark.parametrize("vnet", [False, True])
def test_idled_out_segment_gets_a_rst(NatClass, src, dst, vnet):
    nat = make(NatClass)
    handshake(nat, src, dst, 1000, 443)
    late = EST_MS + 5
    seg = fg.build(src, dst, fg.TCP, 1000, 443, flags="PA", payload=b"hello", vnet=vnet,
                   seq=5000, ack=777777)
    before = bytes(seg)
    res = nat.translate([seg], OUT, late, vnet=vnet)[0]
    assert res == (FORWARD, R["TCP_NOT_SYN"], 0, -1)
    f = fg.fields(seg, vnet)
    assert (f["src"], f["dst"], f["sport"], f["dport"]) == (dst, src, 443, 1000)
    l4 = f["l4"]
    seq, ack = struct.unpack_from("!II", seg, l4 + 4)
    assert (seq, seg[l4 + 13]) == (777777, 4)            # seq = the segment's ack; RST only
    assert f["end"] - f["l3"] == (40 if src == SRC else 60)
    assert fg.checksums_ok(seg, vnet)
    eth = 10 if vnet else 0
    assert seg[eth:eth + 6] == before[eth + 6:eth + 12]  # back to the sender's MAC
    assert len(seg) == len(before) and not any(seg[f["end"]:])
    assert nat.counters()["rst_sent"] == 1 and nat.counters()["drop.TCP_NOT_SYN"] == 1
    assert nat.eni_counters(0)["rst_sent"] == 1 and nat.eni_counters(0)["idle_timeouts"] == 1


def test_invalid_flags_get_no_rst(NatClass):
    # Without ACK only a SYN or a RST is valid (section 2.3): the rest is dropped unanswered.
    nat = make(NatClass)
    assert out(nat, fg.tcp(SRC, DST, 1000, 443, "F"))[0] == DROP
    assert nat.counters()["rst_sent"] == 0


def test_rsts_are_rate_limited(NatClass):
    nat = make(NatClass)
    nat.set_rst_limit(10, 3)
    frames = lambda n: [fg.tcp(SRC, DST, 1000 + i, 443, "A") for i in range(n)]
    assert [r[0] for r in nat.translate(frames(5), OUT, 0)] == [FORWARD] * 3 + [DROP] * 2
    assert [r[0] for r in nat.translate(frames(2), OUT, 100)] == [FORWARD, DROP]
    assert nat.counters()["rst_limited"] == 3 and nat.counters()["rst_sent"] == 4


def test_unknown_source_gets_no_rst(NatClass):
    nat = make(NatClass)
    assert out(nat, fg.tcp("10.200.0.99", DST, 1, 2, "A")) == (DROP, R["UNKNOWN_SOURCE"], 0, -1)
