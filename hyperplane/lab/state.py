"""What a running lab is: the infos of its namespaces, ports, functions, hosts, subnets, ENIs
and groups, and ``LabState``, saved as JSON (with the typed config the lab was built from) so
that ``status``, ``exec`` and the data plane can find it."""

from __future__ import annotations

import ipaddress
import hashlib
import json
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Iterable

from ..config import Config, eni_group_key, parse_config, usable_offsets
from ..errors import LabError
from ..runfolder import ensure_run_dir, paths, write_private
from ..vocab import MAX_ENIS
from .names import IFNAMSIZ, MAC_ENI, LabNames, if_eni, if_eni_peer, mac
from .secgroups import SgRule, egress_rules, group_rules


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
    eni_id: str = ""                            # "eni-" + 17 hex digits, as AWS names them
    status: str = "Active"                      # "Deleted" once reclaimed (live status: daemon)
    scale_out: bool = False                     # added because the group's pool ran high


def eni_name(prefix: str, serial: int, ipv4: str) -> str:
    """An AWS-shaped interface id, eni- and 17 hex digits: derived from what makes the ENI
    (serial: how many ENIs the lab made before it; an id goes to a new ENI once its last one
    is released, a serial never), so that the same config builds the same lab."""
    return "eni-" + hashlib.sha256(f"{prefix}/{serial}/{ipv4}".encode()).hexdigest()[:17]


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
class LabState(LabNames):
    """A lab as built: what ``status --json`` shows and the data plane is configured from."""
    prefix: str
    mtu: int
    namespaces: list[NamespaceInfo]
    inside: InsidePort
    functions: list[FunctionInfo]
    hosts: list[HostInfo]
    subnets: list[SubnetInfo]
    groups: list[GroupInfo]
    enis: list[EniInfo]             # every ENI with a NAT id: Deleted ones until released
    config: Config = field(default_factory=Config)  # the typed config the lab was built from
    enis_made: int = -1             # ENIs made in the lab's life (-1: as many as enis)

    def __post_init__(self):
        if self.enis_made < 0:
            self.enis_made = len(self.enis)

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
        """The group's ENIs that exist (not Deleted), oldest first."""
        return [e for e in self.enis if e.group == group_key and e.status != "Deleted"]

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
        used = {e.id for e in self.enis}
        eni_id = next((i for i in range(MAX_ENIS) if i not in used), None)
        if eni_id is None:
            raise LabError(f"lab {self.prefix!r} has {MAX_ENIS} ENIs, as many as the NAT has "
                           "ids: another waits for one to be reclaimed")
        taken4, taken6 = self._taken(subnet)
        off = next_offset(sn, usable_offsets(ipaddress.ip_network(sn.cidr4)), taken4, taken6)
        if off is None:
            raise LabError(f"subnet {subnet!r} ({sn.cidr4}) has no free address for another ENI")
        return make_eni(self.prefix, eni_id, sn, off, eni_group_key(subnet, sgs), sgs,
                        serial=self.enis_made)

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
        self.enis_made += 1
        if not any(g.key == eni.group for g in self.groups):
            self.groups.append(GroupInfo(index=len(self.groups), key=eni.group,
                                         subnet=eni.subnet,
                                         security_groups=eni.security_groups, functions=()))

    def without_eni(self, eni_id: int) -> None:
        """Forgets an ENI (removed, or Deleted and released by the NAT): its id and addresses
        go to the next ENI."""
        self.enis = [e for e in self.enis if e.id != eni_id]

    def with_function_pair(self, name: str, subnet: str, security_groups) -> str:
        """Moves a function to (subnet, security groups), adding that ENI group when new;
        returns the group key. Raises KeyError for an unknown function, subnet or group."""
        sgs = tuple(sorted(set(security_groups)))
        fn = self.function(name)
        self.subnet(subnet)
        for sg in sgs:
            self.config.security_group(sg)
        key = eni_group_key(subnet, sgs)
        groups = []
        for g in self.groups:
            members = tuple(f for f in g.functions if f != name)
            groups.append(replace(g, functions=members + ((name,) if g.key == key else ())))
        if not any(g.key == key for g in groups):
            groups.append(GroupInfo(index=len(groups), key=key, subnet=subnet,
                                    security_groups=sgs, functions=(name,)))
        self.groups = groups
        moved = replace(fn, group=key, subnets=(subnet,), security_groups=sgs)
        self.functions = [moved if f.name == name else f for f in self.functions]
        return key

    def with_eni_status(self, eni_id: int, status: str) -> EniInfo:
        """Records an ENI's new status. A Deleted one keeps its record, its id and its
        addresses until the NAT releases it (without_eni)."""
        eni = replace(self.eni(eni_id), status=status)
        self.enis = [eni if e.id == eni_id else e for e in self.enis]
        return eni

    # -- JSON ----------------------------------------------------------------------------------

    def sg_rules(self) -> dict[str, tuple[SgRule, ...]]:
        """Each security group's egress rules, compiled (``secgroups.egress_rules``)."""
        return egress_rules(self.config, self.hosts)

    def group_rules(self, group_key: str) -> tuple[SgRule, ...]:
        """The egress rules of the ENIs of a group: the union of its security groups'."""
        return group_rules(self.sg_rules(), self.group(group_key).security_groups)

    def to_dict(self) -> dict:
        # the infos by asdict; the config by its own codec (its tables are read-only maps)
        d = {f.name: _plain(getattr(self, f.name)) for f in fields(self) if f.name != "config"}
        d["config"] = self.config.to_dict()
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
            config=_config(d.get("config")),
            enis_made=d.get("enis_made", -1),
        )

    @classmethod
    def from_json(cls, text: str) -> "LabState":
        return cls.from_dict(json.loads(text))

    @staticmethod
    def path(prefix: str, run_dir: str | Path | None = None) -> Path:
        return paths(prefix, run_dir).lab_state

    def save(self, run_dir: str | Path | None = None) -> Path:
        """Writes the state atomically to the run folder, mode 0600."""
        p = self.path(self.prefix, run_dir)
        ensure_run_dir(p.parent)
        write_private(p, self.to_json())
        return p

    @classmethod
    def load(cls, prefix: str, run_dir: str | Path | None = None) -> "LabState":
        """The saved state of a running lab; FileNotFoundError when there is none."""
        return cls.from_json(cls.path(prefix, run_dir).read_text())


def _plain(v):
    if isinstance(v, list):
        return [asdict(x) for x in v]
    return asdict(v) if is_dataclass(v) else v


def _config(d) -> Config:
    """The saved typed config; a state saved before the typed one held the first layout."""
    if not d:
        return Config()
    if "hyperplane" in d:
        return Config.from_dict(d)
    return parse_config(d)


def _find(items, attr, value, what):
    for x in items:
        if getattr(x, attr) == value:
            return x
    raise KeyError(f"no {what} {value!r}")




# -- addresses of ENIs: the initial ones (topology) and those added later --------------------

def make_eni(prefix: str, eni_id: int, sn: SubnetInfo, off: int, group: str,
             sgs: tuple[str, ...], serial: int | None = None) -> EniInfo:
    """The ENI with NAT id eni_id at offset off of the subnet; serial (default: the id) names
    it."""
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
                   cidr4=sn.cidr4, cidr6=sn.cidr6, group=group, security_groups=sgs,
                   eni_id=eni_name(prefix, eni_id if serial is None else serial,
                                   str(n4.network_address + off)))


def next_offset(sn: SubnetInfo, candidates, taken4: set[int], taken6: set[int]) -> int | None:
    n6 = ipaddress.ip_network(sn.cidr6) if sn.cidr6 else None
    for off in candidates:
        if off in taken4:
            continue
        if n6 is not None and (off in taken6 or off >= n6.num_addresses):
            continue
        return off
    return None
