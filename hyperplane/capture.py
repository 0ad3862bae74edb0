"""Packet captures in a running lab, on both sides of the NAT.

`SidesCapture` (and `hyperplane.Lab.capture`, `hyperplane demo --pcap DIR`) writes
`inside.pcap` (the functions' side: the far end of the data plane's inside port) and
`outside.pcap` (the customer VPC's side: the far ends of every ENI's port), which Wireshark and
tshark read, and `index.json`, which pairs each connection's two halves: its tuple, a display
filter and its frame numbers in each pcap. The connections come from the data plane's
listing, read every POLL_S while the capture runs (one that ends before the capture stops is
still indexed).

    with lab.capture("out/"):
        ... traffic ...
    # out/inside.pcap, out/outside.pcap, out/index.json; `tshark -r out/inside.pcap`

No tcpdump: an AF_PACKET socket per interface, in a child process inside the namespace
(`ip netns exec NS python3 -m hyperplane.capture ...`): `one IFNAME` prints the first TCP/UDP
frame the interface sends as hex (`hyperplane trace --live`); `pcap OUT IFNAME...` writes every
frame seen on those interfaces until stdin closes or SIGTERM arrives.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

from . import control
from .lab.names import ns_lambda, ns_vpc

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SNAPLEN = 65535
LINKTYPE_ETHERNET = 1
PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, SNAPLEN, LINKTYPE_ETHERNET)
ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD
PROTO_TCP, PROTO_UDP = 6, 17


SOL_PACKET, PACKET_VNET_HDR = 263, 15
VNET_HDR_LEN, VNET_F_NEEDS_CSUM = 10, 1


def open_socket(ifname: str) -> socket.socket:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    # With the virtio-net header a frame whose checksum the kernel left to the NIC (veth:
    # never filled in) says so; read_frame() completes it, so the pcap holds what the wire
    # would carry.
    s.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    s.bind((ifname, 0))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    return s


def is_tcp_or_udp(frame: bytes) -> bool:
    if len(frame) < 14 + 20:
        return False
    ethertype = frame[12] << 8 | frame[13]
    if ethertype == ETH_P_IP:
        return frame[14 + 9] in (PROTO_TCP, PROTO_UDP)
    return ethertype == ETH_P_IPV6 and len(frame) >= 54 and frame[14 + 6] in (PROTO_TCP, PROTO_UDP)


def read_frame(s: socket.socket) -> tuple[bytes, tuple]:
    """A frame and its address, its L4 checksum completed when the kernel left it partial."""
    data, addr = s.recvfrom(SNAPLEN + VNET_HDR_LEN)
    flags, _, _, _, csum_start, csum_offset = struct.unpack_from("<BBHHHH", data)
    frame = bytearray(data[VNET_HDR_LEN:])
    at = csum_start + csum_offset
    if flags & VNET_F_NEEDS_CSUM and at + 2 <= len(frame):
        # The field holds the pseudo header's sum: summing from csum_start on completes it.
        tail = bytes(frame[csum_start:]) + b"\0" * (len(frame[csum_start:]) % 2)
        total = sum(struct.unpack(f"!{len(tail) // 2}H", tail))
        while total > 0xFFFF:
            total = (total & 0xFFFF) + (total >> 16)
        struct.pack_into("!H", frame, at, ~total & 0xFFFF or 0xFFFF)
    return bytes(frame), addr


def pcap_record(frame: bytes, when: float) -> bytes:
    data = frame[:SNAPLEN]
    sec = int(when)
    return struct.pack("<IIII", sec, int((when - sec) * 1e6), len(data), len(frame)) + data


def first_sent(ifname: str, timeout: float) -> bytes | None:
    """The first TCP or UDP frame this interface sends (its namespace's own traffic)."""
    s = open_socket(ifname)
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([s], [], [], left)[0]:
            break
        frame, addr = read_frame(s)
        if addr[2] == PACKET_OUTGOING and is_tcp_or_udp(frame):
            return frame
    return None


def write_pcap(path: str, ifnames: list[str], ready=None) -> int:
    """Writes what the interfaces see until stdin closes (or SIGTERM); returns the count."""
    socks = {open_socket(name): name for name in ifnames}
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    count = 0
    with open(path, "wb") as out:
        out.write(PCAP_HEADER)
        out.flush()
        if ready:
            ready()
        watch = list(socks) + [sys.stdin]
        while not stop:
            try:
                readable = select.select(watch, [], [], 0.2)[0]
            except InterruptedError:
                continue
            for s in readable:
                if s is sys.stdin:
                    if not os.read(sys.stdin.fileno(), 4096):
                        stop.append(True)
                    continue
                frame, _ = read_frame(s)
                out.write(pcap_record(frame, time.time()))
                count += 1
            out.flush()
    return count


def in_namespace(ns: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", ns, sys.executable, "-m", "hyperplane.capture", *args]


def capture_one(ns: str, ifname: str, timeout: float) -> bytes | None:
    """The next TCP/UDP frame the interface in namespace ns sends, or None after timeout."""
    r = subprocess.run(in_namespace(ns, "one", ifname, "--timeout", str(timeout)),
                       capture_output=True, text=True, timeout=timeout + 10)
    text = r.stdout.strip()
    return bytes.fromhex(text) if r.returncode == 0 and text else None


class PcapWriter:
    """A capture running in a namespace until stop(): interfaces -> one pcap file."""

    def __init__(self, ns: str, ifnames: list[str], path: str):
        self.path = path
        self.proc = subprocess.Popen(in_namespace(ns, "pcap", path, *ifnames),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()          # "ready": the sockets are bound
        if line.strip() != "ready":
            self.proc.kill()
            raise RuntimeError(f"capture in {ns} on {', '.join(ifnames)} did not start")

    def stop(self, timeout: float = 5.0) -> int:
        """Ends the capture; the number of frames written."""
        self.proc.stdin.close()
        try:
            out = self.proc.stdout.read()
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return -1
        return int(out.split()[-1]) if out.split() else 0


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

    def __init__(self, prefix: str, out_dir, state=None, run_dir=None):
        from .lab.state import LabState
        self.prefix, self.run_dir = prefix, run_dir
        self.dir = Path(out_dir)
        self.state = state or LabState.load(prefix, run_dir)
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
            for page in control.listing(self.prefix, "conntrack", run_dir=self.run_dir):
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m hyperplane.capture")
    sub = ap.add_subparsers(dest="what", required=True)
    p = sub.add_parser("one")
    p.add_argument("ifname")
    p.add_argument("--timeout", type=float, default=30.0)
    p = sub.add_parser("pcap")
    p.add_argument("out")
    p.add_argument("ifnames", nargs="+")
    args = ap.parse_args(argv)
    if args.what == "one":
        frame = first_sent(args.ifname, args.timeout)
        if frame is None:
            return 1
        print(frame.hex())
        return 0
    count = write_pcap(args.out, args.ifnames, ready=lambda: print("ready", flush=True))
    print(count, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
