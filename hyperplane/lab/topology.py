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
from dataclasses import dataclass

from ..config import (FIRST_FUNCTION, FIRST_HOST, INSIDE_GATEWAY, SUBNET_GATEWAY, Config,
                      ConfigError, usable_offsets)
# The names and the state lived here first: importable from here still (re-exported).
from .names import (DATAPLANE, FUNCTION, HOST, IFNAMSIZ, LAMBDA, MAC_ENI, LabNames,  # noqa: F401
                    MAC_FUNCTION, MAC_HOST, MAC_INSIDE, MAC_LAMBDA_BRIDGE, MAC_SUBNET_BRIDGE,
                    ROLES, VPC, if_eni, if_eni_peer, if_function_peer, if_host_peer, if_inside,
                    if_inside_peer, if_lambda_bridge, if_subnet_bridge, is_lab_link,
                    is_lab_namespace, mac, ns_dataplane, ns_function, ns_host, ns_lambda, ns_vpc)
from .secgroups import SgRule, egress_rules
from ..runfolder import RUN_DIR  # noqa: F401
from .state import (EniInfo, FunctionInfo, GroupInfo, HostInfo, InsidePort,  # noqa: F401
                    LabError, LabState, NamespaceInfo, SubnetInfo, make_eni, next_offset)


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


# -- the topology ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Topology(LabNames):
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
            config=self.config)

    def sg_rules(self) -> dict[str, tuple[SgRule, ...]]:
        """Each security group's egress rules, compiled (``secgroups.egress_rules``)."""
        return egress_rules(self.config, self.hosts)


def eni_veth(prefix: str, eni: EniInfo, subnet: SubnetInfo) -> VethSpec:
    """The veth that carries an ENI: data-plane port ``p-eN`` and its peer on the subnet
    bridge. The ENI's addresses are the data plane's: not configured on either end."""
    return VethSpec(
        end=LinkEnd(ns=ns_dataplane(prefix), ifname=eni.ifname, mac=eni.mac, ipv6=False,
                    drop_ingress=True),
        peer=LinkEnd(ns=ns_vpc(prefix), ifname=eni.peer, master=subnet.bridge, ipv6=False))


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
            off4 = next_offset(sn, cand, taken4[s.name], t6)
            if off4 is None:
                raise ConfigError(f"hosts.{h.name}", f"subnet {s.name!r} ({s.cidr4}) has no "
                                                     "free address left for this host")
            taken4[s.name].add(off4)
        a4 = n4.network_address + off4
        a6 = None
        if n6 is not None:
            a6 = ipaddress.ip_address(h.address6) if h.address6 else n6.network_address + off4
            off6 = int(a6) - int(n6.network_address)
            if not h.address6 and off6 in taken6[s.name]:
                raise ConfigError(f"hosts.{h.name}.address6",
                                  f"the host's IPv6 address {a6} (the host number of its IPv4 "
                                  "address) is already used; give address6")
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
        off = next_offset(sn, usable_offsets(ipaddress.ip_network(sn.cidr4)), taken4[sn.name],
                          taken6[sn.name])
        if off is None:
            raise ConfigError(f"vpc.subnets.{sn.name}.cidr4", f"{sn.cidr4} has no free address "
                                                              f"for the ENI of group {key!r}")
        taken4[sn.name].add(off)
        taken6[sn.name].add(off)
        eni = make_eni(p, len(enis), sn, off, key, fn.security_groups)
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
