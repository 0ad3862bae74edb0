"""The namespace lab: a topology computed from a Config, built with pyroute2, removed by prefix.

- ``topology``: the lab as a value (no side effects): ``build_topology(config) -> Topology``,
  ``Topology.state() -> LabState``.
- ``builder``: ``Lab(config).up() / .down() / .add_eni(subnet, sgs)``, ``Lab.attach(prefix)``.
- ``cleanup``: ``cleanup.cleanup(prefix)`` removes everything with the prefix, also after a crash.
- ``netns``: create/enter/remove namespaces, run commands and ping inside them.

Importing the package needs no root; pyroute2 is imported where the system is touched.
"""

from .builder import Lab, down, up
from .topology import (EniInfo, FunctionInfo, GroupInfo, HostInfo, InsidePort, LabError,
                       LabState, NamespaceInfo, SubnetInfo, Topology, build_topology)

__all__ = ["EniInfo", "FunctionInfo", "GroupInfo", "HostInfo", "InsidePort", "Lab", "LabError",
           "LabState", "NamespaceInfo", "SubnetInfo", "Topology", "build_topology", "down",
           "up"]
