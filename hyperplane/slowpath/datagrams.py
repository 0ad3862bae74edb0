"""Fragments reassembled, and whole datagrams translated and fragmented again."""

from __future__ import annotations

from .. import vocab
from ._wire import parse_ip
from .ports import PortInfo

class DatagramMixin:
    """Whole datagrams the fast path could not translate (too big, fragmented): reassembled,
    translated, fragmented again to the egress MTU."""


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
                taken = self.on_exhausted(original, info.port, None) if self.on_exhausted else False
                if taken is None:
                    self._count("exhausted_parked")
                elif taken:
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
