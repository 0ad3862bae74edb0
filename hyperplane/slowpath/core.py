"""The slow path: everything the C fast path punts, handled in Python (scapy builds the
replies). See the package docstring for the API."""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import struct
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

from scapy.layers.inet import ICMP, IP
from scapy.layers.inet6 import (ICMPv6EchoReply, ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6NDOptDstLLAddr,
                                ICMPv6NDOptSrcLLAddr, IPv6)
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw
from scapy.utils6 import in6_getnsma, in6_getnsmac

from .. import vocab
from ..connection import mac_bytes
from ._frag import Reassembler, fragment4, fragment6
from ._icmp import Untracked, build_error, icmp_checksum_ok, is_error, translate_error
from ._wire import (ETH_LEN, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, PROTO_ICMP, PROTO_ICMPV6,
                    PROTO_TCP, PROTO_UDP, IpInfo, complete_partial_csum, in_networks, ip_packed,
                    ip_str, mac_bytes, mac_str, parse_ip)

log = logging.getLogger(__name__)

_LINK_LOCAL6 = ipaddress.ip_network("fe80::/10")
_ZERO_MAC = b"\0" * 6
ALL_NODES6 = "ff02::1"
ALL_NODES6_MAC = "33:33:00:00:00:01"


def _networks(value) -> tuple:
    if value is None:
        return ()
    if isinstance(value, (str, ipaddress.IPv4Network, ipaddress.IPv6Network)):
        value = (value,)
    return tuple(ipaddress.ip_network(v, strict=False) for v in value)


@dataclass
class PortInfo:
    """One data-plane port as the slow path needs to know it.

    role "inside": addr4 / addr6 are the functions' gateway addresses, cidr4 / cidr6 the
    inside networks (a prefix or a list of them). role "eni": eni is the Nat's ENI id, addr4 /
    addr6 the ENI's addresses, cidr4 / cidr6 its subnet, gw4 / gw6 the subnet's gateway (the
    next hop for destinations off the subnet). A family without a prefix is all on-link."""
    port: int
    mac: str | bytes
    role: str = "eni"
    eni: int | None = None
    addr4: str | None = None
    addr6: str | None = None
    cidr4: object = None
    cidr6: object = None
    gw4: str | None = None
    gw6: str | None = None
    mtu: int = 1500
    mac_b: bytes = field(init=False, repr=False)
    nets4: tuple = field(init=False, repr=False)
    nets6: tuple = field(init=False, repr=False)

    def __post_init__(self):
        if self.role not in ("inside", "eni"):
            raise ValueError(f"role must be 'inside' or 'eni', not {self.role!r}")
        if self.role == "eni" and self.eni is None:
            raise ValueError("an ENI port needs eni=<ENI id>")
        self.mac_b = mac_bytes(self.mac)
        self.mac = mac_str(self.mac_b)
        for name, version in (("addr4", 4), ("addr6", 6), ("gw4", 4), ("gw6", 6)):
            v = getattr(self, name)
            if v is not None:
                ip = ipaddress.ip_address(v)
                if ip.version != version:
                    raise ValueError(f"{name} must be an IPv{version} address, not {v}")
                setattr(self, name, str(ip))
        self.nets4 = _networks(self.cidr4)
        self.nets6 = _networks(self.cidr6)
        if any(n.version != 4 for n in self.nets4) or any(n.version != 6 for n in self.nets6):
            raise ValueError("cidr4 / cidr6 must be IPv4 / IPv6 prefixes")
        if not 68 <= int(self.mtu) <= 65535:
            raise ValueError(f"mtu must be in 68..65535, not {self.mtu}")

    @classmethod
    def inside(cls, port, mac, gw4=None, gw6=None, cidr4=None, cidr6=None, mtu=1500):
        return cls(port=port, mac=mac, role="inside", addr4=gw4, addr6=gw6, cidr4=cidr4,
                   cidr6=cidr6, mtu=mtu)

    @classmethod
    def for_eni(cls, port, eni, mac, addr4=None, addr6=None, cidr4=None, cidr6=None,
                gw4=None, gw6=None, mtu=1500):
        return cls(port=port, mac=mac, role="eni", eni=eni, addr4=addr4, addr6=addr6,
                   cidr4=cidr4, cidr6=cidr6, gw4=gw4, gw6=gw6, mtu=mtu)

    @property
    def is_inside(self) -> bool:
        return self.role == "inside"

    def addr(self, family: int) -> str | None:
        return self.addr4 if family == 4 else self.addr6

    def on_link(self, addr) -> bool:
        ip = ipaddress.ip_address(addr)
        nets = self.nets4 if ip.version == 4 else self.nets6
        return not nets or any(ip in n for n in nets)

    def next_hop(self, dst: str) -> str | None:
        """Whose MAC a frame for dst leaving this port needs; None: no route."""
        if self.is_inside or self.on_link(dst):
            return dst
        return self.gw4 if ipaddress.ip_address(dst).version == 4 else self.gw6

    def learnable(self, addr: str) -> bool:
        """Neighbour entries come only from addresses on this port's networks (and IPv6
        link-local ones, which a subnet gateway may use)."""
        ip = ipaddress.ip_address(addr)
        if ip.is_unspecified or ip.is_multicast or ip.is_loopback:
            return False
        if ip.version == 6 and ip in _LINK_LOCAL6:
            return True
        return self.on_link(ip)


class TokenBucket:
    def __init__(self, rate: float, burst: float, now: int):
        self.rate, self.burst = float(rate), float(burst)
        self.tokens, self.last = float(burst), now

    def take(self, now: int) -> bool:
        if now > self.last:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate / 1000.0)
            self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass
class _Pending:
    """Frames waiting for a next hop's MAC; groups are frames that go together (fragments)."""
    family: int
    deadline: int
    next_try: int
    tries: int = 1
    groups: list = field(default_factory=list)     # list of lists of (bytearray, vnet)

    @property
    def frames(self) -> int:
        return sum(len(g) for g in self.groups)


def _fields(p):
    """(in_port, reason, frame, out_port, vnet) of a Punt, whatever its field names."""
    if isinstance(p, tuple) and len(p) == 3:
        return p[0], p[1], p[2], None, None
    in_port = p.in_port if hasattr(p, "in_port") else p.port
    out_port = p.out_port if hasattr(p, "out_port") else getattr(p, "egress", None)
    return in_port, p.reason, p.frame, out_port, getattr(p, "vnet", None)


class SlowPath:
    """Handles what the data plane punts: ARP, NDP, ICMP (echo to the gateways, errors that
    quote a tracked flow), neighbour misses, TTL expiry, frames too big for the egress MTU,
    fragments and port exhaustion."""

    def __init__(self, nat, dp, clock=None, ports=(), on_exhausted=None, *,
                 icmp_rate=100.0, icmp_burst=None, neigh_per_hop=16, neigh_total=1024,
                 neigh_max_pending=256, neigh_timeout_ms=3000, neigh_retry_ms=250,
                 frag_max=64, frag_timeout_ms=2000, frag_max_size=65535,
                 exhausted_window_ms=1000, reraise=False):
        self.nat, self.dp = nat, dp
        self.clock = clock or (lambda: int(time.monotonic() * 1000))
        self.on_exhausted = on_exhausted
        self.ports: dict[int, PortInfo] = {}
        self.inside: PortInfo | None = None
        self._eni_port: dict[int, PortInfo] = {}
        for info in ports:
            self.add_port(info)
        self.neigh_per_hop = neigh_per_hop
        self.neigh_total = neigh_total
        self.neigh_max_pending = neigh_max_pending
        self.neigh_timeout_ms = neigh_timeout_ms
        self.neigh_retry_ms = neigh_retry_ms
        self._inside_bindings: dict[str, bytes] = {}     # function address -> its MAC
        self._pending: dict[tuple, _Pending] = {}
        self._queued = 0
        now = self.clock()
        self._bucket = TokenBucket(icmp_rate, icmp_burst or max(1.0, icmp_rate), now)
        self._reasm = Reassembler(frag_max, frag_timeout_ms, frag_max_size)
        self._exhausted_recent: OrderedDict = OrderedDict()
        self.exhausted_window_ms = exhausted_window_ms
        self.reraise = reraise
        self.last_error: str | None = None
        self._c = Counter()

    # -- configuration -------------------------------------------------------------------------

    def add_port(self, info: PortInfo) -> None:
        old = self.ports.get(info.port)
        if old is not None and not old.is_inside:
            self._eni_port.pop(old.eni, None)
        if info.is_inside:
            if self.inside is not None and self.inside.port != info.port:
                raise ValueError("there is already an inside port")
            self.inside = info
        else:
            self._eni_port[info.eni] = info
        self.ports[info.port] = info

    def remove_port(self, port: int) -> None:
        info = self.ports.pop(port, None)
        if info is None:
            return
        if info.is_inside:
            self.inside = None
        else:
            self._eni_port.pop(info.eni, None)
        for key in [k for k in self._pending if k[0] == port]:
            self._drop_pending(key, "neigh_queue_dropped")

    def counters(self) -> dict:
        return dict(sorted(self._c.items()))

    def state(self) -> dict:
        """Gauges: next hops being resolved, frames waiting for them, datagrams in reassembly."""
        return {"neigh_pending": len(self._pending), "neigh_queued": self._queued,
                "frag_in_progress": len(self._reasm)}

    def _count(self, name: str, n: int = 1) -> None:
        self._c[name] += n

    # -- entry points ----------------------------------------------------------------------------

    def handle(self, punts) -> None:
        for p in punts:
            try:
                self._handle_one(p)
            except Exception as e:  # a malformed punt must never stop the data plane
                self._count("slowpath_error")
                self.last_error = f"{type(e).__name__}: {e}"
                log.debug("slow path error on %r", p, exc_info=True)
                if self.reraise:
                    raise

    def tick(self) -> None:
        """Retries and gives up neighbour resolution, expires reassembly; call every ~100 ms."""
        now = self.clock()
        for key in list(self._pending):
            pend = self._pending.get(key)
            if pend is None:
                continue
            port, nh = key
            info = self.ports.get(port)
            mac = self.dp.neighbor(nh, port) if info is not None else None
            if mac is not None:
                self._resolved(info, nh, mac)
            elif info is None or now >= pend.deadline:
                self._count("neigh_failed")
                self._drop_pending(key, "neigh_timeout_dropped")
            elif now >= pend.next_try:
                self._solicit(info, nh)
                pend.next_try = now + self.neigh_retry_ms * (2 ** pend.tries)
                pend.tries += 1
                self._count("neigh_retried")
        timed_out = self._reasm.expire(now)
        if timed_out:
            self._count("frag_dropped_timeout", timed_out)
        cutoff = now - self.exhausted_window_ms
        while self._exhausted_recent and next(iter(self._exhausted_recent.values())) < cutoff:
            self._exhausted_recent.popitem(last=False)

    def _handle_one(self, p) -> None:
        in_port, reason, frame, out_port, vnet = _fields(p)
        name = vocab.REASONS[reason] if 0 <= reason < len(vocab.REASONS) else str(reason)
        self._count("punt." + name)
        info = self.ports.get(in_port)
        if info is None:
            self._count("unknown_port")
            return
        if vnet is not None and (len(vnet) != 10 or not any(vnet)):
            vnet = None
        frame = bytes(frame)
        if name == "ARP":
            self._arp(info, frame)
        elif name == "ICMP":
            self._icmp(info, frame, vnet)
        elif name == "NEIGH_MISS":
            self._neigh_miss(out_port, frame, vnet)
        elif name == "TTL_EXCEEDED":
            self._ttl_exceeded(info, frame, vnet)
        elif name == "TOO_BIG":
            self._too_big(info, frame, vnet)
        elif name == "FRAGMENT":
            self._fragment(info, frame)
        elif name == "PORTS_EXHAUSTED":
            self._exhausted(info, frame, vnet)
        else:
            self._count("punt_ignored")

    # -- sending ---------------------------------------------------------------------------------

    def _inject(self, port: int, frame, vnet=None) -> bool:
        try:
            self.dp.inject(port, bytes(frame), vnet)
        except OSError:
            self._count("inject_failed")
            return False
        self._count("injected")
        return True

    def _forward(self, out: PortInfo, frames: list) -> None:
        """Sends frames (bytearray, vnet) that share one destination out of `out`: fills in
        the MACs from the neighbour table, or queues them and resolves the next hop."""
        ip = parse_ip(frames[0][0])
        nh = out.next_hop(ip.dst_str) if ip is not None else None
        if nh is None:
            self._count("no_route", len(frames))
            return
        mac = self.dp.neighbor(nh, out.port)
        if mac is not None:
            self._send_with_mac(out, frames, mac_bytes(mac))
        else:
            self._enqueue(out, nh, ip.family, frames)

    def _send_with_mac(self, out: PortInfo, frames: list, mac: bytes) -> None:
        for f, vnet in frames:
            f[0:6] = mac
            f[6:12] = out.mac_b
            self._inject(out.port, f, vnet)

    def _fit(self, frames: list, mtu: int, ident=None, unfrag_len=None, refrag=False) -> list:
        """Fragments what does not fit mtu (GSO frames are left alone): IPv4 without DF and
        IPv6 (frames the slow path builds or reassembled); IPv4 with DF is dropped unless
        refrag (a datagram that arrived fragmented)."""
        out = []
        for f, vnet in frames:
            ip = parse_ip(f)
            if ip is None or ip.end - ip.l3 <= mtu or (vnet is not None and vnet[1]):
                out.append((f, vnet))
                continue
            if ip.family == 4:
                if ip.df and not refrag:
                    self._count("too_big_dropped_df")
                    continue
                pieces = fragment4(f, mtu)
            else:
                if ident is None:
                    ident = struct.unpack("!I", os.urandom(4))[0]
                pieces = fragment6(f, mtu, ident, unfrag_len)
            self._count("fragments_sent", len(pieces))
            out.extend((p, None) for p in pieces)
        return out

    # -- neighbour resolution --------------------------------------------------------------------

    def _enqueue(self, out: PortInfo, nh: str, family: int, frames: list) -> None:
        key = (out.port, nh)
        pend = self._pending.get(key)
        if self._queued + len(frames) > self.neigh_total:
            self._count("neigh_queue_dropped", len(frames))
            return
        if pend is None:
            if len(self._pending) >= self.neigh_max_pending:
                self._count("neigh_queue_dropped", len(frames))
                return
            now = self.clock()
            pend = self._pending[key] = _Pending(family, now + self.neigh_timeout_ms,
                                                 now + self.neigh_retry_ms)
            self._solicit(out, nh)
        if len(pend.groups) >= self.neigh_per_hop:
            self._count("neigh_queue_dropped", len(frames))
            return
        pend.groups.append(frames)
        self._queued += len(frames)
        self._count("neigh_queued", len(frames))

    def _drop_pending(self, key, counter: str) -> None:
        pend = self._pending.pop(key, None)
        if pend is not None:
            n = pend.frames
            self._queued -= n
            if n:
                self._count(counter, n)

    def _resolved(self, info: PortInfo, addr: str, mac) -> None:
        pend = self._pending.pop((info.port, addr), None)
        if pend is None:
            return
        self._queued -= pend.frames
        self._count("neigh_resolved")
        m = mac_bytes(mac)
        for group in pend.groups:
            self._send_with_mac(info, group, m)
            self._count("neigh_queue_sent", len(group))

    def _solicit(self, info: PortInfo, addr: str) -> None:
        ip = ipaddress.ip_address(addr)
        src = info.addr(ip.version)
        if src is None:
            self._count("neigh_no_source")
            return
        if ip.version == 4:
            pkt = (Ether(src=info.mac, dst="ff:ff:ff:ff:ff:ff")
                   / ARP(op=1, hwsrc=info.mac, psrc=src, hwdst="00:00:00:00:00:00", pdst=addr))
            self._count("arp_request_sent")
        else:
            nsma = in6_getnsma(ip.packed)
            pkt = (Ether(src=info.mac, dst=in6_getnsmac(nsma))
                   / IPv6(src=src, dst=socket.inet_ntop(socket.AF_INET6, nsma), hlim=255)
                   / ICMPv6ND_NS(tgt=addr) / ICMPv6NDOptSrcLLAddr(lladdr=info.mac))
            self._count("ns_sent")
        self._inject(info.port, bytes(pkt))

    def bind_inside(self, addr: str, mac) -> None:
        """A function's address and MAC: on the functions' side, only that MAC may claim
        that address, and no other address may be claimed (the gateway's, anyone else's)."""
        self._inside_bindings[str(ipaddress.ip_address(addr))] = mac_bytes(mac)

    def _learn(self, info: PortInfo, addr: str, mac: bytes, frame: bytes) -> None:
        if mac == _ZERO_MAC or mac[0] & 1:
            self._count("neigh_bad_mac")
            return
        if (info.is_inside and self._inside_bindings
                and self._inside_bindings.get(str(ipaddress.ip_address(addr))) != bytes(mac)):
            self._count("neigh_claim_ignored")
            return
        if mac != frame[6:12]:
            # The link-layer address claimed inside ARP / NDP differs from the frame's own
            # source: a forged or corrupted announcement must not redirect a neighbour.
            self._count("neigh_mac_mismatch")
            return
        m = mac_str(mac)
        if self.dp.neighbor(addr, info.port) != m:
            try:
                self.dp.set_neighbor(addr, m, info.port)
            except OSError:            # table full, or a port the data plane does not have
                self._count("neigh_set_failed")
                return
            self._count("neigh_learned")
        self._resolved(info, addr, m)

    def _known(self, info: PortInfo, addr: str) -> bool:
        return (info.port, addr) in self._pending or self.dp.neighbor(addr, info.port) is not None

    def _neigh_miss(self, out_port, frame: bytes, vnet) -> None:
        out = self.ports.get(out_port) if out_port is not None else None
        if out is None:
            self._count("neigh_miss_bad_port")
            return
        if parse_ip(frame) is None:
            self._count("neigh_miss_malformed")
            return
        self._forward(out, [(bytearray(frame), vnet)])

    # -- ARP -------------------------------------------------------------------------------------

    def _arp(self, info: PortInfo, frame: bytes) -> None:
        if len(frame) < ETH_LEN + 28 or struct.unpack_from("!H", frame, 12)[0] != ETH_P_ARP:
            self._count("arp_malformed")
            return
        htype, ptype, hlen, plen, op = struct.unpack_from("!HHBBH", frame, ETH_LEN)
        if (htype, ptype, hlen, plen) != (1, ETH_P_IP, 6, 4) or op not in (1, 2):
            self._count("arp_malformed")
            return
        sha, spa = frame[22:28], ip_str(frame[28:32])
        tpa = ip_str(frame[38:42])
        mine = info.addr4
        for_us = mine is not None and tpa == mine
        if mine is not None and spa == mine:
            self._count("arp_conflict")
            return
        if spa != "0.0.0.0" and info.learnable(spa):
            if op == 2 or for_us or self._known(info, spa):
                self._learn(info, spa, sha, frame)
        if op == 1 and for_us:
            reply = (Ether(src=info.mac, dst=mac_str(sha))
                     / ARP(op=2, hwsrc=info.mac, psrc=mine, hwdst=mac_str(sha), pdst=spa))
            if self._inject(info.port, bytes(reply)):
                self._count("arp_replied")
        elif op == 2:
            self._count("arp_reply_received")
        else:
            self._count("arp_ignored")

    # -- ICMP / ICMPv6 ---------------------------------------------------------------------------

    def _parse(self, frame, what: str) -> IpInfo | None:
        if len(frame) < ETH_LEN:
            self._count(what + "_malformed")
            return None
        et = struct.unpack_from("!H", frame, 12)[0]
        ip = parse_ip(frame) if et in (ETH_P_IP, ETH_P_IPV6) else None
        if ip is None or (ip.family == 4) != (et == ETH_P_IP):
            self._count(what + "_malformed")
            return None
        return ip

    def _icmp(self, info: PortInfo, frame: bytes, vnet) -> None:
        ip = self._parse(frame, "icmp")
        if ip is None:
            return
        if ip.is_fragment:
            self._fragment(info, frame)
            return
        if ip.proto not in (PROTO_ICMP, PROTO_ICMPV6) or ip.end - ip.l4 < 8:
            self._count("icmp_malformed")
            return
        t = frame[ip.l4]
        if ip.family == 6:
            if t == 135:
                return self._ns(info, frame, ip)
            if t == 136:
                return self._na(info, frame, ip)
            if t in (133, 134, 137):
                return self._count({133: "nd_ignored_rs", 134: "nd_ignored_ra",
                                    137: "nd_ignored_redirect"}[t])
            if t in (130, 131, 132, 143):
                return self._count("mld_ignored")
        if t == (8 if ip.family == 4 else 128):
            return self._echo(info, frame, ip)
        if is_error(ip, t):
            return self._icmp_error(info, frame, ip)
        self._count("icmp_dropped_other" if info.is_inside else "icmp_dropped_unsolicited")

    def _echo(self, info: PortInfo, frame: bytes, ip: IpInfo) -> None:
        if not info.is_inside:
            self._count("echo_dropped_eni")       # V2N never answers for the ENI
            return
        gw = info.addr(ip.family)
        if gw is None or ip.dst != ip_packed(gw):
            self._count("echo_dropped_outbound")  # V2N carries TCP and UDP only
            return
        if not icmp_checksum_ok(frame, ip):
            self._count("icmp_bad_checksum")
            return
        ident, seq = struct.unpack_from("!HH", frame, ip.l4 + 4)
        data = Raw(bytes(frame[ip.l4 + 8:ip.end]))
        eth = Ether(src=info.mac, dst=mac_str(frame[6:12]))
        if ip.family == 4:
            pkt = eth / IP(src=gw, dst=ip.src_str, ttl=64) / ICMP(type=0, id=ident, seq=seq) / data
        else:
            pkt = eth / IPv6(src=gw, dst=ip.src_str, hlim=64) / ICMPv6EchoReply(id=ident, seq=seq) / data
        sent = [self._inject(info.port, f) for f, _ in self._fit([(bytearray(bytes(pkt)), None)],
                                                                  info.mtu)]
        if sent and all(sent):
            self._count("echo_replied")

    def _icmp_error(self, info: PortInfo, frame: bytes, ip: IpInfo) -> None:
        direction = vocab.OUT if info.is_inside else vocab.IN
        buf = bytearray(frame)
        try:
            conn = translate_error(buf, ip, direction, self.nat, self.clock(),
                                   None if info.is_inside else info.eni)
        except Untracked as why:
            self._count(f"icmp_dropped_{why.args[0]}")
            return
        if direction == vocab.IN:
            out = self.inside
        else:
            out = self._eni_port.get(conn.eni)
        if out is None:
            self._count("icmp_error_no_port")
            return
        frames = self._fit([(buf, None)], out.mtu)
        if frames:
            self._forward(out, frames)
            self._count("icmp_error_translated_in" if direction == vocab.IN
                        else "icmp_error_translated_out")

    # -- NDP -------------------------------------------------------------------------------------

    def _nd_options(self, frame: bytes, start: int, end: int) -> dict | None:
        opts = {}
        p = start
        while p + 2 <= end:
            length = frame[p + 1] * 8
            if length == 0 or p + length > end:
                return None
            opts.setdefault(frame[p], bytes(frame[p:p + length]))
            p += length
        return opts

    def _nd_valid(self, frame: bytes, ip: IpInfo, size: int) -> bool:
        if ip.ttl != 255 or frame[ip.l4 + 1] != 0 or ip.end - ip.l4 < size:
            self._count("nd_invalid")
            return False
        if not icmp_checksum_ok(frame, ip):
            self._count("icmp_bad_checksum")
            return False
        return True

    def _ns(self, info: PortInfo, frame: bytes, ip: IpInfo) -> None:
        if not self._nd_valid(frame, ip, 24):
            return
        target = ip_str(frame[ip.l4 + 8:ip.l4 + 24])
        opts = self._nd_options(frame, ip.l4 + 24, ip.end)
        if opts is None:
            self._count("nd_invalid")
            return
        slla = opts.get(1)
        slla = slla[2:8] if slla is not None and len(slla) >= 8 else None
        src = ip.src_str
        mine = info.addr6
        dad = src == "::"
        for_us = mine is not None and target == mine
        if not dad and slla is not None and info.learnable(src) and (for_us or self._known(info, src)):
            self._learn(info, src, slla, frame)
        if not for_us:
            self._count("nd_ignored_ns")
            return
        if dad:
            dst, dmac = ALL_NODES6, ALL_NODES6_MAC
        else:
            dst, dmac = src, mac_str(slla if slla is not None else frame[6:12])
        na = (Ether(src=info.mac, dst=dmac) / IPv6(src=mine, dst=dst, hlim=255)
              / ICMPv6ND_NA(R=int(info.is_inside), S=int(not dad), O=1, tgt=mine)
              / ICMPv6NDOptDstLLAddr(lladdr=info.mac))
        if self._inject(info.port, bytes(na)):
            self._count("nd_replied")

    def _na(self, info: PortInfo, frame: bytes, ip: IpInfo) -> None:
        if not self._nd_valid(frame, ip, 24):
            return
        target = ip_str(frame[ip.l4 + 8:ip.l4 + 24])
        opts = self._nd_options(frame, ip.l4 + 24, ip.end)
        if opts is None or ipaddress.ip_address(target).is_multicast:
            self._count("nd_invalid")
            return
        if target == info.addr6:
            self._count("nd_conflict")
            return
        tlla = opts.get(2)
        mac = tlla[2:8] if tlla is not None and len(tlla) >= 8 else bytes(frame[6:12])
        if not info.learnable(target):
            self._count("nd_ignored_na")
            return
        self._learn(info, target, mac, frame)
        self._count("na_received")

    # -- TTL, MTU --------------------------------------------------------------------------------

    def _may_answer(self, info: PortInfo, frame: bytes, ip: IpInfo, what: str) -> bool:
        """Errors go back only to a function, or to a customer host about a tracked flow."""
        src = ipaddress.ip_address(ip.src)
        if src.is_unspecified or src.is_multicast or (src.version == 4 and ip.src == b"\xff" * 4):
            self._count(what + "_dropped_bad_source")
            return False
        if info.is_inside:
            nets = info.nets4 if ip.family == 4 else info.nets6
            if nets and not in_networks(ip.src, nets):
                self._count(what + "_dropped_bad_source")
                return False
            return True
        if ip.proto not in (PROTO_TCP, PROTO_UDP) or ip.l4 + 4 > ip.end:
            self._count(what + "_dropped_unsolicited")
            return False
        sport, dport = struct.unpack_from("!HH", frame, ip.l4)
        conn = self.nat.lookup(ip.src_str, ip.dst_str, sport, dport, ip.proto, vocab.IN,
                               self.clock())
        if conn is None or conn.eni != info.eni:
            self._count(what + "_dropped_unsolicited")
            return False
        return True

    def _send_error(self, info: PortInfo, frame: bytes, ip: IpInfo, kind: str, what: str,
                    mtu: int = 0) -> None:
        src = info.addr(ip.family)
        if src is None:
            self._count(what + "_dropped_no_source")
            return
        if not self._bucket.take(self.clock()):
            self._count("icmp_rate_limited")
            return
        out = build_error(kind, src, bytes(frame[ip.l3:ip.end]), ip.family, info.mac,
                          mac_str(frame[6:12]), mtu)
        if self._inject(info.port, out):
            self._count(what + "_sent")

    def _ttl_exceeded(self, info: PortInfo, frame: bytes, vnet) -> None:
        ip = self._parse(frame, "ttl")
        if ip is None or not self._may_answer(info, frame, ip, "ttl_exceeded"):
            return
        buf = bytearray(frame)
        complete_partial_csum(buf, vnet)
        self._send_error(info, buf, ip, "time_exceeded", "ttl_exceeded")

    def _egress_mtu(self, direction: int, out: PortInfo | None = None) -> int:
        params = getattr(self.nat, "params", None)
        nat_mtu = None
        if params is not None:
            nat_mtu = params.mtu_outside if direction == vocab.OUT else params.mtu_inside
        if out is None:
            return nat_mtu or 1500
        return min(out.mtu, nat_mtu) if nat_mtu else out.mtu

    def _too_big(self, info: PortInfo, frame: bytes, vnet) -> None:
        ip = self._parse(frame, "too_big")
        if ip is None:
            return
        direction = vocab.OUT if info.is_inside else vocab.IN
        buf = bytearray(frame)
        complete_partial_csum(buf, vnet)
        if ip.family == 4 and not ip.df:
            self._count("too_big_fragmented")
            self._translate_and_send(info, buf, "too_big")
            return
        if self._may_answer(info, frame, ip, "too_big"):
            self._send_error(info, buf, ip, "too_big", "too_big",
                             mtu=self._egress_mtu(direction))

    # -- translation of whole datagrams ----------------------------------------------------------

    def _translate(self, frame: bytearray, direction: int, eni: int):
        try:
            return self.nat.translate([frame], direction, self.clock(), eni=eni, vnet=False,
                                      check_mtu=False)[0]
        except TypeError as e:   # an implementation without check_mtu
            if "check_mtu" not in str(e):
                raise
            return self.nat.translate([frame], direction, self.clock(), eni=eni, vnet=False)[0]

    def _translate_and_send(self, info: PortInfo, frame: bytearray, what: str, frag_size=None,
                            ident=None, unfrag_len=None, retried=False) -> None:
        """Translates a whole datagram the fast path could not (too big, reassembled) and
        sends it, fragmented to the egress MTU."""
        direction = vocab.OUT if info.is_inside else vocab.IN
        original = bytes(frame)
        verdict, reason, port, conn = self._translate(frame, direction,
                                                      0 if info.is_inside else info.eni)
        name = vocab.REASONS[reason]
        if verdict == vocab.FORWARD:
            out = self.inside if port == 0 else self._eni_port.get(port - 1)
            if out is None:
                self._count(what + "_dropped_no_port")
                return
            mtu = self._egress_mtu(direction, out)
            if frag_size:
                mtu = min(mtu, frag_size)
            frames = self._fit([(frame, None)], mtu, ident, unfrag_len, refrag=bool(frag_size))
            if frames:
                self._forward(out, frames)
                self._count(what + "_forwarded")
            return
        if verdict == vocab.PUNT:
            # Punts happen before any rewrite: the frame is still the original.
            if name == "PORTS_EXHAUSTED" and not retried:
                self._count("exhausted")
                cb = self.on_exhausted
                if cb is not None and cb(original, info.port):
                    self._count("exhausted_retried")
                    self._translate_and_send(info, bytearray(original), what, frag_size, ident,
                                             unfrag_len, retried=True)
                else:
                    self._count("exhausted_dropped")
                return
            if name == "ICMP":
                ip = parse_ip(frame)
                if ip is not None and not ip.is_fragment:
                    self._icmp(info, original, None)
                    return
            if name == "TTL_EXCEEDED":
                self._ttl_exceeded(info, original, None)
                return
        self._count(what + "_dropped_nat")
        self._count(f"{what}_dropped_nat_{name.lower()}")

    # -- fragments -------------------------------------------------------------------------------

    def _fragment(self, info: PortInfo, frame: bytes) -> None:
        ip = self._parse(frame, "frag")
        if ip is None:
            return
        if not ip.is_fragment:
            self._count("frag_malformed")
            return
        evicted = self._reasm.evicted
        status, result = self._reasm.add(frame, ip, info.port, self.clock())
        if self._reasm.evicted != evicted:
            self._count("frag_dropped_too_many", self._reasm.evicted - evicted)
        if status == "drop":
            self._count("frag_late_discarded" if result == "dead" else f"frag_dropped_{result}")
            return
        if status == "wait":
            self._count("frag_queued")
            return
        self._count("frag_reassembled")
        self._translate_and_send(info, result.frame, "frag", frag_size=result.max_frag,
                                 ident=result.ident, unfrag_len=result.unfrag_len)

    # -- ports exhausted -------------------------------------------------------------------------

    def _exhausted(self, info: PortInfo, frame: bytes, vnet) -> None:
        self._count("exhausted")
        now = self.clock()
        key = (info.port, len(frame), hash(frame))
        seen = self._exhausted_recent.get(key)
        if seen is not None and now - seen < self.exhausted_window_ms:
            self._count("exhausted_dropped")   # re-run once: it came back exhausted again
            return
        cb = self.on_exhausted
        if cb is None or not cb(frame, info.port):
            self._count("exhausted_dropped")
            return
        self._exhausted_recent[key] = now
        self._exhausted_recent.move_to_end(key)
        while len(self._exhausted_recent) > 256:
            self._exhausted_recent.popitem(last=False)
        try:
            self.dp.input(info.port, frame, vnet)
        except OSError:
            self._count("exhausted_input_failed")
            return
        self._count("exhausted_reinjected")
