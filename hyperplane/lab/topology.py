"""The lab as a value: every namespace, link, MAC, address and route, computed from a Config.

Nothing here touches the system (like Mininet's ``Topo``): ``build_topology(config)`` returns a
``Topology`` that the builder applies, and ``Topology.state()`` the ``LabState`` a running lab
is described by (saved as JSON so ``status``, ``exec`` and the control plane can find it).

Layout for prefix ``p``::

    p-f-NAME (eth0) ──veth── p-fI ┐
                                  ├─ p-lbr (bridge, in p-lambda) ── p-inp ──veth── p-in ┐
    p-f-NAME (eth0) ──veth── p-fI ┘                                                    │ p-hp
                                                                                       │ (data
    p-h-NAME (eth0) ──veth── p-hJ ┐                                                    │ plane)
                                  ├─ p-sI (bridge with .1/::1, in p-vpc) ── p-eNp ─veth─ p-eN ┘
                                  │                         (one subnet bridge per subnet)

Interface names are at most 15 characters: the prefix is 1-4 characters.
"""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Iterable

from ..config import (FIRST_FUNCTION, FIRST_HOST, INSIDE_GATEWAY, SUBNET_GATEWAY, Config,
                      ConfigError, eni_group_key, usable_offsets)

RUN_DIR = Path(os.environ.get("HYPERPLANE_RUN_DIR", "/run/hyperplane"))

# namespace roles
DATAPLANE, LAMBDA, FUNCTION, VPC, HOST = "dataplane", "lambda", "function", "vpc", "host"
ROLES = (DATAPLANE, LAMBDA, FUNCTION, VPC, HOST)

IFNAMSIZ = 15  # usable characters of an interface name

# MACs: 02:48:50 ("HP", locally administered, unicast), then a role byte and a 16-bit index.
MAC_INSIDE, MAC_ENI, MAC_FUNCTION, MAC_HOST, MAC_SUBNET_BRIDGE, MAC_LAMBDA_BRIDGE = range(6)


class LabError(RuntimeError):
    """The lab cannot do what was asked (no room for another ENI, unknown subnet, ...)."""


def mac(role: int, index: int) -> str:
    if not 0 <= index <= 0xFFFF:
        raise ValueError(f"MAC index {index} out of range")
    return "02:48:50:%02x:%02x:%02x" % (role, index >> 8, index & 0xFF)


# -- names -----------------------------------------------------------------------------------

def ns_dataplane(p: str) -> str:
    return f"{p}-hp"


def ns_lambda(p: str) -> str:
    return f"{p}-lambda"


def ns_vpc(p: str) -> str:
    return f"{p}-vpc"


def ns_function(p: str, name: str) -> str:
    return f"{p}-f-{name}"


def ns_host(p: str, name: str) -> str:
    return f"{p}-h-{name}"


def if_inside(p: str) -> str:
    return f"{p}-in"


def if_inside_peer(p: str) -> str:
    return f"{p}-inp"


def if_lambda_bridge(p: str) -> str:
    return f"{p}-lbr"


def if_eni(p: str, eni_id: int) -> str:
    return f"{p}-e{eni_id}"


def if_eni_peer(p: str, eni_id: int) -> str:
    return f"{p}-e{eni_id}p"


def if_subnet_bridge(p: str, index: int) -> str:
    return f"{p}-s{index}"


def if_function_peer(p: str, index: int) -> str:
    return f"{p}-f{index}"


def if_host_peer(p: str, index: int) -> str:
    return f"{p}-h{index}"


def is_lab_namespace(prefix: str, name: str) -> bool:
    """Whether ``name`` is one of the namespaces a lab with ``prefix`` creates."""
    if name in (ns_dataplane(prefix), ns_lambda(prefix), ns_vpc(prefix)):
        return True
    for head in (f"{prefix}-f-", f"{prefix}-h-"):
        if name.startswith(head) and len(name) > len(head):
            return True
    return False


def is_lab_link(prefix: str, ifname: str) -> bool:
    """Whether ``ifname`` carries the lab's prefix (``eth0`` inside function and host
    namespaces does not: those go with their namespace)."""
    return ifname.startswith(f"{prefix}-")


# -- specs: what the builder creates ---------------------------------------------------------

@dataclass(frozen=True)
class NamespaceSpec:
    name: str
    role: str
    sysctls: tuple[tuple[str, str], ...] = ()   # (key, value), set before any link is created


@dataclass(frozen=True)
class LinkEnd:
    ns: str
    ifname: str
    mac: str | None = None                      # None: the kernel's random one
    master: str | None = None                   # bridge to enslave to
    addresses: tuple[str, ...] = ()             # "addr/prefixlen"; IPv6 ones added nodad
    ipv6: bool = True                           # False: net.ipv6.conf.IF.disable_ipv6=1
    drop_ingress: bool = False                  # clsact + a drop-everything ingress filter


@dataclass(frozen=True)
class BridgeSpec:
    ns: str
    ifname: str
    mac: str
    addresses: tuple[str, ...] = ()
    ipv6: bool = True


@dataclass(frozen=True)
class VethSpec:
    end: LinkEnd                                # created from end.ns ...
    peer: LinkEnd                               # ... with its peer straight into peer.ns


@dataclass(frozen=True)
class RouteSpec:
    ns: str
    family: int
    dst: str                                    # "default" or a CIDR
    gateway: str
    ifname: str


# -- infos: what a running lab is ------------------------------------------------------------

@dataclass(frozen=True)
class NamespaceInfo:
    name: str
    role: str
    addresses: tuple[str, ...] = ()             # configured on its interfaces, "addr/len"


@dataclass(frozen=True)
class InsidePort:
    ns: str
    ifname: str
    peer: str
    mac: str
    cidr4: str
    cidr6: str | None
    gateway4: str                               # answered by the data plane (ARP)
    gateway6: str | None                        # answered by the data plane (NDP)


@dataclass(frozen=True)
class FunctionInfo:
    name: str
    ns: str
    ifname: str
    mac: str
    ipv4: str
    ipv6: str | None
    ipv6_allowed: bool
    group: str                                  # ENI group key, "subnet|sg-a,sg-b"
    subnets: tuple[str, ...]
    security_groups: tuple[str, ...]
    gateway4: str
    gateway6: str | None


@dataclass(frozen=True)
class HostInfo:
    name: str
    ns: str
    ifname: str
    mac: str
    subnet: str
    ipv4: str
    ipv6: str | None
    gateway4: str
    gateway6: str | None


@dataclass(frozen=True)
class SubnetInfo:
    name: str
    index: int
    bridge: str
    mac: str
    cidr4: str
    cidr6: str | None
    gateway4: str
    gateway6: str | None

    @property
    def dual_stack(self) -> bool:
        return self.cidr6 is not None


@dataclass(frozen=True)
class EniInfo:
    id: int
    ifname: str                                 # in the data-plane namespace
    peer: str                                   # in the VPC namespace, on the subnet bridge
    mac: str
    ipv4: str                                   # owned by the data plane, not configured
    ipv6: str | None
    subnet: str
    gateway4: str
    gateway6: str | None
    cidr4: str
    cidr6: str | None
    group: str
    security_groups: tuple[str, ...]


@dataclass(frozen=True)
class GroupInfo:
    """Functions sharing ENIs: one (subnet, security-group set)."""
    index: int
    key: str
    subnet: str
    security_groups: tuple[str, ...]
    functions: tuple[str, ...]


def _load(cls, d):
    """A dataclass from its asdict() form (lists become tuples where the field is a tuple)."""
    kw = {}
    for f in fields(cls):
        if f.name not in d:
            continue
        v = d[f.name]
        if isinstance(v, list):
            v = tuple(v)
        kw[f.name] = v
    return cls(**kw)


@dataclass
class LabState:
    """A lab as built: what ``status --json`` shows and the data plane is configured from."""
    prefix: str
    mtu: int
    namespaces: list[NamespaceInfo]
    inside: InsidePort
    functions: list[FunctionInfo]
    hosts: list[HostInfo]
    subnets: list[SubnetInfo]
    groups: list[GroupInfo]
    enis: list[EniInfo]
    config: dict = field(default_factory=dict)   # Config.to_dict() the lab was built from

    @property
    def dataplane_ns(self) -> str:
        return ns_dataplane(self.prefix)

    @property
    def lambda_ns(self) -> str:
        return ns_lambda(self.prefix)

    @property
    def vpc_ns(self) -> str:
        return ns_vpc(self.prefix)

    def function(self, name: str) -> FunctionInfo:
        return _find(self.functions, "name", name, "function")

    def host(self, name: str) -> HostInfo:
        return _find(self.hosts, "name", name, "host")

    def subnet(self, name: str) -> SubnetInfo:
        return _find(self.subnets, "name", name, "subnet")

    def group(self, key: str) -> GroupInfo:
        return _find(self.groups, "key", key, "ENI group")

    def eni(self, eni_id: int) -> EniInfo:
        return _find(self.enis, "id", eni_id, "ENI")

    def enis_of(self, group_key: str) -> list[EniInfo]:
        """The group's ENIs, oldest first (the last takes new connections)."""
        return [e for e in self.enis if e.group == group_key]

    def namespace_of(self, name: str) -> str:
        """The namespace of a function or host by its name, or a namespace name itself."""
        for item in (*self.functions, *self.hosts):
            if item.name == name:
                return item.ns
        if any(n.name == name for n in self.namespaces):
            return name
        raise KeyError(f"no function, host or namespace named {name!r} in lab "
                       f"{self.prefix!r}")

    def next_eni(self, subnet: str, security_groups: Iterable[str] = ()) -> EniInfo:
        """The ENI that adding one to (subnet, security groups) would create (pure)."""
        sgs = tuple(sorted(set(security_groups)))
        try:
            sn = self.subnet(subnet)
        except KeyError:
            raise LabError(f"no subnet named {subnet!r} (subnets: "
                           f"{', '.join(s.name for s in self.subnets)})") from None
        eni_id = max((e.id for e in self.enis), default=-1) + 1
        taken4, taken6 = self._taken(subnet)
        off = _next_offset(sn, usable_offsets(ipaddress.ip_network(sn.cidr4)), taken4, taken6)
        if off is None:
            raise LabError(f"subnet {subnet!r} ({sn.cidr4}) has no free address for another ENI")
        return _eni(self.prefix, eni_id, sn, off, eni_group_key(subnet, sgs), sgs)

    def _taken(self, subnet: str) -> tuple[set[int], set[int]]:
        sn = self.subnet(subnet)
        n4 = ipaddress.ip_network(sn.cidr4)
        n6 = ipaddress.ip_network(sn.cidr6) if sn.cidr6 else None
        t4, t6 = set(), set()
        for item in (*[h for h in self.hosts if h.subnet == subnet],
                     *[e for e in self.enis if e.subnet == subnet]):
            t4.add(int(ipaddress.ip_address(item.ipv4)) - int(n4.network_address))
            if item.ipv6 and n6 is not None:
                t6.add(int(ipaddress.ip_address(item.ipv6)) - int(n6.network_address))
        return t4, t6

    def with_eni(self, eni: EniInfo) -> None:
        """Records an ENI added at runtime (and its group, when new)."""
        self.enis.append(eni)
        if not any(g.key == eni.group for g in self.groups):
            self.groups.append(GroupInfo(index=len(self.groups), key=eni.group,
                                         subnet=eni.subnet,
                                         security_groups=eni.security_groups, functions=()))

    def without_eni(self, eni_id: int) -> None:
        self.enis = [e for e in self.enis if e.id != eni_id]

    # -- JSON ----------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        d = asdict(self)
        d["dataplane_ns"] = self.dataplane_ns
        d["lambda_ns"] = self.lambda_ns
        d["vpc_ns"] = self.vpc_ns
        return d

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: dict) -> "LabState":
        return cls(
            prefix=d["prefix"], mtu=d["mtu"],
            namespaces=[_load(NamespaceInfo, x) for x in d["namespaces"]],
            inside=_load(InsidePort, d["inside"]),
            functions=[_load(FunctionInfo, x) for x in d["functions"]],
            hosts=[_load(HostInfo, x) for x in d["hosts"]],
            subnets=[_load(SubnetInfo, x) for x in d["subnets"]],
            groups=[_load(GroupInfo, x) for x in d["groups"]],
            enis=[_load(EniInfo, x) for x in d["enis"]],
            config=d.get("config", {}),
        )

    @classmethod
    def from_json(cls, text: str) -> "LabState":
        return cls.from_dict(json.loads(text))

    @staticmethod
    def path(prefix: str, run_dir: str | Path | None = None) -> Path:
        return Path(run_dir or RUN_DIR) / f"{prefix}.json"

    def save(self, run_dir: str | Path | None = None) -> Path:
        """Writes the state atomically to ``{run_dir}/{prefix}.json``."""
        p = self.path(self.prefix, run_dir)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(f".json.{os.getpid()}.tmp")
        tmp.write_text(self.to_json())
        os.replace(tmp, p)
        return p

    @classmethod
    def load(cls, prefix: str, run_dir: str | Path | None = None) -> "LabState":
        """The saved state of a running lab; FileNotFoundError when there is none."""
        return cls.from_json(cls.path(prefix, run_dir).read_text())


def _find(items, attr, value, what):
    for x in items:
        if getattr(x, attr) == value:
            return x
    raise KeyError(f"no {what} {value!r}")


# -- the topology ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Topology:
    prefix: str
    mtu: int
    config: Config
    namespaces: tuple[NamespaceSpec, ...]
    bridges: tuple[BridgeSpec, ...]
    veths: tuple[VethSpec, ...]
    routes: tuple[RouteSpec, ...]
    inside: InsidePort
    functions: tuple[FunctionInfo, ...]
    hosts: tuple[HostInfo, ...]
    subnets: tuple[SubnetInfo, ...]
    groups: tuple[GroupInfo, ...]
    enis: tuple[EniInfo, ...]

    @property
    def dataplane_ns(self) -> str:
        return ns_dataplane(self.prefix)

    @property
    def lambda_ns(self) -> str:
        return ns_lambda(self.prefix)

    @property
    def vpc_ns(self) -> str:
        return ns_vpc(self.prefix)

    def links(self) -> list[tuple[str, str]]:
        """Every (namespace, interface name) the lab creates, loopbacks aside."""
        out = [(b.ns, b.ifname) for b in self.bridges]
        for v in self.veths:
            out += [(v.end.ns, v.end.ifname), (v.peer.ns, v.peer.ifname)]
        return out

    def addresses(self, ns: str) -> tuple[str, ...]:
        out = []
        for b in self.bridges:
            if b.ns == ns:
                out += b.addresses
        for v in self.veths:
            for e in (v.end, v.peer):
                if e.ns == ns:
                    out += e.addresses
        return tuple(out)

    def state(self) -> LabState:
        return LabState(
            prefix=self.prefix, mtu=self.mtu,
            namespaces=[NamespaceInfo(n.name, n.role, self.addresses(n.name))
                        for n in self.namespaces],
            inside=self.inside, functions=list(self.functions), hosts=list(self.hosts),
            subnets=list(self.subnets), groups=list(self.groups), enis=list(self.enis),
            config=self.config.to_dict())


def eni_veth(prefix: str, eni: EniInfo, subnet: SubnetInfo) -> VethSpec:
    """The veth that carries an ENI: data-plane port ``p-eN`` and its peer on the subnet
    bridge. The ENI's addresses are the data plane's: not configured on either end."""
    return VethSpec(
        end=LinkEnd(ns=ns_dataplane(prefix), ifname=eni.ifname, mac=eni.mac, ipv6=False,
                    drop_ingress=True),
        peer=LinkEnd(ns=ns_vpc(prefix), ifname=eni.peer, master=subnet.bridge, ipv6=False))


def _eni(prefix: str, eni_id: int, sn: SubnetInfo, off: int, group: str,
         sgs: tuple[str, ...]) -> EniInfo:
    ifname = if_eni(prefix, eni_id)
    peer = if_eni_peer(prefix, eni_id)
    if len(peer) > IFNAMSIZ:
        raise LabError(f"ENI id {eni_id} makes the interface name {peer!r} too long")
    n4 = ipaddress.ip_network(sn.cidr4)
    n6 = ipaddress.ip_network(sn.cidr6) if sn.cidr6 else None
    return EniInfo(id=eni_id, ifname=ifname, peer=peer, mac=mac(MAC_ENI, eni_id),
                   ipv4=str(n4.network_address + off),
                   ipv6=str(n6.network_address + off) if n6 is not None else None,
                   subnet=sn.name, gateway4=sn.gateway4, gateway6=sn.gateway6,
                   cidr4=sn.cidr4, cidr6=sn.cidr6, group=group, security_groups=sgs)


def _next_offset(sn: SubnetInfo, candidates, taken4: set[int], taken6: set[int]) -> int | None:
    n6 = ipaddress.ip_network(sn.cidr6) if sn.cidr6 else None
    for off in candidates:
        if off in taken4:
            continue
        if n6 is not None and (off in taken6 or off >= n6.num_addresses):
            continue
        return off
    return None


def _cidr(addr, net) -> str:
    return f"{addr}/{net.prefixlen}"


def build_topology(cfg: Config) -> Topology:
    """Computes the whole lab from a validated Config. Raises ConfigError when addresses run
    out (which validation mostly catches earlier)."""
    p = cfg.prefix
    dp, lam, vpc = ns_dataplane(p), ns_lambda(p), ns_vpc(p)

    quiet_l2 = (("net/ipv4/ip_forward", "0"), ("net/ipv6/conf/all/forwarding", "0"),
                ("net/ipv6/conf/default/disable_ipv6", "1"),
                ("net/ipv6/conf/all/disable_ipv6", "1"))
    endpoint = (("net/ipv6/conf/default/accept_dad", "0"), ("net/ipv6/conf/all/accept_dad", "0"),
                ("net/ipv6/conf/default/router_solicitations", "0"),
                ("net/ipv6/conf/default/accept_ra", "0"))
    router = (("net/ipv4/ip_forward", "1"), ("net/ipv6/conf/all/forwarding", "1"),
              ("net/ipv6/conf/default/accept_dad", "0"), ("net/ipv6/conf/all/accept_dad", "0"))

    namespaces = [NamespaceSpec(dp, DATAPLANE, quiet_l2), NamespaceSpec(lam, LAMBDA, quiet_l2),
                  NamespaceSpec(vpc, VPC, router)]
    bridges: list[BridgeSpec] = []
    veths: list[VethSpec] = []
    routes: list[RouteSpec] = []

    # Lambda side: the inside port and its bridge
    in4, in6 = cfg.inside.network4, cfg.inside.network6
    inside = InsidePort(ns=dp, ifname=if_inside(p), peer=if_inside_peer(p),
                        mac=mac(MAC_INSIDE, 0), cidr4=str(in4),
                        cidr6=str(in6) if in6 else None,
                        gateway4=str(in4.network_address + INSIDE_GATEWAY),
                        gateway6=str(in6.network_address + INSIDE_GATEWAY) if in6 else None)
    lbr = if_lambda_bridge(p)
    bridges.append(BridgeSpec(ns=lam, ifname=lbr, mac=mac(MAC_LAMBDA_BRIDGE, 0), ipv6=False))
    veths.append(VethSpec(
        end=LinkEnd(ns=dp, ifname=inside.ifname, mac=inside.mac, ipv6=False, drop_ingress=True),
        peer=LinkEnd(ns=lam, ifname=inside.peer, master=lbr, ipv6=False)))

    # customer VPC: one bridge per subnet on the router
    subnets: list[SubnetInfo] = []
    for i, s in enumerate(cfg.subnets):
        n4, n6 = s.network4, s.network6
        sn = SubnetInfo(name=s.name, index=i, bridge=if_subnet_bridge(p, i),
                        mac=mac(MAC_SUBNET_BRIDGE, i), cidr4=str(n4),
                        cidr6=str(n6) if n6 else None,
                        gateway4=str(n4.network_address + SUBNET_GATEWAY),
                        gateway6=str(n6.network_address + SUBNET_GATEWAY) if n6 else None)
        subnets.append(sn)
        addrs = [_cidr(sn.gateway4, n4)] + ([_cidr(sn.gateway6, n6)] if n6 else [])
        bridges.append(BridgeSpec(ns=vpc, ifname=sn.bridge, mac=sn.mac, addresses=tuple(addrs)))
    by_name = {s.name: s for s in subnets}

    # hosts: explicit addresses first, then the next free from .10
    taken4: dict[str, set[int]] = {s.name: set() for s in subnets}
    taken6: dict[str, set[int]] = {s.name: set() for s in subnets}
    for h in cfg.hosts:
        s = cfg.subnet(h.subnet)
        if h.address4:
            taken4[s.name].add(int(ipaddress.ip_address(h.address4)) - int(s.network4.network_address))
        if h.address6:
            taken6[s.name].add(int(ipaddress.ip_address(h.address6)) - int(s.network6.network_address))
    hosts: list[HostInfo] = []
    for j, h in enumerate(cfg.hosts):
        s, sn = cfg.subnet(h.subnet), by_name[h.subnet]
        n4, n6 = s.network4, s.network6
        if h.address4:
            off4 = int(ipaddress.ip_address(h.address4)) - int(n4.network_address)
        else:
            cand = [o for o in usable_offsets(n4) if o >= FIRST_HOST]
            t6 = taken6[s.name] if not h.address6 else set()
            off4 = _next_offset(sn, cand, taken4[s.name], t6)
            if off4 is None:
                raise ConfigError(f"hosts[{j}]", f"subnet {s.name!r} ({s.cidr4}) has no free "
                                                 "address left for this host")
            taken4[s.name].add(off4)
        a4 = n4.network_address + off4
        a6 = None
        if n6 is not None:
            a6 = ipaddress.ip_address(h.address6) if h.address6 else n6.network_address + off4
            off6 = int(a6) - int(n6.network_address)
            if not h.address6 and off6 in taken6[s.name]:
                raise ConfigError(f"hosts[{j}].address6", f"the host's IPv6 address {a6} (the "
                                                          "host number of its IPv4 address) is "
                                                          "already used; give address6")
            taken6[s.name].add(off6)
        ns = ns_host(p, h.name)
        hosts.append(HostInfo(name=h.name, ns=ns, ifname="eth0", mac=mac(MAC_HOST, j),
                              subnet=s.name, ipv4=str(a4), ipv6=str(a6) if a6 else None,
                              gateway4=sn.gateway4, gateway6=sn.gateway6))
        namespaces.append(NamespaceSpec(ns, HOST, endpoint))
        addrs = [_cidr(a4, n4)] + ([_cidr(a6, n6)] if a6 else [])
        veths.append(VethSpec(
            end=LinkEnd(ns=vpc, ifname=if_host_peer(p, j), master=sn.bridge, ipv6=False),
            peer=LinkEnd(ns=ns, ifname="eth0", mac=mac(MAC_HOST, j), addresses=tuple(addrs))))
        routes.append(RouteSpec(ns, 4, "default", sn.gateway4, "eth0"))
        if a6:
            routes.append(RouteSpec(ns, 6, "default", sn.gateway6, "eth0"))

    # ENI groups, in order of first appearance, one ENI each to start with
    members: dict[str, list[str]] = {}
    for fn in cfg.functions:
        members.setdefault(fn.group_key, []).append(fn.name)
    groups: list[GroupInfo] = []
    enis: list[EniInfo] = []
    for gi, (key, names) in enumerate(members.items()):
        fn = next(f for f in cfg.functions if f.group_key == key)
        sn = by_name[fn.eni_subnet]
        groups.append(GroupInfo(index=gi, key=key, subnet=sn.name,
                                security_groups=fn.security_groups, functions=tuple(names)))
        off = _next_offset(sn, usable_offsets(ipaddress.ip_network(sn.cidr4)), taken4[sn.name],
                           taken6[sn.name])
        if off is None:
            raise ConfigError(f"subnets[{sn.index}].cidr4", f"{sn.cidr4} has no free address "
                                                            f"for the ENI of group {key!r}")
        taken4[sn.name].add(off)
        taken6[sn.name].add(off)
        eni = _eni(p, len(enis), sn, off, key, fn.security_groups)
        enis.append(eni)
        veths.append(eni_veth(p, eni, sn))

    # functions
    functions: list[FunctionInfo] = []
    for i, fn in enumerate(cfg.functions):
        ns = ns_function(p, fn.name)
        a4 = in4.network_address + FIRST_FUNCTION + i
        a6 = in6.network_address + FIRST_FUNCTION + i if in6 else None
        m = mac(MAC_FUNCTION, i)
        functions.append(FunctionInfo(
            name=fn.name, ns=ns, ifname="eth0", mac=m, ipv4=str(a4),
            ipv6=str(a6) if a6 else None, ipv6_allowed=fn.ipv6, group=fn.group_key,
            subnets=fn.subnets, security_groups=fn.security_groups,
            gateway4=inside.gateway4, gateway6=inside.gateway6))
        namespaces.append(NamespaceSpec(ns, FUNCTION, endpoint))
        addrs = [_cidr(a4, in4)] + ([_cidr(a6, in6)] if a6 else [])
        veths.append(VethSpec(
            end=LinkEnd(ns=lam, ifname=if_function_peer(p, i), master=lbr, ipv6=False),
            peer=LinkEnd(ns=ns, ifname="eth0", mac=m, addresses=tuple(addrs))))
        routes.append(RouteSpec(ns, 4, "default", inside.gateway4, "eth0"))
        if a6:
            routes.append(RouteSpec(ns, 6, "default", inside.gateway6, "eth0"))

    topo = Topology(prefix=p, mtu=cfg.mtu, config=cfg, namespaces=tuple(namespaces),
                    bridges=tuple(bridges), veths=tuple(veths), routes=tuple(routes),
                    inside=inside, functions=tuple(functions), hosts=tuple(hosts),
                    subnets=tuple(subnets), groups=tuple(groups), enis=tuple(enis))
    for ns, ifname in topo.links():
        if len(ifname) > IFNAMSIZ:  # cannot happen with a valid prefix; a guard for edits
            raise ConfigError("prefix", f"interface name {ifname!r} in {ns} is longer than "
                                        f"{IFNAMSIZ} characters")
    return topo
