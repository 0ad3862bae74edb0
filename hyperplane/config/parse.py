"""TOML -> the typed config, validated once. Every problem raises ``ConfigError(field,
problem)``; ``field`` is a path such as ``functions.api.subnet_ids[1]``."""

from __future__ import annotations

import ipaddress
import math
import re
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

import tomllib

from ..errors import ConfigError
from ..vocab import DEFAULT_PORT_RANGE, MAPPINGS, MAX_CAPACITY, MAX_TIMEOUT_S, PROFILES
from . import legacy
from .model import (FIRST_FUNCTION, FIRST_HOST, FLOW_LOG_FIELDS, MAX_EGRESS_RULES,
                    MAX_SECURITY_GROUPS, MAX_SPIN_US, MAX_SUBNETS_PER_FUNCTION, MAX_WEIGHT,
                    MIN_PORTS_PER_ENI, PROTOCOLS, SCHEDULING, Config, EgressRule,
                    FlowLogConfig, ForwardingConfig, FunctionConfig, HostConfig,
                    HyperplaneConfig, InsideConfig, MetricsConfig, QuotaConfig,
                    SecurityGroupConfig, SubnetConfig, check_prefix, frozen_map,
                    usable_offsets)

DEFAULT_LAB_PATH = Path(__file__).parent.parent / "default_lab.toml"

MAX_CPU = 4095          # CONFIG_NR_CPUS of the distributions' kernels, less one
# Function, host and subnet names become namespace names ("{prefix}-f-{name}") and CLI
# arguments.
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
SG_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
VPC_RE = re.compile(r"^vpc-[a-z0-9-]{1,28}$")
FLOW_FIELD_RE = re.compile(r"^\$\{([a-z0-9-]+)\}$")
ACCOUNT_RE = re.compile(r"^[0-9]{12}$")

T = TypeVar("T")


# --------------------------------------------------------------------------------------------
# entry points

def load_config(path: str | Path) -> Config:
    """Reads and validates a TOML lab file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError("file", f"cannot read {path}: {e.strerror or e}", str(path)) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ConfigError("file", f"not UTF-8 text (byte 0x{raw[e.start]:02x} on line {line}); "
                                  "save it as UTF-8", str(path)) from None
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
    """Validates a mapping shaped like the TOML file (either layout) and returns a Config.
    Every problem found is in the one ``ConfigError`` raised: ``errors`` lists them in the
    order found, its own ``field`` and ``problem`` are the first one's."""
    if not isinstance(data, Mapping):
        raise ConfigError("config", "must be a table", source)
    old = legacy.is_old_layout(data)
    try:
        converted = legacy.convert(data) if old else data
    except ConfigError as e:
        raise ConfigError(e.field, e.problem, source) from None
    parser = _Parser()
    cfg = parser.config(converted)
    if not parser.errors:
        assert cfg is not None
        return cfg
    hint = " (the file has the old layout, read as the new one: see examples/default.toml)"
    raise ConfigError.of([ConfigError(e.field, e.problem + (hint if old else ""), source)
                          for e in parser.errors]) from None


# --------------------------------------------------------------------------------------------
# tables

TOP = {"prefix", "mtu", "inside", "vpc", "hosts", "functions", "hyperplane"}


class _Parser:
    """Parses the file's tables and notes each problem in ``errors`` as it goes on: a setting
    that fails takes its default (or leaves out the subnet, group, host or function it belongs
    to), so the rest is still checked. The lab-wide checks skip what refers to a part that
    failed, so each problem is told once, where it is."""

    def __init__(self) -> None:
        self.errors: list[ConfigError] = []
        self.failed: set[str] = set()        # the field paths of the parts left out

    def attempt(self, fn: Callable[..., T], *args: Any, default: Any = None) -> T:
        """fn(*args), or ``default`` once the ConfigError it raised is noted."""
        try:
            return fn(*args)
        except ConfigError as e:
            self.errors.append(e)
            return default

    def keys(self, where: str, t: Mapping, allowed: set[str]) -> None:
        """Notes every setting of ``t`` that is not in ``allowed``."""
        for k in t:
            if k not in allowed:
                name = f"{where}.{k}" if where else k
                self.errors.append(ConfigError(name, f"unknown setting (expected one of: "
                                                     f"{', '.join(sorted(allowed))})"))

    def parts(self, where: str, t, parse: Callable[..., T | None], *extra: Any) -> tuple[T, ...]:
        """The parts of table ``where`` (subnets, groups, hosts, functions), each parsed by
        ``parse(field, name, table, *extra)``; a part that returns None (a subnet or a group
        whose setting failed: others refer to it) is left out and noted in ``failed``."""
        out = []
        for k, v in self.attempt(_table, where, t, default={}).items():
            f = f"{where}.{k}"
            part = self.attempt(parse, f, k, v, *extra)
            if part is None:
                self.failed.add(f)
            else:
                out.append(part)
        return tuple(out)

    def config(self, data: Mapping[str, Any]) -> Config | None:
        self.keys("", data, TOP)
        prefix = self.attempt(check_prefix, data.get("prefix", "hp"), default="hp")
        mtu = self.attempt(_int, "mtu", data.get("mtu", 1500), 1280, 65535, default=1500)
        inside = self.attempt(lambda: self.inside(_table("inside", data.get("inside", {}))))
        if inside is None:
            self.failed.add("inside")
        hp = self.hyperplane(self.attempt(_table, "hyperplane", data.get("hyperplane", {}),
                                          default={}))
        vpc = self.attempt(_table, "vpc", data.get("vpc", {}), default={})
        self.keys("vpc", vpc, {"id", "subnets", "security_groups"})
        vpc_id = self.attempt(_vpc_id, "vpc.id", vpc.get("id", "vpc-lab"), default="vpc-lab")
        subnets = self.parts("vpc.subnets", vpc.get("subnets", {}), self.subnet)
        groups = self.parts("vpc.security_groups", vpc.get("security_groups", {}),
                            self.security_group)
        hosts = self.parts("hosts", data.get("hosts", {}), self.host)
        functions = self.parts("functions", data.get("functions", {}), self.function, hp)
        cfg = Config(prefix=prefix, mtu=mtu, inside=inside or InsideConfig(), hyperplane=hp,
                     vpc_id=vpc_id, subnets=subnets, security_groups=groups, hosts=hosts,
                     functions=functions)
        _check(cfg, self.failed, self.errors)
        return cfg

    def inside(self, t) -> InsideConfig:
        self.keys("inside", t, {"cidr4", "cidr6"})
        d = InsideConfig()
        cidr6 = t.get("cidr6", d.cidr6)
        return InsideConfig(cidr4=_network("inside.cidr4", t.get("cidr4", d.cidr4), 4),
                            cidr6=_network("inside.cidr6", cidr6, 6) if cidr6 else None)

    def hyperplane(self, t) -> HyperplaneConfig:
        """The [hyperplane] table; a setting that fails takes its default (the functions'
        quotas are still checked against the rest)."""
        f = "hyperplane"
        self.keys(f, t, {"profile", "mapping", "port_range", "ports_per_eni", "capacity",
                         "timeouts", "eni_high_water", "eni_limit", "eni_idle_reclaim_s",
                         "quotas", "flow_logs", "metrics", "forwarding"})
        d = HyperplaneConfig()
        get = self.attempt
        profile = get(_choice, f"{f}.profile", t.get("profile", d.profile), PROFILES,
                      default=d.profile)
        return HyperplaneConfig(
            profile=profile,
            mapping=get(_choice, f"{f}.mapping", t.get("mapping", d.mapping), MAPPINGS,
                        default=d.mapping),
            port_range=get(self.port_range, t, default=d.port_range),
            capacity=get(_int, f"{f}.capacity", t.get("capacity", d.capacity), 1, MAX_CAPACITY,
                         default=d.capacity),
            timeouts=frozen_map(self.timeouts(f"{f}.timeouts", t.get("timeouts", {}),
                                              PROFILES[profile].keys())),
            eni_high_water=get(_share, f"{f}.eni_high_water",
                               t.get("eni_high_water", d.eni_high_water),
                               default=d.eni_high_water),
            eni_limit=get(_int, f"{f}.eni_limit", t.get("eni_limit", d.eni_limit), 1, 64,
                          default=d.eni_limit),
            eni_idle_reclaim_s=get(_int, f"{f}.eni_idle_reclaim_s",
                                   t.get("eni_idle_reclaim_s", d.eni_idle_reclaim_s), 1,
                                   MAX_TIMEOUT_S, default=d.eni_idle_reclaim_s),
            quotas=get(lambda: self.quotas(_table(f"{f}.quotas", t.get("quotas", {}))),
                       default=d.quotas),
            flow_logs=get(lambda: self.flow_logs(_table(f"{f}.flow_logs",
                                                        t.get("flow_logs", {}))),
                          default=d.flow_logs),
            metrics=get(lambda: self.metrics(_table(f"{f}.metrics", t.get("metrics", {}))),
                        default=d.metrics),
            forwarding=get(lambda: self.forwarding(_table(f"{f}.forwarding",
                                                          t.get("forwarding", {}))),
                           default=d.forwarding))

    def timeouts(self, f: str, t, states) -> dict[str, int]:
        out = {}
        for k, v in self.attempt(_table, f, t, default={}).items():
            if k not in states:
                self.errors.append(ConfigError(f"{f}.{k}", f"unknown state; expected one of "
                                                           f"{', '.join(states)}"))
                continue
            seconds = self.attempt(_int, f"{f}.{k}", v, 1, MAX_TIMEOUT_S)
            if seconds is not None:
                out[k] = seconds
        return out
    def port_range(self, t) -> tuple[int, int]:
        f = "hyperplane.port_range"
        if "ports_per_eni" in t:
            if "port_range" in t:
                raise ConfigError("hyperplane.ports_per_eni", "give port_range or "
                                                              "ports_per_eni, not both")
            lo = DEFAULT_PORT_RANGE[0]
            n = _int("hyperplane.ports_per_eni", t["ports_per_eni"], MIN_PORTS_PER_ENI,
                     65536 - lo)
            return lo, lo + n - 1
        pr = t.get("port_range", list(DEFAULT_PORT_RANGE))
        if not isinstance(pr, (list, tuple)) or len(pr) != 2:
            raise ConfigError(f, f"must be [low, high], got {pr!r}")
        lo = _int(f"{f}[0]", pr[0], 1, 65535)
        hi = _int(f"{f}[1]", pr[1], 1, 65535)
        if lo > hi:
            raise ConfigError(f, f"low {lo} is above high {hi}")
        if hi - lo + 1 < MIN_PORTS_PER_ENI:
            raise ConfigError(f, f"{lo}..{hi} holds {hi - lo + 1} ports; an ENI needs at least "
                                 f"{MIN_PORTS_PER_ENI}")
        return lo, hi

    def quotas(self, t) -> QuotaConfig:
        self.keys("hyperplane.quotas", t, {"connections_share", "ports_share"})
        d = QuotaConfig()
        return QuotaConfig(
            connections_share=_share("hyperplane.quotas.connections_share",
                                     t.get("connections_share", d.connections_share)),
            ports_share=_share("hyperplane.quotas.ports_share",
                               t.get("ports_share", d.ports_share)))

    def flow_logs(self, t) -> FlowLogConfig:
        f = "hyperplane.flow_logs"
        self.keys(f, t, {"enabled", "folder", "interval_s", "format", "max_bytes", "keep",
                     "account_id"})
        d = FlowLogConfig()
        folder = t.get("folder")
        if folder is not None:
            folder = _str(f"{f}.folder", folder)
            if not Path(folder).is_absolute():
                raise ConfigError(f"{f}.folder", f"{folder!r} must be an absolute path")
        account = _str(f"{f}.account_id", t.get("account_id", d.account_id))
        if not ACCOUNT_RE.match(account):
            raise ConfigError(f"{f}.account_id", f"{account!r} must be 12 digits")
        return FlowLogConfig(
            enabled=_bool(f"{f}.enabled", t.get("enabled", d.enabled)), folder=folder,
            interval_s=_int(f"{f}.interval_s", t.get("interval_s", d.interval_s), 1, 600),
            fields=_flow_format(f"{f}.format", t["format"]) if "format" in t else d.fields,
            max_bytes=_int(f"{f}.max_bytes", t.get("max_bytes", d.max_bytes), 4096, 1 << 40),
            keep=_int(f"{f}.keep", t.get("keep", d.keep), 1, 1000), account_id=account)

    def metrics(self, t) -> MetricsConfig:
        self.keys("hyperplane.metrics", t, {"enabled", "port"})
        d = MetricsConfig()
        return MetricsConfig(enabled=_bool("hyperplane.metrics.enabled",
                                           t.get("enabled", d.enabled)),
                             port=_int("hyperplane.metrics.port", t.get("port", d.port), 1,
                                       65535))

    def forwarding(self, t) -> ForwardingConfig:
        f = "hyperplane.forwarding"
        self.keys(f, t, {"scheduling", "cpus", "spin_us", "weight"})
        d = ForwardingConfig()
        cpus = tuple(_int(f"{f}.cpus[{i}]", c, 0, MAX_CPU)
                     for i, c in enumerate(_list(f"{f}.cpus", t.get("cpus", []),
                                                 "a list of CPU numbers")))
        if len(set(cpus)) != len(cpus):
            raise ConfigError(f"{f}.cpus", f"{list(cpus)} names a CPU twice")
        spin_us = _int(f"{f}.spin_us", t.get("spin_us", d.spin_us), 0, MAX_SPIN_US)
        if spin_us and not cpus:
            raise ConfigError(f"{f}.spin_us", "a busy poll needs CPUs of its own (cpus = [...]): "
                                              "on a shared CPU it takes the time of whatever "
                                              "runs beside it")
        return ForwardingConfig(
            scheduling=_choice(f"{f}.scheduling", t.get("scheduling", d.scheduling), SCHEDULING),
            cpus=tuple(sorted(cpus)), spin_us=spin_us,
            weight=_int(f"{f}.weight", t.get("weight", d.weight), 1, MAX_WEIGHT))

    def fields(self, before: int) -> bool:
        """Whether every setting parsed since ``len(self.errors)`` was ``before`` (an unknown
        setting's name does not count: it leaves the others as they are)."""
        return all(e.problem.startswith("unknown setting") for e in self.errors[before:])

    def subnet(self, f, name, t) -> SubnetConfig | None:
        t = _table(f, t)
        self.keys(f, t, {"cidr4", "cidr6"})
        before = len(self.errors)
        self.attempt(_name, f, name)
        if "cidr4" not in t:
            self.errors.append(ConfigError(f"{f}.cidr4", "missing (every subnet has an IPv4 "
                                                         "CIDR)"))
        cidr4 = self.attempt(_network, f"{f}.cidr4", t["cidr4"], 4) if "cidr4" in t else None
        cidr6 = t.get("cidr6")
        cidr6 = self.attempt(_network, f"{f}.cidr6", cidr6, 6) if cidr6 else None
        if not self.fields(before):
            return None
        return SubnetConfig(name=name, cidr4=cidr4, cidr6=cidr6)

    def security_group(self, f, sg_id, t) -> SecurityGroupConfig | None:
        t = _table(f, t)
        self.keys(f, t, {"description", "egress"})
        before = len(self.errors)
        self.attempt(_sg_id, f, sg_id)
        description = self.attempt(_str, f"{f}.description", t.get("description", ""))
        rules = self.attempt(_list, f"{f}.egress", t.get("egress", []),
                             "a list of rules ([[...egress]] tables)", default=[])
        if len(rules) > MAX_EGRESS_RULES:
            self.errors.append(ConfigError(f"{f}.egress", f"{len(rules)} rules; a security "
                                                          f"group holds at most "
                                                          f"{MAX_EGRESS_RULES}"))
            rules = []
        egress = tuple(self.attempt(self.rule, f"{f}.egress[{i}]", r)
                       for i, r in enumerate(rules))
        if not self.fields(before):
            return None
        if "egress" not in t:
            return SecurityGroupConfig(id=sg_id, description=description)
        return SecurityGroupConfig(id=sg_id, description=description, egress=egress)

    def rule(self, f, t) -> EgressRule:
        t = _table(f, t)
        self.keys(f, t, {"protocol", "port", "from_port", "to_port", "cidr4", "cidr6",
                     "security_group_id", "description"})
        protocol = _choice(f"{f}.protocol", t.get("protocol"), PROTOCOLS)
        given = [k for k in ("port", "from_port", "to_port") if k in t]
        if protocol == "all":
            if given:
                raise ConfigError(f"{f}.{given[0]}", "protocol 'all' covers every port; "
                                                     "leave ports out")
            lo, hi = 0, 65535
        elif "port" in t:
            if len(given) > 1:
                raise ConfigError(f"{f}.port", "give port or from_port/to_port, not both")
            lo = hi = _int(f"{f}.port", t["port"], 0, 65535)
        else:
            lo = _int(f"{f}.from_port", t.get("from_port", 0), 0, 65535)
            hi = _int(f"{f}.to_port", t.get("to_port", 65535 if "from_port" not in t else lo),
                      0, 65535)
            if lo > hi:
                raise ConfigError(f"{f}.from_port", f"{lo} is above to_port {hi}")
        dests = [k for k in ("cidr4", "cidr6", "security_group_id") if k in t]
        if len(dests) != 1:
            raise ConfigError(f, "needs exactly one destination: cidr4, cidr6 or "
                                 f"security_group_id (has {', '.join(dests) or 'none'})")
        dest = dests[0]
        value = t[dest]
        if dest == "security_group_id":
            value = _sg_id(f"{f}.security_group_id", _str(f"{f}.security_group_id", value))
        else:
            value = _network(f"{f}.{dest}", value, 4 if dest == "cidr4" else 6)
        return EgressRule(protocol=protocol, from_port=lo, to_port=hi, **{dest: value},
                          description=_str(f"{f}.description", t.get("description", "")))

    # A host or a function whose setting failed is kept with the setting's default (an empty
    # list, no address): what the lab-wide checks find in its other settings is still told.

    def host(self, f, name, t) -> HostConfig:
        t = _table(f, t)
        self.keys(f, t, {"subnet", "address4", "address6", "security_group_ids"})
        get = self.attempt
        get(_name, f, name)
        a4, a6 = t.get("address4"), t.get("address6")
        return HostConfig(name=name, subnet=get(_str, f"{f}.subnet", t.get("subnet")),
                          address4=get(_address, f"{f}.address4", a4, 4) if a4 is not None
                          else None,
                          address6=get(_address, f"{f}.address6", a6, 6) if a6 is not None
                          else None,
                          security_group_ids=get(_sg_list, f"{f}.security_group_ids",
                                                 t.get("security_group_ids", []), default=()))

    def function(self, f, name, t, hp: HyperplaneConfig) -> FunctionConfig:
        t = _table(f, t)
        self.keys(f, t, {"subnet_ids", "security_group_ids", "ipv6_allowed_for_dual_stack",
                         "max_connections", "max_ports_per_pool"})
        get = self.attempt
        get(_name, f, name)
        q = hp.quotas
        return FunctionConfig(
            name=name, subnet_ids=get(_subnet_ids, f, t, default=()),
            security_group_ids=get(_sg_list, f"{f}.security_group_ids",
                                   t.get("security_group_ids", []), default=()),
            ipv6_allowed_for_dual_stack=get(_bool, f"{f}.ipv6_allowed_for_dual_stack",
                                            t.get("ipv6_allowed_for_dual_stack", False),
                                            default=False),
            max_connections=get(_int, f"{f}.max_connections",
                                t.get("max_connections", _part(hp.capacity,
                                                               q.connections_share)),
                                1, hp.capacity, default=1),
            max_ports_per_pool=get(_int, f"{f}.max_ports_per_pool",
                                   t.get("max_ports_per_pool", _part(hp.ports_per_eni,
                                                                     q.ports_share)),
                                   1, hp.ports_per_eni, default=1))


def _subnet_ids(f: str, t: Mapping) -> tuple[str, ...]:
    f = f"{f}.subnet_ids"
    if "subnet_ids" not in t:
        raise ConfigError(f, "missing (a list of subnet names)")
    subnets = _list(f, t["subnet_ids"], "a non-empty list of subnet names")
    if not subnets:
        raise ConfigError(f, "must be a non-empty list of subnet names")
    if len(subnets) > MAX_SUBNETS_PER_FUNCTION:
        raise ConfigError(f, f"{len(subnets)} subnets; Lambda allows at most "
                             f"{MAX_SUBNETS_PER_FUNCTION}")
    names = tuple(_str(f"{f}[{j}]", s) for j, s in enumerate(subnets))
    for j, s in enumerate(names):
        if s in names[:j]:
            raise ConfigError(f"{f}[{j}]", f"lists subnet {s!r} twice")
    return names


def _vpc_id(f: str, v) -> str:
    v = _str(f, v)
    if not VPC_RE.match(v):
        raise ConfigError(f, f"{v!r} must look like vpc-NAME (a-z 0-9 -)")
    return v


def _part(total: int, share: float) -> int:
    return max(1, math.floor(total * share))


# --------------------------------------------------------------------------------------------
# scalar checks

def _table(f: str, v) -> Mapping:
    if not isinstance(v, Mapping):
        raise ConfigError(f, f"must be a table, got {type(v).__name__}")
    return v


def _list(f: str, v, what: str) -> list:
    if isinstance(v, str) or not isinstance(v, (list, tuple)):
        raise ConfigError(f, f"must be {what}, got {v!r}")
    return list(v)


def _str(f: str, v) -> str:
    if v is None:
        raise ConfigError(f, "missing")
    if not isinstance(v, str):
        raise ConfigError(f, f"must be a string, got {v!r}")
    return v


def _bool(f: str, v) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(f, f"must be true or false, got {v!r}")
    return v


def _choice(f: str, v, choices) -> str:
    v = _str(f, v)
    if v not in choices:
        raise ConfigError(f, f"{v!r} is not one of {', '.join(choices)}")
    return v


def _name(f: str, v) -> str:
    v = _str(f, v)
    if not NAME_RE.match(v):
        raise ConfigError(f, f"name {v!r} must be 1-32 characters of a-z, 0-9 and '-', "
                             "starting with a letter or digit (it becomes part of a namespace "
                             "name)")
    return v


def _sg_id(f: str, v: str) -> str:
    if not SG_RE.match(v):
        raise ConfigError(f, f"security group id {v!r} must be 1-64 characters of "
                             "A-Z a-z 0-9 . _ : -")
    return v


def _sg_list(f: str, v) -> tuple[str, ...]:
    """A set of security-group ids, sorted (AWS treats the list as a set)."""
    v = _list(f, v, "a list of security group ids")
    for j, sg in enumerate(v):
        _sg_id(f"{f}[{j}]", _str(f"{f}[{j}]", sg))
    ids = tuple(sorted(set(v)))
    if len(ids) > MAX_SECURITY_GROUPS:
        raise ConfigError(f, f"{len(ids)} security groups; at most {MAX_SECURITY_GROUPS}")
    return ids


def _int(f: str, v, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f, f"must be an integer, got {v!r}")
    if not lo <= v <= hi:
        raise ConfigError(f, f"{v} is out of range {lo}..{hi}")
    return v


def _share(f: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(f, f"must be a number, got {v!r}")
    if not 0 < v <= 1:
        raise ConfigError(f, f"{v} must be above 0 and at most 1")
    return float(v)


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


def _flow_format(f: str, v) -> tuple[str, ...]:
    tokens = _str(f, v).split()
    if not tokens:
        raise ConfigError(f, "is empty; give fields like '${version} ${srcaddr}'")
    fields = []
    for tok in tokens:
        m = FLOW_FIELD_RE.match(tok)
        if not m:
            raise ConfigError(f, f"{tok!r} is not a field like ${{srcaddr}}")
        if m.group(1) not in FLOW_LOG_FIELDS:
            raise ConfigError(f, f"unknown field {m.group(1)!r} (known: "
                                 f"{', '.join(FLOW_LOG_FIELDS)})")
        fields.append(m.group(1))
    return tuple(fields)


# --------------------------------------------------------------------------------------------
# the lab as a whole

def _check(cfg: Config, failed: set[str], errors: list[ConfigError]) -> None:
    """The checks of the lab as a whole; a problem is noted in ``errors``. ``failed``: the
    parts that did not parse (left out of ``cfg``): what refers to them is not checked, their
    own problem is already told."""
    def bad(field: str, problem: str) -> None:
        errors.append(ConfigError(field, problem))

    if "inside" not in failed:
        _check_inside(cfg, bad)
    _check_subnets(cfg, bad)
    names = [s.name for s in cfg.subnets]            # file order, for the messages
    sgs = {g.id for g in cfg.security_groups}
    listing = ", ".join(names) or "none"
    subnet_ok = lambda sn: sn in names or f"vpc.subnets.{sn}" in failed  # noqa: E731
    sg_ok = lambda sg: sg in sgs or f"vpc.security_groups.{sg}" in failed  # noqa: E731
    for g in cfg.security_groups:
        for i, r in enumerate(g.egress):
            if r.security_group_id is not None and not sg_ok(r.security_group_id):
                bad(f"vpc.security_groups.{g.id}.egress[{i}].security_group_id",
                    f"unknown security group {r.security_group_id!r}")
    for h in cfg.hosts:
        if h.name in {fn.name for fn in cfg.functions}:
            bad(f"functions.{h.name}", f"{h.name!r} is also a host (hosts and functions share "
                                       "the `exec` names)")
        if h.subnet is not None and not subnet_ok(h.subnet):
            bad(f"hosts.{h.name}.subnet", f"unknown subnet {h.subnet!r} (subnets: {listing})")
        _check_sgs(f"hosts.{h.name}.security_group_ids", h.security_group_ids, sgs, sg_ok, bad)
    for fn in cfg.functions:
        f = f"functions.{fn.name}"
        for j, sn in enumerate(fn.subnet_ids):
            if not subnet_ok(sn):
                bad(f"{f}.subnet_ids[{j}]", f"unknown subnet {sn!r} (subnets: {listing})")
        _check_sgs(f"{f}.security_group_ids", fn.security_group_ids, sgs, sg_ok, bad)
        if fn.ipv6_allowed_for_dual_stack:
            if cfg.inside.cidr6 is None and "inside" not in failed:
                bad(f"{f}.ipv6_allowed_for_dual_stack",
                    "needs inside.cidr6 (functions get their IPv6 address from it)")
            for sn in fn.subnet_ids:
                if sn in names and not cfg.subnet(sn).dual_stack:
                    bad(f"{f}.ipv6_allowed_for_dual_stack",
                        f"IPv6 needs every subnet of the function to be dual-stack, and {sn!r} "
                        "has no cidr6 (Lambda's Ipv6AllowedForDualStack rule)")
                    break
    _check_hosts_and_sizes(cfg, bad)


def _check_sgs(f: str, ids, known, ok, bad) -> None:
    for j, sg in enumerate(ids):
        if not ok(sg):
            bad(f"{f}[{j}]", f"unknown security group {sg!r} (groups: "
                             f"{', '.join(sorted(known)) or 'none'})")


def _check_inside(cfg: Config, bad) -> None:
    inside4, inside6 = cfg.inside.network4, cfg.inside.network6
    room = max(inside4.num_addresses - 1 - FIRST_FUNCTION, 0)  # .11 .. broadcast-1
    if len(cfg.functions) > room:
        bad("inside.cidr4", f"{cfg.inside.cidr4} has room for {room} functions (from "
                            f".{FIRST_FUNCTION} up), the config has {len(cfg.functions)}")
    if inside6 is not None and inside6.num_addresses - FIRST_FUNCTION < len(cfg.functions):
        bad("inside.cidr6", f"{cfg.inside.cidr6} is too small for {len(cfg.functions)} "
                            "functions")
    # The data plane tells the two sides apart by address: a customer subnet inside the
    # functions' network would swallow its replies.
    for s in cfg.subnets:
        for fam, mine, theirs in ((4, inside4, s.network4), (6, inside6, s.network6)):
            if mine is not None and theirs is not None and mine.overlaps(theirs):
                bad(f"inside.cidr{fam}", f"{mine} overlaps subnet {s.name!r} ({theirs}); the "
                                         "functions' network must be apart from the VPC's")


def _check_subnets(cfg: Config, bad) -> None:
    for i, s in enumerate(cfg.subnets):
        f = f"vpc.subnets.{s.name}"
        if s.network4.prefixlen > 28:
            bad(f"{f}.cidr4", f"{s.cidr4} is smaller than a /28 (AWS's smallest subnet)")
        if s.network6 is not None and s.network6.prefixlen > 124:
            bad(f"{f}.cidr6", f"{s.cidr6} is smaller than a /124")
        for o in cfg.subnets[:i]:
            for fam, mine, theirs in ((4, s.network4, o.network4), (6, s.network6, o.network6)):
                if mine is not None and theirs is not None and mine.overlaps(theirs):
                    bad(f"{f}.cidr{fam}", f"{mine} overlaps subnet {o.name!r} ({theirs})")


def _check_hosts_and_sizes(cfg: Config, bad) -> None:
    known = {s.name for s in cfg.subnets}
    used: dict[str, dict[tuple[int, int], str]] = {s.name: {} for s in cfg.subnets}
    auto_hosts: dict[str, int] = {s.name: 0 for s in cfg.subnets}
    for h in cfg.hosts:
        if h.subnet not in known:           # told above, or a subnet that failed
            continue
        f = f"hosts.{h.name}"
        s = cfg.subnet(h.subnet)
        if h.address6 is not None and s.cidr6 is None:
            bad(f"{f}.address6", f"subnet {s.name!r} has no cidr6")
        for fam, addr, net in ((4, h.address4, s.network4), (6, h.address6, s.network6)):
            if addr is None or net is None:
                continue
            a = ipaddress.ip_address(addr)
            off = int(a) - int(net.network_address)
            if a not in net:
                bad(f"{f}.address{fam}", f"{addr} is not in subnet {s.name!r} ({net})")
            elif off not in usable_offsets(net):
                bad(f"{f}.address{fam}", f"{addr} is reserved in {net} (the first four and "
                                         "the broadcast address)")
            elif (fam, off) in used[s.name]:
                bad(f"{f}.address{fam}", f"{addr} is already used by "
                                         f"{used[s.name][(fam, off)]}")
            else:
                used[s.name][(fam, off)] = f
        if h.address4 is None:
            auto_hosts[s.name] += 1

    # every subnet holds its hosts and its initial ENIs
    enis: dict[str, int] = {s.name: 0 for s in cfg.subnets}
    for key in dict.fromkeys(fn.group_key for fn in cfg.functions if fn.subnet_ids):
        subnet = key.split("|", 1)[0]
        if subnet in enis:
            enis[subnet] += 1
    for s in cfg.subnets:
        f = f"vpc.subnets.{s.name}.cidr4"
        offsets = usable_offsets(s.network4)
        explicit = {off for fam, off in used[s.name] if fam == 4}
        free_high = sum(1 for o in offsets if o >= FIRST_HOST and o not in explicit)
        need = len(explicit) + auto_hosts[s.name] + enis[s.name]
        if auto_hosts[s.name] > free_high:
            bad(f, f"{s.cidr4} has room for {free_high} hosts from .{FIRST_HOST} up, the config "
                   f"puts {auto_hosts[s.name]} there without an address4")
        elif need > len(offsets):
            bad(f, f"{s.cidr4} has room for {len(offsets)} addresses "
                   f"(.{usable_offsets(s.network4).start} up), the lab needs {need} "
                   f"({enis[s.name]} ENIs and {need - enis[s.name]} hosts)")
