"""TCP tracking (docs/semantics.md 2.2, 2.3): which flag combinations are valid, the window of
each direction as Linux's tcp_in_window keeps it, and the RFC 5961 rule for RSTs.

Sequence numbers are 32-bit and compared modulo 2^32 (before / after), as the C core does.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..vocab import F_SYN_REPLY, S
from .packet import TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, Packet
from .tracing import no_trace

TCP_URG = 32
MASK32 = 0xFFFFFFFF
TCP_MAX_WSCALE = 14
MAXACKWINCONST = 66000          # Linux: an ack may lag the data sent by this much at least
OPT_EOL, OPT_NOP, OPT_WINDOW, OPT_SACK_PERM, OPT_SACK = 0, 1, 3, 4, 5
TW_WSCALE, TW_SACK_PERM, TW_MAXACK_SET = 1, 2, 4

# Linux's tcp_valid_flags, with PSH, ECE and CWR set aside.
VALID_FLAGS = frozenset((
    TCP_SYN, TCP_SYN | TCP_URG, TCP_SYN | TCP_ACK, TCP_RST, TCP_RST | TCP_ACK,
    TCP_FIN | TCP_ACK, TCP_FIN | TCP_ACK | TCP_URG, TCP_ACK, TCP_ACK | TCP_URG))


def valid_flags(flags: int) -> bool:
    return flags & (TCP_FIN | TCP_SYN | TCP_RST | TCP_ACK | TCP_URG) in VALID_FLAGS


def before(a: int, b: int) -> bool:
    """a comes before b in sequence space."""
    d = (a - b) & MASK32
    return d >= 0x80000000


def after(a: int, b: int) -> bool:
    return before(b, a)


@dataclass
class TcpDir:
    """One direction, the sender's view (Linux ip_ct_tcp_state)."""
    td_end: int = 0         # highest seq + len sent
    td_maxend: int = 0      # highest ack + window of the other side
    td_maxwin: int = 0      # largest window seen; 0 = this side not seen yet
    td_maxack: int = 0      # highest ack sent (with TW_MAXACK_SET)
    scale: int = 0
    flags: int = 0


def new_window() -> list[TcpDir]:
    return [TcpDir(), TcpDir()]


def new_connection_window(pkt: Packet) -> list[TcpDir]:
    """The window state of a new connection from its first SYN (Linux tcp_new): the inside's
    side is known, the other not yet; the SYN then goes through in_window as any segment."""
    orig = TcpDir()
    orig.td_end = orig.td_maxend = segment_end(pkt)
    orig.td_maxwin = pkt.tcp_win or 1
    parse_options(pkt.tcp_options, orig)
    return [orig, TcpDir()]


def ignored(state: int, d: int, flags: int, orig: int) -> bool:
    """A segment Linux ignores (its state table's sIG): an ACK (no SYN, FIN or RST) from the
    reply side in SYN_SENT. Forwarded; nothing of the connection changes."""
    return (d != orig and state == S["SYN_SENT"]
            and flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN) == TCP_ACK)


def reopens(state: int, d: int, flags: int, orig: int) -> bool:
    """A SYN from the inside in TIME_WAIT or CLOSE starts a new connection on the entry."""
    return (d == orig and flags & (TCP_SYN | TCP_ACK) == TCP_SYN
            and state in (S["TIME_WAIT"], S["CLOSE"]))


def _options(opts: bytes):
    """(kind, body) of each well-formed option, stopping where Linux stops."""
    i = 0
    while i < len(opts):
        kind = opts[i]
        if kind == OPT_EOL:
            return
        if kind == OPT_NOP:
            i += 1
            continue
        if len(opts) - i < 2:
            return
        size = opts[i + 1]
        if size < 2 or size > len(opts) - i:
            return
        yield kind, opts[i + 2:i + size]
        i += size


def parse_options(opts: bytes, d: TcpDir) -> None:
    """Window scale and SACK-permitted from a SYN (Linux tcp_options)."""
    if not opts:
        return
    d.scale = d.flags = 0
    for kind, body in _options(opts):
        if kind == OPT_SACK_PERM and len(body) == 0:
            d.flags |= TW_SACK_PERM
        elif kind == OPT_WINDOW and len(body) == 1:
            d.scale = min(body[0], TCP_MAX_WSCALE)
            d.flags |= TW_WSCALE


def sack_edge(opts: bytes, sack: int) -> int:
    """The highest right edge of the first SACK option's blocks, if after sack."""
    for kind, body in _options(opts):
        if kind == OPT_SACK and len(body) >= 8 and len(body) % 8 == 0:
            for b in range(0, len(body), 8):
                right = int.from_bytes(body[b + 4:b + 8], "big")
                if after(right, sack):
                    sack = right
            return sack
    return sack


def segment_end(pkt: Packet) -> int:
    datalen = pkt.l3len - (pkt.l4 - pkt.l3) - pkt.l4hdr
    return (pkt.tcp_seq + datalen + bool(pkt.tcp_flags & TCP_SYN)
            + bool(pkt.tcp_flags & TCP_FIN)) & MASK32


def in_window(win: list[TcpDir], state: int, conn_flags: int, d: int, pkt: Packet,
              orig: int, trace=no_trace) -> list[TcpDir] | None:
    """Linux tcp_in_window: the new window state when the segment is acceptable, else None
    (the caller's state is never touched). trace sees the numbers of the four checks."""
    snd, rcv = replace(win[d]), replace(win[1 - d])
    seq, ack, w, flags, opts = pkt.tcp_seq, pkt.tcp_ack, pkt.tcp_win, pkt.tcp_flags, \
        pkt.tcp_options
    end = segment_end(pkt)
    syn, has_ack = flags & TCP_SYN, flags & TCP_ACK
    sack = sack_edge(opts, ack) if rcv.flags & TW_SACK_PERM else ack

    def result():
        out = [None, None]
        out[d], out[1 - d] = snd, rcv
        return out

    if snd.td_maxwin == 0:
        if syn:                                 # this side's first SYN (or SYN|ACK)
            snd.td_end = snd.td_maxend = end
            snd.td_maxwin = w or 1
            parse_options(opts, snd)
            # RFC 7323: window scaling only when both sides offer it.
            if not (snd.flags & TW_WSCALE and rcv.flags & TW_WSCALE):
                snd.scale = rcv.scale = 0
            if not has_ack:
                return result()
        else:                                   # this side's history is unknown: adopt it
            snd.td_end = end
            snd.td_maxwin = ((w << snd.scale) & MASK32) or 1
            snd.td_maxend = (end + snd.td_maxwin) & MASK32
            if rcv.td_maxwin == 0:
                rcv.td_end = rcv.td_maxend = sack
            elif sack == (rcv.td_end + 1) & MASK32:
                rcv.td_end = (rcv.td_end + 1) & MASK32     # the answer to a keepalive
    elif (syn and after(end, snd.td_end)
          and ((state == S["SYN_SENT"] and not conn_flags & F_SYN_REPLY)
               or state == S["SYN_RECV"])):
        # Linux since 2022 ("re-init for syn packets only"): a SYN (or SYN|ACK) from either
        # side sent again with a new initial sequence number; this side starts again as
        # with its first SYN (tcp_init_sender).
        snd.td_end = snd.td_maxend = end
        snd.td_maxwin = w or 1
        parse_options(opts, snd)
        if d != orig:
            if not (snd.flags & TW_WSCALE and rcv.flags & TW_WSCALE):
                snd.scale = rcv.scale = 0
            if not has_ack:
                return result()
    if not has_ack:
        ack = sack = rcv.td_end

    maxackwin = max(snd.td_maxwin, MAXACKWINCONST)
    trace("window", d=d, seq=seq, end=end, sack=sack, snd=snd, rcv=rcv,
          maxackwin=maxackwin)
    in_recv_win = not rcv.td_maxwin or after(end, (snd.td_end - rcv.td_maxwin - 1) & MASK32)
    if not (before(seq, (snd.td_maxend + 1) & MASK32) and in_recv_win
            and before(sack, (rcv.td_end + 1) & MASK32)
            and after(sack, (rcv.td_end - maxackwin - 1) & MASK32)):
        return None

    if not syn:
        w = (w << snd.scale) & MASK32
    swin = (w + sack - ack) & MASK32
    if snd.td_maxwin < swin:
        snd.td_maxwin = swin
    if after(end, snd.td_end):
        snd.td_end = end
    if has_ack:
        if not snd.flags & TW_MAXACK_SET:
            snd.td_maxack = ack
            snd.flags |= TW_MAXACK_SET
        elif after(ack, snd.td_maxack):
            snd.td_maxack = ack
    if rcv.td_maxwin != 0 and after(end, snd.td_maxend):
        rcv.td_maxwin = (rcv.td_maxwin + end - snd.td_maxend) & MASK32
    if after((sack + w) & MASK32, (rcv.td_maxend - 1) & MASK32):
        rcv.td_maxend = (sack + w) & MASK32
        if w == 0:
            rcv.td_maxend = (rcv.td_maxend + 1) & MASK32
    return result()


def rst_acceptable(win: list[TcpDir], d: int, pkt: Packet) -> bool:
    """RFC 5961 3.2 from the middle: an RST closes only with exactly the sequence number the
    receiver expects (the sender's next, or the receiver's last ack). An RST from a side not
    seen yet answers the SYN and must acknowledge it exactly (RFC 793)."""
    snd, rcv = win[d], win[1 - d]
    if snd.td_maxwin == 0:
        return bool(pkt.tcp_flags & TCP_ACK) and rcv.td_maxwin != 0 and pkt.tcp_ack == rcv.td_end
    return pkt.tcp_seq == snd.td_end or (bool(rcv.flags & TW_MAXACK_SET)
                                         and pkt.tcp_seq == rcv.td_maxack)
