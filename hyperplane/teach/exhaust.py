"""Port exhaustion and a new ENI, in the reference model with a pool of 10 ports (the
tutorial's step 8): `python3 -m hyperplane.teach.exhaust`."""

from __future__ import annotations

from ..model import Nat
from ..vocab import OUT, REASONS, VERDICTS
from .packets import frame

POOL = (536, 545)                   # 10 ports instead of 65,000


def main() -> None:
    nat = Nat(port_range=POOL, port_seed=1)
    group = nat.add_group()
    nat.group_add_eni(group, nat.add_eni("10.0.1.4"))
    nat.add_source("10.200.0.11", group)
    for n in range(1, 13):
        datagram = bytearray(frame("02:00:00:00:00:01", "02:00:00:00:00:02", "10.200.0.11",
                                   "10.0.1.10", 1000 + n, 53, "udp"))
        verdict, reason, port, conn = nat.translate([datagram], OUT, n)[0]
        if conn >= 0:
            c = nat.get(conn)
            print(f"connection {n} from port {1000 + n}: {VERDICTS[verdict]} on ENI {c.eni} "
                  f"port {c.nat_port}")
        else:
            print(f"connection {n} from port {1000 + n}: {VERDICTS[verdict]} {REASONS[reason]}")
            print("a new ENI joins the group")
            nat.group_add_eni(group, nat.add_eni("10.0.1.5"))
    used = [nat.pool_stats(e, 4, 17) for e in range(2)]
    print("pools: " + ", ".join(f"ENI {e} {u['in_use']} in use of {u['size']}"
                                for e, u in enumerate(used)))


if __name__ == "__main__":
    main()
