"""Captures on both sides of the NAT: `inside.pcap` (the functions' side: the data plane's
inside port) and `outside.pcap` (the customer VPC's side: every ENI's port), and `index.json`,
which pairs each connection's two halves: its tuple and frame numbers in each pcap.

The captures run on the far ends of the data plane's veths (the functions' bridge, the
customer VPC's router), so each sees both directions. The connections come from the data plane's listing, read every POLL_S while the
capture runs (a connection that ends before the capture stops is still indexed).

    with SidesCapture(prefix, "out/"):      # or lab.capture("out/")
        ... traffic ...
    # out/inside.pcap, out/outside.pcap, out/index.json; `tshark -r out/inside.pcap`
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from .. import control
from ..lab.names import ns_lambda, ns_vpc
from .capture import PcapWriter

POLL_S = 0.5
INDEX_VERSION = 1


def _endpoint(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def _filter(proto: str, a: str, ap: int, b: str, bp: int) -> str:
    """A Wireshark display filter that selects one half (both directions)."""
    ip = "ipv6" if ":" in a else "ip"
    return (f"{ip}.addr=={a} && {ip}.addr=={b} && {proto}.port=={ap} && {proto}.port=={bp}")


def frame_tuples(path: Path) -> list[tuple | None]:
    """(proto, src, sport, dst, dport) of each frame of a pcap (None: not TCP/UDP)."""
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.utils import rdpcap
    out = []
    for pkt in rdpcap(str(path)):
        ip = pkt.getlayer(IP) or pkt.getlayer(IPv6)
        l4 = pkt.getlayer(TCP) or pkt.getlayer(UDP)
        if ip is None or l4 is None or pkt.getlayer("ICMP") is not None:
            out.append(None)
            continue
        proto = "tcp" if isinstance(l4, TCP) else "udp"
        out.append((proto, ip.src, l4.sport, ip.dst, l4.dport))
    return out


def _frames_of(tuples, proto, a, ap, b, bp) -> list[int]:
    """Frame numbers (from 1, as Wireshark counts) of the half between a:ap and b:bp."""
    ends = {(a, ap, b, bp), (b, bp, a, ap)}
    return [i for i, t in enumerate(tuples, 1)
            if t is not None and t[0] == proto and (t[1], t[2], t[3], t[4]) in ends]


def build_index(conns: list[dict], inside_pcap: Path, outside_pcap: Path) -> dict:
    inside, outside = frame_tuples(inside_pcap), frame_tuples(outside_pcap)
    entries = []
    for c in conns:
        proto = c["protocol"]
        halves = {
            "inside": (c["src"], c["sport"], c["dst"], c["dport"], inside),
            "outside": (c["nat_addr"], c["nat_port"], c["dst"], c["dport"], outside),
        }
        entry = {"id": c["id"], "protocol": proto, "eni": c["eni"], "state": c["state"]}
        for side, (a, ap, b, bp, tuples) in halves.items():
            entry[side] = {"tuple": f"{proto} {_endpoint(a, ap)} -> {_endpoint(b, bp)}",
                           "filter": _filter(proto, a, ap, b, bp),
                           "frames": _frames_of(tuples, proto, a, ap, b, bp)}
        entries.append(entry)
    return {"version": INDEX_VERSION, "inside": inside_pcap.name, "outside": outside_pcap.name,
            "connections": entries}


class SidesCapture:
    """Both pcaps and the index of one stretch of a running lab's traffic."""

    def __init__(self, prefix: str, out_dir, state=None):
        from ..lab.state import LabState
        self.prefix = prefix
        self.dir = Path(out_dir)
        self.state = state or LabState.load(prefix)
        self.inside_pcap = self.dir / "inside.pcap"
        self.outside_pcap = self.dir / "outside.pcap"
        self.index_path = self.dir / "index.json"
        self.conns: dict[tuple, dict] = {}
        self._stop = threading.Event()
        self._poller = None
        self._writers = []
        self.counts: dict[str, int] = {}

    def start(self) -> "SidesCapture":
        self.dir.mkdir(parents=True, exist_ok=True)
        # On the far ends of the data plane's veths: what it sends arrives there, and what it
        # receives leaves from there (its own sends bypass its namespace's packet taps).
        peers = [e.peer for e in self.state.enis if e.status != "Deleted"]
        self._writers = [
            ("inside", PcapWriter(ns_lambda(self.prefix), [self.state.inside.peer],
                                  str(self.inside_pcap))),
            ("outside", PcapWriter(ns_vpc(self.prefix), peers, str(self.outside_pcap)))]
        self._poller = threading.Thread(target=self._poll, name="capture-conntrack", daemon=True)
        self._poller.start()
        return self

    def _read_conntrack(self) -> None:
        try:
            for page in control.listing(self.prefix, "conntrack"):
                for c in page:
                    key = (c["protocol"], c["src"], c["sport"], c["dst"], c["dport"],
                           c["nat_addr"], c["nat_port"])
                    self.conns[key] = c         # the latest picture of each connection
        except control.ControlError:
            pass                                # a restart in the middle: the next poll

    def _poll(self) -> None:
        while not self._stop.wait(POLL_S):
            self._read_conntrack()

    def stop(self) -> dict:
        """Ends both captures and writes the index; returns it."""
        self._stop.set()
        if self._poller:
            self._poller.join(10)
        self._read_conntrack()
        for side, writer in self._writers:
            self.counts[side] = writer.stop()
        index = build_index(sorted(self.conns.values(), key=lambda c: (c["eni"], c["id"])),
                            self.inside_pcap, self.outside_pcap)
        self.index_path.write_text(json.dumps(index, indent=2) + "\n")
        return index

    def __enter__(self) -> "SidesCapture":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def summary(index: dict, out_dir) -> str:
    """What `hyperplane demo --pcap` prints about the captures."""
    out_dir = Path(out_dir)
    lines = [f"  {out_dir / index['inside']} and {out_dir / index['outside']}: "
             f"{len(index['connections'])} connections, paired in {out_dir / 'index.json'}"]
    for c in index["connections"]:
        lines.append(f"  {c['inside']['tuple']:<46} {len(c['inside']['frames']):>3} frames  <->  "
                     f"{c['outside']['tuple']:<44} {len(c['outside']['frames']):>3} frames")
    lines.append(f"  open them with: tshark -r {out_dir / index['inside']}   (or Wireshark)")
    return "\n".join(lines)

