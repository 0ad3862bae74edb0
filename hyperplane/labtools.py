"""Small programs to run inside lab namespaces: echo servers that log who they saw, and echo
clients. The demo and the namespace tests use them (`python -m hyperplane.labtools ...`).

    serve [--tcp PORT] [--udp PORT]        echo servers on every address (IPv4 and IPv6);
                                           prints "tcp|udp PEER_ADDR PEER_PORT" per peer
    echo --tcp|--udp HOST PORT [TEXT]      sends TEXT, prints the answer, exit 1 on no answer
"""

from __future__ import annotations

import argparse
import socket
import sys
import threading


def _log(*parts) -> None:
    print(*parts, flush=True)


def _peer(addr) -> tuple[str, int]:
    host, port = addr[0], addr[1]
    if host.startswith("::ffff:"):
        host = host[7:]
    return host, port


def serve_tcp(port: int) -> None:
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))
    s.listen(128)

    def handle(conn, addr):
        _log("tcp", *_peer(addr))
        with conn:
            conn.settimeout(30)
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
            except OSError:
                pass

    while True:
        conn, addr = s.accept()
        threading.Thread(target=handle, args=(conn, addr), daemon=True).start()


def serve_udp(port: int) -> None:
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))
    while True:
        data, addr = s.recvfrom(65536)
        _log("udp", *_peer(addr))
        s.sendto(data, addr)


def echo(proto: str, host: str, port: int, text: str, timeout: float) -> int:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(fam, kind) as s:
        s.settimeout(timeout)
        data = text.encode()
        try:
            if proto == "tcp":
                s.connect((host, port))
                s.sendall(data)
                got = b""
                while len(got) < len(data):
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    got += chunk
            else:
                s.sendto(data, (host, port))
                got, _ = s.recvfrom(65536)
        except OSError as e:
            print(f"no answer from {host} {port}/{proto}: {e}", file=sys.stderr)
            return 1
    print(got.decode(errors="replace"))
    return 0 if got == data else 1


class LineCollector:
    """Collects a running program's output lines (stdout=PIPE, text) on a thread, so they can
    be read without blocking: for what an echo server logged about its peers."""

    def __init__(self, proc):
        self._lines: list[str] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._read, args=(proc.stdout,), daemon=True).start()

    def _read(self, stream) -> None:
        for line in stream:
            with self._lock:
                self._lines.append(line.strip())

    def take(self, wait: float = 0.3) -> list[str]:
        """The lines printed since the last take(), after waiting a moment for stragglers."""
        import time
        time.sleep(wait)
        with self._lock:
            lines, self._lines = self._lines, []
        return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hyperplane.labtools", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sv = sub.add_parser("serve", help="echo servers that log their peers")
    sv.add_argument("--tcp", type=int)
    sv.add_argument("--udp", type=int)
    ec = sub.add_parser("echo", help="send a line, print the answer")
    g = ec.add_mutually_exclusive_group(required=True)
    g.add_argument("--tcp", action="store_const", dest="proto", const="tcp")
    g.add_argument("--udp", action="store_const", dest="proto", const="udp")
    ec.add_argument("host")
    ec.add_argument("port", type=int)
    ec.add_argument("text", nargs="?", default="hello through hyperplane")
    ec.add_argument("--timeout", type=float, default=3.0)
    args = ap.parse_args(argv)
    if args.cmd == "echo":
        return echo(args.proto, args.host, args.port, args.text, args.timeout)
    if not args.tcp and not args.udp:
        ap.error("serve needs --tcp PORT and/or --udp PORT")
    threads = [threading.Thread(target=fn, args=(p,), daemon=True)
               for fn, p in ((serve_tcp, args.tcp), (serve_udp, args.udp)) if p]
    for t in threads:
        t.start()
    _log("ready")
    for t in threads:
        t.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
