"""The typed config: frozen dataclasses, built once by the parser (``parse.py``) and carried
unchanged in the lab state to the data plane, with every default. Nothing here validates but a
new prefix (``Config.with_prefix``); see ``parse.py``."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, replace
from typing import Mapping

from ..errors import ConfigError
from ..vocab import DEFAULT_PORT_RANGE
from .codec import decode, encode, frozen_map

# Host numbers inside a network (offsets from the network address).
INSIDE_GATEWAY = 1          # 10.200.0.1, fd00:200::1
FIRST_FUNCTION = 11         # functions from .11 upward
SUBNET_GATEWAY = 1          # the VPC router's address in each subnet
FIRST_RESERVED_FREE = 4     # AWS reserves .0-.3 of every subnet; ENIs start at .4
FIRST_HOST = 10             # hosts from .10 upward unless the config gives an address

# Lambda's VpcConfig limits.
MAX_SUBNETS_PER_FUNCTION = 16
MAX_SECURITY_GROUPS = 5             # per function (and per host, as per EC2 interface)
MAX_EGRESS_RULES = 60               # per security group (AWS's default quota)

# Smallest ENI port pool: the scale-out demo and tests run with 4 ports; fewer leaves no room
# for the high-water mark to act before the pool is full.
MIN_PORTS_PER_ENI = 4

PROTOCOLS = {"tcp": 6, "udp": 17, "all": 0}   # 0: every IP protocol (AWS's "-1")

# VPC Flow Logs: the default format, and the version that introduced each field (a record's
# `version` is the highest one its format uses, as AWS does for custom formats).
DEFAULT_FLOW_LOG_FIELDS = ("version", "account-id", "interface-id", "srcaddr", "dstaddr",
                           "srcport", "dstport", "protocol", "packets", "bytes", "start", "end",
                           "action", "log-status")
FLOW_LOG_FIELD_VERSION = {
    **{f: 2 for f in DEFAULT_FLOW_LOG_FIELDS},
    **{f: 3 for f in ("vpc-id", "subnet-id", "instance-id", "tcp-flags", "type",
                      "pkt-srcaddr", "pkt-dstaddr")},
    **{f: 4 for f in ("region", "az-id", "sublocation-type", "sublocation-id")},
    **{f: 5 for f in ("pkt-src-aws-service", "pkt-dst-aws-service", "flow-direction",
                      "traffic-path")},
}
FLOW_LOG_FIELDS = tuple(FLOW_LOG_FIELD_VERSION)
DEFAULT_ACCOUNT_ID = "123456789012"
DEFAULT_METRICS_PORT = 9476

# Interface names are built from the prefix and must fit in 15 characters.
PREFIX_RE = re.compile(r"^[a-z0-9]{1,4}$")


def check_prefix(prefix) -> str:
    if prefix is None:
        raise ConfigError("prefix", "missing")
    if not isinstance(prefix, str):
        raise ConfigError("prefix", f"must be a string, got {prefix!r}")
    if not PREFIX_RE.match(prefix):
        raise ConfigError("prefix", f"{prefix!r} must be 1-4 characters of a-z and 0-9 "
                                    "(interface names are built from it and must fit in "
                                    "15 characters)")
    return prefix


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
class SubnetConfig(_Networks):
    name: str                                  # the subnet id functions refer to
    cidr4: str
    cidr6: str | None = None                   # dual-stack when present

    @property
    def dual_stack(self) -> bool:
        return self.cidr6 is not None


@dataclass(frozen=True)
class EgressRule:
    """One outbound rule of a security group: protocol, ports and exactly one destination."""
    protocol: str                              # "tcp", "udp" or "all"
    from_port: int = 0
    to_port: int = 65535
    cidr4: str | None = None
    cidr6: str | None = None
    security_group_id: str | None = None       # every member (host) of that group
    description: str = ""

    @property
    def proto(self) -> int:
        return PROTOCOLS[self.protocol]


ALLOW_ALL_EGRESS = (EgressRule("all", cidr4="0.0.0.0/0"), EgressRule("all", cidr6="::/0"))


@dataclass(frozen=True)
class SecurityGroupConfig:
    id: str
    egress: tuple[EgressRule, ...] = ALLOW_ALL_EGRESS   # AWS's default for a new group
    description: str = ""


@dataclass(frozen=True)
class HostConfig:
    """A server in the customer VPC."""
    name: str
    subnet: str
    address4: str | None = None                # default: the next free from .10 upward
    address6: str | None = None                # default: the IPv4 host number in cidr6
    security_group_ids: tuple[str, ...] = ()   # targets of rules naming a group


@dataclass(frozen=True)
class FunctionConfig:
    """A Lambda function's VpcConfig, with its quotas resolved to numbers."""
    name: str
    subnet_ids: tuple[str, ...]
    security_group_ids: tuple[str, ...] = ()   # sorted, no duplicates
    ipv6_allowed_for_dual_stack: bool = False
    max_connections: int = 0                   # connections in the table (0: no quota)
    max_ports_per_pool: int = 0                # ports of one ENI pool (0: no quota)

    # the names the lab code used before the Lambda-shaped config
    @property
    def subnets(self) -> tuple[str, ...]:
        return self.subnet_ids

    @property
    def security_groups(self) -> tuple[str, ...]:
        return self.security_group_ids

    @property
    def ipv6(self) -> bool:
        return self.ipv6_allowed_for_dual_stack

    @property
    def eni_subnet(self) -> str:
        """The subnet the function's ENI lives in (its first)."""
        return self.subnet_ids[0]

    @property
    def group_key(self) -> str:
        """Functions with the same key share ENIs: ``subnet|sg-a,sg-b`` (sorted SGs)."""
        return eni_group_key(self.eni_subnet, self.security_group_ids)


@dataclass(frozen=True)
class QuotaConfig:
    """Default per-function quotas, as a share of the table and of each ENI's pool."""
    connections_share: float = 0.5
    ports_share: float = 0.5


@dataclass(frozen=True)
class FlowLogConfig:
    """``[hyperplane.flow_logs]``: what the data plane's flow-log writer takes."""
    enabled: bool = True
    folder: str | None = None                  # None: <run dir>/<prefix>-flowlogs
    interval_s: int = 60                       # aggregation (AWS: 60 or 600)
    fields: tuple[str, ...] = DEFAULT_FLOW_LOG_FIELDS
    max_bytes: int = 8 << 20                   # a file past this is rotated
    keep: int = 5                              # rotated files kept per ENI
    account_id: str = DEFAULT_ACCOUNT_ID

    @property
    def format(self) -> str:
        """The fields as AWS writes a LogFormat: ``${version} ${account-id} ...``."""
        return " ".join(f"${{{f}}}" for f in self.fields)


@dataclass(frozen=True)
class MetricsConfig:
    """``[hyperplane.metrics]``: the Prometheus endpoint, on localhost only."""
    enabled: bool = False
    port: int = DEFAULT_METRICS_PORT

    @property
    def address(self) -> str:
        return "127.0.0.1"


SCHEDULING = ("fair", "realtime")
MAX_SPIN_US = 1000
MAX_WEIGHT = 256                # cpu.shares tops out at 256 x 1024


@dataclass(frozen=True)
class ForwardingConfig:
    """``[hyperplane.forwarding]``: how the forwarding thread shares the machine
    (docs/performance.md). "fair" is a normal thread with a large weight of its own that
    sleeps when there is nothing to forward, so it takes a CPU only for the frames it forwards;
    "realtime" is SCHED_FIFO, ahead of every normal thread of its CPU. A busy poll after the
    last frame (spin_us) is only allowed on CPUs given to it alone (cpus): spinning on a shared
    CPU takes it from the generator, function or test process beside it."""
    scheduling: str = "fair"
    cpus: tuple[int, ...] = ()                 # () any CPU; else only these (kept for it)
    spin_us: int = 0                           # busy poll after the last frame, microseconds
    weight: int = 100                          # "fair": its CPU share against a normal thread


@dataclass(frozen=True)
class HyperplaneConfig:
    """The NAT and its ENI manager (the ``[hyperplane]`` table)."""
    profile: str = "aws"                       # timer profile: vocab.PROFILES
    mapping: str = "endpoint-independent"      # or "per-connection"
    port_range: tuple[int, int] = DEFAULT_PORT_RANGE
    capacity: int = 262144                     # connections
    timeouts: Mapping[str, int] = field(default_factory=frozen_map)  # state -> seconds
    eni_high_water: float = 0.9                # pool share that triggers a scale-out
    eni_limit: int = 16                        # ENIs per (subnet, security groups)
    eni_idle_reclaim_s: int = 600              # an ENI without connections this long goes
    quotas: QuotaConfig = field(default_factory=QuotaConfig)
    flow_logs: FlowLogConfig = field(default_factory=FlowLogConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    forwarding: ForwardingConfig = field(default_factory=ForwardingConfig)

    @property
    def ports_per_eni(self) -> int:
        return self.port_range[1] - self.port_range[0] + 1


@dataclass(frozen=True)
class Config:
    """A lab's configuration, validated and frozen: the Lambda side (``inside``), the NAT
    (``hyperplane``), the customer VPC (``subnets``, ``security_groups``, ``hosts``) and the
    ``functions``. Made by ``load_config`` (TOML), ``parse_config`` (a mapping) or
    ``default_config()``; the format is in examples/README.md."""
    prefix: str = "hp"
    mtu: int = 1500
    inside: InsideConfig = field(default_factory=InsideConfig)
    hyperplane: HyperplaneConfig = field(default_factory=HyperplaneConfig)
    vpc_id: str = "vpc-lab"
    subnets: tuple[SubnetConfig, ...] = ()
    security_groups: tuple[SecurityGroupConfig, ...] = ()
    hosts: tuple[HostConfig, ...] = ()
    functions: tuple[FunctionConfig, ...] = ()

    @property
    def nat(self) -> HyperplaneConfig:
        """The ``[hyperplane]`` table under its old name."""
        return self.hyperplane

    def nat_args(self) -> dict:
        """Keyword arguments of ``Nat(...)`` (and the model's) for this lab: the core checks
        them against the same bounds (vocab) as the parser did."""
        hp = self.hyperplane
        return dict(capacity=hp.capacity, port_range=hp.port_range, mapping=hp.mapping,
                    profile=hp.profile, timeouts=dict(hp.timeouts) or None,
                    mtu_inside=self.mtu, mtu_outside=self.mtu)

    def subnet(self, name: str) -> SubnetConfig:
        return _by(self.subnets, "name", name)

    def security_group(self, sg_id: str) -> SecurityGroupConfig:
        return _by(self.security_groups, "id", sg_id)

    def function(self, name: str) -> FunctionConfig:
        return _by(self.functions, "name", name)

    def with_prefix(self, prefix: str) -> "Config":
        """The same lab under another prefix (the prefix is checked)."""
        return replace(self, prefix=check_prefix(prefix))

    def to_dict(self) -> dict:
        """The JSON form saved with the lab state (``Config.from_dict`` reads it back)."""
        return encode(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "Config":
        """The typed value from ``to_dict()``'s form, as it was (no second validation)."""
        return decode(cls, d)


def _by(items, attr, value):
    for x in items:
        if getattr(x, attr) == value:
            return x
    raise KeyError(value)


def eni_group_key(subnet: str, security_groups) -> str:
    """The key of a (subnet, security-group set) combination: ``app|sg-a,sg-b``."""
    return f"{subnet}|{','.join(sorted(set(security_groups)))}"


def usable_offsets(net) -> range:
    """Host numbers an address can take in ``net``: above the AWS-reserved .0-.3, below the
    broadcast address (IPv4) — in a /64 that is a huge but cheap range."""
    last = net.num_addresses - 2 if net.version == 4 else net.num_addresses - 1
    return range(FIRST_RESERVED_FREE, last + 1)
