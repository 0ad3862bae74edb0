"""Observability in a running lab: flow-log files (1 s aggregation interval, custom format)
hold the traffic the functions sent, packet for packet and byte for byte, and `curl` of the
metrics endpoint returns Prometheus text that prometheus_client parses, with per-ENI figures
that match the same traffic."""

from __future__ import annotations

import contextlib
import stat
import subprocess
import sys
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import TEST_LAB, _sweep, new_prefix
from test_v2n import CLI, ECHO, TOOLS

PORT = 9476
DATAGRAMS = 20
PAYLOAD = 100
FIELDS = ["version", "account-id", "interface-id", "srcaddr", "dstaddr", "srcport", "dstport",
          "protocol", "packets", "bytes", "start", "end", "action", "log-status",
          "pkt-srcaddr", "pkt-dstaddr", "tcp-flags", "flow-direction", "traffic-path", "type"]
# Sends DATAGRAMS datagrams on one flow and waits for each echo; prints the local port.
SENDER = f"""
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
s.connect((host, port))
for i in range({DATAGRAMS}):
    s.send(bytes({PAYLOAD}))
    assert len(s.recv(2048)) == {PAYLOAD}
print(s.getsockname()[1])
"""


def wait_for(fn, what: str, timeout: float = 15.0):
    """fn() until it returns something true; its last value in the failure message."""
    end = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}; last: {v!r}")
        time.sleep(0.2)


@contextlib.contextmanager
def running_lab(extra_config: str, serve: list[str]):
    """A test lab with extra_config appended, its data plane started, and labtools `serve`
    (with these arguments) on host web; removed afterwards, also on failure."""
    from hyperplane import runtime
    from hyperplane.config import loads_config
    from hyperplane.lab import Lab
    prefix = new_prefix()
    server = None
    try:
        state = Lab(loads_config(f'prefix = "{prefix}"\n' + TEST_LAB + extra_config)).up()
        runtime.start(state)
        lab = Lab.attach(prefix)
        server = lab.popen("web", TOOLS + ["serve"] + serve, stdout=subprocess.PIPE, text=True)
        assert server.stdout.readline().strip() == "ready"
        yield lab
    finally:
        if server:
            server.kill()
            server.wait()
        subprocess.run(CLI + ["down", "--prefix", prefix], capture_output=True, timeout=60)
        _sweep(prefix)


@pytest.fixture(scope="module")
def observed():
    """A lab whose data plane logs flows every second and serves metrics; an echo server on
    host web; api sends one IPv4 and one IPv6 UDP flow through the ENI."""
    fields = " ".join(f"${{{f}}}" for f in FIELDS)
    with running_lab(f'[hyperplane.metrics]\nenabled = true\nport = {PORT}\n'
                     f'[hyperplane.flow_logs]\ninterval_s = 1\nformat = "{fields}"\n',
                     ["--udp", str(ECHO)]) as lab:
        web = lab.state.host("web")
        flows = {}
        for fam, dst in ((4, web.ipv4), (6, web.ipv6)):
            r = lab.exec("api", [sys.executable, "-c", SENDER, dst, str(ECHO)], timeout=30)
            assert r.returncode == 0, r.stderr
            flows[fam] = (dst, int(r.stdout))
        yield lab, flows


def flow_records(lab) -> list[dict]:
    from hyperplane import flowlog
    from hyperplane import runfolder
    folder = runfolder.paths(lab.prefix).flow_logs
    return [r for p in sorted(folder.glob("eni-*.log*")) for r in flowlog.parse(p)]


def test_flow_logs_count_the_traffic_sent(observed):
    from hyperplane import runfolder
    lab, flows = observed
    api = lab.state.function("api")
    eni = lab.state.enis_of(api.group)[0]
    wire = {4: 20 + 8 + PAYLOAD, 6: 40 + 8 + PAYLOAD}

    def totals():
        recs = flow_records(lab)
        out = {}
        for fam, (dst, _) in flows.items():
            src = api.ipv4 if fam == 4 else api.ipv6
            eni_addr = eni.ipv4 if fam == 4 else eni.ipv6
            egress = [r for r in recs if r["flow-direction"] == "egress"
                      and r["pkt-srcaddr"] == src and r["dstaddr"] == dst]
            ingress = [r for r in recs if r["flow-direction"] == "ingress"
                       and r["srcaddr"] == dst and r["dstaddr"] == eni_addr]
            out[fam] = tuple(sum(int(r[k]) for r in rs) for rs in (egress, ingress)
                             for k in ("packets", "bytes"))
        return out, recs

    want = {fam: (DATAGRAMS, DATAGRAMS * wire[fam]) * 2 for fam in flows}
    got, recs = wait_for(lambda: (lambda t: t if t[0] == want else None)(totals()),
                         f"flow-log totals {want}", timeout=15)
    for r in recs:
        assert list(r) == FIELDS, r
        assert r["version"] == "5" and r["action"] == "ACCEPT" and r["log-status"] == "OK"
        assert r["interface-id"].startswith("eni-") and r["protocol"] == "17"
        assert int(r["start"]) <= int(r["end"]) <= time.time() + 1
        assert r["type"] == ("IPv6" if ":" in r["srcaddr"] else "IPv4")
        assert r["traffic-path"] == ("1" if r["flow-direction"] == "egress" else "-")
    egress = [r for r in recs if r["flow-direction"] == "egress"]
    assert {r["srcaddr"] for r in egress} == {eni.ipv4, eni.ipv6}   # after NAT
    assert {r["pkt-srcaddr"] for r in egress} == {api.ipv4, api.ipv6}  # before NAT
    folder = runfolder.paths(lab.prefix).flow_logs
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for p in folder.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p


def scrape(lab) -> dict:
    from hyperplane.lab import netns
    r = netns.exec(lab.state.dataplane_ns, ["curl", "-sf", f"http://127.0.0.1:{PORT}/metrics"],
                   timeout=20)
    assert r.returncode == 0, f"curl exit {r.returncode}: {r.stderr}"
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(r.stdout) for s in fam.samples}


def test_metrics_endpoint_serves_valid_text_matching_the_traffic(observed):
    lab, flows = observed
    api = lab.state.function("api")
    eni_label = ("eni", lab.state.enis_of(api.group)[0].eni_id)
    out_bytes = DATAGRAMS * (20 + 8 + PAYLOAD) + DATAGRAMS * (40 + 8 + PAYLOAD)

    def matched():
        m = scrape(lab)
        key = frozenset({eni_label})
        ok = (m.get(("hyperplane_eni_packets_out_to_destination_total", key)) == 2 * DATAGRAMS
              and m.get(("hyperplane_eni_bytes_in_from_destination_total", key)) == out_bytes)
        return m if ok else None

    m = wait_for(matched, "per-ENI packets and bytes in the metrics")
    key = frozenset({eni_label})
    assert m[("hyperplane_eni_packets_in_from_source_total", key)] == 2 * DATAGRAMS
    assert m[("hyperplane_eni_bytes_out_to_destination_total", key)] == out_bytes
    assert m[("hyperplane_eni_connection_attempt_count_total",
              frozenset({eni_label, ("protocol", "udp")}))] == 2
    assert sum(m[("hyperplane_enis", frozenset({("state", s)}))]      # Idle: no connection now
               for s in ("Active", "Idle")) == len(lab.state.enis)
    assert m[("hyperplane_nat_fwd_out_packets_total", frozenset())] == 2 * DATAGRAMS
    names = {name for name, _ in m}
    for family in ("hyperplane_ring_rx_kernel_drops_total", "hyperplane_pool_ports",
                   "hyperplane_pool_size", "hyperplane_error_port_allocation_total",
                   "hyperplane_packets_drop_count_total"):
        assert family in names, family
    assert m[("hyperplane_pool_ports", frozenset({eni_label, ("family", "ipv4"),
                                                  ("protocol", "udp"), ("use", "in_use")}))] >= 1


def test_stats_prometheus_prints_the_same_families(observed):
    lab, _ = observed
    r = subprocess.run(CLI + ["stats", "--prometheus", "--prefix", lab.prefix],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    cli_names = {f.name for f in text_string_to_metric_families(r.stdout)}
    http_names = {name for name, _ in scrape(lab)}
    assert "hyperplane_eni_active_connection_count" in cli_names
    assert {n for n in http_names if n.startswith("hyperplane_punts")} <= \
        {n + "_total" for n in cli_names} | cli_names
    table = subprocess.run(CLI + ["stats", "--prefix", lab.prefix], capture_output=True,
                           text=True, timeout=30)
    assert table.returncode == 0, table.stderr
    assert "punts to the slow path by reason" in table.stdout
