"""`hyperplane demo`: the built-in lab, real traffic through the NAT, and what it did. It uses
the public API (``hyperplane.Lab``) only, as a user's script would."""

from __future__ import annotations

import subprocess
import sys

from .api import Lab
from .labtools import LineCollector
from .render import conntrack_table, eni_table, stats_table

TOOLS = [sys.executable, "-m", "hyperplane.labtools"]
ECHO_PORT, HTTP_PORT = 7, 8080


def _step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def _run(lab: Lab, name: str, argv, timeout=10.0) -> subprocess.CompletedProcess:
    return lab.exec(name, argv, timeout=timeout)


def _echo(lab: Lab, fn: str, proto: str, host: str, port: int = ECHO_PORT) -> bool:
    r = _run(lab, fn, TOOLS + ["echo", f"--{proto}", host, str(port), f"hi from {fn}",
                               "--timeout", "2"])
    ok = r.returncode == 0
    fam = "IPv6" if ":" in host else "IPv4"
    print(f"  {fn:>7} -> {host}:{port} {proto}/{fam}: "
          + ("answered" if ok else "no answer (" + (r.stderr.strip() or "dropped") + ")"))
    return ok


def run_demo(keep: bool = False, pcap=None, prefix: str | None = None) -> int:
    """pcap: a folder for a capture on each side of the NAT (hyperplane/capture.py);
    prefix: the lab's (default: the built-in lab's own)."""
    from .config import default_config
    cfg = default_config()
    _step("building the default lab and starting the data plane")
    lab = Lab.up(cfg, prefix=prefix or cfg.prefix)
    print(lab.picture())
    st = lab.state
    capture = None
    if pcap:
        from .capture import SidesCapture
        capture = SidesCapture(lab.prefix, pcap, st).start()
    web, db = st.host("web"), st.host("db")
    servers = []
    logs = {}
    shown = False
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
        lab.wait_for(lambda: f":{HTTP_PORT} " in lab.run("web", "ss -Hltn"), 10)

        _step("functions open connections through their ENIs (V2N: one-way NAT), by name")
        _echo(lab, "api", "tcp", "web")
        _echo(lab, "api", "udp", "web")
        if web.ipv6:
            _echo(lab, "api", "tcp", web.ipv6)
            _echo(lab, "api", "udp", web.ipv6)
        _echo(lab, "worker", "tcp", "web")
        _echo(lab, "report", "tcp", "db")
        if web.ipv6:
            print("  worker has no Ipv6AllowedForDualStack, so its IPv6 is dropped:")
            _echo(lab, "worker", "tcp", web.ipv6)
        r = _run(lab, "api", [sys.executable, "-c",
                              f"import urllib.request as u; r = u.urlopen("
                              f"'http://web:{HTTP_PORT}/', timeout=3); "
                              f"print(r.status, len(r.read()), 'bytes')"])
        print(f"  api -> http://web:{HTTP_PORT}/: {r.stdout.strip() or r.stderr.strip()}")

        _step("what the servers saw: ENI addresses, never a function's own")
        for name, log in logs.items():
            for conn in log.take():
                print(f"  {name} saw {conn}")

        _step("unsolicited inbound from the customer VPC: dropped and counted")
        eni = st.enis[0]
        with lab.counting() as dropped:
            for target in (eni.ipv4, lab.address("api")):
                for proto in ("tcp", "udp"):
                    _echo(lab, "web", proto, target, 7)
        print("  " + ", ".join(f"{k} +{v}" for k, v in dropped.changed().items()
                               if k.startswith("drop.")))

        _step("hyperplane conntrack")
        print(conntrack_table([c.to_dict() for c in lab.connections()]))
        _step("hyperplane eni")
        print(eni_table(lab.enis()))
        _step("hyperplane stats")
        print(stats_table(lab.stats()))
        shown = True
    finally:
        if capture:
            from .capture import summary
            _step(f"captures on both sides of the NAT in {pcap}/")
            print(summary(capture.stop(), pcap))
        for _, p in servers:
            p.kill()
            p.wait()
        if not shown:               # a failure or Ctrl-C: nothing stays up
            lab.down()
    if keep:
        lab.detach()
        print("\nthe lab stays up: try `hyperplane exec api -- curl -s http://web:8080/`, "
              "`hyperplane conntrack --watch`; remove it with `hyperplane down`")
    else:
        _step("hyperplane down")
        lab.down()
        print(f"  removed lab {lab.prefix!r}")
    return 0
