"""The namespace lab: a topology computed from a Config, built with pyroute2, removed by prefix.

- ``topology``: the lab as a value (no side effects): ``build_topology(config) -> Topology``,
  ``Topology.state() -> LabState``.
- ``builder``: ``Lab(config).up() / .down() / .add_eni(subnet, sgs)``, ``Lab.attach(prefix)``.
- ``cleanup``: ``cleanup.cleanup(prefix)`` removes everything with the prefix, also after a crash.
- ``netns``: create/enter/remove namespaces, run commands inside them.

Importing the package does not need root; ``builder`` and ``cleanup`` import pyroute2 lazily
where they touch the system.
"""

from .topology import (EniInfo, FunctionInfo, GroupInfo, HostInfo, InsidePort, LabError,
                       LabState, NamespaceInfo, SubnetInfo, Topology, build_topology)

__all__ = ["EniInfo", "FunctionInfo", "GroupInfo", "HostInfo", "InsidePort", "Lab", "LabError",
           "LabState", "NamespaceInfo", "SubnetInfo", "Topology", "build_topology", "down",
           "up"]


def __getattr__(name):
    if name in ("Lab", "up", "down"):
        from . import builder
        return getattr(builder, name)
    raise AttributeError(name)
