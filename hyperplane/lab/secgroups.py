"""Security groups compiled for the data plane: each group's egress rules as a compact list of
``SgRule(proto, port_lo, port_hi, family, prefix, plen)``, what a C rule compiler consumes.

- ``proto`` 6 (TCP), 17 (UDP) or 0 (every protocol, AWS's "-1"); ``all`` rules span 0..65535.
- A rule naming another group expands to one /32 (and /128) per host of that group; ENIs are
  the NAT's own addresses, never destinations, so they add nothing.
- A function with no security group gets the VPC's default group, which AWS creates with
  allow-all egress: ``group_rules`` of an empty set allows everything.
- An ENI (one per subnet and group set) allows the union of its groups' rules.
"""

from __future__ import annotations

import ipaddress
from typing import Iterable, Mapping, NamedTuple

from ..config import ALLOW_ALL_EGRESS, Config, EgressRule


class SgRule(NamedTuple):
    proto: int                  # 6, 17 or 0 (any)
    port_lo: int
    port_hi: int
    family: int                 # 4 or 6
    prefix: str                 # network address, "10.0.0.0" / "fd00::"
    plen: int

    def allows(self, proto: int, family: int, dst: str, port: int) -> bool:
        """Whether this rule lets a new connection out (the reference for the C matcher)."""
        if self.family != family or (self.proto and self.proto != proto):
            return False
        if self.proto and not self.port_lo <= port <= self.port_hi:
            return False
        return ipaddress.ip_address(dst) in ipaddress.ip_network(f"{self.prefix}/{self.plen}")


def egress_rules(config: Config, hosts: Iterable) -> dict[str, tuple[SgRule, ...]]:
    """Every security group's compiled rules, by group id. ``hosts``: HostInfo-like objects
    (name, ipv4, ipv6) of the built lab, which give group references their addresses."""
    addresses = {h.name: (h.ipv4, h.ipv6) for h in hosts}
    members: dict[str, list[tuple[str, str | None]]] = {}
    for h in config.hosts:
        for sg in h.security_group_ids:
            members.setdefault(sg, []).append(addresses[h.name])
    return {g.id: _dedup(r for rule in g.egress for r in _compile(rule, members))
            for g in config.security_groups}


def group_rules(rules: Mapping[str, tuple[SgRule, ...]],
                security_groups: Iterable[str]) -> tuple[SgRule, ...]:
    """The rules of an ENI with these groups: their union (the default group's when none)."""
    sgs = sorted(set(security_groups))
    if not sgs:
        return _dedup(r for rule in ALLOW_ALL_EGRESS for r in _compile(rule, {}))
    return _dedup(r for sg in sgs for r in rules[sg])


def _compile(rule: EgressRule, members) -> list[SgRule]:
    head = (rule.proto, rule.from_port, rule.to_port)
    if rule.cidr4 or rule.cidr6:
        net = ipaddress.ip_network(rule.cidr4 or rule.cidr6)
        return [SgRule(*head, net.version, str(net.network_address), net.prefixlen)]
    out = []
    for a4, a6 in members.get(rule.security_group_id, ()):
        out.append(SgRule(*head, 4, a4, 32))
        if a6:
            out.append(SgRule(*head, 6, a6, 128))
    return out


def _dedup(rules) -> tuple[SgRule, ...]:
    return tuple(dict.fromkeys(rules))
