"""Connection filters, as `hyperplane conntrack`, `conntrack -E` and `Lab.connections(**filters)`
take them (docs/cli.md, "Filters").

A filter is a set of tests that must all hold; it travels to the data plane as a JSON object
with the keys of KEY_MEANINGS (any subset; a missing key or None tests nothing).

The data plane applies it in C while it scans the table (csrc/nat/conntrack.c, hp_ct_match), so a
filtered listing costs the scan and the matches, never a Python object per connection.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, fields

from .vocab import F_ASSURED, STATES

PROTOCOLS = {"tcp": 6, "udp": 17}
ADDRESS_KEYS = ("src", "dst", "nat_addr")
PORT_KEYS = ("sport", "dport", "nat_port")
KEY_MEANINGS = (
    ("family", "4 or 6"),
    ("proto", '"tcp" or "udp" (or 6, 17)'),
    ("state", 'a state name or a list of them ("ESTABLISHED", "UDP_STREAM", ...)'),
    ("eni", "the ENI's id"),
    ("function", "the function's name (the data plane resolves it to its owner index)"),
    ("owner", "the function's owner index (the listing's owner key)"),
    ("assured", "true: assured connections only; false: unassured ones only"),
    ("src", "the original source (the function's address): an address or a prefix"),
    ("dst", "the original destination, which is also the reply's source"),
    ("nat_addr", "the ENI address the connection leaves from: the reply's destination"),
    ("sport", 'the original source port: a port, a range "lo-hi" or [lo, hi]'),
    ("dport", "the original destination port, which is also the reply's source port"),
    ("nat_port", "the external port: the reply's destination port"),
)
KEYS = tuple(key for key, _ in KEY_MEANINGS)


def _network(key: str, value) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(str(value), strict=False)
    except ValueError:
        raise ValueError(f"filter {key}: not an address or prefix: {value!r}") from None


def _port_range(key: str, value) -> tuple[int, int]:
    if isinstance(value, (list, tuple)) and len(value) == 2:
        lo, hi = value
    elif isinstance(value, int) and not isinstance(value, bool):
        lo = hi = value
    else:
        text = str(value)
        lo_text, _, hi_text = text.partition("-")
        try:
            lo = int(lo_text)
            hi = int(hi_text) if hi_text else lo
        except ValueError:
            raise ValueError(f"filter {key}: not a port or a range lo-hi: {value!r}") from None
    if not (isinstance(lo, int) and isinstance(hi, int) and 0 <= lo <= hi <= 65535):
        raise ValueError(f"filter {key}: ports are 0..65535, lo <= hi: {value!r}")
    return lo, hi


def _states(value) -> frozenset[str]:
    names = [value] if isinstance(value, str) else list(value)
    out = set()
    for name in names:
        for part in str(name).split(","):
            upper = part.strip().upper()
            if upper not in STATES[1:]:
                raise ValueError(f"filter state: unknown state {part!r}; known: "
                                 f"{', '.join(STATES[1:])}")
            out.add(upper)
    return frozenset(out)


def _int(key: str, value, lo: int, hi: int) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"filter {key}: not an integer: {value!r}") from None
    if isinstance(value, bool) or not lo <= n <= hi:
        raise ValueError(f"filter {key}: {value!r} is out of range {lo}..{hi}")
    return n


@dataclass(frozen=True)
class ConnFilter:
    """A parsed filter (``ConnFilter.parse(dict)``); the function's name must have been
    resolved to its owner index already (the data plane does it)."""
    family: int | None = None
    proto: int | None = None
    states: frozenset[str] | None = None
    eni: int | None = None
    owner: int | None = None
    assured: bool | None = None
    src: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    dst: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    nat_addr: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    sport: tuple[int, int] | None = None
    dport: tuple[int, int] | None = None
    nat_port: tuple[int, int] | None = None

    @classmethod
    def parse(cls, spec: dict | None) -> "ConnFilter":
        """From the JSON form (the module's docstring); ValueError names the bad key."""
        spec = {k: v for k, v in (spec or {}).items() if v is not None}
        unknown = sorted(set(spec) - set(KEYS))
        if unknown:
            raise ValueError(f"unknown filter key {unknown[0]!r}; known: {', '.join(KEYS)}")
        if "function" in spec:
            raise ValueError("filter function: the data plane resolves names; give owner")
        kw: dict = {}
        if "family" in spec:
            kw["family"] = _int("family", spec["family"], 4, 6)
            if kw["family"] not in (4, 6):
                raise ValueError(f"filter family: 4 or 6, not {spec['family']!r}")
        if "proto" in spec:
            proto = spec["proto"]
            proto = PROTOCOLS.get(str(proto).lower(), proto)
            if proto not in (6, 17):
                raise ValueError(f"filter proto: tcp or udp, not {spec['proto']!r}")
            kw["proto"] = proto
        if "state" in spec:
            kw["states"] = _states(spec["state"])
        if "eni" in spec:
            kw["eni"] = _int("eni", spec["eni"], 0, 65535)
        if "owner" in spec:
            kw["owner"] = _int("owner", spec["owner"], 0, 2**32 - 1)
        if "assured" in spec:
            if not isinstance(spec["assured"], bool):
                raise ValueError(f"filter assured: true or false, not {spec['assured']!r}")
            kw["assured"] = spec["assured"]
        for key in ADDRESS_KEYS:
            if key in spec:
                net = kw[key] = _network(key, spec[key])
                if kw.setdefault("family", net.version) != net.version:
                    raise ValueError(f"filter {key}: an IPv{net.version} address in a filter "
                                     f"of IPv{kw['family']}")
        for key in PORT_KEYS:
            if key in spec:
                kw[key] = _port_range(key, spec[key])
        return cls(**kw)

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) is not None for f in fields(self))

    def to_dict(self) -> dict:
        """The JSON form, which parse() reads back to an equal filter."""
        out: dict = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if f.name == "states":
                out["state"] = sorted(value)
            elif f.name in ADDRESS_KEYS:
                out[f.name] = str(value)
            elif f.name in PORT_KEYS:
                out[f.name] = list(value)
            else:
                out[f.name] = value
        return out

    def matches(self, conn) -> bool:
        """The same test as the C core's hp_ct_match, on a Connection (for the reference
        model and for callers holding Connection objects)."""
        if self.family is not None and conn.family != self.family:
            return False
        if self.proto is not None and conn.proto != self.proto:
            return False
        if self.states is not None and conn.state not in self.states:
            return False
        if self.eni is not None and conn.eni != self.eni:
            return False
        if self.owner is not None and conn.owner != self.owner:
            return False
        if self.assured is not None and bool(conn.flags & F_ASSURED) != self.assured:
            return False
        for key in ADDRESS_KEYS:
            net = getattr(self, key)
            if net is not None and ipaddress.ip_address(getattr(conn, key)) not in net:
                return False
        for key in PORT_KEYS:
            rng = getattr(self, key)
            if rng is not None and not rng[0] <= getattr(conn, key) <= rng[1]:
                return False
        return True
