"""The slow path: everything the C fast path punts, handled in Python with scapy.

    sp = SlowPath(nat, dp, clock=DataPlane.now_ms, ports=[
        PortInfo.inside(0, "02:00:00:00:00:01", gw4="10.200.0.1", gw6="fd00:200::1",
                        cidr4="10.200.0.0/24", cidr6="fd00:200::/64"),
        PortInfo.for_eni(1, eni=0, mac="02:00:00:00:01:04", addr4="10.0.1.4",
                         addr6="fd00:1::4", cidr4="10.0.1.0/24", cidr6="fd00:1::/64",
                         gw4="10.0.1.1", gw6="fd00:1::1"),
    ], on_exhausted=lambda frame, in_port, vnet: False)
    while True:
        dp.run(100)
        sp.handle(dp.punts(full=True))
        sp.tick()

What it does with each punt reason:

- ARP: answers requests for the inside gateway (inside port) and an ENI's IPv4 (its port);
  learns senders on the port's networks into the neighbour table.
- ICMP: NDP (NS answered for the gateway / ENI IPv6 address, NS / NA learned), echo to the
  inside gateway answered, other echo dropped; ICMP errors quoting a tracked flow translated
  (RFC 5508: outer and inner addresses, inner port, every checksum) both ways.
- NEIGH_MISS: queued per next hop (bounded), ARP / NS sent with retries and backoff on tick(),
  sent when the answer arrives, dropped after ~3 s.
- TTL_EXCEEDED / TOO_BIG: ICMP time exceeded / fragmentation needed / packet too big
  (rate-limited by a token bucket); IPv4 without DF is translated and fragmented instead.
- FRAGMENT: reassembled (bounded), translated whole, fragmented again to the egress MTU.
- PORTS_EXHAUSTED: on_exhausted(frame, in_port, vnet) -> True re-runs the frame through dp.input once;
  None: the callback took the frame (it re-runs it itself once an ENI is ready: the slow path
  never waits for an ENI); False: dropped.

counters() says what happened, by name; state() gives the gauges.
"""

from .core import PortInfo, SlowPath, TokenBucket

__all__ = ["PortInfo", "SlowPath", "TokenBucket"]
