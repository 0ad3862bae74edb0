"""`hyperplane trace`: one packet through the reference model, step by step, beside the C core.

The model (hyperplane/model/) calls its tracer at each decision it takes (model/tracing.py);
`Recorder` is that tracer: it writes each step down at once, with the model code that took the
decision (the caller's file, line and function) and the section of docs/semantics.md behind it.
The same frame then goes through the C core (hyperplane._core) configured the same way, with
the same port seed: verdict, reason, connection and every byte must agree.
"""

from __future__ import annotations

import ipaddress
import re
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .. import model
from ..connection import addr_str
from ..model import nat as model_nat
from ..model import packet as model_packet
from ..model.conntrack import ORIG
from ..model.packet import (ETH_HDR_LEN, PROTO_TCP, PROTO_UDP, csum_replace, ones_sum, u16,
                            words)
from ..model.tcp import TW_MAXACK_SET, after, before
from ..vocab import DROP, FORWARD, OUT, PUNT, R, REASONS, STATES, VERDICTS

MODEL_DIR = Path(model.__file__).resolve().parent
PACKAGE_DIR = MODEL_DIR.parent
SEMANTICS = "docs/semantics.md"

# The section of docs/semantics.md behind each step (a test checks that each heading exists).
SECTIONS = {
    "parse": "1. Parsing a frame",
    "lookup": "2. Connection tracking",
    "source": "3. NAT decisions",
    "security group": "9.1 Security groups",
    "port": "5. Port allocator",
    "window": "2.3 TCP window tracking",
    "rst": "2.3 TCP window tracking",
    "state": "2.2 TCP transitions",
    "rewrite": "4. Rewriting",
    "answer": "9.2 Idle timeouts: the RST",
    "next hop": "3. NAT decisions",
    "verdict": "3. NAT decisions",
}
TCP_FLAG_LETTERS = "FSRPAU"


class TraceMismatch(RuntimeError):
    """The model and the C core disagree about a packet: a bug in one of them."""


def flag_text(flags: int) -> str:
    return "".join(c for i, c in enumerate(TCP_FLAG_LETTERS) if flags >> i & 1) or "-"


def code_site(path: str, line: int, func: str) -> str:
    rel = Path(path).resolve()
    try:
        rel = rel.relative_to(PACKAGE_DIR.parent)
    except ValueError:
        pass
    return f"{rel}:{line} {func}()"


def function_site(fn) -> str:
    """Where a model function is defined, as file:line name()."""
    code = fn.__code__
    return code_site(code.co_filename, code.co_firstlineno, code.co_qualname)


def reason_site(reason: str) -> str:
    """Where the model decides this reason: the first line that names it (R["REASON"])."""
    pattern = f'R["{reason}"]'
    for path in sorted(MODEL_DIR.glob("*.py")):
        for n, text in enumerate(path.read_text().splitlines(), 1):
            if pattern in text and "return" in text:
                return f"{path.relative_to(PACKAGE_DIR.parent)}:{n}"
    return f"{MODEL_DIR.relative_to(PACKAGE_DIR.parent)}/"


@dataclass
class Step:
    name: str
    site: str                       # the model code that took the decision
    lines: list = field(default_factory=list)

    @property
    def section(self) -> str:
        return f"{SEMANTICS} {SECTIONS.get(self.name, '')}".rstrip()


class Names:
    """Addresses and ENIs as the lab calls them, for the text."""

    def __init__(self, state):
        self.by_addr = {}
        for f in state.functions:
            for a in (f.ipv4, f.ipv6):
                if a:
                    self.by_addr[a] = f.name
        for h in state.hosts:
            for a in (h.ipv4, h.ipv6):
                if a:
                    self.by_addr[a] = h.name
        for e in state.enis:
            for a in (e.ipv4, e.ipv6):
                if a:
                    self.by_addr[a] = f"ENI {e.id}"
        self.groups = [g.key for g in state.groups]

    def addr(self, family: int, raw: bytes) -> str:
        text = addr_str(family, raw)
        name = self.by_addr.get(text)
        return f"{text} ({name})" if name else text

    def endpoint(self, family: int, raw: bytes, port: int) -> str:
        text = addr_str(family, raw)
        text = f"[{text}]" if family == 6 else text
        name = self.by_addr.get(addr_str(family, raw))
        return f"{text}:{port}" + (f" ({name})" if name else "")


class Recorder:
    """The model's tracer: each call becomes a Step with the caller's code site."""

    def __init__(self, names: Names, timeouts_ms):
        self.names = names
        self.timeouts_ms = timeouts_ms
        self.steps: list[Step] = []
        self.frame = b""            # the traced frame as it arrived

    def __call__(self, step: str, **facts) -> None:
        caller = sys._getframe(1)
        code = caller.f_code
        site = code_site(code.co_filename, caller.f_lineno,
                         getattr(code, "co_qualname", code.co_name))
        lines = getattr(self, "_" + step.replace(" ", "_"))(**facts)
        self.steps.append(Step(step, site, lines))

    # -- one method per step the model reports: its facts in words ------------------------------

    def _parse(self, direction, reason, pkt):
        side = "from a function (inside port)" if direction == OUT else "from the customer VPC (an ENI)"
        lines = [f"arrived {side}, {len(self.frame)} bytes"] + ethernet_lines(self.frame)
        if pkt is None:
            return lines + ip_check_lines(self.frame, REASONS[reason]) + [
                f"check failed: {REASONS[reason]} ({reason_site(REASONS[reason])})"]
        n = self.names
        if pkt.family == 4:
            lines.append(f"IPv4 {n.addr(4, pkt.src)} -> {n.addr(4, pkt.dst)}, total length "
                         f"{pkt.l3len}, header {pkt.l4 - pkt.l3} bytes; version, header "
                         "length, total length, header checksum ok; not a fragment, no source route")
        else:
            lines.append(f"IPv6 {n.addr(6, pkt.src)} -> {n.addr(6, pkt.dst)}, payload "
                         f"{pkt.l3len - 40} bytes; version, payload length, extension headers ok")
        if pkt.proto == PROTO_TCP:
            lines.append(f"TCP {pkt.sport} -> {pkt.dport} flags {flag_text(pkt.tcp_flags)} "
                         f"seq {pkt.tcp_seq} ack {pkt.tcp_ack} window {pkt.tcp_win}, data offset "
                         f"{pkt.l4hdr} ok")
        else:
            lines.append(f"UDP {pkt.sport} -> {pkt.dport}, length field ok")
        if REASONS[reason] != "NONE":
            lines.append(f"then: {REASONS[reason]} ({reason_site(REASONS[reason])})")
        return lines

    def _lookup(self, key, direction, conn, now_ms):
        family, proto, src, dst, sport, dport = key
        which = "original tuple (inside -> out)" if direction == ORIG else "reply tuple (customer -> ENI)"
        tup = (f"{'tcp' if proto == PROTO_TCP else 'udp'} {self.names.endpoint(family, src, sport)}"
               f" -> {self.names.endpoint(family, dst, dport)}")
        lines = [f"flow key: {tup}", f"looked up by its {which}"]
        if conn is None:
            lines.append("miss: no connection has this tuple")
            return lines
        idle = now_ms - conn.last_seen_ms
        timeout = self.timeouts_ms[conn.state]
        lines.append(f"hit: connection {conn.id}, {STATES[conn.state]}, idle {idle} ms of its "
                     f"{timeout // 1000} s timeout")
        if idle >= timeout:
            lines.append("expired: it is removed now (its record goes to the journal) and the "
                         "lookup counts as a miss")
        return lines

    def _source(self, source):
        if source is None:
            return ["the source address is no function's: UNKNOWN_SOURCE"]
        mac = ":".join(f"{b:02x}" for b in source.mac) if source.mac else "unchecked"
        return [f"a function's address: ENI group {self.names.groups[source.group]!r}, "
                f"IPv6 allowed: {source.allow_v6}, its frames must carry MAC {mac}"]

    def _security_group(self, group, rules, rule):
        name = self.names.groups[group]
        if rules is None:
            return [f"group {name!r} has no egress list: everything is allowed (AWS's default)"]
        shown = []
        for i, (proto, lo, hi, fam, net, plen) in enumerate(rules.rules):
            what = {0: "all", 6: "tcp", 17: "udp"}[proto]
            ports = "" if proto == 0 else f" port {lo}" + (f"-{hi}" if hi != lo else "")
            prefix = ipaddress.IPv6Address(net) if fam == 6 else ipaddress.IPv4Address(net >> 96)
            mark = "->" if i == rule else "  "
            shown.append(f"{mark} rule {i}: {what}{ports} to {prefix}/{plen}")
        verdict = (f"rule {rule} matches: the new connection may go out" if rule >= 0
                   else "no rule matches: SG_DENIED")
        return [f"egress rules of group {name!r}, first match wins:"] + shown + [verdict]

    def _port(self, eni, port, why, pool, held=None, max_ports=0, pool_key=None):
        st = pool.stats()
        gauge = (f"pool of ENI {eni}: {st['size']} ports, {st['in_use']} in use, "
                 f"{st['quarantined']} in quarantine, {st['free']} free")
        quota = ("no port quota" if max_ports == 0 else
                 f"the function holds {held.get((eni,) + pool_key, 0)} of its {max_ports} "
                 "ports of this pool (its quota)")
        if why == "mapping":
            return [f"the inside endpoint already owns port {port} on ENI {eni}: endpoint-"
                    "independent mapping (RFC 4787 REQ-1), reused", gauge]
        if why == "quota":
            return [f"ENI {eni} passed over: the function holds its quota of the pool", quota]
        if port is None:
            return [f"ENI {eni}: no free port", gauge]
        return [f"port {port} drawn at random (RFC 6056): SipHash-1-3 of draw {pool.draws - 1} "
                "under the pool's secret key, scaled into the free list", gauge, quota]

    def _window(self, d, seq, end, sack, snd, rcv, maxackwin):
        who = "inside" if d == ORIG else "customer side"
        checks = [
            ("I   seq before sender's td_maxend + 1", before(seq, (snd.td_maxend + 1) & 0xFFFFFFFF),
             f"{seq} < {(snd.td_maxend + 1) & 0xFFFFFFFF}"),
            ("II  end after sender's td_end - receiver's td_maxwin - 1",
             not rcv.td_maxwin or after(end, (snd.td_end - rcv.td_maxwin - 1) & 0xFFFFFFFF),
             "receiver not seen yet" if not rcv.td_maxwin
             else f"{end} > {(snd.td_end - rcv.td_maxwin - 1) & 0xFFFFFFFF}"),
            ("III ack before receiver's td_end + 1", before(sack, (rcv.td_end + 1) & 0xFFFFFFFF),
             f"{sack} < {(rcv.td_end + 1) & 0xFFFFFFFF}"),
            ("IV  ack after receiver's td_end - maxackwin - 1",
             after(sack, (rcv.td_end - maxackwin - 1) & 0xFFFFFFFF),
             f"{sack} > {(rcv.td_end - maxackwin - 1) & 0xFFFFFFFF}"),
        ]
        lines = [f"sender: the {who}; segment seq {seq} end {end} ack {sack}",
                 f"sender   td_end {snd.td_end} td_maxend {snd.td_maxend} td_maxwin {snd.td_maxwin}",
                 f"receiver td_end {rcv.td_end} td_maxend {rcv.td_maxend} td_maxwin {rcv.td_maxwin}"]
        lines += [f"{name}: {numbers} {'ok' if ok else 'FAILS'}" for name, ok, numbers in checks]
        lines.append("in window" if all(ok for _, ok, _ in checks) else "out of window")
        return lines

    def _rst(self, win, d, pkt, acceptable):
        snd, rcv = win[d], win[1 - d]
        exact = [str(snd.td_end)] + ([str(rcv.td_maxack)] if rcv.flags & TW_MAXACK_SET
                                     and rcv.td_maxack != snd.td_end else [])
        return [f"RFC 5961: a RST counts only with exactly the sequence number expected "
                f"({' or '.join(exact)}); this one has seq {pkt.tcp_seq}",
                "acceptable: the connection closes" if acceptable
                else "not acceptable (a blind RST): dropped, the connection is untouched"]

    def _state(self, conn, d, old, new):
        who = "inside" if d == ORIG else "customer side"
        timeout = self.timeouts_ms[new] // 1000
        change = f"{STATES[old]} -> {STATES[new]}" if old != new else f"stays {STATES[old]}"
        return [f"a packet from the {who}: {change}; idle timeout now {timeout} s"]


def mac_text(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def ethernet_lines(frame: bytes) -> list[str]:
    if len(frame) < ETH_HDR_LEN:
        return [f"Ethernet: {len(frame)} bytes, shorter than its 14-byte header"]
    return [f"Ethernet {mac_text(frame[6:12])} -> {mac_text(frame[0:6])}, type "
            f"0x{u16(frame, 12):04x}"]


def ip_check_lines(frame: bytes, reason: str) -> list[str]:
    """The numbers behind a failed IPv4 header check."""
    at = ETH_HDR_LEN
    if reason == "IPV4_BAD_CHECKSUM":
        hlen = (frame[at] & 15) * 4
        return [f"IPv4 header checksum 0x{u16(frame, at + 10):04x}: the header sums to "
                f"0x{ones_sum(frame[at:at + hlen]):04x}, a correct one to 0xffff"]
    if reason == "IPV4_TRUNCATED":
        return [f"IPv4: {len(frame) - at} bytes after Ethernet, a header needs 20"]
    return []


def answer_lines(frame: bytes) -> list[str]:
    """The frame the NAT turned the packet into (a RST, an ICMP error), back to its sender."""
    from scapy.layers.l2 import Ether
    return ["the frame is answered in place and goes back to its sender:",
            Ether(frame).summary()]


# -- the rewrite, read back from the bytes -------------------------------------------------------

def _l3_l4(frame, vnet=False):
    base = 10 if vnet else 0
    l3 = base + ETH_HDR_LEN
    if frame[l3] >> 4 == 4:
        return 4, l3, l3 + (frame[l3] & 15) * 4, frame[l3 + 9]
    return 6, l3, l3 + 40, frame[l3 + 6]


def rewrite_lines(before: bytes, after: bytes) -> list[str]:
    """What the rewrite changed, and the checksum arithmetic (RFC 1624 eq. 3,
    HC' = ~(~HC + ~m + m')), recomputed from the two frames with the model's helpers."""
    if len(before) != len(after) or len(before) < ETH_HDR_LEN + 20:
        return ["the frame was replaced (an answer built in its place)"]
    family, l3, l4, proto = _l3_l4(before)
    if proto not in (PROTO_TCP, PROTO_UDP):
        return []
    n = 4 if family == 4 else 16
    src_at, dst_at = (l3 + 12, l3 + 16) if family == 4 else (l3 + 8, l3 + 24)
    lines = []
    for what, at, port_at in (("source", src_at, l4), ("destination", dst_at, l4 + 2)):
        if before[at:at + n] != after[at:at + n] or before[port_at:port_at + 2] != after[port_at:port_at + 2]:
            lines.append(f"{what}: {addr_str(family, before[at:at + n])}:{u16(before, port_at)} -> "
                         f"{addr_str(family, after[at:at + n])}:{u16(after, port_at)}")
    ttl_at = l3 + 8 if family == 4 else l3 + 7
    lines.append(f"{'TTL' if family == 4 else 'hop limit'}: {before[ttl_at]} -> {after[ttl_at]}")
    if family == 4:
        lines += _checksum_lines("IPv4 header checksum", before, after, l3 + 10,
                                 [i for i in range(l3, l4, 2) if i != l3 + 10])
        ok = ones_sum(after[l3:l4]) == 0xFFFF
        lines.append(f"  the new header sums to 0x{ones_sum(after[l3:l4]):04x}: "
                     + ("valid" if ok else "INVALID"))
    check_at = l4 + (16 if proto == PROTO_TCP else 6)
    covered = list(range(src_at, src_at + 2 * n, 2)) + [l4, l4 + 2]   # addresses and ports
    name = "TCP checksum" if proto == PROTO_TCP else "UDP checksum"
    if proto == PROTO_UDP and u16(before, check_at) == 0:
        lines.append("UDP checksum 0 (none): stays 0")
    else:
        lines += _checksum_lines(name + " (pseudo header: the addresses)", before, after,
                                 check_at, covered)
    return lines


def _checksum_lines(name, before, after, check_at, word_offsets):
    changed = [i for i in word_offsets if before[i:i + 2] != after[i:i + 2]]
    old_words = [u16(before, i) for i in changed]
    new_words = [u16(after, i) for i in changed]
    hc, hc_new = u16(before, check_at), u16(after, check_at)
    computed = csum_replace(hc, old_words, new_words)
    lines = [f"{name}: 0x{hc:04x} -> 0x{hc_new:04x}",
             "  old words m  " + " ".join(f"{w:04x}" for w in old_words),
             "  new words m' " + " ".join(f"{w:04x}" for w in new_words),
             f"  RFC 1624: ~(~0x{hc:04x} + sum ~m + sum m') = 0x{computed:04x}"
             + (" (as written)" if computed == hc_new else
                " (the frame's value differs: UDP writes 0 as 0xffff)" if computed == 0 else
                " DIFFERS from the frame")]
    return lines


# -- model and C core side by side --------------------------------------------------------------

def build_nats(state, port_seed: int = 1):
    """The reference model and the C core, configured as the daemon configures its NAT from a
    lab's state (groups and their rules, ENIs, sources, quotas), with one port seed."""
    from .._core import Nat as CoreNat
    nats = (model.Nat(**state.config.nat_args(), port_seed=port_seed),
            CoreNat(**state.config.nat_args(), port_seed=port_seed))
    for nat in nats:
        configure(nat, state)
    return nats


def configure(nat, state) -> None:
    """Gives a NAT (either implementation) the lab's groups, rules, ENIs, sources, quotas."""
    groups = {}
    for g in state.groups:
        groups[g.key] = nat.add_group()
        rules = state.group_rules(g.key)
        nat.set_group_rules(groups[g.key], None if rules is None else [tuple(r) for r in rules])
    for eni in state.enis:
        nat.add_eni(eni.ipv4, eni.ipv6)
        if eni.status != "Deleted":
            nat.group_add_eni(groups[eni.group], eni.id)
    for f in state.functions:
        nat.add_source(f.ipv4, groups[f.group], mac=f.mac)
        if f.ipv6:
            nat.add_source(f.ipv6, groups[f.group], allow_v6=f.ipv6_allowed, mac=f.mac)
        quota = state.config.function(f.name)
        nat.set_quota(f.ipv4, quota.max_connections, quota.max_ports_per_pool)


@dataclass
class Packet:
    """One frame to send through both NATs: which way it goes and on which ENI."""
    frame: bytes
    direction: int
    eni: int = 0
    label: str = ""
    at_ms: int = 0                  # the clock when it is sent


@dataclass
class Outcome:
    packet: Packet
    model: tuple
    core: tuple
    model_frame: bytes
    core_frame: bytes
    model_conn: object
    core_conn: object
    steps: list

    @property
    def agree(self) -> bool:
        return (self.model == self.core and self.model_frame == self.core_frame
                and self.model_conn == self.core_conn)


def run(state, packets: list[Packet], port_seed: int = 1) -> list[Outcome]:
    """Sends each packet through both NATs in turn, the last one traced. Raises TraceMismatch
    when they disagree on a verdict, a byte or the connection left behind."""
    model_nat_, core_nat = build_nats(state, port_seed)
    recorder = Recorder(Names(state), model_nat_.timeouts_ms)
    outcomes = []
    for i, p in enumerate(packets):
        traced = i == len(packets) - 1
        m_frame, c_frame = bytearray(p.frame), bytearray(p.frame)
        model_nat_.trace = recorder if traced else model_nat.no_trace
        recorder.frame = p.frame
        try:
            m = tuple(model_nat_.translate([m_frame], p.direction, p.at_ms, eni=p.eni)[0])
        finally:
            model_nat_.trace = model_nat.no_trace
        c = tuple(core_nat.translate([c_frame], p.direction, p.at_ms, eni=p.eni)[0])
        m_conn = model_nat_.get(m[3]) if m[3] >= 0 else None
        c_conn = core_nat.get(c[3]) if c[3] >= 0 else None
        steps = list(recorder.steps) if traced else []
        out = Outcome(p, m, c, bytes(m_frame), bytes(c_frame), _comparable(m_conn),
                      _comparable(c_conn), steps)
        outcomes.append(out)
        if not out.agree:
            raise TraceMismatch(mismatch_text(out))
    return outcomes


def _comparable(conn):
    """A connection's fields that both implementations must agree on."""
    if conn is None:
        return None
    return (conn.id, conn.state, conn.src, conn.sport, conn.dst, conn.dport, conn.eni,
            conn.nat_addr, conn.nat_port, conn.flags, conn.packets_out, conn.packets_in,
            conn.bytes_out, conn.bytes_in)


def verdict_text(res: tuple) -> str:
    verdict, reason, port, conn = res
    text = f"{VERDICTS[verdict]} {REASONS[reason]}, port {port}"
    return text + (f", connection {conn}" if conn >= 0 else "")


def mismatch_text(out: Outcome) -> str:
    parts = [f"model and C core disagree on {out.packet.label or 'a packet'}:",
             f"  model  {verdict_text(out.model)}", f"  C core {verdict_text(out.core)}"]
    if out.model_frame != out.core_frame:
        first = next((i for i, (a, b) in enumerate(zip(out.model_frame, out.core_frame)) if a != b),
                     min(len(out.model_frame), len(out.core_frame)))
        parts.append(f"  frames differ from byte {first}: model {out.model_frame[first:first + 8].hex()}"
                     f" C {out.core_frame[first:first + 8].hex()}")
    if out.model_conn != out.core_conn:
        parts.append(f"  connection: model {out.model_conn} C {out.core_conn}")
    return "\n".join(parts)


def next_hop_lines(state, out: Outcome) -> list[str]:
    verdict, reason, port, _ = out.model
    if verdict == DROP:
        return ["none: dropped"]
    if verdict == PUNT:
        return ["the slow path (Python): " + REASONS[reason]]
    if out.packet.direction == OUT and port > 0:
        eni = state.eni(port - 1)
        return [f"data-plane port {port}: ENI {eni.id} ({eni.ifname}), into subnet "
                f"{eni.subnet!r}"]
    if out.packet.direction == OUT:
        return ["back out of the inside port: the answer goes to the function"]
    return ["data-plane port 0: the inside port, to the function"]


def render(state, outcomes: list[Outcome]) -> str:
    """The trace as text: the setup packets in a line each, then the traced one step by step
    with the C core beside it."""
    out = []
    for o in outcomes[:-1]:
        out.append(f"setup: {o.packet.label}: {verdict_text(o.model)} (C core agrees)")
    last = outcomes[-1]
    out.append(f"trace: {last.packet.label}")
    steps = list(last.steps)
    if last.model[0] == FORWARD and last.model[1] != R["NONE"]:
        steps.append(Step("answer", reason_site(REASONS[last.model[1]]),
                          answer_lines(last.model_frame)))
    elif last.model[0] == FORWARD and last.model_frame != last.packet.frame:
        steps.append(Step("rewrite", function_site(model_packet.rewrite),
                          rewrite_lines(last.packet.frame, last.model_frame)))
    steps.append(Step("next hop", function_site(model.Nat.translate), next_hop_lines(state, last)))
    reason = REASONS[last.model[1]]
    why = [f"model  {verdict_text(last.model)}"]
    if reason != "NONE":
        why.append(f"reason {reason}: decided at {reason_site(reason)}")
    same = "the same bytes" if last.core_frame == last.model_frame else "DIFFERENT bytes"
    why.append(f"C core {verdict_text(last.core)}, {same} ({len(last.core_frame)} bytes): agree")
    steps.append(Step("verdict", function_site(model.Nat.translate), why))
    for i, step in enumerate(steps, 1):
        out.append(f"{i:>2}. {step.name:<15} {step.site}  [{step.section}]")
        out.extend(f"      {line}" for line in step.lines)
    return "\n".join(out)
