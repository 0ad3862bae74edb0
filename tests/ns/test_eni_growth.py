"""When the newest ENI of a (subnet, security groups) pair runs out of ports, the data plane
adds an ENI to the running lab and the new connections go out through it — what Lambda does
past 65,000 connections, shown here with a pool of four ports."""

from __future__ import annotations

import json

from conftest import _sweep, new_prefix
from test_v2n import ECHO, TOOLS, cli

SMALL_POOL = """
[inside]
cidr4 = "10.200.0.0/24"
[nat]
port_range = [60000, 60003]
[[subnets]]
name = "app"
cidr4 = "10.0.1.0/24"
[[hosts]]
name = "web"
subnet = "app"
[[functions]]
name = "api"
subnets = ["app"]
security_groups = ["sg-web"]
[[functions]]
name = "worker"
subnets = ["app"]
security_groups = ["sg-web"]
"""


def test_exhausted_eni_gets_a_successor(tmp_path):
    from hyperplane.lab import Lab
    from hyperplane.labtools import LineCollector
    import subprocess
    prefix = new_prefix()
    cfg = tmp_path / "lab.toml"
    cfg.write_text(f'prefix = "{prefix}"\n' + SMALL_POOL)
    server = None
    try:
        cli("up", "--detach", "-c", str(cfg))
        lab = Lab.attach(prefix)
        server = lab.popen("web", TOOLS + ["serve", "--udp", str(ECHO)], stdout=subprocess.PIPE,
                           text=True)
        assert server.stdout.readline().strip() == "ready"
        peers = LineCollector(server)
        web = lab.state.host("web").ipv4
        for i in range(6):        # six flows, four ports per ENI: the fifth needs a new ENI
            fn = "api" if i % 2 else "worker"
            r = lab.exec(fn, TOOLS + ["echo", "--udp", web, str(ECHO), f"flow {i}"])
            assert r.returncode == 0, r.stderr
        enis = json.loads(cli("eni", "--json", "--prefix", prefix).stdout)
        assert [e["ipv4"] for e in enis] == ["10.0.1.4", "10.0.1.5"]
        assert enis[0]["ports_in_use"] == 4 and enis[1]["ports_in_use"] == 2
        assert enis[0]["group"] == enis[1]["group"]
        seen = [line.split()[1] for line in peers.take()]
        assert seen.count("10.0.1.4") == 4 and seen.count("10.0.1.5") == 2, seen
        stats = json.loads(cli("stats", "--json", "--prefix", prefix).stdout)
        assert stats["nat"]["punt.PORTS_EXHAUSTED"] == 1
        assert json.loads(cli("status", "--json", "--prefix", prefix).stdout)["enis"][1]["id"] == 1
    finally:
        if server:
            server.kill()
            server.wait()
        cli("down", "--prefix", prefix, check=False)
        _sweep(prefix)
