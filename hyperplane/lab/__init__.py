"""The namespace lab: a topology computed from a Config, built with pyroute2, removed by prefix.

- ``topology``: the lab as a value (no side effects): ``build_topology(config) -> Topology``,
  ``Topology.state() -> LabState``; it re-exports the names of
- ``names``: namespace, interface and MAC names derived from the prefix,
- ``state``: ``LabState`` (saved as JSON with the typed config) and the infos it holds,
- ``secgroups``: security groups compiled to ``SgRule`` tuples for the data plane.
- ``builder``: ``Lab(config).up() / .down() / .add_eni(subnet, sgs)``, ``Lab.attach(prefix)``.
- ``cleanup``: ``cleanup.cleanup(prefix)`` removes everything with the prefix, also after a crash.
- ``netns``: create/enter/remove namespaces, run commands and ping inside them.

Importing the package needs no root; pyroute2 is imported where the system is touched, and
each name above on its first use (``builder`` brings asyncio), so a command that only asks the
data plane (``hyperplane conntrack -C``) starts without them.
"""

from typing import TYPE_CHECKING

__all__ = ["EniInfo", "FunctionInfo", "GroupInfo", "HostInfo", "InsidePort", "Lab", "LabError",
           "LabState", "NamespaceInfo", "SubnetInfo", "SgRule", "Topology", "build_topology",
           "down", "up"]

# Each name this package re-exports, and the module that defines it: imported on first use.
_HOMES = {**dict.fromkeys(("Lab", "down", "up"), "builder"), "SgRule": "secgroups",
          **dict.fromkeys(("EniInfo", "FunctionInfo", "GroupInfo", "HostInfo", "InsidePort",
                           "LabError", "LabState", "NamespaceInfo", "SubnetInfo", "Topology",
                           "build_topology"), "topology")}

if TYPE_CHECKING:
    from .builder import Lab, down, up
    from .secgroups import SgRule
    from .topology import (EniInfo, FunctionInfo, GroupInfo, HostInfo, InsidePort, LabError,
                           LabState, NamespaceInfo, SubnetInfo, Topology, build_topology)
else:
    def __getattr__(name: str) -> object:
        if name in _HOMES:
            import importlib
            return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
