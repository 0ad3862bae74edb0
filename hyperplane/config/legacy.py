"""The first config layout (``[nat]``, ``[[subnets]]``, ``[[hosts]]``, ``[[functions]]`` with
``subnets``/``security_groups``/``ipv6``), read by converting it to the Lambda-shaped one.

Security groups named by functions but never defined become groups with AWS's default egress
(everything allowed), which is what the old layout meant."""

from __future__ import annotations

from typing import Any, Mapping

from ..errors import ConfigError


def is_old_layout(data: Mapping[str, Any]) -> bool:
    return ("nat" in data or "subnets" in data
            or isinstance(data.get("hosts"), list) or isinstance(data.get("functions"), list))


def convert(data: Mapping[str, Any]) -> dict:
    if "hyperplane" in data and "nat" in data:
        raise ConfigError("nat", "is the old name of [hyperplane]; keep one of them")
    if "vpc" in data and "subnets" in data:
        raise ConfigError("subnets", "the old layout's [[subnets]] beside [vpc]: move them to "
                                     "[vpc.subnets.NAME]")
    out = {k: v for k, v in data.items() if k not in ("nat", "subnets", "hosts", "functions")}
    if "nat" in data:
        out["hyperplane"] = data["nat"]
    subnets = _named("subnets", data.get("subnets", []))
    hosts = _named("hosts", data.get("hosts", []))
    functions = {}
    groups: dict[str, dict] = {}
    for name, f in _named("functions", data.get("functions", [])).items():
        f = dict(f)
        for old, new in (("subnets", "subnet_ids"), ("security_groups", "security_group_ids"),
                         ("ipv6", "ipv6_allowed_for_dual_stack")):
            if old in f:
                f[new] = f.pop(old)
        sgs = f.get("security_group_ids", [])
        if isinstance(sgs, list):
            groups.update({sg: {} for sg in sgs if isinstance(sg, str)})
        functions[name] = f
    vpc: dict[str, Any] = {}
    if subnets:
        vpc["subnets"] = subnets
    if groups:
        vpc["security_groups"] = groups
    if vpc:
        out["vpc"] = vpc
    if hosts:
        out["hosts"] = hosts
    if functions:
        out["functions"] = functions
    return out


def _named(kind: str, items) -> dict:
    """An array of tables with a ``name`` each -> a table keyed by the names."""
    if not isinstance(items, (list, tuple)):
        raise ConfigError(kind, f"must be an array of tables ([[{kind}]]), got "
                                f"{type(items).__name__}")
    out: dict[str, dict] = {}
    for i, t in enumerate(items):
        if not isinstance(t, Mapping):
            raise ConfigError(f"{kind}[{i}]", f"must be a table, got {type(t).__name__}")
        name = t.get("name")
        if not isinstance(name, str):
            raise ConfigError(f"{kind}[{i}].name", "missing" if name is None else
                              f"must be a string, got {name!r}")
        if name in out:
            raise ConfigError(f"{kind}[{i}].name", f"{name!r} is already the name of another "
                                                   f"of the {kind}")
        out[name] = {k: v for k, v in t.items() if k != "name"}
    return out
