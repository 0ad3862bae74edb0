"""Neighbour resolution (ARP, NDP) and the queue of frames waiting for a next hop."""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass, field

from scapy.layers.inet6 import (ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6NDOptDstLLAddr,
                                ICMPv6NDOptSrcLLAddr, IPv6)
from scapy.layers.l2 import ARP, Ether
from scapy.utils6 import in6_getnsma, in6_getnsmac

from ._icmp import icmp_checksum_ok
from ._wire import ETH_LEN, ETH_P_ARP, ETH_P_IP, IpInfo, ip_str, mac_bytes, mac_str, parse_ip
from .ports import ALL_NODES6, ALL_NODES6_MAC, ZERO_MAC, PortInfo

NEIGH_LOCKTIME_MS = 1000      # a held entry changes MAC at most this often unsolicited (Linux's locktime)
NEIGH_AGE_EVERY_MS = 1000     # how often learned entries are aged

@dataclass
class Pending:
    """Frames waiting for a next hop's MAC; groups are frames that go together (fragments)."""
    family: int
    deadline: int
    next_try: int
    tries: int = 1
    groups: list = field(default_factory=list)     # list of lists of (bytearray, vnet)
    nbytes: int = 0

    @property
    def frames(self) -> int:
        return sum(len(g) for g in self.groups)


class NeighbourMixin:
    """Neighbour resolution for the slow path: frames queued per next hop (bounded) while
    ARP / NDP resolve it, ARP and NDP answered for our addresses, neighbours learned."""


    def _enqueue(self, out: PortInfo, nh: str, family: int, frames: list) -> None:
        # Bounded in frames and bytes, per next hop and in all (as Linux bounds an unresolved
        # neighbour's queue by unres_qlen_bytes): GSO frames are up to 64 KB each.
        key = (out.port, nh)
        pend = self._pending.get(key)
        size = sum(len(f) for f, _ in frames)
        if (self._queued + len(frames) > self.neigh_total
                or self._queued_bytes + size > self.neigh_total_bytes):
            self._count("neigh_queue_dropped", len(frames))
            return
        if pend is None:
            if len(self._pending) >= self.neigh_max_pending:
                self._count("neigh_queue_dropped", len(frames))
                return
            now = self.clock()
            pend = self._pending[key] = Pending(family, now + self.neigh_timeout_ms,
                                                 now + self.neigh_retry_ms)
            self._solicit(out, nh)
        if len(pend.groups) >= self.neigh_per_hop or pend.nbytes + size > self.neigh_hop_bytes:
            self._count("neigh_queue_dropped", len(frames))
            return
        pend.groups.append(frames)
        pend.nbytes += size
        self._queued += len(frames)
        self._queued_bytes += size
        self._count("neigh_queued", len(frames))

    def _drop_pending(self, key, counter: str) -> None:
        pend = self._pending.pop(key, None)
        if pend is not None:
            n = pend.frames
            self._queued -= n
            self._queued_bytes -= pend.nbytes
            if n:
                self._count(counter, n)

    def _resolved(self, info: PortInfo, addr: str, mac) -> None:
        pend = self._pending.pop((info.port, addr), None)
        if pend is None:
            return
        self._queued -= pend.frames
        self._queued_bytes -= pend.nbytes
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
        that address, and no other address may be claimed (the gateway's, anyone else's).
        The data plane knows it pinned: replies to the function never wait for ARP / NDP."""
        self._inside_bindings[str(ipaddress.ip_address(addr))] = mac_bytes(mac)
        if self.inside is not None:
            try:
                self.dp.set_neighbor(addr, mac_str(mac_bytes(mac)), self.inside.port, pinned=True)
            except OSError:        # a full table: the function's ARP / NDP still resolves it
                self._count("neigh_set_failed")

    def _learn(self, info: PortInfo, addr: str, mac: bytes, frame: bytes, reply: bool) -> None:
        """What the wire may teach (docs/semantics.md section 13): a reply (ARP reply, NA) to
        a solicitation of ours creates or changes an entry; any other ARP / NDP only confirms
        an entry we hold (same MAC), or changes it at most once per NEIGH_LOCKTIME_MS (a
        gratuitous announcement); a pinned entry (the lab's) never changes."""
        if mac == ZERO_MAC or mac[0] & 1:
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
        solicited = reply and (info.port, addr) in self._pending
        held = self.dp.neighbor(addr, info.port, with_pinned=True)
        if held is None and not solicited:
            self._count("neigh_unsolicited_ignored")
            return
        if held is not None and held[1]:
            if held[0] != m:
                self._count("neigh_pinned_kept")
            return
        if held is not None and held[0] != m and not solicited:
            now = self.clock()
            last = self._neigh_changed.get((info.port, addr))
            if last is not None and now - last < NEIGH_LOCKTIME_MS:
                self._count("neigh_change_limited")
                return
            self._neigh_changed[(info.port, addr)] = now
        try:
            self.dp.set_neighbor(addr, m, info.port)
        except OSError:        # table or port share full, a port gone, or pinned meanwhile
            self._count("neigh_set_failed")
            return
        self._count("neigh_learned" if held is None else
                    "neigh_confirmed" if held[0] == m else "neigh_changed")
        self._resolved(info, addr, m)

    def _age_neighbours(self, now: int) -> None:
        """Learned entries not confirmed for neigh_age_ms go (pinned ones stay); the next frame
        for one solicits it again."""
        if now - self._last_aged < NEIGH_AGE_EVERY_MS:
            return
        self._last_aged = now
        aged = self.dp.age_neighbors(self.neigh_age_ms)
        if aged:
            self._count("neigh_aged", aged)
        self._neigh_changed = {k: t for k, t in self._neigh_changed.items()
                               if now - t < NEIGH_LOCKTIME_MS}

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
            self._learn(info, spa, sha, frame, reply=op == 2)
        if op == 1 and for_us:
            reply = (Ether(src=info.mac, dst=mac_str(sha))
                     / ARP(op=2, hwsrc=info.mac, psrc=mine, hwdst=mac_str(sha), pdst=spa))
            if self._inject(info.port, bytes(reply)):
                self._count("arp_replied")
        elif op == 2:
            self._count("arp_reply_received")
        else:
            self._count("arp_ignored")

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
        if not dad and slla is not None and info.learnable(src):
            self._learn(info, src, slla, frame, reply=False)
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
        self._count("na_received")
        self._learn(info, target, mac, frame, reply=True)
