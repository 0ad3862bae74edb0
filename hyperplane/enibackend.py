"""The ENI manager's backend in the data plane: what its decisions (hyperplane.enimanager) do
to the lab, the NAT and the data plane of the daemon."""

from __future__ import annotations

from .errors import CoreRefused
from .lab.topology import EniInfo
from .scheduling import away_from_forwarding


class DaemonEniBackend:
    """What the ENI manager's decisions do to the lab, the NAT and the data plane."""

    def __init__(self, daemon):
        self.d = daemon         # hyperplane.daemon.Daemon: its lab, NAT, groups and ports

    # Veth, pools and rings: long system calls, away from the forwarding thread's CPU.
    def create(self, group: str, scale_out: bool) -> EniInfo:
        g = self.d.lab.state.group(group)
        with away_from_forwarding():
            return self.d.lab.add_eni(g.subnet, g.security_groups, scale_out=scale_out)

    def attach(self, eni: EniInfo) -> None:
        with away_from_forwarding():
            self.d.attach_eni(eni)

    def pools(self, eni: EniInfo) -> dict:
        out = {}
        for fam, addr in ((4, eni.ipv4), (6, eni.ipv6)):
            if addr is not None:
                for proto, name in ((6, "tcp"), (17, "udp")):
                    out[f"{name}{fam}"] = self.d.nat.pool_stats(eni.id, fam, proto)
        return out

    def usage(self, eni: EniInfo) -> float:
        """The fullest of its pools, or the largest share of its port quota a function holds
        there: a group grows before one busy function reaches its share, as before a pool
        fills (docs/semantics.md section 13)."""
        fill = max((p["size"] - p["free"]) / p["size"] for p in self.pools(eni).values())
        return max(fill, self.d.nat.eni_share_used(eni.id))

    def set_can_grow(self, group: str, can_grow: bool) -> None:
        gid = self.d.group_ids.get(group)
        if gid is not None:
            self.d.nat.group_set_can_grow(gid, can_grow)

    def connections(self, eni: EniInfo) -> int:
        return sum(self.d.nat.eni_counters(eni.id)["active"].values())

    def retire(self, eni: EniInfo) -> bool:
        return self.d.nat.group_retire_eni(self.d.group_ids[eni.group], eni.id)

    def destroy(self, eni: EniInfo) -> None:
        with away_from_forwarding():
            self.d.detach_eni(eni)
            self.d.lab.delete_eni(eni.id)

    def release(self, eni: EniInfo) -> bool:
        """The NAT gives the id and the state space back first, then the lab the id and the
        addresses: a kill in between leaves a lab record that the next start adds again
        (fresh, in no group) and releases."""
        tracker = self.d.flow_tracker
        if tracker.names_eni(eni.id):       # its flow-log records name it by id: written first
            return False
        try:
            if not self.d.nat.release_eni(eni.id):
                return False
        except CoreRefused:         # never added to the NAT: a creation that failed
            pass
        tracker.forget_eni(eni.id)
        self.d.lab.forget_eni(eni.id)
        return True
