"""Packets for `hyperplane trace`, from a description of the lab's endpoints or from a pcap.

A description names its ends as the lab does (`--from api --to web:8080`). A packet from a
function goes out (OUT); one from anywhere else arrives on an ENI (IN), addressed to the ENI
that the function's connections use. `--conn` first brings the function's connection to that
host into a state with real packets (the setup), so that a reply, a blind RST or a late
packet meet a connection.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from ..vocab import IN, OUT
from .trace import Packet

INSIDE_ISN, OUTSIDE_ISN = 1000, 700000      # the two sides' initial sequence numbers
INSIDE_PORT = 40000                         # a function's source port unless given
START_MS = 1_000_000                        # the trace's clock starts here (any value works)
STEP_MS = 1                                 # between two packets
CONN_STATES = ("syn-sent", "established", "closed", "udp")
FLAG_NAMES = {"syn": "S", "syn-ack": "SA", "synack": "SA", "ack": "A", "rst": "R",
              "rst-ack": "RA", "fin": "FA", "fin-ack": "FA", "psh-ack": "PA", "data": "PA"}
MALFORMS = ("ip-checksum", "truncated", "tcp-doff", "ttl", "bad-flags")


class DescriptionError(ValueError):
    """The description names something the lab does not have, or cannot be sent."""


@dataclass
class End:
    name: str               # as given
    addr: str
    port: int | None
    mac: str
    function: object = None     # FunctionInfo when it is a function


def split_port(text: str) -> tuple[str, int | None]:
    if text.startswith("["):                    # [v6]:port
        addr, _, port = text[1:].partition("]")
        return addr, int(port[1:]) if port.startswith(":") else None
    if text.count(":") == 1:
        name, port = text.split(":")
        return name, int(port)
    return text, None


def resolve_end(state, text: str, family: int) -> End:
    name, port = split_port(text)
    for f in state.functions:
        if f.name == name:
            addr = f.ipv6 if family == 6 else f.ipv4
            if addr is None:
                raise DescriptionError(f"function {name} has no IPv{family} address")
            return End(name, addr, port, f.mac, f)
    for h in state.hosts:
        if h.name == name:
            addr = h.ipv6 if family == 6 else h.ipv4
            if addr is None:
                raise DescriptionError(f"host {name} has no IPv{family} address")
            return End(name, addr, port, h.mac)
    try:
        addr = str(ipaddress.ip_address(name))
    except ValueError:
        names = [f.name for f in state.functions] + [h.name for h in state.hosts]
        raise DescriptionError(f"no function or host {name!r} in the lab "
                               f"(known: {', '.join(names)})") from None
    for f in state.functions:
        if addr in (f.ipv4, f.ipv6):
            return End(name, addr, port, f.mac, f)
    return End(name, addr, port, "02:00:00:00:00:99")


def frame(src_mac, dst_mac, src, dst, sport, dport, proto, flags="S", seq=0, ack=0,
          ttl=64, payload=b"", window=65535) -> bytes:
    ip = IPv6(src=src, dst=dst, hlim=ttl) if ":" in src else IP(src=src, dst=dst, ttl=ttl)
    l4 = (TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, window=window)
          if proto == "tcp" else UDP(sport=sport, dport=dport))
    return bytes(Ether(src=src_mac, dst=dst_mac) / ip / l4 / payload)


def malform(data: bytes, how: str) -> bytes:
    """A frame broken on purpose, each way one check of the parser catches."""
    b = bytearray(data)
    ip = 14
    if how == "ip-checksum" and b[ip] >> 4 == 4:
        b[ip + 10] ^= 0x5A
    elif how == "truncated":
        b = b[:ip + 12]
    elif how == "tcp-doff":
        l4 = ip + ((b[ip] & 15) * 4 if b[ip] >> 4 == 4 else 40)
        b[l4 + 12] = (3 << 4) | (b[l4 + 12] & 15)
    elif how == "ttl":
        b[ip + (8 if b[ip] >> 4 == 4 else 7)] = 1
    elif how == "bad-flags":
        l4 = ip + ((b[ip] & 15) * 4 if b[ip] >> 4 == 4 else 40)
        old = b[l4 + 12] << 8 | b[l4 + 13]
        b[l4 + 13] = 0x03                       # SYN and FIN together
        # The TCP checksum follows (RFC 1624), so that the flags, not it, are what is wrong.
        check = ~(b[l4 + 16] << 8 | b[l4 + 17]) & 0xFFFF
        check += (~old & 0xFFFF) + (b[l4 + 12] << 8 | b[l4 + 13])
        while check >> 16:
            check = (check & 0xFFFF) + (check >> 16)
        b[l4 + 16:l4 + 18] = (~check & 0xFFFF).to_bytes(2, "big")
    else:
        raise DescriptionError(f"unknown --malform {how!r} (one of {', '.join(MALFORMS)})")
    return bytes(b)


def describe(state, src: str, dst: str, proto: str = "tcp", flags: str = "syn",
             conn: str | None = None, seq: int | None = None, ack: int | None = None,
             ttl: int = 64, ipv6: bool = False, wait_s: float = 0.0, mac: str | None = None,
             malformed: str | None = None, payload: bytes = b"",
             hairpin: str | None = None) -> list[Packet]:
    """The packets of a described trace: the setup that --conn asks for, then the one traced.
    hairpin (a host): `dst` (a function) first opens a connection to that host, then `src` (a
    function) sends to the ENI address and port that connection got (RFC 4787 REQ-9)."""
    family = 6 if ipv6 else 4
    if hairpin:
        return _hairpin(state, src, dst, hairpin, proto, family, flags)
    a, b = resolve_end(state, src, family), resolve_end(state, dst, family)
    letters = FLAG_NAMES.get(flags.lower(), flags.upper()) if proto == "tcp" else ""
    inside, outside = (a, b) if a.function is not None else (b, a)
    if inside.function is None:
        raise DescriptionError("one end must be a function: the NAT stands between functions "
                               "and the customer VPC")
    in_port = inside.port or INSIDE_PORT
    host_port = outside.port or (8080 if proto == "tcp" else 7)
    gw_mac = state.inside.mac
    eni = state.enis_of(inside.function.group)
    eni = [e for e in eni if e.status != "Deleted"][-1] if eni else None
    clock = [START_MS]

    def out(flags_, seq_, ack_, label, **kw):
        clock[0] += STEP_MS
        return Packet(frame(mac_of(mac) or inside.mac, gw_mac, inside.addr, outside.addr,
                            in_port, host_port, proto, flags_, seq_, ack_, **kw),
                      OUT, 0, label, clock[0])

    def back(flags_, seq_, ack_, label, nat_port, **kw):
        clock[0] += STEP_MS
        eni_addr = eni.ipv6 if family == 6 else eni.ipv4
        return Packet(frame(outside.mac, eni.mac, outside.addr, eni_addr, host_port, nat_port,
                            proto, flags_, seq_, ack_, **kw), IN, eni.id, label, clock[0])

    def mac_of(text):
        if text is None:
            return None
        for f in state.functions:
            if f.name == text:
                return f.mac
        return text

    setup = []
    tcp = proto == "tcp"
    if conn:
        if conn not in CONN_STATES:
            raise DescriptionError(f"--conn is one of {', '.join(CONN_STATES)}")
        if eni is None:
            raise DescriptionError(f"function {inside.name} has no ENI")
        opener = f"{inside.name}:{in_port} -> {outside.name}:{host_port}"
        if tcp:
            setup.append(out("S", INSIDE_ISN, 0, f"{opener} tcp S"))
        else:
            setup.append(out("", 0, 0, f"{opener} udp"))
    # The NAT's port for the inside endpoint is learnt by running the setup (trace.run does it
    # again, traced); before any setup the customer side aims at a port of its choosing.
    nat_port = _nat_port(state, setup) if setup else (inside.port or INSIDE_PORT)
    if conn in ("established", "closed") and tcp:
        setup.append(back("SA", OUTSIDE_ISN, INSIDE_ISN + 1, "reply tcp SA", nat_port))
        setup.append(out("A", INSIDE_ISN + 1, OUTSIDE_ISN + 1, f"{opener} tcp A"))
        if conn == "closed":
            setup.append(out("FA", INSIDE_ISN + 1, OUTSIDE_ISN + 1, f"{opener} tcp FA"))
            setup.append(back("FA", OUTSIDE_ISN + 1, INSIDE_ISN + 2, "reply tcp FA", nat_port))
            setup.append(out("A", INSIDE_ISN + 2, OUTSIDE_ISN + 2, f"{opener} tcp A"))
    elif conn == "udp" and not tcp:
        setup.append(back("", 0, 0, "reply udp", nat_port))

    outbound = a.function is not None
    has_syn, has_ack = "S" in letters, "A" in letters
    replied = conn in ("established", "closed")
    if outbound:
        seq_ = seq if seq is not None else INSIDE_ISN + (0 if has_syn else 1)
        ack_ = ack if ack is not None else (OUTSIDE_ISN + 1 if has_ack and replied else 0)
    else:
        seq_ = seq if seq is not None else OUTSIDE_ISN + (0 if has_syn else 1)
        ack_ = ack if ack is not None else (INSIDE_ISN + 1 if has_ack or conn else 0)
    label = (f"{a.name}:{in_port if outbound else host_port} -> "
             f"{b.name}:{host_port if outbound else nat_port} {proto} {letters}").rstrip()
    clock[0] += int(wait_s * 1000)
    if outbound:
        traced = out(letters, seq_, ack_, label, ttl=ttl, payload=payload)
    else:
        if eni is None:
            raise DescriptionError(f"function {inside.name} has no ENI to arrive on")
        traced = back(letters, seq_, ack_, label, nat_port, ttl=ttl, payload=payload)
    if malformed:
        traced.frame = malform(traced.frame, malformed)
        traced.label += f" (malformed: {malformed})"
    return setup + [traced]


def _hairpin(state, src, dst, host, proto, family, flags) -> list[Packet]:
    a, b, h = (resolve_end(state, t, family) for t in (src, dst, host))
    if a.function is None or b.function is None:
        raise DescriptionError("--hairpin: --from and --to must both be functions")
    letters = FLAG_NAMES.get(flags.lower(), flags.upper()) if proto == "tcp" else ""
    b_port, h_port = b.port or INSIDE_PORT, h.port or (8080 if proto == "tcp" else 7)
    eni = [e for e in state.enis_of(b.function.group) if e.status != "Deleted"][-1]
    eni_addr = eni.ipv6 if family == 6 else eni.ipv4
    gw = state.inside.mac
    opener = Packet(frame(b.mac, gw, b.addr, h.addr, b_port, h_port, proto, letters or "S",
                          INSIDE_ISN), OUT, 0, f"{b.name}:{b_port} -> {h.name}:{h_port} {proto}",
                    START_MS + STEP_MS)
    nat_port = _nat_port(state, [opener])
    a_port = a.port or INSIDE_PORT + 1
    traced = Packet(frame(a.mac, gw, a.addr, eni_addr, a_port, nat_port, proto, letters or "S",
                          INSIDE_ISN), OUT, 0,
                    f"{a.name}:{a_port} -> ENI {eni.id} {eni_addr}:{nat_port} ({b.name}'s "
                    f"mapping) {proto} {letters}".rstrip(), START_MS + 2 * STEP_MS)
    return [opener, traced]


def _nat_port(state, setup: list[Packet]) -> int:
    """The external port the NAT gives the opener of the setup (same seed as trace.run)."""
    from .trace import build_nats
    nat, _ = build_nats(state)
    port = 0
    for p in setup:
        res = nat.translate([bytearray(p.frame)], p.direction, p.at_ms, eni=p.eni)[0]
        if res[3] >= 0:
            port = nat.get(res[3]).nat_port
    return port


def from_pcap(state, path: str, number: int | None = None) -> list[Packet]:
    """The frames of a pcap up to packet `number` (1-based; default the last), each OUT when
    its source is a function's address, else IN on the ENI it is addressed to."""
    from scapy.utils import rdpcap
    frames = rdpcap(path)
    if not frames:
        raise DescriptionError(f"{path}: no packets")
    number = number or len(frames)
    if not 1 <= number <= len(frames):
        raise DescriptionError(f"{path} has {len(frames)} packets, not {number}")
    sources = {a for f in state.functions for a in (f.ipv4, f.ipv6) if a}
    enis = {a: e.id for e in state.enis for a in (e.ipv4, e.ipv6) if a}
    first = float(frames[0].time)
    out = []
    for i, pkt in enumerate(frames[:number], 1):
        raw = bytes(pkt)
        ip = pkt.getlayer(IP) or pkt.getlayer(IPv6)
        src, dst = (ip.src, ip.dst) if ip is not None else ("?", "?")
        direction = OUT if src in sources else IN
        out.append(Packet(raw, direction, enis.get(dst, 0), f"packet {i} of {path}: "
                          f"{pkt.summary()}", START_MS + int((float(pkt.time) - first) * 1000)))
    return out
