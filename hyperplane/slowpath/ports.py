"""The data-plane ports as the slow path knows them, and the token bucket its replies
are rate-limited by."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from ._wire import mac_bytes, mac_str

_LINK_LOCAL6 = ipaddress.ip_network("fe80::/10")
ZERO_MAC = b"\0" * 6
ALL_NODES6 = "ff02::1"
ALL_NODES6_MAC = "33:33:00:00:00:01"


def _networks(value) -> tuple:
    if value is None:
        return ()
    if isinstance(value, (str, ipaddress.IPv4Network, ipaddress.IPv6Network)):
        value = (value,)
    return tuple(ipaddress.ip_network(v, strict=False) for v in value)


@dataclass
class PortInfo:
    """One data-plane port as the slow path needs to know it.

    role "inside": addr4 / addr6 are the functions' gateway addresses, cidr4 / cidr6 the
    inside networks (a prefix or a list of them). role "eni": eni is the Nat's ENI id, addr4 /
    addr6 the ENI's addresses, cidr4 / cidr6 its subnet, gw4 / gw6 the subnet's gateway (the
    next hop for destinations off the subnet). A family without a prefix is all on-link."""
    port: int
    mac: str | bytes
    role: str = "eni"
    eni: int | None = None
    addr4: str | None = None
    addr6: str | None = None
    cidr4: object = None
    cidr6: object = None
    gw4: str | None = None
    gw6: str | None = None
    mtu: int = 1500
    mac_b: bytes = field(init=False, repr=False)
    nets4: tuple = field(init=False, repr=False)
    nets6: tuple = field(init=False, repr=False)

    def __post_init__(self):
        if self.role not in ("inside", "eni"):
            raise ValueError(f"role must be 'inside' or 'eni', not {self.role!r}")
        if self.role == "eni" and self.eni is None:
            raise ValueError("an ENI port needs eni=<ENI id>")
        self.mac_b = mac_bytes(self.mac)
        self.mac = mac_str(self.mac_b)
        for name, version in (("addr4", 4), ("addr6", 6), ("gw4", 4), ("gw6", 6)):
            v = getattr(self, name)
            if v is not None:
                ip = ipaddress.ip_address(v)
                if ip.version != version:
                    raise ValueError(f"{name} must be an IPv{version} address, not {v}")
                setattr(self, name, str(ip))
        self.nets4 = _networks(self.cidr4)
        self.nets6 = _networks(self.cidr6)
        if any(n.version != 4 for n in self.nets4) or any(n.version != 6 for n in self.nets6):
            raise ValueError("cidr4 / cidr6 must be IPv4 / IPv6 prefixes")
        if not 68 <= int(self.mtu) <= 65535:
            raise ValueError(f"mtu must be in 68..65535, not {self.mtu}")

    @classmethod
    def inside(cls, port, mac, gw4=None, gw6=None, cidr4=None, cidr6=None, mtu=1500):
        return cls(port=port, mac=mac, role="inside", addr4=gw4, addr6=gw6, cidr4=cidr4,
                   cidr6=cidr6, mtu=mtu)

    @classmethod
    def for_eni(cls, port, eni, mac, addr4=None, addr6=None, cidr4=None, cidr6=None,
                gw4=None, gw6=None, mtu=1500):
        return cls(port=port, mac=mac, role="eni", eni=eni, addr4=addr4, addr6=addr6,
                   cidr4=cidr4, cidr6=cidr6, gw4=gw4, gw6=gw6, mtu=mtu)

    @property
    def is_inside(self) -> bool:
        return self.role == "inside"

    def addr(self, family: int) -> str | None:
        return self.addr4 if family == 4 else self.addr6

    def on_link(self, addr) -> bool:
        ip = ipaddress.ip_address(addr)
        nets = self.nets4 if ip.version == 4 else self.nets6
        return not nets or any(ip in n for n in nets)

    def next_hop(self, dst: str) -> str | None:
        """Whose MAC a frame for dst leaving this port needs; None: no route."""
        if self.is_inside or self.on_link(dst):
            return dst
        return self.gw4 if ipaddress.ip_address(dst).version == 4 else self.gw6

    def learnable(self, addr: str) -> bool:
        """Neighbour entries come only from addresses on this port's networks (and IPv6
        link-local ones, which a subnet gateway may use)."""
        ip = ipaddress.ip_address(addr)
        if ip.is_unspecified or ip.is_multicast or ip.is_loopback:
            return False
        if ip.version == 6 and ip in _LINK_LOCAL6:
            return True
        return self.on_link(ip)


class TokenBucket:
    def __init__(self, rate: float, burst: float, now: int):
        self.rate, self.burst = float(rate), float(burst)
        self.tokens, self.last = float(burst), now

    def take(self, now: int) -> bool:
        if now > self.last:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate / 1000.0)
            self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False
