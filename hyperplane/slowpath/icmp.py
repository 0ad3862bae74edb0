"""ICMP and ICMPv6 in the slow path: echo, errors of tracked flows, TTL and MTU."""

from __future__ import annotations

import ipaddress
import struct

from scapy.layers.inet import ICMP, IP
from scapy.layers.inet6 import ICMPv6EchoReply, IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from .. import vocab
from ._icmp import Untracked, build_error, icmp_checksum_ok, is_error, translate_error
from ._wire import (ETH_LEN, ETH_P_IP, ETH_P_IPV6, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP,
                    PROTO_UDP, IpInfo, complete_partial_csum, in_networks, ip_packed, mac_str,
                    parse_ip)
from .ports import PortInfo

class IcmpMixin:
    """ICMP for the slow path: echo to the inside gateway, errors quoting a tracked flow
    translated both ways (RFC 5508), time exceeded and too big sent (rate-limited)."""


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
            if direction == vocab.OUT and conn.flags & vocab.F_HAIRPIN:
                # RFC 5508 section 7: an error about a hairpinned packet goes back to its
                # sender as the packet came, translated on both legs (now addressed to the
                # sender's ENI address, quoting the sender's external address and port).
                conn = translate_error(buf, parse_ip(buf), vocab.IN, self.nat, self.clock(),
                                       None, hairpin_leg=True)
                direction = vocab.IN
                self._count("icmp_error_hairpinned")
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
