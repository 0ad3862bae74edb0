"""`hyperplane demo`: the built-in lab, real traffic through the NAT, and what it did."""

from __future__ import annotations

import subprocess
import sys
import time

from . import control, runtime
from .labtools import LineCollector
from .render import conntrack_table, eni_table, stats_table

TOOLS = [sys.executable, "-m", "hyperplane.labtools"]
ECHO_PORT, HTTP_PORT = 7, 8080


def _step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def _run(lab, name: str, argv, timeout=10.0) -> subprocess.CompletedProcess:
    return lab.exec(name, argv, timeout=timeout)


def _echo(lab, fn: str, proto: str, host: str, port: int = ECHO_PORT) -> bool:
    r = _run(lab, fn, TOOLS + ["echo", f"--{proto}", host, str(port), f"hi from {fn}",
                               "--timeout", "2"])
    ok = r.returncode == 0
    fam = "IPv6" if ":" in host else "IPv4"
    print(f"  {fn:>7} -> {host}:{port} {proto}/{fam}: "
          + ("answered" if ok else "no answer (" + (r.stderr.strip() or "dropped") + ")"))
    return ok


def run_demo(keep: bool = False, pcap=None) -> int:
    """pcap: a folder for a capture on each side of the NAT (hyperplane/teach/sides.py)."""
    from .config import default_config
    from .lab import Lab
    from .render import lab_picture
    cfg = default_config()
    prefix = cfg.prefix
    _step("building the default lab and starting the data plane")
    state, pid = runtime.up(cfg, notice=print)
    print(lab_picture(state, control.request(prefix, "status"), runtime.restarts(prefix)))
    lab = Lab.attach(prefix)
    st = lab.state
    capture = None
    if pcap:
        from .teach.sides import SidesCapture
        capture = SidesCapture(prefix, pcap, st).start()
    web, db = st.host("web"), st.host("db")
    servers = []
    logs = {}
    try:
        _step("servers in the customer VPC: echo on port 7 (TCP+UDP), HTTP on 8080")
        for h in (web, db):
            p = lab.popen(h.name, TOOLS + ["serve", "--tcp", str(ECHO_PORT), "--udp",
                                            str(ECHO_PORT)],
                          stdout=subprocess.PIPE, text=True)
            p.stdout.readline()           # "ready"
            servers.append((h.name, p))
            logs[h.name] = LineCollector(p)
        servers.append(("web-http", lab.popen(
            "web", [sys.executable, "-m", "http.server", str(HTTP_PORT), "--bind", "::"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
        time.sleep(0.5)

        _step("functions open connections through their ENIs (V2N: one-way NAT)")
        _echo(lab, "api", "tcp", web.ipv4)
        _echo(lab, "api", "udp", web.ipv4)
        if web.ipv6:
            _echo(lab, "api", "tcp", web.ipv6)
            _echo(lab, "api", "udp", web.ipv6)
        _echo(lab, "worker", "tcp", web.ipv4)
        _echo(lab, "report", "tcp", db.ipv4)
        if web.ipv6:
            print("  worker has no Ipv6AllowedForDualStack, so its IPv6 is dropped:")
            _echo(lab, "worker", "tcp", web.ipv6)
        r = _run(lab, "api", [sys.executable, "-c",
                              f"import urllib.request as u; r = u.urlopen("
                              f"'http://{web.ipv4}:{HTTP_PORT}/', timeout=3); "
                              f"print(r.status, len(r.read()), 'bytes')"])
        print(f"  api -> http://{web.ipv4}:{HTTP_PORT}/: {r.stdout.strip() or r.stderr.strip()}")

        _step("what the servers saw: ENI addresses, never a function's own")
        for name, log in logs.items():
            for conn in log.take():
                print(f"  {name} saw {conn}")

        _step("unsolicited inbound from the customer VPC: dropped and counted")
        eni = st.enis[0]
        fn = st.function("api")
        for target in (eni.ipv4, fn.ipv4):
            for proto in ("tcp", "udp"):
                _echo(lab, "web", proto, target, 7)

        _step("hyperplane conntrack")
        print(conntrack_table(control.request(prefix, "conntrack")["items"]))
        _step("hyperplane eni")
        print(eni_table(control.request(prefix, "eni")["enis"]))
        _step("hyperplane stats")
        print(stats_table(control.request(prefix, "stats")))
    finally:
        if capture:
            from .teach.sides import summary
            _step(f"captures on both sides of the NAT in {pcap}/")
            print(summary(capture.stop(), pcap))
        for _, p in servers:
            p.kill()
            p.wait()
        if keep:
            print("\nthe lab stays up: try `hyperplane exec api -- bash`, "
                  "`hyperplane conntrack --watch`; remove it with `hyperplane down`")
        else:
            _step("hyperplane down")
            report = runtime.down(prefix)
            print(f"  removed {len(report.namespaces)} namespaces")
    return 0
