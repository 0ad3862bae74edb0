"""Lab and NAT configuration: dataclasses, TOML loading and validation.

A configuration describes one lab: the Lambda-side inside network, the customer VPC's subnets and
hosts, the functions (each with its subnets, security groups and IPv6 opt-in) and the NAT's
settings. ``load_config(path)`` reads a TOML file, ``parse_config(dict)`` validates a mapping and
``default_config()`` returns the built-in lab (``hyperplane/default_lab.toml``).

Every problem raises ``ConfigError(field, problem)``; ``field`` is a path such as
``subnets[1].cidr4`` so the message points at the line to fix.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from .vocab import DEFAULT_PORT_RANGE, PROFILES

DEFAULT_LAB_PATH = Path(__file__).with_name("default_lab.toml")

PREFIX_RE = re.compile(r"^[a-z0-9]{1,4}$")
# Function and host names become namespace names ("{prefix}-f-{name}") and CLI arguments.
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
SG_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
MAPPINGS = ("endpoint-independent", "per-connection")

# Host numbers inside a network (offsets from the network address).
INSIDE_GATEWAY = 1          # 10.200.0.1, fd00:200::1
FIRST_FUNCTION = 11         # functions from .11 upward
SUBNET_GATEWAY = 1          # the VPC router's address in each subnet
FIRST_RESERVED_FREE = 4     # AWS reserves .0-.3 of every subnet; ENIs start at .4
FIRST_HOST = 10             # hosts from .10 upward unless the config gives an address


class ConfigError(ValueError):
    """A configuration problem: ``field`` names the setting, ``problem`` says what is wrong."""

    def __init__(self, field: str, problem: str, source: str | None = None):
        self.field = field
        self.problem = problem
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{field}: {problem}")


class _Networks:
    """cidr4 / cidr6 as ipaddress networks."""

    @property
    def network4(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.cidr4)

    @property
    def network6(self) -> ipaddress.IPv6Network | None:
        return ipaddress.IPv6Network(self.cidr6) if self.cidr6 else None


@dataclass(frozen=True)
class InsideConfig(_Networks):
    """Lambda's side: the network the functions live in (the NAT's inside)."""
    cidr4: str = "10.200.0.0/24"
    cidr6: str | None = "fd00:200::/64"


@dataclass(frozen=True)
class NatConfig:
    profile: str = "aws"                       # "aws" or "rfc" (vocab.PROFILES)
    mapping: str = "endpoint-independent"      # or "per-connection"
    port_range: tuple[int, int] = DEFAULT_PORT_RANGE
    capacity: int = 262144                     # connections
    timeouts: Mapping[str, int] = field(default_factory=dict)  # state name -> seconds

    @property
    def ports_per_eni(self) -> int:
        return self.port_range[1] - self.port_range[0] + 1


@dataclass(frozen=True)
class SubnetConfig(_Networks):
    name: str
    cidr4: str
    cidr6: str | None = None                   # dual-stack when present

    @property
    def dual_stack(self) -> bool:
        return self.cidr6 is not None


@dataclass(frozen=True)
class HostConfig:
    """A server in the customer VPC."""
    name: str
    subnet: str
    address4: str | None = None                # default: the next free from .10 upward
    address6: str | None = None                # default: the IPv4 host number in cidr6


@dataclass(frozen=True)
class FunctionConfig:
    name: str
    subnets: tuple[str, ...]
    security_groups: tuple[str, ...] = ()
    ipv6: bool = False                         # Lambda's Ipv6AllowedForDualStack

    @property
    def eni_subnet(self) -> str:
        """The subnet the function's ENI lives in (its first)."""
        return self.subnets[0]

    @property
    def group_key(self) -> str:
        """Functions with the same key share ENIs: ``subnet|sg-a,sg-b`` (sorted SGs)."""
        return eni_group_key(self.eni_subnet, self.security_groups)


@dataclass(frozen=True)
class Config:
    prefix: str = "hp"
    mtu: int = 1500
    inside: InsideConfig = field(default_factory=InsideConfig)
    nat: NatConfig = field(default_factory=NatConfig)
    subnets: tuple[SubnetConfig, ...] = ()
    hosts: tuple[HostConfig, ...] = ()
    functions: tuple[FunctionConfig, ...] = ()

    def subnet(self, name: str) -> SubnetConfig:
        for s in self.subnets:
            if s.name == name:
                return s
        raise KeyError(name)

    def with_prefix(self, prefix: str) -> "Config":
        """The same lab under another prefix (validated)."""
        d = self.to_dict()
        d["prefix"] = prefix
        return parse_config(d)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["nat"]["port_range"] = list(self.nat.port_range)
        d["nat"]["timeouts"] = dict(self.nat.timeouts)
        d["functions"] = [dict(f) for f in d["functions"]]
        for f in d["functions"]:
            f["subnets"] = list(f["subnets"])
            f["security_groups"] = list(f["security_groups"])
        d["subnets"] = [{k: v for k, v in s.items() if v is not None} for s in d["subnets"]]
        d["hosts"] = [{k: v for k, v in h.items() if v is not None} for h in d["hosts"]]
        if d["inside"]["cidr6"] is None:
            del d["inside"]["cidr6"]
        return d


def eni_group_key(subnet: str, security_groups) -> str:
    """The key of a (subnet, security-group set) combination: ``app|sg-a,sg-b``."""
    return f"{subnet}|{','.join(sorted(set(security_groups)))}"


# --------------------------------------------------------------------------------------------
# loading

def load_config(path: str | Path) -> Config:
    """Reads and validates a TOML lab file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError("file", f"cannot read {path}: {e.strerror or e}", str(path)) from None
    return loads_config(text, source=str(path))


def loads_config(text: str, source: str | None = None) -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("toml", f"not valid TOML: {e}", source) from None
    return parse_config(data, source=source)


def default_config(prefix: str | None = None) -> Config:
    """The built-in lab; ``prefix`` replaces its prefix."""
    cfg = load_config(DEFAULT_LAB_PATH)
    return cfg.with_prefix(prefix) if prefix is not None else cfg


def parse_config(data: Mapping[str, Any], source: str | None = None) -> Config:
    """Validates a mapping shaped like the TOML file and returns a Config."""
    try:
        return _Parser().config(data)
    except ConfigError as e:
        if source and not e.source:
            raise ConfigError(e.field, e.problem, source) from None
        raise


class _Parser:
    def config(self, data: Mapping[str, Any]) -> Config:
        if not isinstance(data, Mapping):
            raise ConfigError("config", "must be a table")
        _keys("", data, {"prefix", "mtu", "inside", "nat", "subnets", "hosts", "functions"})
        prefix = _str("prefix", data.get("prefix", "hp"))
        if not PREFIX_RE.match(prefix):
            raise ConfigError("prefix", f"{prefix!r} must be 1-4 characters of a-z and 0-9 "
                                        "(interface names are built from it and must fit in "
                                        "15 characters)")
        mtu = _int("mtu", data.get("mtu", 1500), 1280, 65535)
        inside = self.inside(_table("inside", data.get("inside", {})))
        nat = self.nat(_table("nat", data.get("nat", {})))
        subnets = tuple(self.subnet(i, t) for i, t in enumerate(_array("subnets",
                                                                      data.get("subnets", []))))
        hosts = tuple(self.host(i, t) for i, t in enumerate(_array("hosts",
                                                                  data.get("hosts", []))))
        functions = tuple(self.function(i, t) for i, t in enumerate(_array("functions",
                                                                          data.get("functions",
                                                                                   []))))
        cfg = Config(prefix=prefix, mtu=mtu, inside=inside, nat=nat, subnets=subnets,
                     hosts=hosts, functions=functions)
        _check_config(cfg)
        return cfg

    def inside(self, t) -> InsideConfig:
        _keys("inside", t, {"cidr4", "cidr6"})
        d = InsideConfig()
        cidr4 = _network("inside.cidr4", t.get("cidr4", d.cidr4), 4)
        cidr6 = t.get("cidr6", d.cidr6)
        cidr6 = _network("inside.cidr6", cidr6, 6) if cidr6 not in (None, "") else None
        return InsideConfig(cidr4=cidr4, cidr6=cidr6)

    def nat(self, t) -> NatConfig:
        _keys("nat", t, {"profile", "mapping", "port_range", "capacity", "timeouts"})
        d = NatConfig()
        profile = _str("nat.profile", t.get("profile", d.profile))
        if profile not in PROFILES:
            raise ConfigError("nat.profile", f"{profile!r} is not one of "
                                             f"{', '.join(sorted(PROFILES))}")
        mapping = _str("nat.mapping", t.get("mapping", d.mapping))
        if mapping not in MAPPINGS:
            raise ConfigError("nat.mapping", f"{mapping!r} is not one of {', '.join(MAPPINGS)}")
        pr = t.get("port_range", list(d.port_range))
        if not isinstance(pr, (list, tuple)) or len(pr) != 2:
            raise ConfigError("nat.port_range", f"must be [low, high], got {pr!r}")
        lo = _int("nat.port_range[0]", pr[0], 1, 65535)
        hi = _int("nat.port_range[1]", pr[1], 1, 65535)
        if lo > hi:
            raise ConfigError("nat.port_range", f"low {lo} is above high {hi}")
        capacity = _int("nat.capacity", t.get("capacity", d.capacity), 1, 2**32 - 2)
        timeouts = _table("nat.timeouts", t.get("timeouts", {}))
        states = PROFILES[profile].keys()
        clean = {}
        for k, v in timeouts.items():
            if k not in states:
                raise ConfigError(f"nat.timeouts.{k}", f"unknown state; expected one of "
                                                       f"{', '.join(states)}")
            clean[k] = _int(f"nat.timeouts.{k}", v, 1, 2**31 - 1)
        return NatConfig(profile=profile, mapping=mapping, port_range=(lo, hi),
                         capacity=capacity, timeouts=clean)

    def subnet(self, i, t) -> SubnetConfig:
        f = f"subnets[{i}]"
        t = _table(f, t)
        _keys(f, t, {"name", "cidr4", "cidr6"})
        name = _name(f"{f}.name", t.get("name"))
        if "cidr4" not in t:
            raise ConfigError(f"{f}.cidr4", "missing (every subnet has an IPv4 CIDR)")
        cidr4 = _network(f"{f}.cidr4", t["cidr4"], 4)
        cidr6 = t.get("cidr6")
        cidr6 = _network(f"{f}.cidr6", cidr6, 6) if cidr6 not in (None, "") else None
        return SubnetConfig(name=name, cidr4=cidr4, cidr6=cidr6)

    def host(self, i, t) -> HostConfig:
        f = f"hosts[{i}]"
        t = _table(f, t)
        _keys(f, t, {"name", "subnet", "address4", "address6"})
        name = _name(f"{f}.name", t.get("name"))
        subnet = _str(f"{f}.subnet", t.get("subnet"))
        a4 = t.get("address4")
        a6 = t.get("address6")
        if a4 is not None:
            a4 = _address(f"{f}.address4", a4, 4)
        if a6 is not None:
            a6 = _address(f"{f}.address6", a6, 6)
        return HostConfig(name=name, subnet=subnet, address4=a4, address6=a6)

    def function(self, i, t) -> FunctionConfig:
        f = f"functions[{i}]"
        t = _table(f, t)
        _keys(f, t, {"name", "subnets", "security_groups", "ipv6"})
        name = _name(f"{f}.name", t.get("name"))
        subnets = t.get("subnets")
        if subnets is None:
            raise ConfigError(f"{f}.subnets", "missing (a list of subnet names)")
        if isinstance(subnets, str) or not isinstance(subnets, (list, tuple)) or not subnets:
            raise ConfigError(f"{f}.subnets", f"must be a non-empty list of subnet names, "
                                              f"got {subnets!r}")
        subnets = tuple(_str(f"{f}.subnets[{j}]", s) for j, s in enumerate(subnets))
        if len(set(subnets)) != len(subnets):
            raise ConfigError(f"{f}.subnets", f"lists a subnet twice: {list(subnets)}")
        sgs = t.get("security_groups", [])
        if isinstance(sgs, str) or not isinstance(sgs, (list, tuple)):
            raise ConfigError(f"{f}.security_groups", f"must be a list of names, got {sgs!r}")
        for j, sg in enumerate(sgs):
            if not isinstance(sg, str) or not SG_RE.match(sg):
                raise ConfigError(f"{f}.security_groups[{j}]",
                                  f"{sg!r} must be 1-64 characters of A-Z a-z 0-9 . _ : -")
        ipv6 = t.get("ipv6", False)
        if not isinstance(ipv6, bool):
            raise ConfigError(f"{f}.ipv6", f"must be true or false, got {ipv6!r}")
        return FunctionConfig(name=name, subnets=subnets,
                              security_groups=tuple(sorted(set(sgs))), ipv6=ipv6)


def _keys(where: str, t: Mapping, allowed: set[str]) -> None:
    for k in t:
        if k not in allowed:
            name = f"{where}.{k}" if where else k
            raise ConfigError(name, f"unknown setting (expected one of: "
                                    f"{', '.join(sorted(allowed))})")


def _table(f: str, v) -> Mapping:
    if not isinstance(v, Mapping):
        raise ConfigError(f, f"must be a table, got {type(v).__name__}")
    return v


def _array(f: str, v) -> list:
    if not isinstance(v, (list, tuple)):
        raise ConfigError(f, f"must be an array of tables ([[{f}]]), got {type(v).__name__}")
    return list(v)


def _str(f: str, v) -> str:
    if v is None:
        raise ConfigError(f, "missing")
    if not isinstance(v, str):
        raise ConfigError(f, f"must be a string, got {v!r}")
    return v


def _name(f: str, v) -> str:
    v = _str(f, v)
    if not NAME_RE.match(v):
        raise ConfigError(f, f"{v!r} must be 1-32 characters of a-z, 0-9 and '-', starting "
                             "with a letter or digit (it becomes part of a namespace name)")
    return v


def _int(f: str, v, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f, f"must be an integer, got {v!r}")
    if not lo <= v <= hi:
        raise ConfigError(f, f"{v} is out of range {lo}..{hi}")
    return v


def _network(f: str, v, family: int) -> str:
    v = _str(f, v)
    cls = ipaddress.IPv4Network if family == 4 else ipaddress.IPv6Network
    try:
        net = cls(v, strict=False)
    except ValueError as e:
        raise ConfigError(f, f"{v!r} is not an IPv{family} network: {e}") from None
    if "/" not in v:
        raise ConfigError(f, f"{v!r} needs a prefix length (like {net})")
    try:
        cls(v, strict=True)
    except ValueError:
        raise ConfigError(f, f"{v!r} has host bits set; did you mean {net}?") from None
    return str(net)


def _address(f: str, v, family: int) -> str:
    v = _str(f, v)
    try:
        a = ipaddress.ip_address(v)
    except ValueError:
        raise ConfigError(f, f"{v!r} is not an IPv{family} address") from None
    if a.version != family:
        raise ConfigError(f, f"{v!r} is not an IPv{family} address")
    return str(a)


def usable_offsets(net) -> range:
    """Host numbers an address can take in ``net``: above the AWS-reserved .0-.3, below the
    broadcast address (IPv4) — in a /64 that is a huge but cheap range."""
    last = net.num_addresses - 2 if net.version == 4 else net.num_addresses - 1
    return range(FIRST_RESERVED_FREE, last + 1)


def _check_config(cfg: Config) -> None:
    # inside network sizes
    inside4 = cfg.inside.network4
    inside6 = cfg.inside.network6
    room = inside4.num_addresses - 1 - FIRST_FUNCTION  # .11 .. broadcast-1
    if len(cfg.functions) > max(room, 0):
        raise ConfigError("inside.cidr4", f"{cfg.inside.cidr4} has room for {max(room, 0)} "
                                          f"functions (from .{FIRST_FUNCTION} up), the config "
                                          f"has {len(cfg.functions)}")
    if inside6 is not None and inside6.num_addresses - FIRST_FUNCTION < len(cfg.functions):
        raise ConfigError("inside.cidr6", f"{cfg.inside.cidr6} is too small for "
                                          f"{len(cfg.functions)} functions")

    # subnets
    names: dict[str, int] = {}
    for i, s in enumerate(cfg.subnets):
        if s.name in names:
            raise ConfigError(f"subnets[{i}].name", f"{s.name!r} is already the name of "
                                                    f"subnets[{names[s.name]}]")
        names[s.name] = i
        if s.network4.prefixlen > 28:
            raise ConfigError(f"subnets[{i}].cidr4", f"{s.cidr4} is smaller than a /28 "
                                                     "(AWS's smallest subnet)")
        if s.network6 is not None and s.network6.prefixlen > 124:
            raise ConfigError(f"subnets[{i}].cidr6", f"{s.cidr6} is smaller than a /124")
        for j in range(i):
            o = cfg.subnets[j]
            if s.network4.overlaps(o.network4):
                raise ConfigError(f"subnets[{i}].cidr4", f"{s.cidr4} overlaps subnets[{j}] "
                                                         f"({o.name!r}, {o.cidr4})")
            if s.network6 is not None and o.network6 is not None \
                    and s.network6.overlaps(o.network6):
                raise ConfigError(f"subnets[{i}].cidr6", f"{s.cidr6} overlaps subnets[{j}] "
                                                         f"({o.name!r}, {o.cidr6})")

    # hosts and functions: names unique across both (they are `hyperplane exec` targets)
    seen: dict[str, str] = {}
    for kind, items in (("hosts", cfg.hosts), ("functions", cfg.functions)):
        for i, item in enumerate(items):
            if item.name in seen:
                raise ConfigError(f"{kind}[{i}].name", f"{item.name!r} is already used by "
                                                       f"{seen[item.name]}")
            seen[item.name] = f"{kind}[{i}]"

    # hosts: subnets exist, explicit addresses fit
    used: dict[str, dict[tuple[int, int], str]] = {s.name: {} for s in cfg.subnets}
    auto_hosts: dict[str, int] = {s.name: 0 for s in cfg.subnets}
    for i, h in enumerate(cfg.hosts):
        f = f"hosts[{i}]"
        if h.subnet not in names:
            raise ConfigError(f"{f}.subnet", f"no subnet named {h.subnet!r} (subnets: "
                                             f"{', '.join(names) or 'none'})")
        s = cfg.subnet(h.subnet)
        if h.address6 is not None and s.cidr6 is None:
            raise ConfigError(f"{f}.address6", f"subnet {s.name!r} has no cidr6")
        for fam, addr, net in ((4, h.address4, s.network4), (6, h.address6, s.network6)):
            if addr is None:
                continue
            a = ipaddress.ip_address(addr)
            if a not in net:
                raise ConfigError(f"{f}.address{fam}", f"{addr} is not in subnet {s.name!r} "
                                                       f"({net})")
            off = int(a) - int(net.network_address)
            if off not in usable_offsets(net):
                raise ConfigError(f"{f}.address{fam}", f"{addr} is reserved in {net} (the "
                                                       "first four and the broadcast address)")
            key = (fam, off)
            if key in used[s.name]:
                raise ConfigError(f"{f}.address{fam}", f"{addr} is already used by "
                                                       f"{used[s.name][key]}")
            used[s.name][key] = f
        if h.address4 is None:
            auto_hosts[s.name] += 1

    # functions: subnets exist, IPv6 rule
    for i, fn in enumerate(cfg.functions):
        f = f"functions[{i}]"
        for j, sn in enumerate(fn.subnets):
            if sn not in names:
                raise ConfigError(f"{f}.subnets[{j}]", f"no subnet named {sn!r} (subnets: "
                                                       f"{', '.join(names) or 'none'})")
        if fn.ipv6:
            if cfg.inside.cidr6 is None:
                raise ConfigError(f"{f}.ipv6", "needs inside.cidr6 (functions get their IPv6 "
                                               "address from it)")
            for j, sn in enumerate(fn.subnets):
                if cfg.subnet(sn).cidr6 is None:
                    raise ConfigError(f"{f}.ipv6", f"IPv6 needs every subnet of the function "
                                                   f"to be dual-stack, and {sn!r} has no cidr6 "
                                                   "(Lambda's Ipv6AllowedForDualStack rule)")

    # sizes: every subnet holds its hosts and its initial ENIs
    enis: dict[str, int] = {s.name: 0 for s in cfg.subnets}
    for key in dict.fromkeys(fn.group_key for fn in cfg.functions):
        enis[key.split("|", 1)[0]] += 1
    for i, s in enumerate(cfg.subnets):
        offsets = usable_offsets(s.network4)
        explicit = {off for fam, off in used[s.name] if fam == 4}
        free_high = sum(1 for o in offsets if o >= FIRST_HOST and o not in explicit)
        if auto_hosts[s.name] > free_high:
            raise ConfigError(f"subnets[{i}].cidr4", f"{s.cidr4} has room for {free_high} hosts "
                                                     f"from .{FIRST_HOST} up, the config puts "
                                                     f"{auto_hosts[s.name]} there without an "
                                                     "address4")
        room = len(offsets)
        need = len(explicit) + auto_hosts[s.name] + enis[s.name]
        if need > room:
            raise ConfigError(f"subnets[{i}].cidr4", f"{s.cidr4} has room for {room} addresses "
                                                     f"(.{FIRST_RESERVED_FREE} up), the lab needs "
                                                     f"{need} ({enis[s.name]} ENIs and "
                                                     f"{need - enis[s.name]} hosts)")
