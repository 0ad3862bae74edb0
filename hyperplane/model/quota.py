"""Per-function quotas and early drop (docs/semantics.md section 12), as csrc/quota.c.

A function is the owner index of its sources (the first source registered with its MAC). It
may hold at most max_connections connections in the table and max_ports ports of any one ENI
pool (0: no quota). A full table first expires what has expired, then drops the oldest
unassured connection, looking at the first EARLY_DROP_SCAN entries of each state's list.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..vocab import F_ASSURED
from .conntrack import ConnTable, Entry

EARLY_DROP_SCAN = 8
FUNC_COUNTERS = ("created", "refused_connections", "refused_ports", "table_full",
                 "ports_exhausted", "early_dropped")


@dataclass
class Func:
    max_connections: int = 0
    max_ports: int = 0
    connections: int = 0
    held: dict = field(default_factory=dict)    # (eni, family, proto) -> ports held
    counters: dict = field(default_factory=lambda: dict.fromkeys(FUNC_COUNTERS, 0))

    def conn_ok(self) -> bool:
        return self.max_connections == 0 or self.connections < self.max_connections

    def port_ok(self, pool: tuple) -> bool:
        return self.max_ports == 0 or self.held.get(pool, 0) < self.max_ports

    def port_add(self, pool: tuple, delta: int) -> None:
        held = self.held.get(pool, 0) + delta
        self.held[pool] = max(held, 0)

    def stats(self, owner: int, addr: str) -> dict:
        return {"owner": owner, "addr": addr, "max_connections": self.max_connections,
                "max_ports": self.max_ports, "connections": self.connections,
                "ports": sum(self.held.values()), **self.counters}


def early_drop_victim(table: ConnTable) -> Entry | None:
    """The oldest unassured connection among the first entries of each state's list."""
    victim = None
    for state_list in table.lru:
        for n, cid in enumerate(state_list):
            if n >= EARLY_DROP_SCAN:
                break
            conn = table.conns[cid]
            if not conn.flags & F_ASSURED:
                if victim is None or conn.last_seen_ms < victim.last_seen_ms:
                    victim = conn
                break
    return victim
