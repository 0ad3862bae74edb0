"""Packet captures inside the lab's namespaces, without tcpdump: an AF_PACKET socket per
interface, frames written as classic pcap (Ethernet link type), which Wireshark and tshark read.

Run inside a namespace as a child process (`ip netns exec NS python3 -m
hyperplane.teach.capture ...`): `one IFNAME` prints the first TCP/UDP frame the interface sends
as hex; `pcap OUT IFNAME...` writes every frame seen on those interfaces until stdin closes or
SIGTERM arrives.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SNAPLEN = 65535
LINKTYPE_ETHERNET = 1
PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, SNAPLEN, LINKTYPE_ETHERNET)
ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD
PROTO_TCP, PROTO_UDP = 6, 17


def open_socket(ifname: str) -> socket.socket:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
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
        frame, addr = s.recvfrom(SNAPLEN)
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
                frame = s.recv(SNAPLEN)
                out.write(pcap_record(frame, time.time()))
                count += 1
            out.flush()
    return count


def in_namespace(ns: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", ns, sys.executable, "-m", "hyperplane.teach.capture", *args]


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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m hyperplane.teach.capture")
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
