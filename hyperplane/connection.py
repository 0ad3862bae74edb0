"""A tracked connection as Python sees it, whichever implementation produced it."""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass, fields
from typing import NamedTuple

from .vocab import F_ASSURED, F_REPLY_SEEN


class FlowInterval(NamedTuple):
    """One direction of a connection over a flow-log interval: what was forwarded since the
    last harvest (Nat.flow_harvest_page), docs/semantics.md 2.4."""
    packets: int
    bytes: int
    first_ms: int          # the interval's first and last packet (data-plane clock)
    last_ms: int
    tcp_flags: int         # AWS tcp-flags OR'd: FIN 1, SYN 2, RST 4, SYN-ACK 18


@dataclass(frozen=True)
class Connection:
    """One tracked connection, whichever implementation produced it (the C core, the model,
    a lab's listing): the original tuple as the function sent it (``src``, ``sport``,
    ``dst``, ``dport``), the ENI side (``eni``, ``nat_addr``, ``nat_port``), its ``state``,
    its totals per direction and its current flow-log interval per direction."""
    id: int
    family: int            # 4 or 6
    proto: int             # 6 or 17
    src: str               # inside address (original source)
    dst: str               # destination in the customer VPC
    sport: int
    dport: int
    eni: int
    nat_addr: str          # the ENI address the connection goes out from
    nat_port: int
    state: str
    flags: int
    packets_out: int
    packets_in: int
    bytes_out: int
    bytes_in: int
    start_s: int
    last_seen_ms: int
    owner: int = -1        # the function (index of its first registered address)
    # Traffic since the last flow-log harvest, per direction; None: no packet that way.
    flow_out: FlowInterval | None = None
    flow_in: FlowInterval | None = None

    @property
    def assured(self) -> bool:
        return bool(self.flags & F_ASSURED)

    @property
    def reply_seen(self) -> bool:
        return bool(self.flags & F_REPLY_SEEN)

    @property
    def protocol(self) -> str:
        return {6: "tcp", 17: "udp"}.get(self.proto, str(self.proto))

    @property
    def original(self) -> tuple:
        return (self.src, self.sport, self.dst, self.dport)

    @property
    def reply(self) -> tuple:
        return (self.dst, self.dport, self.nat_addr, self.nat_port)

    @classmethod
    def from_dict(cls, d: dict) -> "Connection":
        """A connection from its ``to_dict()`` form (a control-socket listing's item); keys
        that are not fields are ignored."""
        kw = {f.name: d[f.name] for f in fields(cls) if f.name in d}
        for k in ("flow_out", "flow_in"):
            if kw.get(k) is not None:
                kw[k] = FlowInterval(**kw[k])
        return cls(**kw)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["protocol"] = self.protocol
        d["original"] = {"src": self.src, "sport": self.sport, "dst": self.dst, "dport": self.dport}
        d["reply"] = {"src": self.dst, "sport": self.dport, "dst": self.nat_addr,
                      "dport": self.nat_port}
        d["assured"] = self.assured
        for k in ("flow_out", "flow_in"):
            v = getattr(self, k)
            d[k] = None if v is None else v._asdict()
        return d


def addr_bytes(addr: str) -> tuple[int, bytes]:
    """(family, 16 bytes) as the flow key stores an address: IPv4 in the first 4 bytes."""
    ip = ipaddress.ip_address(addr)
    if ip.version == 4:
        return 4, ip.packed + bytes(12)
    return 6, ip.packed


def mac_bytes(mac) -> bytes:
    """A MAC as 6 bytes, from "02:00:00:00:00:01" or bytes."""
    raw = bytes.fromhex(mac.replace(":", "").replace("-", "")) if isinstance(mac, str) \
        else bytes(mac)
    if len(raw) != 6:
        raise ValueError(f"not a MAC address: {mac!r}")
    return raw


def addr_str(family: int, raw: bytes) -> str:
    return str(ipaddress.ip_address(raw[:4] if family == 4 else raw[:16]))


EVENT_TYPES = ("NEW", "UPDATE", "DESTROY")
# Why a connection ended (csrc/nat/hp_events.h): its timeout ran out; it timed out in CLOSE after
# an RST; `conntrack -D / -F` deleted it; the table was full and it was the oldest unassured
# one; a new SYN reopened its closed tuple.
DESTROY_REASONS = ("EXPIRED", "RESET", "DELETED", "EARLY_DROP", "REOPENED")


@dataclass(frozen=True)
class ConnEvent:
    """One change of the connection table, as `hyperplane conntrack -E` prints it."""
    seq: int               # 1, 2, ... in the order the table changed
    type: str              # NEW, UPDATE or DESTROY
    time_ms: int           # the data plane's clock
    conn: Connection       # after the change (as it was, for DESTROY); no flow interval
    old_state: str | None = None     # UPDATE: the state before
    old_flags: int | None = None     # UPDATE: the flags before
    reason: str | None = None        # DESTROY: one of DESTROY_REASONS

