"""VPC Flow Logs for the ENIs, aggregated per interval as AWS does.

Every interval each flow with traffic in it gets a record per direction with that interval's
packets and bytes; `start` and `end` are its first and last packet in the interval in that
direction and `tcp-flags` the OR of that direction's flags. The C core keeps these per
connection and direction on the forwarding path; a harvest (Nat.flow_harvest_page) takes the
connections with traffic since the previous one and starts their intervals again, so Python
keeps nothing per connection and never runs per packet. A flow that expires gets its last
record at the next interval boundary, `end` being its last packet. REJECT records
(unsolicited inbound, security-group denials) come from the core's reject journal and are
aggregated the same way. The data plane's clock is monotonic (ms); records carry wall-clock
seconds.
"""

from __future__ import annotations

import operator
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, NamedTuple

from .config import (DEFAULT_ACCOUNT_ID, DEFAULT_FLOW_LOG_FIELDS, FLOW_LOG_FIELD_VERSION,
                     FlowLogConfig)
from .connection import Connection

TCP_SYN, TCP_FIN, TCP_RST, TCP_SYN_ACK = 2, 1, 4, 18
TRAFFIC_PATH_SAME_VPC = "1"     # egress through a resource in the same VPC
PROTOCOL_NAMES = {6: "tcp", 17: "udp"}


def eni_name(eni: int) -> str:
    return f"eni-{eni:017x}"


# --- records ---------------------------------------------------------------------------------

class Record(NamedTuple):
    """One flow-log record, addresses and ports as the ENI sees them (a tuple: tens of
    thousands are made per interval)."""
    eni: int
    srcaddr: str
    dstaddr: str
    srcport: int
    dstport: int
    protocol: int
    packets: int
    bytes: int
    start: int                  # wall-clock seconds
    end: int
    action: str                 # ACCEPT or REJECT
    direction: str              # ingress or egress (seen from the ENI)
    pkt_srcaddr: str = "-"
    pkt_dstaddr: str = "-"
    tcp_flags: int = 0
    family: int = 4


class Context(NamedTuple):
    """What a record's format needs beyond the record."""
    account_id: str = DEFAULT_ACCOUNT_ID
    interface_id: Callable[[int], str] = eni_name
    subnet_id: Callable[[int], str] = lambda eni: "-"
    vpc_id: str = "-"


class Formatter:
    """Writes records in one format: a getter per field, chosen once."""

    def __init__(self, fields: Iterable[str] = DEFAULT_FLOW_LOG_FIELDS, ctx: Context = Context()):
        self.fields = tuple(fields)
        version = str(max(FLOW_LOG_FIELD_VERSION[f] for f in self.fields))
        const = lambda v: lambda r: v
        getters = {
            "version": const(version), "account-id": const(ctx.account_id),
            "interface-id": lambda r: ctx.interface_id(r.eni),
            "log-status": const("OK"), "vpc-id": const(ctx.vpc_id),
            "subnet-id": lambda r: ctx.subnet_id(r.eni),
            "tcp-flags": lambda r: r.tcp_flags if r.protocol == 6 else 0,
            "type": lambda r: "IPv6" if r.family == 6 else "IPv4",
            "pkt-srcaddr": lambda r: r.pkt_srcaddr, "pkt-dstaddr": lambda r: r.pkt_dstaddr,
            "flow-direction": lambda r: r.direction,
            "traffic-path": lambda r: TRAFFIC_PATH_SAME_VPC if r.direction == "egress" else "-",
        }
        for f in ("srcaddr", "dstaddr", "srcport", "dstport", "protocol", "packets", "bytes",
                  "start", "end", "action"):
            getters[f] = operator.attrgetter(f)
        self.getters = tuple(getters.get(f, const("-")) for f in self.fields)

    def __call__(self, r: Record) -> str:
        return " ".join([str(g(r)) for g in self.getters])


def format_record(r: Record, fields: Iterable[str] = DEFAULT_FLOW_LOG_FIELDS,
                  ctx: Context = Context()) -> str:
    return Formatter(fields, ctx)(r)


class Rejected(NamedTuple):
    """A packet the data plane refused, as the ENI saw it (the C core's drop journal)."""
    eni: int
    direction: str              # ingress: unsolicited inbound; egress: security-group denial
    family: int
    proto: int
    src: str
    dst: str
    sport: int
    dport: int
    length: int                 # bytes of the IP packet
    time_ms: int                # data-plane clock
    tcp_flags: int = 0
    pkt_src: str = "-"          # egress: the function's address before translation
    reason: str = ""


# --- aggregation -----------------------------------------------------------------------------

@dataclass
class EniTotals:
    """What the flow logs count per ENI beyond the core's own per-ENI counters."""
    rejected_packets: int = 0   # REJECT records' packets


def connection_records(c: Connection, wall_of: Callable[[int], int]) -> list[Record]:
    """The records of one connection's interval, one per direction with traffic: the core's
    exact figures (first and last packet, packets, bytes, OR'd tcp-flags of that direction).
    Egress goes from the ENI's address and NAT port; ingress is the reverse."""
    out = []
    for f, direction, src, dst in ((c.flow_out, "egress", (c.nat_addr, c.nat_port),
                                    (c.dst, c.dport)),
                                   (c.flow_in, "ingress", (c.dst, c.dport),
                                    (c.nat_addr, c.nat_port))):
        if f is None:
            continue
        pkt_src, pkt_dst = (c.src, c.dst) if direction == "egress" else (c.dst, c.src)
        out.append(Record(c.eni, src[0], dst[0], src[1], dst[1], c.proto, f.packets, f.bytes,
                          wall_of(f.first_ms), wall_of(f.last_ms), "ACCEPT", direction,
                          pkt_srcaddr=pkt_src, pkt_dstaddr=pkt_dst, tcp_flags=f.tcp_flags,
                          family=c.family))
    return out


class FlowTracker:
    """Turns harvests of the core's flow-log intervals (Nat.flow_harvest_page), expired
    connections and rejected packets into per-interval records. It keeps nothing per
    connection: the core keeps each connection's interval and resets it when harvested.
    Not thread-safe: one thread feeds it."""

    def __init__(self, interval_ms: int):
        self.interval_ms = int(interval_ms)
        self.pending: list[Record] = []           # records of expiries since the last tick
        # aggregation key -> [packets, bytes, first ms, last ms, flags]
        self.rejects: dict[tuple, list] = {}
        self.totals: dict[int, EniTotals] = {}
        # The totals as of the last tick, replaced whole: other threads read this one.
        self.published: dict[int, dict] = {}

    def _eni(self, eni: int) -> EniTotals:
        t = self.totals.get(eni)
        if t is None:
            t = self.totals[eni] = EniTotals()
        return t

    def names_eni(self, eni: int) -> bool:
        """Whether a record still to be written names NAT ENI id eni (safe from another
        thread: it reads copies)."""
        return (any(r.eni == eni for r in list(self.pending))
                or any(key[0] == eni for key in list(self.rejects)))

    def forget_eni(self, eni: int) -> None:
        """A released ENI: its id's totals start again with the next ENI that takes it. Call
        only when nothing names it (names_eni)."""
        self.totals.pop(eni, None)
        self.published = {e: t for e, t in self.published.items() if e != eni}

    def expired(self, connections: Iterable[Connection], wall_of: Callable[[int], int]) -> None:
        """Connections removed by expiry (or ended by a reopening SYN, or dropped early): their
        last interval goes out at the next tick, ending at their last packet."""
        for c in connections:
            self.pending += connection_records(c, wall_of)

    def rejected(self, packets: Iterable[Rejected]) -> None:
        for p in packets:
            key = (p.eni, p.direction, p.family, p.proto, p.src, p.dst, p.sport, p.dport, p.pkt_src)
            agg = self.rejects.get(key)
            if agg is None:
                self.rejects[key] = [1, p.length, p.time_ms, p.time_ms, p.tcp_flags]
            else:
                agg[0] += 1
                agg[1] += p.length
                agg[2] = min(agg[2], p.time_ms)
                agg[3] = max(agg[3], p.time_ms)
                agg[4] |= p.tcp_flags
            self._eni(p.eni).rejected_packets += 1

    def tick(self, harvest: Iterable[Connection], wall_of: Callable[[int], int]) -> list[Record]:
        """One interval boundary: the connections a harvest took now (each with its interval).
        Returns the records of the interval that ends."""
        out, self.pending = self.pending, []
        for c in harvest:
            out += connection_records(c, wall_of)
        for (eni, direction, fam, proto, src, dst, sport, dport, pkt_src), \
                (n, nbytes, first, last, flags) in self.rejects.items():
            out.append(Record(eni, src, dst, sport, dport, proto, n, nbytes, wall_of(first),
                              wall_of(last), "REJECT", direction,
                              pkt_srcaddr=pkt_src if pkt_src != "-" else src, pkt_dstaddr=dst,
                              tcp_flags=aws_tcp_flags(flags), family=fam))
        self.rejects = {}
        self.published = {e: asdict(t) for e, t in self.totals.items()}
        return out


def aws_tcp_flags(f: int) -> int:
    """VPC Flow Logs' tcp-flags of OR'd segment flags: FIN 1, SYN 2, RST 4, SYN-ACK 18."""
    return (f & (TCP_FIN | TCP_SYN | TCP_RST)) | (16 if f & TCP_SYN and f & 16 else 0)


def wall_clock(mono_now_ms: int, wall_now_s: float | None = None) -> Callable[[int], int]:
    """Maps data-plane milliseconds to wall-clock seconds, as of now."""
    offset = (time.time() if wall_now_s is None else wall_now_s) - mono_now_ms / 1000
    return lambda ms: int(offset + ms / 1000)


# --- files -----------------------------------------------------------------------------------

class FlowLogWriter:
    """One file per ENI in a folder (0700), files 0600 with the format as a header line;
    a file past max_bytes is rotated to .1, .2, ... keeping `keep` of them."""

    def __init__(self, folder: str | Path, fields: Iterable[str] = DEFAULT_FLOW_LOG_FIELDS,
                 max_bytes: int = FlowLogConfig.max_bytes, keep: int = FlowLogConfig.keep,
                 ctx: Context = Context()):
        self.folder = Path(folder)
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.folder, 0o700)
        self.format = Formatter(fields, ctx)
        self.header = " ".join(self.format.fields) + "\n"
        self.max_bytes = max_bytes
        self.keep = keep
        self.ctx = ctx
        self.files: dict[str, tuple] = {}        # interface id -> (file, size)

    def path(self, interface_id: str) -> Path:
        return self.folder / f"{interface_id}.log"

    def _open(self, interface_id: str):
        path = self.path(interface_id)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        f = os.fdopen(fd, "a")
        size = os.fstat(fd).st_size
        if size == 0:
            f.write(self.header)
            size = len(self.header)
        return f, size

    def _rotate(self, interface_id: str) -> None:
        f, _ = self.files.pop(interface_id)
        f.close()
        path = self.path(interface_id)
        if self.keep == 0:
            path.unlink(missing_ok=True)
            return
        Path(f"{path}.{self.keep}").unlink(missing_ok=True)
        for i in range(self.keep - 1, 0, -1):
            old = Path(f"{path}.{i}")
            if old.exists():
                old.rename(f"{path}.{i + 1}")
        path.rename(f"{path}.1")

    def write(self, records: Iterable[Record]) -> int:
        n = 0
        touched = set()
        for r in records:
            iid = self.ctx.interface_id(r.eni)
            line = self.format(r) + "\n"
            if iid not in self.files:
                self.files[iid] = self._open(iid)
            f, size = self.files[iid]
            if size + len(line) > self.max_bytes and size > len(self.header):
                f.flush()
                self._rotate(iid)
                self.files[iid] = f, size = self._open(iid)
            f.write(line)
            self.files[iid] = (f, size + len(line))
            touched.add(iid)
            n += 1
        for iid in touched:
            self.files[iid][0].flush()
        return n

    def close(self) -> None:
        for f, _ in self.files.values():
            f.close()
        self.files.clear()


def parse(path: str | Path) -> list[dict]:
    """Records of a flow-log file as dicts keyed by the header's field names."""
    lines = Path(path).read_text().splitlines()
    if not lines:
        return []
    names = lines[0].split()
    return [dict(zip(names, line.split())) for line in lines[1:] if line.strip()]
