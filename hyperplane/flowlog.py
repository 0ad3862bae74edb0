"""VPC Flow Logs (version 2) records for connections as they end.

`version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start
end action log-status`: one record per direction, as the ENI sees the traffic (after NAT).
"""

from __future__ import annotations

import time
from pathlib import Path

from .connection import Connection

ACCOUNT = "123456789012"
HEADER = ("version account-id interface-id srcaddr dstaddr srcport dstport protocol packets "
          "bytes start end action log-status")


def eni_name(eni: int) -> str:
    return f"eni-{eni:017x}"


def records(c: Connection, end_s: int | None = None) -> list[str]:
    """The ENI-side records of a connection: outbound, then inbound if anything came back."""
    end = int(time.time()) if end_s is None else end_s
    # start_s counts on the data plane's monotonic clock; shift it onto the wall clock.
    start = end - max(0, c.last_seen_ms // 1000 - c.start_s)
    out = [f"2 {ACCOUNT} {eni_name(c.eni)} {c.nat_addr} {c.dst} {c.nat_port} {c.dport} "
           f"{c.proto} {c.packets_out} {c.bytes_out} {start} {end} ACCEPT OK"]
    if c.packets_in:
        out.append(f"2 {ACCOUNT} {eni_name(c.eni)} {c.dst} {c.nat_addr} {c.dport} {c.nat_port} "
                   f"{c.proto} {c.packets_in} {c.bytes_in} {start} {end} ACCEPT OK")
    return out


class FlowLog:
    """Appends records to a file; the header goes first when the file is new."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        new = not self.path.exists() or self.path.stat().st_size == 0
        self.file = open(self.path, "a", buffering=1 << 16)
        if new:
            self.file.write(HEADER + "\n")

    def write(self, connections) -> int:
        n = 0
        for c in connections:
            for line in records(c):
                self.file.write(line + "\n")
                n += 1
        self.file.flush()
        return n

    def close(self) -> None:
        self.file.close()
