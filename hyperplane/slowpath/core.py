"""The slow path: everything the C fast path punts, handled in Python (scapy builds the
replies). See the package docstring for the API; each concern has its module: ports,
neighbours (ARP, NDP, the next-hop queue), icmp, datagrams (fragments, whole datagrams)."""

from __future__ import annotations

import logging
import os
import struct
import time
from collections import Counter, OrderedDict

from .. import vocab
from ._frag import Reassembler, fragment4, fragment6
from ._wire import complete_partial_csum, mac_bytes, parse_ip
from .datagrams import DatagramMixin
from .icmp import IcmpMixin
from .neighbours import NeighbourMixin, Pending
from .ports import PortInfo, TokenBucket

log = logging.getLogger(__name__)


def _fields(p):
    """(in_port, reason, frame, out_port, vnet) of a Punt, whatever its field names."""
    if isinstance(p, tuple) and len(p) == 3:
        return p[0], p[1], p[2], None, None
    in_port = p.in_port if hasattr(p, "in_port") else p.port
    out_port = p.out_port if hasattr(p, "out_port") else getattr(p, "egress", None)
    return in_port, p.reason, p.frame, out_port, getattr(p, "vnet", None)


class SlowPath(NeighbourMixin, IcmpMixin, DatagramMixin):
    """Handles what the data plane punts: ARP, NDP, ICMP (echo to the gateways, errors that
    quote a tracked flow), neighbour misses, TTL expiry, frames too big for the egress MTU,
    fragments and port exhaustion."""

    def __init__(self, nat, dp, clock=None, ports=(), on_exhausted=None, *,
                 icmp_rate=100.0, icmp_burst=None, neigh_per_hop=512, neigh_total=4096,
                 neigh_hop_bytes=1 << 20, neigh_total_bytes=8 << 20,
                 neigh_max_pending=256, neigh_timeout_ms=3000, neigh_retry_ms=250,
                 neigh_age_ms=120_000,
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
        # Frames of tracked connections wait here while ARP / NDP resolve their next hop: as
        # many as the C punt policer lets through at once for NEIGH_MISS (HP_NEIGH_MISS_BURST)
        # fit one next hop's queue.
        self.neigh_hop_bytes = neigh_hop_bytes
        self.neigh_total_bytes = neigh_total_bytes
        self.neigh_max_pending = neigh_max_pending
        self.neigh_timeout_ms = neigh_timeout_ms
        self.neigh_retry_ms = neigh_retry_ms
        self.neigh_age_ms = neigh_age_ms
        self._neigh_changed: dict[tuple, int] = {}     # (port, addr) -> last unsolicited change
        self._inside_bindings: dict[str, bytes] = {}     # function address -> its MAC
        self._pending: dict[tuple, Pending] = {}
        self._queued = 0
        self._queued_bytes = 0
        now = self.clock()
        self._last_aged = now
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
        self._age_neighbours(now)
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

    # -- ports exhausted -------------------------------------------------------------------------

    def _exhausted(self, info: PortInfo, frame: bytes, vnet) -> None:
        self._count("exhausted")
        now = self.clock()
        key = (info.port, len(frame), hash(frame))
        seen = self._exhausted_recent.get(key)
        if seen is not None and now - seen < self.exhausted_window_ms:
            self._count("exhausted_dropped")   # re-run once: it came back exhausted again
            return
        if vnet is not None and not vnet[1]:
            # Not a GSO batch: finish an offloaded checksum, so that the frame is whole without
            # its virtio-net header (a callback that takes it re-runs it without one).
            buf = bytearray(frame)
            if complete_partial_csum(buf, vnet):
                frame, vnet = bytes(buf), None
        # A GSO frame keeps its virtio-net header: parked, it is re-run with it.
        taken = self.on_exhausted(frame, info.port, vnet) if self.on_exhausted else False
        if taken is None:
            self._count("exhausted_parked")     # the callback re-runs it when it can
            return
        if not taken:
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
