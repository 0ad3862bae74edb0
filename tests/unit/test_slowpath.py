"""The slow path (hyperplane.slowpath) against the C core's Nat and a fake data plane.

Punts are produced the way the data plane produces them: the frame goes through the real
Nat.translate() and the test asserts the reason it punted with. Replies are checked byte by
byte with scapy, every checksum recomputed independently.
"""

import errno
import ipaddress
import random
import struct

import pytest

core = pytest.importorskip("hyperplane._core")

from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, fragment  # noqa: E402
from scapy.layers.inet6 import (ICMPv6EchoReply, ICMPv6EchoRequest,  # noqa: E402
                                ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6ND_RS, ICMPv6NDOptDstLLAddr,
                                ICMPv6NDOptSrcLLAddr, ICMPv6PacketTooBig, ICMPv6TimeExceeded,
                                IPv6, IPv6ExtHdrFragment, fragment6)
from scapy.layers.l2 import ARP, Ether  # noqa: E402
from scapy.packet import Raw  # noqa: E402
from scapy.utils import checksum as scapy_checksum  # noqa: E402

from hyperplane import vocab  # noqa: E402
from hyperplane.slowpath import PortInfo, SlowPath  # noqa: E402
from hyperplane.slowpath._frag import Reassembler, fragment4, fragment6 as hp_fragment6  # noqa: E402
from hyperplane.slowpath._wire import parse_ip  # noqa: E402
from hyperplane.vocab import DROP, FORWARD, IN, OUT, PUNT, R  # noqa: E402

Punt = core.Punt

INSIDE_MAC = "02:00:00:00:00:01"
ENI_MAC = "02:00:00:00:01:04"
FN_MAC = "02:00:00:00:00:11"
DB_MAC = "02:00:00:00:01:20"
GW_MAC = "02:00:00:00:01:01"
GW4, GW6 = "10.200.0.1", "fd00:200::1"
FN4, FN6 = "10.200.0.11", "fd00:200::11"
ENI4, ENI6 = "10.0.1.4", "fd00:1::4"
SUBGW4, SUBGW6 = "10.0.1.1", "fd00:1::1"
DB4, DB6 = "10.0.1.20", "fd00:1::20"        # on the ENI's subnet
FAR4, FAR6 = "10.0.9.9", "fd00:9::9"        # behind the subnet gateway
MTU_OUT = 1400


class FakeDP:
    def __init__(self):
        self.sent = []          # (port, frame bytes, vnet)
        self.inputs = []
        self.neigh = {}
        self.pinned = set()
        self.fail_inject = None

    def inject(self, port, frame, vnet=None):
        if self.fail_inject is not None:
            raise self.fail_inject
        self.sent.append((port, bytes(frame), vnet))

    def input(self, port, frame, vnet=None):
        self.inputs.append((port, bytes(frame), vnet))
        return (FORWARD, 0, 1, 0)

    def set_neighbor(self, addr, mac, port=None, pinned=False):
        key = (str(ipaddress.ip_address(addr)), port)
        if key in self.pinned and not pinned:
            raise PermissionError(errno.EPERM, "pinned")
        self.neigh[key] = mac
        if pinned:
            self.pinned.add(key)

    def neighbor(self, addr, port=None, with_pinned=False):
        addr = str(ipaddress.ip_address(addr))
        key = (addr, port) if (addr, port) in self.neigh else (addr, None)
        mac = self.neigh.get(key)
        if mac is None or not with_pinned:
            return mac
        return mac, key in self.pinned

    def age_neighbors(self, max_age_ms):
        return 0

    def take(self):
        out, self.sent = self.sent, []
        return out


class Env:
    def __init__(self, nat_class=core.Nat, **kw):
        self.now = [1_000_000]
        self.nat = nat_class(port_seed=7, mtu_outside=MTU_OUT, **kw.pop("nat", {}))
        self.eni = self.nat.add_eni(ENI4, ENI6)
        grp = self.grp = self.nat.add_group()
        self.nat.group_add_eni(grp, self.eni)
        self.nat.add_source(FN4, grp)
        self.nat.add_source(FN6, grp, allow_v6=True)
        self.dp = FakeDP()
        self.exhausted_calls = []
        self.exhausted_answer = True
        self.inside = PortInfo.inside(0, INSIDE_MAC, gw4=GW4, gw6=GW6, cidr4="10.200.0.0/24",
                                      cidr6="fd00:200::/64")
        self.eni_port = PortInfo.for_eni(1, self.eni, ENI_MAC, addr4=ENI4, addr6=ENI6,
                                         cidr4="10.0.1.0/24", cidr6="fd00:1::/64",
                                         gw4=SUBGW4, gw6=SUBGW6, mtu=MTU_OUT)
        kw.setdefault("reraise", True)
        self.sp = SlowPath(self.nat, self.dp, clock=lambda: self.now[0],
                           ports=[self.inside, self.eni_port], on_exhausted=self.exhausted, **kw)

    def exhausted(self, frame, in_port, vnet=None):
        self.exhausted_calls.append((bytes(frame), in_port))
        self.exhausted_vnet = vnet
        return self.exhausted_answer

    def advance(self, ms):
        self.now[0] += ms

    def c(self, name):
        return self.sp.counters().get(name, 0)

    def punt(self, frame, port, expect=None, egress=None, vnet=bytes(10)):
        """A punt as the data plane makes it: the Nat decides the reason (ARP / ICMP / ...)."""
        frame = bytes(frame)
        if expect is None or expect != "NEIGH_MISS":
            # With its virtio-net header, as the data plane sees it (NEEDS_CSUM: a partial sum).
            res = self.nat.translate([bytearray((vnet or b"") + frame)], OUT if port == 0 else IN,
                                     self.now[0], eni=self.eni, vnet=vnet is not None)[0]
            assert res[0] == PUNT, res
            if expect is not None:
                assert vocab.REASONS[res[1]] == expect, vocab.REASONS[res[1]]
            reason = res[1]
        else:
            reason = R["NEIGH_MISS"]
        return Punt(port, reason, frame, egress, -1, vnet)

    def handle(self, *punts):
        self.sp.handle(list(punts))
        return self.dp.take()

    def outbound(self, proto="udp", family=4, sport=4000, dport=53, dst=None, payload=b"q"):
        """Sends a frame from the function through the Nat (creating the connection); returns
        (original frame, translated frame)."""
        frame = from_fn(family, dst or (FAR4 if family == 4 else FAR6), proto, sport, dport,
                        payload)
        buf = bytearray(frame)
        res = self.nat.translate([buf], OUT, self.now[0])[0]
        assert res[0] == FORWARD, res
        return frame, bytes(buf)


def l4(proto, sport, dport, payload=b""):
    if proto == "udp":
        return UDP(sport=sport, dport=dport) / Raw(payload)
    return TCP(sport=sport, dport=dport, flags="S", seq=1000) / Raw(payload)


def from_fn(family, dst, proto="udp", sport=4000, dport=53, payload=b"q", **ipkw):
    ip = IP(src=FN4, dst=dst, **ipkw) if family == 4 else IPv6(src=FN6, dst=dst, **ipkw)
    return bytes(Ether(src=FN_MAC, dst=INSIDE_MAC) / ip / l4(proto, sport, dport, payload))


def from_customer(pkt, src_mac=DB_MAC):
    et = 0x0800 if pkt.version == 4 else 0x86DD
    return bytes(Ether(src=src_mac, dst=ENI_MAC, type=et) / pkt)


def ip_checksum_ok(ip_bytes):
    hl = (ip_bytes[0] & 15) * 4
    return scapy_checksum(bytes(ip_bytes[:hl])) == 0


def icmp4_ok(pkt):
    return scapy_checksum(bytes(pkt[ICMP])) == 0


def icmp6_ok(ip6):
    """ICMPv6 checksum over the pseudo header (RFC 8200 8.1) and the message."""
    msg = bytes(ip6.payload)
    pseudo = (ipaddress.ip_address(ip6.src).packed + ipaddress.ip_address(ip6.dst).packed
              + struct.pack("!IxxxB", len(msg), 58))
    return scapy_checksum(pseudo + msg) == 0


def l4_checksum_ok(ip_bytes):
    """Full TCP / UDP checksum over a whole IPv4 / IPv6 packet given as bytes."""
    if ip_bytes[0] >> 4 == 4:
        pkt = IP(ip_bytes)
        seg = bytes(pkt.payload)
        ph = pkt.src, pkt.dst
        pseudo = (ipaddress.ip_address(ph[0]).packed + ipaddress.ip_address(ph[1]).packed
                  + struct.pack("!BBH", 0, pkt.proto, len(seg)))
    else:
        pkt = IPv6(ip_bytes)
        seg = bytes(pkt.payload)
        pseudo = (ipaddress.ip_address(pkt.src).packed + ipaddress.ip_address(pkt.dst).packed
                  + struct.pack("!IxxxB", len(seg), pkt.nh))
    return scapy_checksum(pseudo + seg) == 0


@pytest.fixture(autouse=True)
def no_scapy_resolution(monkeypatch):
    """Scapy resolves a missing Ether(dst=) by asking the network: never in unit tests."""
    from scapy.config import conf

    def refuse(l2, l3):
        raise AssertionError("scapy tried to resolve a MAC address: give Ether(dst=...)")
    monkeypatch.setattr(conf.neighbor, "resolve", refuse)


def _model_nat():
    from hyperplane.model import Nat
    if not hasattr(Nat, "lookup"):
        pytest.skip("the reference model has no Nat.lookup yet")
    return Nat


@pytest.fixture(params=["c", "model"])
def make_env(request):
    """Env factory: every test runs against the C core and (once it has lookup()) the model."""
    nat_class = core.Nat if request.param == "c" else _model_nat()
    return lambda **kw: Env(nat_class=nat_class, **kw)


@pytest.fixture
def env(make_env):
    return make_env()


# -- PortInfo ----------------------------------------------------------------------------------

def test_portinfo_validation_and_routing():
    p = PortInfo.for_eni(3, 2, "02:00:00:00:00:09", addr4="10.0.1.4", cidr4="10.0.1.0/24",
                         gw4="10.0.1.1")
    assert p.mac == "02:00:00:00:00:09" and p.mac_b == bytes.fromhex("020000000009")
    assert p.next_hop("10.0.1.77") == "10.0.1.77"
    assert p.next_hop("10.9.9.9") == "10.0.1.1"
    assert p.next_hop("fd00:9::1") == "fd00:9::1"        # no IPv6 prefix: all on-link
    inside = PortInfo.inside(0, INSIDE_MAC, gw4=GW4, cidr4=["10.200.0.0/24", "10.201.0.0/24"])
    assert inside.next_hop("10.9.9.9") == "10.9.9.9"
    assert inside.learnable("10.201.0.5") and not inside.learnable("10.9.9.9")
    with pytest.raises(ValueError):
        PortInfo(port=1, mac=ENI_MAC, role="eni")          # no ENI id
    with pytest.raises(ValueError):
        PortInfo.inside(0, INSIDE_MAC, gw4="fd00::1")
    with pytest.raises(ValueError):
        PortInfo.inside(0, "02:00:00")


def test_add_port_at_run_time(env):
    eni2 = env.nat.add_eni("10.0.2.4")
    env.sp.add_port(PortInfo.for_eni(2, eni2, "02:00:00:00:02:04", addr4="10.0.2.4",
                                     cidr4="10.0.2.0/24"))
    req = Ether(src=DB_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=DB_MAC, psrc="10.0.2.9",
                                                           pdst="10.0.2.4")
    sent = env.handle(Punt(2, R["ARP"], bytes(req), None, -1, bytes(10)))
    assert len(sent) == 1 and sent[0][0] == 2
    assert Ether(sent[0][1])[ARP].hwsrc == "02:00:00:00:02:04"
    env.sp.remove_port(2)
    assert env.handle(Punt(2, R["ARP"], bytes(req), None, -1, bytes(10))) == []
    assert env.c("unknown_port") == 1


# -- ARP -------------------------------------------------------------------------------------

def arp_req(src_mac, psrc, pdst, op=1):
    dst = "ff:ff:ff:ff:ff:ff" if op == 1 else INSIDE_MAC
    return bytes(Ether(src=src_mac, dst=dst) / ARP(op=op, hwsrc=src_mac, psrc=psrc, pdst=pdst,
                                                   hwdst="00:00:00:00:00:00" if op == 1 else INSIDE_MAC))


def solicit(env, dst, family=4):
    """A frame of a tracked connection towards dst (through the ENI port) waits for its next
    hop: the slow path solicits it, and an answer to that solicitation may teach."""
    _, out = env.outbound("udp", family=family, dst=dst)
    return env.handle(env.punt(out, 0, "NEIGH_MISS", egress=1))


def test_arp_request_for_gateway_is_answered_and_sender_not_learned(env):
    sent = env.handle(env.punt(arp_req(FN_MAC, FN4, GW4), 0, "ARP"))
    assert len(sent) == 1
    port, frame, vnet = sent[0]
    assert port == 0 and vnet is None
    pkt = Ether(frame)
    assert pkt.src == INSIDE_MAC and pkt.dst == FN_MAC and pkt.type == 0x0806
    a = pkt[ARP]
    assert (a.op, a.hwsrc, a.psrc, a.hwdst, a.pdst) == (2, INSIDE_MAC, GW4, FN_MAC, FN4)
    # Answered to the frame's sender; nothing learned: only answers to our own solicitations
    # teach (the daemon pins the functions' MACs, bind_inside).
    assert env.dp.neighbor(FN4, 0) is None
    assert env.c("arp_replied") == 1 and env.c("neigh_unsolicited_ignored") == 1


def test_arp_request_for_eni_only_on_its_port(env):
    sent = env.handle(env.punt(arp_req(DB_MAC, DB4, ENI4), 1, "ARP"))
    assert len(sent) == 1 and sent[0][0] == 1
    a = Ether(sent[0][1])[ARP]
    assert (a.op, a.hwsrc, a.psrc, a.pdst) == (2, ENI_MAC, ENI4, DB4)
    assert env.dp.neighbor(DB4, 1) is None
    # The ENI address asked on the inside port, the gateway asked on the ENI port: silence.
    assert env.handle(env.punt(arp_req(FN_MAC, FN4, ENI4), 0, "ARP")) == []
    assert env.handle(env.punt(arp_req(DB_MAC, DB4, GW4), 1, "ARP")) == []
    assert env.c("arp_replied") == 1 and env.c("arp_ignored") == 2


def test_arp_whose_sender_mac_is_not_the_frames_source_teaches_nothing(env):
    solicit(env, DB4)
    forged = bytearray(arp_req(DB_MAC, DB4, ENI4, op=2))
    forged[22:28] = bytes.fromhex("020000000666")            # ARP sender MAC only
    env.handle(env.punt(bytes(forged), 1, "ARP"))
    assert env.dp.neighbor(DB4, 1) is None
    env.handle(env.punt(arp_req(DB_MAC, DB4, ENI4, op=2), 1, "ARP"))
    assert env.dp.neighbor(DB4, 1) == DB_MAC
    env.handle(env.punt(bytes(forged), 1, "ARP"))
    assert env.dp.neighbor(DB4, 1) == DB_MAC
    assert env.c("neigh_mac_mismatch") == 2


def test_arp_learning_rules(env):
    # Requests for someone else: no reply, nothing learned (unknown sender).
    assert env.handle(env.punt(arp_req(DB_MAC, DB4, "10.0.1.30"), 1, "ARP")) == []
    assert env.dp.neighbor(DB4, 1) is None
    # A reply nobody asked for teaches nothing, even from the subnet.
    env.handle(env.punt(arp_req(GW_MAC, SUBGW4, ENI4, op=2), 1, "ARP"))
    assert env.dp.neighbor(SUBGW4, 1) is None and env.c("neigh_unsolicited_ignored") == 2
    # The answer to our solicitation (a frame for a far host waits for the gateway) is
    # learned and sends the frame; one from off the subnet is not.
    (ask,) = solicit(env, FAR4)
    assert Ether(ask[1])[ARP].pdst == SUBGW4
    sent = env.handle(env.punt(arp_req(GW_MAC, SUBGW4, ENI4, op=2), 1, "ARP"))
    assert env.dp.neighbor(SUBGW4, 1) == GW_MAC and len(sent) == 1
    env.handle(env.punt(arp_req(GW_MAC, "192.168.5.5", ENI4, op=2), 1, "ARP"))
    assert env.dp.neighbor("192.168.5.5", 1) is None
    # A gratuitous ARP of a learned neighbour moves it, but once a second at most.
    env.handle(env.punt(arp_req("02:00:00:00:01:99", SUBGW4, SUBGW4), 1, "ARP"))
    assert env.dp.neighbor(SUBGW4, 1) == "02:00:00:00:01:99"
    env.handle(env.punt(arp_req("02:00:00:00:01:98", SUBGW4, SUBGW4), 1, "ARP"))
    assert env.dp.neighbor(SUBGW4, 1) == "02:00:00:00:01:99"
    assert env.c("neigh_changed") == 1 and env.c("neigh_change_limited") == 1
    env.advance(1001)
    env.handle(env.punt(arp_req(GW_MAC, SUBGW4, SUBGW4), 1, "ARP"))
    assert env.dp.neighbor(SUBGW4, 1) == GW_MAC
    # A pinned neighbour (the lab's) never moves: neither a forged reply to a solicitation
    # nor a gratuitous ARP.
    env.dp.set_neighbor(DB4, DB_MAC, 1, pinned=True)
    env.handle(env.punt(arp_req("02:00:00:00:06:66", DB4, ENI4, op=2), 1, "ARP"),
               env.punt(arp_req("02:00:00:00:06:66", DB4, DB4), 1, "ARP"))
    assert env.dp.neighbor(DB4, 1) == DB_MAC and env.c("neigh_pinned_kept") == 2
    # Someone claiming our address: ignored.
    env.handle(env.punt(arp_req(DB_MAC, ENI4, ENI4), 1, "ARP"))
    assert env.dp.neighbor(ENI4, 1) is None
    assert env.c("arp_conflict") == 1
    # Malformed ARP.
    bad = bytearray(arp_req(DB_MAC, DB4, ENI4))
    bad[16:18] = b"\x86\xdd"
    env.handle(Punt(1, R["ARP"], bytes(bad), None, -1, bytes(10)),
               Punt(1, R["ARP"], bytes(bad[:30]), None, -1, bytes(10)))
    assert env.c("arp_malformed") == 2 and env.c("slowpath_error") == 0


# -- NDP -------------------------------------------------------------------------------------

def ns(src, target, src_mac, dst=None, hlim=255, slla=True):
    nsma = ipaddress.ip_address(target).packed
    dst = dst or str(ipaddress.ip_address(b"\xff\x02" + bytes(9) + b"\x01\xff" + nsma[13:]))
    pkt = (Ether(src=src_mac, dst="33:33:ff:" + ":".join(f"{b:02x}" for b in nsma[13:]))
           / IPv6(src=src, dst=dst, hlim=hlim) / ICMPv6ND_NS(tgt=target))
    if slla:
        pkt = pkt / ICMPv6NDOptSrcLLAddr(lladdr=src_mac)
    return bytes(pkt)


def test_ns_for_gateway_gets_na(env):
    sent = env.handle(env.punt(ns(FN6, GW6, FN_MAC), 0, "ICMP"))
    assert len(sent) == 1 and sent[0][0] == 0
    pkt = Ether(sent[0][1])
    assert pkt.src == INSIDE_MAC and pkt.dst == FN_MAC
    ip6 = pkt[IPv6]
    assert ip6.src == GW6 and ip6.dst == FN6 and ip6.hlim == 255
    na = pkt[ICMPv6ND_NA]
    assert (na.R, na.S, na.O, na.tgt) == (1, 1, 1, GW6)
    assert pkt[ICMPv6NDOptDstLLAddr].lladdr == INSIDE_MAC
    assert icmp6_ok(ip6)
    assert env.dp.neighbor(FN6, 0) is None                  # an NS is no answer to us
    assert env.c("nd_replied") == 1


def test_ns_for_eni_and_dad(env):
    sent = env.handle(env.punt(ns(DB6, ENI6, DB_MAC), 1, "ICMP"))
    na = Ether(sent[0][1])
    assert sent[0][0] == 1 and na[IPv6].src == ENI6 and na[IPv6].dst == DB6
    assert (na[ICMPv6ND_NA].R, na[ICMPv6ND_NA].S) == (0, 1)   # the ENI is not a router
    # DAD probe (source ::) for the ENI address: answered to all-nodes, S = 0.
    sent = env.handle(env.punt(ns("::", ENI6, DB_MAC, slla=False), 1, "ICMP"))
    na = Ether(sent[0][1])
    assert na.dst == "33:33:00:00:00:01" and na[IPv6].dst == "ff02::1"
    assert na[ICMPv6ND_NA].S == 0 and na[ICMPv6ND_NA].O == 1 and icmp6_ok(na[IPv6])
    # NS for the gateway on the ENI port, for another host, with a bad hop limit: ignored.
    assert env.handle(env.punt(ns(DB6, GW6, DB_MAC), 1, "ICMP")) == []
    assert env.handle(env.punt(ns(DB6, "fd00:1::30", DB_MAC), 1, "ICMP")) == []
    assert env.handle(env.punt(ns(DB6, ENI6, DB_MAC, hlim=64), 1, "ICMP")) == []
    assert env.c("nd_ignored_ns") == 2 and env.c("nd_invalid") == 1 and env.c("nd_replied") == 2


def test_na_learned_and_rs_ignored(env):
    na = (Ether(src=GW_MAC, dst=ENI_MAC) / IPv6(src=SUBGW6, dst=ENI6, hlim=255)
          / ICMPv6ND_NA(tgt=SUBGW6, R=1, S=1, O=1) / ICMPv6NDOptDstLLAddr(lladdr=GW_MAC))
    assert env.handle(env.punt(bytes(na), 1, "ICMP")) == []
    assert env.dp.neighbor(SUBGW6, 1) is None                # unsolicited
    solicit(env, FAR6, family=6)
    assert len(env.handle(env.punt(bytes(na), 1, "ICMP"))) == 1
    assert env.dp.neighbor(SUBGW6, 1) == GW_MAC and env.c("na_received") == 2
    rs = Ether(src=FN_MAC, dst="33:33:00:00:00:02") / IPv6(src=FN6, dst="ff02::2", hlim=255) / ICMPv6ND_RS()
    assert env.handle(env.punt(bytes(rs), 0, "ICMP")) == []
    assert env.c("nd_ignored_rs") == 1


# -- echo ------------------------------------------------------------------------------------

def test_echo_to_gateway_v4(env):
    req = Ether(src=FN_MAC, dst=INSIDE_MAC) / IP(src=FN4, dst=GW4, ttl=64) / ICMP(type=8, id=77, seq=3) / Raw(b"ping" * 10)
    sent = env.handle(env.punt(bytes(req), 0, "ICMP"))
    assert len(sent) == 1 and sent[0][0] == 0
    pkt = Ether(sent[0][1])
    assert pkt.dst == FN_MAC and pkt.src == INSIDE_MAC
    assert pkt[IP].src == GW4 and pkt[IP].dst == FN4
    icmp = pkt[ICMP]
    assert (icmp.type, icmp.code, icmp.id, icmp.seq) == (0, 0, 77, 3)
    assert bytes(icmp.payload) == b"ping" * 10
    assert ip_checksum_ok(bytes(pkt[IP])) and icmp4_ok(pkt)
    assert env.c("echo_replied") == 1


def test_echo_to_gateway_v6(env):
    req = (Ether(src=FN_MAC, dst=INSIDE_MAC) / IPv6(src=FN6, dst=GW6)
           / ICMPv6EchoRequest(id=5, seq=9, data=b"abc"))
    sent = env.handle(env.punt(bytes(req), 0, "ICMP"))
    pkt = Ether(sent[0][1])
    rep = pkt[ICMPv6EchoReply]
    assert pkt[IPv6].src == GW6 and pkt[IPv6].dst == FN6
    assert (rep.id, rep.seq, rep.data) == (5, 9, b"abc") and icmp6_ok(pkt[IPv6])


def test_echo_not_answered_elsewhere(env):
    to_db = Ether(src=FN_MAC, dst=INSIDE_MAC) / IP(src=FN4, dst=DB4) / ICMP(type=8)
    to_eni = from_customer(IP(src=DB4, dst=ENI4) / ICMP(type=8))
    to_eni6 = from_customer(IPv6(src=DB6, dst=ENI6) / ICMPv6EchoRequest())
    bad = bytearray(bytes(Ether(src=FN_MAC, dst=INSIDE_MAC) / IP(src=FN4, dst=GW4) / ICMP(type=8)))
    bad[-1] ^= 0xFF          # ICMP checksum wrong
    assert env.handle(env.punt(bytes(to_db), 0, "ICMP"), env.punt(to_eni, 1, "ICMP"),
                      env.punt(to_eni6, 1, "ICMP"), env.punt(bytes(bad), 0, "ICMP")) == []
    assert env.c("echo_dropped_outbound") == 1 and env.c("echo_dropped_eni") == 2
    assert env.c("icmp_bad_checksum") == 1 and env.c("echo_replied") == 0


# -- ICMP errors quoting a tracked flow ------------------------------------------------------

def check_inner(inner_bytes, src, dst, sport, dport, full):
    """The quoted packet: addresses, ports, header checksum, and the L4 checksum when whole."""
    if inner_bytes[0] >> 4 == 4:
        ip = IPerror(inner_bytes)
        assert ip_checksum_ok(inner_bytes)
    else:
        ip = IPv6(inner_bytes)
    assert (ip.src, ip.dst) == (src, dst)
    assert struct.unpack_from("!HH", bytes(ip.payload)) == (sport, dport)
    if full:
        assert l4_checksum_ok(inner_bytes)


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_dest_unreachable_in_translated(env, proto):
    env.dp.set_neighbor(FN4, FN_MAC, 0)
    _, out = env.outbound(proto, dport=5432)
    conn = env.nat.connections()[0]
    quoted = bytes(Ether(out)[IP])
    err = from_customer(IP(src=SUBGW4, dst=ENI4, ttl=60) / ICMP(type=3, code=1) / Raw(quoted),
                        GW_MAC)
    sent = env.handle(env.punt(err, 1, "ICMP"))
    assert len(sent) == 1
    port, frame, _ = sent[0]
    assert port == 0
    pkt = Ether(frame)
    assert pkt.src == INSIDE_MAC and pkt.dst == FN_MAC
    assert pkt[IP].src == SUBGW4 and pkt[IP].dst == FN4 and pkt[IP].ttl == 59
    assert ip_checksum_ok(bytes(pkt[IP])) and icmp4_ok(pkt)
    assert (pkt[ICMP].type, pkt[ICMP].code) == (3, 1)
    inner = bytes(pkt[ICMP].payload)
    check_inner(inner, FN4, FAR4, 4000, 5432, full=True)
    assert conn.nat_port != 4000 or conn.nat_addr != FN4
    assert env.c("icmp_error_translated_in") == 1


def test_frag_needed_truncated_quote_keeps_mtu(env):
    env.dp.set_neighbor(FN4, FN_MAC, 0)
    _, out = env.outbound("tcp", dport=443, payload=b"x" * 200)
    quoted = bytes(Ether(out)[IP])[:28]          # IP header + 8 bytes: no TCP checksum
    err = from_customer(IP(src=SUBGW4, dst=ENI4) / ICMP(type=3, code=4, nexthopmtu=1300) / Raw(quoted))
    sent = env.handle(env.punt(err, 1, "ICMP"))
    pkt = Ether(sent[0][1])
    assert pkt[ICMP].nexthopmtu == 1300 and icmp4_ok(pkt) and ip_checksum_ok(bytes(pkt[IP]))
    check_inner(bytes(pkt[ICMP].payload), FN4, FAR4, 4000, 443, full=False)


def test_packet_too_big_v6_translated(env):
    env.dp.set_neighbor(FN6, FN_MAC, 0)
    _, out = env.outbound("udp", family=6, dport=53, payload=b"y" * 100)
    quoted = bytes(Ether(out)[IPv6])
    err = from_customer(IPv6(src=SUBGW6, dst=ENI6, hlim=64) / ICMPv6PacketTooBig(mtu=1280) / Raw(quoted))
    sent = env.handle(env.punt(err, 1, "ICMP"))
    pkt = Ether(sent[0][1])
    assert pkt[IPv6].dst == FN6 and pkt[IPv6].hlim == 63
    assert pkt[ICMPv6PacketTooBig].mtu == 1280 and icmp6_ok(pkt[IPv6])
    check_inner(bytes(pkt[ICMPv6PacketTooBig].payload), FN6, FAR6, 4000, 53, full=True)


def test_time_exceeded_v6_tcp_translated(env):
    env.dp.set_neighbor(FN6, FN_MAC, 0)
    _, out = env.outbound("tcp", family=6, dport=80)
    err = from_customer(IPv6(src=SUBGW6, dst=ENI6) / ICMPv6TimeExceeded() / Raw(bytes(Ether(out)[IPv6])))
    pkt = Ether(env.handle(env.punt(err, 1, "ICMP"))[0][1])
    assert icmp6_ok(pkt[IPv6])
    check_inner(bytes(pkt[ICMPv6TimeExceeded].payload), FN6, FAR6, 4000, 80, full=True)


def test_untracked_errors_dropped(env):
    _, out = env.outbound("udp", dport=53)
    ip = Ether(out)[IP]
    other = IP(src=ENI4, dst=FAR4) / UDP(sport=ip[UDP].sport + 1, dport=53) / Raw(b"q")
    err = from_customer(IP(src=SUBGW4, dst=ENI4) / ICMP(type=3, code=3) / Raw(bytes(other)))
    icmp_in_icmp = from_customer(IP(src=SUBGW4, dst=ENI4) / ICMP(type=11)
                                 / Raw(bytes(IP(src=ENI4, dst=FAR4) / ICMP(type=8))))
    truncated = from_customer(IP(src=SUBGW4, dst=ENI4) / ICMP(type=3) / Raw(bytes(ip)[:22]))
    reply = from_customer(IP(src=FAR4, dst=ENI4) / ICMP(type=0))
    assert env.handle(env.punt(err, 1, "ICMP"), env.punt(icmp_in_icmp, 1, "ICMP"),
                      env.punt(truncated, 1, "ICMP"), env.punt(reply, 1, "ICMP")) == []
    c = env.sp.counters()
    assert c["icmp_dropped_unsolicited"] == 2 and c["icmp_dropped_not_tcp_udp"] == 1
    assert c["icmp_dropped_malformed"] == 1 and c.get("slowpath_error", 0) == 0


def test_error_from_function_translated_out(env):
    env.dp.set_neighbor(SUBGW4, GW_MAC, 1)
    _, out = env.outbound("udp", dport=53)
    conn = env.nat.connections()[0]
    # The customer's reply, translated in: what the function received.
    reply = from_customer(IP(src=FAR4, dst=ENI4) / UDP(sport=53, dport=conn.nat_port) / Raw(b"r"))
    buf = bytearray(reply)
    assert env.nat.translate([buf], IN, env.now[0], eni=env.eni)[0][0] == FORWARD
    quoted = bytes(Ether(bytes(buf))[IP])
    err = Ether(src=FN_MAC, dst=INSIDE_MAC) / IP(src=FN4, dst=FAR4) / ICMP(type=3, code=3) / Raw(quoted)
    sent = env.handle(env.punt(bytes(err), 0, "ICMP"))
    assert len(sent) == 1 and sent[0][0] == 1
    pkt = Ether(sent[0][1])
    assert pkt.src == ENI_MAC and pkt.dst == GW_MAC        # off-link: via the subnet gateway
    assert pkt[IP].src == ENI4 and pkt[IP].dst == FAR4
    assert ip_checksum_ok(bytes(pkt[IP])) and icmp4_ok(pkt)
    check_inner(bytes(pkt[ICMP].payload), FAR4, ENI4, 53, conn.nat_port, full=True)
    assert env.c("icmp_error_translated_out") == 1


def hairpinned_pair(env):
    """FN4:4000 and a second function FN_B:6000 on the same ENI, hole-punched to each other's
    external port (docs/semantics.md 3, step 7). Returns (FN4's external port, FN_B's, and
    the frame FN4 received from FN_B through the hairpin)."""
    fn_b, mac_b = "10.200.0.21", "02:00:00:00:00:21"
    env.nat.add_source(fn_b, env.grp)
    env.dp.set_neighbor(fn_b, mac_b, 0)
    env.dp.set_neighbor(FN4, FN_MAC, 0)

    def send(src, mac, sport, dport, expect):
        buf = bytearray(bytes(Ether(src=mac, dst=INSIDE_MAC) / IP(src=src, dst=ENI4, ttl=30)
                              / UDP(sport=sport, dport=dport) / Raw(b"x")))
        assert env.nat.translate([buf], OUT, env.now[0])[0][0] == expect
        return bytes(buf)

    ext = {}
    for src, mac, sport in ((FN4, FN_MAC, 4000), (fn_b, mac_b, 6000)):
        env.outbound("udp", sport=sport) if src == FN4 else send(src, mac, sport, 9, DROP)
        ext[src] = next(c.nat_port for c in env.nat.connections()
                        if c.src == src and c.sport == sport)
    send(FN4, FN_MAC, 4000, ext[fn_b], DROP)                # filtered: FN_B never wrote
    got = send(fn_b, mac_b, 6000, ext[FN4], FORWARD)        # a reply of FN4's connection
    return ext[FN4], ext[fn_b], fn_b, mac_b, got


def test_error_about_a_hairpinned_packet_goes_back_to_its_sender(env):
    """RFC 5508 section 7: FN4's port unreachable about FN_B's hairpinned datagram reaches
    FN_B, translated on both legs: from FN4's ENI address, quoting FN_B's own datagram."""
    a_ext, b_ext, fn_b, mac_b, got = hairpinned_pair(env)
    quoted = bytes(Ether(got)[IP])
    assert (IP(quoted).src, IP(quoted).dst) == (ENI4, FN4)
    err = Ether(src=FN_MAC, dst=INSIDE_MAC) / IP(src=FN4, dst=ENI4, ttl=64) / \
        ICMP(type=3, code=3) / Raw(quoted)
    sent = env.handle(env.punt(bytes(err), 0, "ICMP"))
    assert len(sent) == 1 and sent[0][0] == 0             # back to the inside port
    pkt = Ether(sent[0][1])
    assert pkt.dst == mac_b and pkt[IP].src == ENI4 and pkt[IP].dst == fn_b
    assert pkt[IP].ttl == 63                              # decremented once, as the datagram
    assert ip_checksum_ok(bytes(pkt[IP])) and icmp4_ok(pkt)
    check_inner(bytes(pkt[ICMP].payload), fn_b, ENI4, 6000, a_ext, full=True)
    assert env.c("icmp_error_hairpinned") == 1 and env.c("icmp_error_translated_in") == 1


def test_error_from_outside_quoting_a_hairpin_connection_is_dropped(env):
    a_ext, b_ext, fn_b, _, _ = hairpinned_pair(env)
    # What FN4's hairpinned datagram looked like on its way: nothing outside ever saw it.
    quoted = bytes(IP(src=ENI4, dst=ENI4) / UDP(sport=a_ext, dport=b_ext) / Raw(b"x"))
    err = from_customer(IP(src=SUBGW4, dst=ENI4) / ICMP(type=3, code=1) / Raw(quoted))
    assert env.handle(env.punt(err, 1, "ICMP")) == []
    assert env.c("icmp_dropped_unsolicited") == 1


def test_translated_error_waits_for_neighbour(env):
    _, out = env.outbound("udp")
    err = from_customer(IP(src=SUBGW4, dst=ENI4) / ICMP(type=3, code=3) / Raw(bytes(Ether(out)[IP])))
    sent = env.handle(env.punt(err, 1, "ICMP"))
    assert len(sent) == 1                         # the ARP request, from the gateway address
    a = Ether(sent[0][1])[ARP]
    assert sent[0][0] == 0 and (a.op, a.psrc, a.pdst, a.hwsrc) == (1, GW4, FN4, INSIDE_MAC)
    sent = env.handle(env.punt(arp_req(FN_MAC, FN4, GW4, op=2), 0, "ARP"))
    assert len(sent) == 1 and Ether(sent[0][1])[IP].dst == FN4
    assert Ether(sent[0][1]).dst == FN_MAC


# -- neighbour misses ------------------------------------------------------------------------

def test_neigh_miss_queues_resolves_and_injects(env):
    _, out = env.outbound("udp", dst=DB4)
    vnet = struct.pack("<BBHHHH", 1, 0, 0, 0, 34, 6)
    p = env.punt(out, 0, "NEIGH_MISS", egress=1, vnet=vnet)
    sent = env.handle(p, p)
    assert len(sent) == 1                                  # one ARP request for both
    port, frame, _ = sent[0]
    pkt = Ether(frame)
    assert port == 1 and pkt.dst == "ff:ff:ff:ff:ff:ff" and pkt.src == ENI_MAC
    assert (pkt[ARP].op, pkt[ARP].psrc, pkt[ARP].pdst, pkt[ARP].hwsrc) == (1, ENI4, DB4, ENI_MAC)
    assert env.sp.state()["neigh_queued"] == 2
    sent = env.handle(env.punt(arp_req(DB_MAC, DB4, ENI4, op=2), 1, "ARP"))
    assert len(sent) == 2
    for port, frame, v in sent:
        assert port == 1 and v == vnet
        assert frame[:6] == bytes.fromhex(DB_MAC.replace(":", ""))
        assert frame[6:12] == bytes.fromhex(ENI_MAC.replace(":", ""))
        assert frame[12:] == out[12:]
    assert env.c("neigh_resolved") == 1 and env.c("neigh_queue_sent") == 2
    assert env.sp.state() == {"neigh_pending": 0, "neigh_queued": 0, "frag_in_progress": 0}


def test_neigh_miss_off_link_resolves_gateway_and_v6(env):
    _, out = env.outbound("udp", dst=FAR4)
    sent = env.handle(env.punt(out, 0, "NEIGH_MISS", egress=1))
    assert Ether(sent[0][1])[ARP].pdst == SUBGW4
    _, out6 = env.outbound("udp", family=6, dst=DB6)
    sent = env.handle(env.punt(out6, 0, "NEIGH_MISS", egress=1))
    pkt = Ether(sent[0][1])
    assert pkt.dst == "33:33:ff:00:00:20"
    assert pkt[IPv6].dst == "ff02::1:ff00:20" and pkt[IPv6].src == ENI6 and pkt[IPv6].hlim == 255
    assert pkt[ICMPv6ND_NS].tgt == DB6 and pkt[ICMPv6NDOptSrcLLAddr].lladdr == ENI_MAC
    assert icmp6_ok(pkt[IPv6])
    na = (Ether(src=DB_MAC, dst=ENI_MAC) / IPv6(src=DB6, dst=ENI6, hlim=255)
          / ICMPv6ND_NA(tgt=DB6, S=1, O=1) / ICMPv6NDOptDstLLAddr(lladdr=DB_MAC))
    sent = env.handle(env.punt(bytes(na), 1, "ICMP"))
    assert len(sent) == 1 and Ether(sent[0][1]).dst == DB_MAC
    assert Ether(sent[0][1])[IPv6].src == ENI6


def test_neigh_queue_bounds_retries_and_timeout(make_env):
    env = make_env(neigh_per_hop=4, neigh_total=6)
    _, out = env.outbound("udp", dst=DB4)
    _, out2 = env.outbound("udp", dst="10.0.1.21")
    p = env.punt(out, 0, "NEIGH_MISS", egress=1)
    p2 = env.punt(out2, 0, "NEIGH_MISS", egress=1)
    sent = env.handle(*[p] * 6, *[p2] * 3)
    assert len(sent) == 2                                  # one request per next hop
    assert env.c("neigh_queued") == 6 and env.c("neigh_queue_dropped") == 3
    env.advance(100)
    env.sp.tick()
    assert env.dp.take() == []
    env.advance(200)                                       # first retry at 250 ms
    env.sp.tick()
    assert len(env.dp.take()) == 2
    env.advance(300)                                       # backoff: next at 300 + 500 ms
    env.sp.tick()
    assert env.dp.take() == []
    env.advance(300)
    env.sp.tick()
    assert len(env.dp.take()) == 2
    env.advance(3000)
    env.sp.tick()
    assert env.dp.take() == []
    assert env.c("neigh_failed") == 2 and env.c("neigh_timeout_dropped") == 6
    assert env.sp.state()["neigh_queued"] == 0


def test_neigh_queue_holds_a_policer_burst_and_bounds_bytes(make_env):
    # By default one next hop queues as many frames as the C policer lets through at once for
    # NEIGH_MISS (512), all sent once resolved; its bytes are bounded too (GSO frames: 64 KB).
    env = make_env()
    _, out = env.outbound("udp", dst=DB4)
    p = env.punt(out, 0, "NEIGH_MISS", egress=1)
    env.handle(*[p] * 512)
    assert env.c("neigh_queued") == 512 and env.c("neigh_queue_dropped") == 0
    sent = env.handle(env.punt(arp_req(DB_MAC, DB4, ENI4, op=2), 1, "ARP"))
    assert len(sent) == 512 and env.c("neigh_queue_sent") == 512
    env = make_env(neigh_hop_bytes=3 * len(out), neigh_total_bytes=4 * len(out))
    _, out2 = env.outbound("udp", dst="10.0.1.21")
    env.handle(*[p] * 4, *[env.punt(out2, 0, "NEIGH_MISS", egress=1)] * 2)
    assert env.c("neigh_queued") == 4 and env.c("neigh_queue_dropped") == 2
    env.advance(3100)
    env.sp.tick()                                          # given up: the bytes come back
    assert env.c("neigh_timeout_dropped") == 4 and env.sp._queued_bytes == 0


def test_neigh_learned_elsewhere_flushes_on_tick(env):
    _, out = env.outbound("udp", dst=DB4)
    env.handle(env.punt(out, 0, "NEIGH_MISS", egress=1))
    env.dp.set_neighbor(DB4, DB_MAC, 1)                    # e.g. configured by the daemon
    env.sp.tick()
    sent = env.dp.take()
    assert len(sent) == 1 and sent[0][1][:6] == bytes.fromhex("020000000120")


# -- TTL and MTU -----------------------------------------------------------------------------

def test_ttl_exceeded_from_function(env):
    frame = from_fn(4, FAR4, ttl=1)
    sent = env.handle(env.punt(frame, 0, "TTL_EXCEEDED"))
    pkt = Ether(sent[0][1])
    assert sent[0][0] == 0 and pkt.dst == FN_MAC and pkt.src == INSIDE_MAC
    assert pkt[IP].src == GW4 and pkt[IP].dst == FN4
    assert (pkt[ICMP].type, pkt[ICMP].code) == (11, 0)
    assert icmp4_ok(pkt) and ip_checksum_ok(bytes(pkt[IP]))
    assert bytes(pkt[ICMP].payload) == bytes(Ether(frame)[IP])
    frame6 = from_fn(6, FAR6, hlim=1)
    pkt = Ether(env.handle(env.punt(frame6, 0, "TTL_EXCEEDED"))[0][1])
    assert pkt[IPv6].src == GW6 and pkt[ICMPv6TimeExceeded].code == 0 and icmp6_ok(pkt[IPv6])
    assert env.c("ttl_exceeded_sent") == 2


def test_ttl_exceeded_from_customer_only_for_tracked_flows(env):
    _, out = env.outbound("udp", dport=53)
    conn = env.nat.connections()[0]
    tracked = from_customer(IP(src=FAR4, dst=ENI4, ttl=1) / UDP(sport=53, dport=conn.nat_port))
    other = from_customer(IP(src=FAR4, dst=ENI4, ttl=1) / UDP(sport=53, dport=conn.nat_port ^ 1))
    # The core drops the untracked one itself (docs/semantics.md 10); the slow path, handed
    # it anyway, drops it too.
    res = env.nat.translate([bytearray(bytes(other))], IN, env.now[0], eni=env.eni)[0]
    assert res[:2] == (DROP, R["IN_NO_MATCH_UDP"])
    untracked = Punt(1, R["TTL_EXCEEDED"], bytes(other), None, -1, bytes(10))
    sent = env.handle(env.punt(tracked, 1, "TTL_EXCEEDED"), untracked)
    assert len(sent) == 1 and sent[0][0] == 1
    pkt = Ether(sent[0][1])
    assert pkt[IP].src == ENI4 and pkt[IP].dst == FAR4 and pkt.dst == DB_MAC
    assert env.c("ttl_exceeded_dropped_unsolicited") == 1


def test_too_big_df_and_v6_get_errors(env):
    frame = from_fn(4, FAR4, payload=b"z" * 1500, flags="DF")
    sent = env.handle(env.punt(frame, 0, "TOO_BIG"))
    pkt = Ether(sent[0][1])
    assert (pkt[ICMP].type, pkt[ICMP].code, pkt[ICMP].nexthopmtu) == (3, 4, MTU_OUT)
    assert pkt[IP].src == GW4 and pkt[IP].dst == FN4 and icmp4_ok(pkt)
    assert len(pkt[IP]) <= 576
    frame6 = from_fn(6, FAR6, payload=b"z" * 1500)
    pkt = Ether(env.handle(env.punt(frame6, 0, "TOO_BIG"))[0][1])
    assert pkt[ICMPv6PacketTooBig].mtu == MTU_OUT and icmp6_ok(pkt[IPv6])
    assert len(pkt[IPv6]) <= 1280
    assert env.c("too_big_sent") == 2


def test_too_big_without_df_is_fragmented(env):
    env.dp.set_neighbor(SUBGW4, GW_MAC, 1)
    payload = bytes(range(256)) * 8
    frame = from_fn(4, FAR4, payload=payload)
    sent = env.handle(env.punt(frame, 0, "TOO_BIG"))
    assert len(sent) == 2
    frags = []
    for port, f, _ in sent:
        pkt = Ether(f)
        assert port == 1 and pkt.dst == GW_MAC and pkt.src == ENI_MAC
        assert len(pkt[IP]) <= MTU_OUT and ip_checksum_ok(bytes(pkt[IP]))
        assert pkt[IP].src == ENI4
        frags.append(pkt[IP])
    whole = reassemble4(frags)
    assert l4_checksum_ok(whole) and bytes(IP(whole)[UDP].payload) == payload
    assert env.c("too_big_forwarded") == 1


def reassemble4(frags):
    frags = sorted(frags, key=lambda p: p.frag)
    first = frags[0]
    data = b"".join(bytes(p.payload) for p in frags)
    hdr = IP(bytes(first)[:first.ihl * 4])
    hdr.flags, hdr.frag, hdr.len, hdr.chksum = 0, 0, None, None
    return bytes(hdr / Raw(data))


def test_icmp_errors_are_rate_limited(make_env):
    env = make_env(icmp_rate=2, icmp_burst=2)
    p = env.punt(from_fn(4, FAR4, ttl=1), 0, "TTL_EXCEEDED")
    assert len(env.handle(p, p, p)) == 2
    assert env.c("icmp_rate_limited") == 1
    env.advance(500)                                        # one token back
    assert len(env.handle(p, p)) == 1
    assert env.c("icmp_rate_limited") == 2


# -- fragments -------------------------------------------------------------------------------

def frags_v4(pkt, size, src_mac=FN_MAC, dst_mac=INSIDE_MAC):
    return [bytes(Ether(src=src_mac, dst=dst_mac) / f) for f in fragment(pkt, fragsize=size)]


def test_fragments_out_reassembled_translated_refragmented(env):
    env.dp.set_neighbor(SUBGW4, GW_MAC, 1)
    payload = bytes(random.Random(1).randrange(256) for _ in range(3000))
    pkt = IP(src=FN4, dst=FAR4, id=4242) / UDP(sport=4000, dport=53) / Raw(payload)
    frames = frags_v4(pkt, 1000)
    assert len(frames) == 4
    order = [2, 0, 3, 1]
    sent = []
    for i in order:
        sent += env.handle(env.punt(frames[i], 0, "FRAGMENT"))
    assert env.c("frag_reassembled") == 1 and env.c("frag_queued") == 3
    frags = [Ether(f)[IP] for _, f, _ in sent]
    assert all(p == 1 for p, _, _ in sent) and len(frags) == 4
    for f in frags:
        assert f.src == ENI4 and f.dst == FAR4 and f.id == 4242 and f.ttl == 63
        assert len(f) <= 1000 + 20 and ip_checksum_ok(bytes(f))
    whole = reassemble4(frags)
    assert l4_checksum_ok(whole)
    u = IP(whole)[UDP]
    conn = env.nat.connections()[0]
    assert u.sport == conn.nat_port and bytes(u.payload) == payload
    # The reply, fragmented, goes back to the function.
    env.dp.set_neighbor(FN4, FN_MAC, 0)
    reply = IP(src=FAR4, dst=ENI4, id=99) / UDP(sport=53, dport=conn.nat_port) / Raw(payload[:2000])
    sent = []
    for f in frags_v4(reply, 1200, GW_MAC, ENI_MAC):
        sent += env.handle(env.punt(f, 1, "FRAGMENT"))
    assert len(sent) == 2 and all(p == 0 for p, _, _ in sent)
    whole = reassemble4([Ether(f)[IP] for _, f, _ in sent])
    assert IP(whole).dst == FN4 and IP(whole)[UDP].dport == 4000 and l4_checksum_ok(whole)


def test_fragments_v6(env):
    env.dp.set_neighbor(DB6, DB_MAC, 1)
    payload = b"v6" * 1500
    pkt = (IPv6(src=FN6, dst=DB6) / IPv6ExtHdrFragment(id=0x1234)
           / UDP(sport=4000, dport=53) / Raw(payload))
    frames = [bytes(Ether(src=FN_MAC, dst=INSIDE_MAC) / f) for f in fragment6(pkt, 1280)]
    assert len(frames) == 3
    sent = []
    for f in reversed(frames):
        sent += env.handle(env.punt(f, 0, "FRAGMENT"))
    assert len(sent) == 3
    pieces = []
    for port, f, _ in sent:
        p = Ether(f)
        assert port == 1 and p.dst == DB_MAC and p[IPv6].src == ENI6 and len(p[IPv6]) <= 1280
        fh = p[IPv6ExtHdrFragment]
        assert fh.id == 0x1234
        pieces.append((fh.offset * 8, bytes(fh.payload), fh.m))
    pieces.sort()
    data = b"".join(d for _, d, _ in pieces)
    assert [m for _, _, m in pieces] == [1, 1, 0]
    whole = bytes(IPv6(src=ENI6, dst=DB6, nh=17, plen=len(data)) / Raw(data))
    assert l4_checksum_ok(whole) and bytes(IPv6(whole)[UDP].payload) == payload


def test_fragment_drops(make_env):
    env = make_env(frag_max=2)
    pkt = IP(src=FN4, dst=FAR4, id=1) / UDP(sport=4000, dport=53) / Raw(b"a" * 2000)
    frames = frags_v4(pkt, 800)
    # Overlap: a second fragment at offset 0 with other bytes.
    other = frags_v4(IP(src=FN4, dst=FAR4, id=1) / UDP(sport=4001, dport=53) / Raw(b"b" * 2000), 800)
    env.handle(env.punt(frames[0], 0, "FRAGMENT"), env.punt(frames[1], 0, "FRAGMENT"))
    env.handle(env.punt(other[1], 0, "FRAGMENT"))            # same offset, different bytes
    assert env.c("frag_dropped_overlap") == 1
    assert env.handle(env.punt(frames[2], 0, "FRAGMENT")) == []
    assert env.c("frag_late_discarded") == 1 and env.c("frag_reassembled") == 0
    # An exact duplicate is harmless.
    p2 = frags_v4(IP(src=FN4, dst=FAR4, id=2) / UDP(sport=4000, dport=53) / Raw(b"c" * 1000), 600)
    env.handle(env.punt(p2[0], 0, "FRAGMENT"), env.punt(p2[0], 0, "FRAGMENT"))
    # Too many in progress: a third datagram evicts the oldest (the dead one).
    p3 = frags_v4(IP(src=FN4, dst=FAR4, id=3) / UDP(sport=4000, dport=53) / Raw(b"d" * 1000), 600)
    env.handle(env.punt(p3[0], 0, "FRAGMENT"))
    assert env.c("frag_dropped_too_many") == 1
    # Timeout.
    env.advance(2500)
    env.sp.tick()
    assert env.c("frag_dropped_timeout") == 2 and env.sp.state()["frag_in_progress"] == 0
    # Too big: a fragment reaching past 65535 bytes.
    big = IP(src=FN4, dst=FAR4, id=9, flags="MF", frag=8180) / Raw(b"e" * 96)
    env.handle(env.punt(bytes(Ether(src=FN_MAC, dst=INSIDE_MAC) / big), 0, "FRAGMENT"))
    assert env.c("frag_dropped_too_big") == 1
    # A reassembled datagram the NAT drops (unsolicited inbound).
    nomatch = IP(src=FAR4, dst=ENI4, id=5) / UDP(sport=53, dport=999) / Raw(b"f" * 1000)
    for f in frags_v4(nomatch, 600, GW_MAC, ENI_MAC):
        assert env.handle(env.punt(f, 1, "FRAGMENT")) == []
    assert env.c("frag_dropped_nat") == 1 and env.c("frag_dropped_nat_in_no_match_udp") == 1
    assert env.c("slowpath_error") == 0


def test_fragmented_ping_to_gateway(env):
    pkt = IP(src=FN4, dst=GW4, id=7) / ICMP(type=8, id=1, seq=1) / Raw(b"p" * 2000)
    sent = []
    for f in frags_v4(pkt, 1000):
        sent += env.handle(env.punt(f, 0, "FRAGMENT"))
    assert len(sent) == 2 and env.c("echo_replied") == 1    # the reply fragmented to 1500
    whole = reassemble4([Ether(f)[IP] for _, f, _ in sent])
    rep = IP(whole)
    assert rep[ICMP].type == 0 and bytes(rep[ICMP].payload) == b"p" * 2000
    assert scapy_checksum(bytes(rep[ICMP])) == 0


# -- ports exhausted -------------------------------------------------------------------------

def test_ports_exhausted_calls_back_and_reruns_once(make_env):
    env = make_env(nat={"port_range": (1000, 1000)})
    env.outbound("udp", sport=1)                           # takes the only port
    frame = from_fn(4, FAR4, sport=2)
    p = env.punt(frame, 0, "PORTS_EXHAUSTED")
    env.handle(p)
    assert env.exhausted_calls == [(frame, 0)]
    assert env.dp.inputs == [(0, frame, None)]
    env.handle(p)                                           # came back exhausted: dropped
    assert len(env.dp.inputs) == 1
    env.advance(2000)
    env.sp.tick()
    env.exhausted_answer = False
    env.handle(p)
    assert len(env.dp.inputs) == 1
    assert env.c("exhausted") == 3 and env.c("exhausted_reinjected") == 1
    assert env.c("exhausted_dropped") == 2


def test_exhausted_frame_taken_by_the_callback_is_left_to_it(make_env):
    """on_exhausted returning None took the frame (the daemon re-runs it once an ENI is
    ready): the slow path neither re-runs nor drops it, and does not wait."""
    env = make_env(nat={"port_range": (1000, 1000)})
    env.outbound("udp", sport=1)
    frame = from_fn(4, FAR4, sport=2)
    env.sp.on_exhausted = lambda f, port, vnet: env.exhausted_calls.append((f, port, vnet))
    p = env.punt(frame, 0, "PORTS_EXHAUSTED")
    env.handle(p)
    env.handle(p)                       # each time it comes back: taken again, never dropped
    assert [(f, port) for f, port, _ in env.exhausted_calls] == [(frame, 0), (frame, 0)]
    assert env.dp.inputs == []
    assert env.c("exhausted_parked") == 2 and env.c("exhausted_dropped") == 0
    # A GSO batch is parked with its virtio-net header: re-run without it, it would be one
    # oversized frame.
    import framegen as fg
    gso = fg.udp(FN4, FAR4, 3, 53, payload=bytes(3000), needs_csum=True,
                 gso_type=fg.GSO_UDP_L4, gso_size=1000)
    env.handle(Punt(0, R["PORTS_EXHAUSTED"], bytes(gso[10:]), None, -1, bytes(gso[:10])))
    assert env.exhausted_calls[-1] == (bytes(gso[10:]), 0, bytes(gso[:10]))


# -- robustness ------------------------------------------------------------------------------

def valid_frames(env):
    _, out = env.outbound("udp")
    return {
        "ARP": arp_req(FN_MAC, FN4, GW4),
        "ICMP": bytes(Ether(src=FN_MAC, dst=INSIDE_MAC) / IP(src=FN4, dst=GW4) / ICMP(type=8)),
        "ICMP6": ns(FN6, GW6, FN_MAC),
        "ERR": from_customer(IP(src=SUBGW4, dst=ENI4) / ICMP(type=3) / Raw(bytes(Ether(out)[IP]))),
        "TTL_EXCEEDED": from_fn(4, FAR4, ttl=1),
        "TOO_BIG": from_fn(4, FAR4, payload=b"z" * 1500),
        "FRAGMENT": frags_v4(IP(src=FN4, dst=FAR4) / UDP() / Raw(b"x" * 100), 64)[0],
        "NEIGH_MISS": out,
    }


def test_malformed_punts_are_counted_not_raised(make_env):
    env = make_env(reraise=False)
    rng = random.Random(5)
    reasons = ["ARP", "ICMP", "TTL_EXCEEDED", "TOO_BIG", "FRAGMENT", "NEIGH_MISS",
               "PORTS_EXHAUSTED", "IPV4_BAD_IHL"]
    punts = []
    for name, frame in valid_frames(env).items():
        reason = R.get(name, R["ICMP"])
        for cut in range(0, len(frame), 3):
            for port in (0, 1):
                punts.append(Punt(port, reason, frame[:cut], 1 if name == "NEIGH_MISS" else None,
                                  -1, bytes(10)))
        for _ in range(50):
            b = bytearray(frame)
            for _ in range(rng.randrange(1, 6)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            punts.append(Punt(rng.randrange(2), R[rng.choice(reasons)], bytes(b), 1, -1, bytes(10)))
    for _ in range(200):
        punts.append(Punt(rng.randrange(3), R[rng.choice(reasons)],
                          bytes(rng.randrange(256) for _ in range(rng.randrange(80))), None, -1,
                          bytes(10)))
    env.exhausted_answer = False
    env.sp.handle(punts)
    env.sp.tick()
    c = env.sp.counters()
    # Every punt was accounted for by reason; no exception escaped, and none happened for
    # truncated or corrupted input (each is counted under a name saying why it was dropped).
    assert sum(v for k, v in c.items() if k.startswith("punt.")) == len(punts)
    assert c["arp_malformed"] > 0 and c["icmp_malformed"] > 0 and c["frag_malformed"] > 0
    assert c["unknown_port"] > 0 and c["punt_ignored"] > 0
    assert c.get("slowpath_error", 0) == 0, env.sp.last_error


def test_an_exception_is_counted_and_the_rest_handled(make_env):
    env = make_env(reraise=False)
    env.dp.fail_inject = ValueError("boom")
    p = env.punt(arp_req(FN_MAC, FN4, GW4), 0, "ARP")
    env.sp.handle([p, p])
    assert env.c("slowpath_error") == 2 and "boom" in env.sp.last_error
    env.dp.fail_inject = OSError(105, "No buffer space")
    env.sp.handle([p])
    assert env.c("inject_failed") == 1 and env.c("slowpath_error") == 2
    env.dp.fail_inject = None
    env.sp.handle([p])
    assert len(env.dp.sent) == 1 and env.c("arp_replied") == 1


def test_calls_match_the_real_dataplane():
    """The real DataPlane with no ports (no sockets, no traffic): the slow path's calls have
    the right signatures, and the data plane's refusals are counted, not raised."""
    nat = core.Nat()
    nat.add_eni(ENI4)
    dp = core.DataPlane(nat)
    sp = SlowPath(nat, dp, clock=core.DataPlane.now_ms, reraise=True,
                  ports=[PortInfo.inside(0, INSIDE_MAC, gw4=GW4, cidr4="10.200.0.0/24")])
    sp.handle([Punt(0, R["ARP"], arp_req(FN_MAC, FN4, GW4), None, -1, bytes(10))])
    assert dp.neighbor(FN4, 0) is None
    assert sp.counters() == {"punt.ARP": 1, "neigh_unsolicited_ignored": 1, "inject_failed": 1}
    sp.bind_inside(FN4, FN_MAC)                           # port 0 is not the data plane's
    assert sp.counters()["neigh_set_failed"] == 1
    sp.handle([Punt(0, R["PORTS_EXHAUSTED"], from_fn(4, FAR4), None, -1, bytes(10))])
    sp.on_exhausted = lambda frame, port, vnet: True
    sp.handle([Punt(0, R["PORTS_EXHAUSTED"], from_fn(4, FAR4), None, -1, bytes(10))])
    sp.tick()
    c = sp.counters()
    assert c["exhausted_dropped"] == 1 and c["exhausted_input_failed"] == 1


# -- more paths --------------------------------------------------------------------------------

def test_neigh_miss_towards_function_and_gso_kept(env):
    """A reply translated in whose function MAC is unknown: ARP from the gateway address on
    the inside port; a GSO frame keeps its size and virtio-net header."""
    _, out = env.outbound("tcp", dport=80)
    conn = env.nat.connections()[0]
    big = from_customer(IP(src=FAR4, dst=ENI4) / TCP(sport=80, dport=conn.nat_port, flags="SA")
                        / Raw(b"g" * 20000))
    buf = bytearray(big)
    assert env.nat.translate([buf], IN, env.now[0], eni=env.eni, check_mtu=False)[0][0] == FORWARD
    gso = struct.pack("<BBHHHH", 0, 1, 54, 1448, 0, 0)
    sent = env.handle(env.punt(bytes(buf), 1, "NEIGH_MISS", egress=0, vnet=gso))
    a = Ether(sent[0][1])[ARP]
    assert sent[0][0] == 0 and (a.psrc, a.pdst) == (GW4, FN4)
    sent = env.handle(env.punt(arp_req(FN_MAC, FN4, GW4, op=2), 0, "ARP"))
    assert len(sent) == 1
    port, frame, vnet = sent[0]
    assert port == 0 and vnet == gso and len(frame) == len(buf)
    assert frame[:6] == bytes.fromhex("020000000011") and frame[12:] == bytes(buf[12:])


def test_fragments_with_ports_exhausted_get_a_new_eni(make_env):
    env = make_env(nat={"port_range": (1000, 1000)})
    env.outbound("udp", sport=1)                            # the only port is taken

    def add_eni(frame, in_port, vnet):
        eni2 = env.nat.add_eni("10.0.2.4")
        env.nat.group_add_eni(env.grp, eni2)
        env.sp.add_port(PortInfo.for_eni(2, eni2, "02:00:00:00:02:04", addr4="10.0.2.4",
                                         cidr4="10.0.2.0/24", gw4="10.0.2.1"))
        env.dp.set_neighbor("10.0.2.1", GW_MAC, 2)
        return True

    env.sp.on_exhausted = add_eni
    pkt = IP(src=FN4, dst=FAR4, id=11) / UDP(sport=2, dport=53) / Raw(b"h" * 1500)
    sent = []
    for f in frags_v4(pkt, 1000):
        sent += env.handle(env.punt(f, 0, "FRAGMENT"))
    assert len(sent) == 2 and all(p == 2 for p, _, _ in sent)
    whole = reassemble4([Ether(f)[IP] for _, f, _ in sent])
    assert IP(whole).src == "10.0.2.4" and l4_checksum_ok(whole)
    assert env.c("exhausted_retried") == 1 and env.c("frag_forwarded") == 1


def test_fragments_v6_with_hop_by_hop(env):
    from scapy.layers.inet6 import IPv6ExtHdrHopByHop
    env.dp.set_neighbor(DB6, DB_MAC, 1)
    pkt = (IPv6(src=FN6, dst=DB6) / IPv6ExtHdrHopByHop() / IPv6ExtHdrFragment(id=77)
           / UDP(sport=4000, dport=53) / Raw(b"k" * 2000))
    frames = [bytes(Ether(src=FN_MAC, dst=INSIDE_MAC) / f) for f in fragment6(pkt, 1280)]
    sent = []
    for f in frames:
        sent += env.handle(env.punt(f, 0, "FRAGMENT"))
    assert len(sent) == 2
    data = b""
    for _, f, _ in sorted(sent, key=lambda x: Ether(x[1])[IPv6ExtHdrFragment].offset):
        p = Ether(f)
        assert p[IPv6].nh == 0 and p[IPv6ExtHdrHopByHop].nh == 44     # HBH stays in front
        assert p[IPv6].src == ENI6
        data += bytes(p[IPv6ExtHdrFragment].payload)
    whole = bytes(IPv6(src=ENI6, dst=DB6, nh=17, plen=len(data)) / Raw(data))
    assert l4_checksum_ok(whole) and bytes(IPv6(whole)[UDP].payload) == b"k" * 2000


def test_fragment4_copies_only_copied_options():
    opts = bytes([7, 7, 4]) + bytes(4) + bytes([0x83, 7, 4]) + bytes(4) + bytes([0, 0])  # RR, LSRR
    frame = bytes(Ether(src=FN_MAC, dst=INSIDE_MAC) / IP(src=FN4, dst=FAR4, id=3, options=[]) / Raw(b"x" * 1000))
    ip = bytearray(frame[14:])
    hdr = bytearray(ip[:20]) + opts
    hdr[0] = 0x40 | len(hdr) // 4
    full = bytearray(frame[:14]) + hdr + ip[20:]
    struct.pack_into("!H", full, 16, len(hdr) + 1000)
    struct.pack_into("!H", full, 24, 0)
    struct.pack_into("!H", full, 24, scapy_checksum(bytes(full[14:14 + len(hdr)])))
    parts = fragment4(full, 500)
    assert len(parts) == 3
    assert bytes(parts[0][34:34 + len(opts)]) == opts
    assert parts[1][14] & 15 == 7 and bytes(parts[1][34:42]) == bytes([0x83, 7, 4]) + bytes(5)
    assert all(ip_checksum_ok(bytes(p[14:])) and len(p) - 14 <= 500 for p in parts)
    assert b"".join(bytes(IP(bytes(p[14:])).payload) for p in parts) == b"x" * 1000


@pytest.mark.parametrize("seed", range(20))
def test_reassembler_round_trip(seed):
    """Our own fragmenters and the reassembler: any order, duplicates, both families."""
    rng = random.Random(seed)
    r = Reassembler()
    family = 4 if seed % 2 else 6
    payload = rng.randbytes(rng.randrange(1500, 9000))
    if family == 4:
        frame = bytes(Ether(src=FN_MAC, dst=INSIDE_MAC) / IP(src=FN4, dst=FAR4, id=seed) / UDP(sport=1, dport=2) / Raw(payload))
        parts = fragment4(frame, rng.choice([68, 300, 576, 1500]))
    else:
        frame = bytes(Ether(src=FN_MAC, dst=INSIDE_MAC) / IPv6(src=FN6, dst=FAR6) / UDP(sport=1, dport=2) / Raw(payload))
        parts = hp_fragment6(frame, rng.choice([1280, 1500, 600]), ident=seed)
    parts = parts + [rng.choice(parts)]                      # an exact duplicate
    rng.shuffle(parts)
    results = []
    for p in parts:
        status, res = r.add(bytes(p), parse_ip(p), 0, 0)
        assert status in ("wait", "done"), res
        if status == "done":
            results.append(res)
    assert len(results) == 1
    assert bytes(results[0].frame) == frame
    assert len(r) <= 1


def test_partial_checksums_are_finished_before_quoting_or_fragmenting(env):
    """Frames punted with NEEDS_CSUM carry only the pseudo-header sum: the slow path finishes
    the checksum before it quotes the frame or fragments it."""
    import framegen as fg
    f = fg.udp(FN4, FAR4, 4000, 53, ttl=1, payload=b"t" * 50, needs_csum=True)
    vnet, frame = bytes(f[:10]), bytes(f[10:])
    sent = env.handle(env.punt(frame, 0, "TTL_EXCEEDED", vnet=vnet))
    quote = bytes(Ether(sent[0][1])[ICMP].payload)
    assert not l4_checksum_ok(bytes(Ether(frame)[IP])) and l4_checksum_ok(quote)

    env.dp.set_neighbor(SUBGW4, GW_MAC, 1)
    f = fg.udp(FN4, FAR4, 4000, 53, payload=bytes(range(200)) * 10, needs_csum=True)
    vnet, frame = bytes(f[:10]), bytes(f[10:])
    sent = env.handle(env.punt(frame, 0, "TOO_BIG", vnet=vnet))
    assert len(sent) == 2 and all(v is None for _, _, v in sent)
    whole = reassemble4([Ether(x)[IP] for _, x, _ in sent])
    assert IP(whole).src == ENI4 and l4_checksum_ok(whole)


def test_functions_claim_only_their_own_addresses(env):
    """With the functions' MACs bound, an ARP / NDP claim on the functions' side for another
    function's address or the gateway's teaches nothing and is counted."""
    other_mac, other4 = "02:00:00:00:00:12", "10.200.0.12"
    env.sp.bind_inside(FN4, FN_MAC)
    env.sp.bind_inside(FN6, FN_MAC)
    env.sp.bind_inside(other4, other_mac)
    env.handle(env.punt(arp_req(FN_MAC, FN4, GW4), 0, "ARP"))
    assert env.dp.neighbor(FN4, 0) == FN_MAC
    # The other function claims FN4, then the gateway's address (gratuitous ARP and a reply).
    env.handle(env.punt(arp_req(other_mac, FN4, FN4), 0, "ARP"))
    env.handle(env.punt(arp_req(other_mac, GW4, FN4, op=2), 0, "ARP"))
    assert env.dp.neighbor(FN4, 0) == FN_MAC and env.dp.neighbor(GW4, 0) is None
    # The same over NDP: an NS from FN6 with the other function's MAC.
    env.handle(env.punt(ns(FN6, GW6, other_mac), 0, "ICMP"))
    assert env.dp.neighbor(FN6, 0, with_pinned=True) == (FN_MAC, True)     # bound: pinned
    # (The gateway's own address never reaches learning: counted as claims are the other two.)
    assert env.c("neigh_claim_ignored") == 2
    env.handle(env.punt(ns(FN6, GW6, FN_MAC), 0, "ICMP"))
    assert env.dp.neighbor(FN6, 0) == FN_MAC


def test_each_port_has_its_own_reassembly_budget():
    """A port flooding first fragments evicts its own oldest datagrams only: a datagram in
    progress on another port survives the flood and completes."""
    r = Reassembler(max_datagrams=4)
    frame = bytes(Ether(src=FN_MAC, dst=INSIDE_MAC) / IP(src=FN4, dst=FAR4, id=7)
                  / UDP(sport=1, dport=2) / Raw(bytes(3000)))
    first, *rest = fragment4(frame, 1500)
    assert r.add(bytes(first), parse_ip(first), 0, 0)[0] == "wait"        # port 0, in progress
    for ident in range(100):                                              # port 1 floods
        f = fragment4(bytes(Ether(src=DB_MAC, dst=ENI_MAC) / IP(src=DB4, dst=ENI4, id=ident)
                            / UDP(sport=1, dport=2) / Raw(bytes(3000))), 1500)[0]
        r.add(bytes(f), parse_ip(f), 1, 0)
    assert r.evicted == 100 - 4
    statuses = [r.add(bytes(p), parse_ip(p), 0, 0)[0] for p in rest]
    assert statuses[-1] == "done"
