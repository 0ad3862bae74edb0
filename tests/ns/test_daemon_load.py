"""Issue 6, the daemon as a user runs it: while UDP flows at a fixed rate through a lab brought
up with `hyperplane up --detach`, two control clients that never read their answer, a
`hyperplane conntrack` listing of 100,000 connections and the creation of three ENIs (a group
running out of its ports, three times) together make no gap in forwarding longer than 50 ms
and lose no more than 0.1% of the packets.

The table is filled from inside a function's namespace (anti-spoofing wants the function's own
MAC and address) by the benchmark's raw-socket generator. The measurement is the one-way delay
of each datagram (send time in the payload, the kernel's receive timestamp): a stall of the
forwarding thread shows in the packets that waited through it, while a sender or receiver
process that the busy machine schedules late does not look like one (see test_forwarding_thread).
The report gives the daemon's own view of the load (lock waits and holds, kernel ring drops,
how its forwarding thread is scheduled) beside a canary that shows how late the machine is.
It runs in CI (about 20 s).

HP_TEST_CONNTRACK_1M=1 adds the 1,000,000-connection listing (issue 6: completes, and the daemon's
RSS grows by less than 50 MB while it runs); it takes minutes, so CI runs the 100k variant."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from conftest import _sweep, new_prefix
from test_forwarding_thread import CANARY, MAX_GAP_MS, MAX_LOSS, RECEIVER, SENDER
from test_v2n import CLI, cli

RATE = 2000                 # datagrams per second
SECONDS = 8.0
STREAM_PORT = 9500
SINK_PORT = 20000           # the fill's datagrams go to ports from here (nothing listens)
FILL_SPORT = 40000
FILL_DPORTS = 40_000        # at most this many destination ports a source port
NEW_ENIS = 3
POOL = 8                    # ports per ENI: the scale-out group needs a new ENI every 8 flows
MAX_RSS_GROWTH_MB = 50
PY = sys.executable

LAB = """
[inside]
cidr4 = "10.200.0.0/24"
[nat]
port_range = [{port_lo}, 65535]
capacity = {capacity}
[nat.quotas]                # one function fills the table, another scales a pool out
connections_share = 1.0
ports_share = 1.0
[nat.flow_logs]
interval_s = {flow_interval_s}
[nat.timeouts]
UDP_FIRST = 600
[[subnets]]
name = "app"
cidr4 = "10.0.1.0/24"
[[subnets]]
name = "data"
cidr4 = "10.0.2.0/24"
[[hosts]]
name = "web"
subnet = "app"
[[hosts]]
name = "db"
subnet = "data"
[[functions]]
name = "api"
subnets = ["app"]
security_groups = ["sg-web"]
[[functions]]
name = "worker"
subnets = ["app"]
security_groups = ["sg-web"]
[[functions]]
name = "report"
subnets = ["data"]
security_groups = ["sg-db"]
"""

# One datagram from each of N fresh sockets (N new flows, so N new NAT ports).
NEW_FLOWS = r"""
import socket, sys
dst, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
socks = []
for i in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b"flow %d" % i, (dst, port))
    socks.append(s)
"""


def stats(prefix):
    return json.loads(cli("stats", "--json", "--prefix", prefix).stdout)


def wait_until(what, predicate, timeout):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.2)


def fill(lab, prefix, n, rounds=3):
    """n more UDP connections from the function "worker", sent by hpbench: a few source ports
    (endpoint-independent mapping: a NAT port each) times many destination ports. The sender
    never blocks, so a busy machine loses some: the same flows are sent again (at most
    `rounds` times) until the daemon holds them all. Returns its connection count."""
    from hyperplane.benchmark.tools import hpbench_binary
    before = stats(prefix)["connections"]
    web = lab.state.host("web").ipv4
    nsports = max(4, -(-n // FILL_DPORTS))
    ndports = -(-n // nsports)
    rate = 30_000
    for _ in range(rounds):
        r = lab.exec("worker", [hpbench_binary(), "send", web, str(SINK_PORT), str(ndports),
                                str(FILL_SPORT), str(nsports), str(rate), str(n / rate * 4 + 10),
                                "0", "16", str(n)], timeout=n / rate * 4 + 60)
        assert r.returncode == 0, r.stderr
        count = settled_connections(prefix)
        if count >= before + n:
            return count
    raise AssertionError(f"the table holds {count - before} of the {n} connections sent")


def settled_connections(prefix, deadline_s=30):
    """The daemon's connection count once it stops growing (frames in flight arrived)."""
    last, still = stats(prefix)["connections"], 0
    deadline = time.monotonic() + deadline_s
    while still < 3 and time.monotonic() < deadline:
        time.sleep(0.3)
        now = stats(prefix)["connections"]
        still = still + 1 if now == last else 0
        last = now
    return last


def rss_kb(pid, kind="RssAnon"):
    """The process's resident memory of one kind (kB): RssAnon is what it allocated itself;
    the shared-memory state (RssShmem / RssFile) is the table, mapped at start, whose pages
    count once touched (a listing touches every one)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(kind + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {kind}")


class IdleClient:
    """A control client that asks for the connection listing (or command) and never reads
    the answer."""

    def __init__(self, prefix, command="conntrack"):
        from hyperplane import runtime
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect(str(runtime.paths(prefix).socket))
        self.sock.sendall(json.dumps({"command": command}).encode() + b"\n")

    def close(self):
        self.sock.close()


def listing_count(prefix, timeout=300):
    """`hyperplane conntrack --json` through a pipe: the number of connections it listed and
    how long it took."""
    t0 = time.monotonic()
    p = subprocess.run(CLI + ["conntrack", "--json", "--prefix", prefix], capture_output=True,
                       text=True, timeout=timeout)
    took = time.monotonic() - t0
    assert p.returncode == 0, p.stderr
    listing = json.loads(p.stdout)
    conns = listing["connections"] if isinstance(listing, dict) else listing
    return len(conns), took


@pytest.fixture
def daemon_lab(tmp_path):
    """up_lab(port_lo, capacity) -> (prefix, Lab): a lab run by `hyperplane up --detach`."""
    from hyperplane.lab import Lab
    made = []

    def up_lab(port_lo, capacity, flow_interval_s=60):
        prefix = new_prefix()
        made.append(prefix)
        cfg = tmp_path / f"{prefix}.toml"
        cfg.write_text(f'prefix = "{prefix}"\n' + LAB.format(
            port_lo=port_lo, capacity=capacity, flow_interval_s=flow_interval_s))
        cli("up", "--detach", "-c", str(cfg), timeout=120)
        return prefix, Lab.attach(prefix)
    try:
        yield up_lab
    finally:
        from hyperplane import runtime
        for prefix in made:
            # Shown when the test fails (pytest keeps a passing test's output to itself).
            print(f"\n{prefix}: restarts {runtime.restarts(prefix)}; data-plane log:\n  "
                  f"{runtime.log_tail(prefix, lines=40)}")
            cli("down", "--prefix", prefix, check=False)
            _sweep(prefix)


def test_forwarding_goes_on_through_control_load_listing_and_new_enis(daemon_lab):
    from hyperplane import runtime
    prefix, lab = daemon_lab(65536 - POOL, 262144)
    filled = fill(lab, prefix, 100_000)
    web, db = lab.state.host("web").ipv4, lab.state.host("db").ipv4
    enis_before = len(lab.state.enis)
    st0 = stats(prefix)         # the fill's own ring drops and lock waits are not the load's
    count = int(RATE * SECONDS)
    receiver = lab.popen("web", [PY, "-c", RECEIVER, str(STREAM_PORT), str(count), "3.0"],
                         stdout=subprocess.PIPE, text=True)
    sender = idle = None
    listed, grown = [], []
    try:
        assert receiver.stdout.readline().strip() == "ready"
        sender = lab.popen("api", [PY, "-c", SENDER, web, str(STREAM_PORT), str(RATE),
                                   str(count)])
        time.sleep(1.0)                                   # traffic first, then the load
        load_ns = time.time_ns()
        canary = subprocess.Popen([PY, "-c", CANARY, str(SECONDS - 2)], stdout=subprocess.PIPE,
                                  text=True)
        idle = [IdleClient(prefix) for _ in range(2)]

        def grow():     # 3 x POOL + 1 new flows in a group with POOL ports per ENI
            r = lab.exec("report", [PY, "-c", NEW_FLOWS, db, "7", str(NEW_ENIS * POOL + 1)])
            assert r.returncode == 0, r.stderr
            grown.append(time.time_ns())

        growing = threading.Thread(target=grow)
        growing.start()
        listed.append(listing_count(prefix))
        listed_ns = time.time_ns()
        growing.join(60)
        try:
            enis = wait_until("three new ENIs", lambda: (e := json.loads(cli(
                "eni", "--json", "--prefix", prefix).stdout)) and
                len(e) >= enis_before + NEW_ENIS and e, 30)
        except AssertionError as e:     # what the daemon saw of the growth, for the record
            st = stats(prefix)
            enis = [(x["index"], x["status"], x["ports_in_use"]) for x in st["enis"]]
            funcs = [(f["name"], f["ports"], f["refused_ports"], f["ports_exhausted"])
                     for f in st["functions"]]
            raise AssertionError(
                f"{e}; ENIs {enis}; manager {st['eni_manager']}; slow path {st['slowpath']}; "
                f"functions (ports, refused, exhausted) {funcs}; log: "
                f"{runtime.log_tail(prefix)}") from None
        sender.wait(timeout=SECONDS * 4)
        late = json.loads(canary.communicate(timeout=30)[0])
        got = {int(k): v for k, v in json.loads(receiver.communicate(timeout=30)[0]).items()}
        # The idle clients are still connected, and did not stall anyone.
        t0 = time.monotonic()
        st = stats(prefix)
        stats_s = time.monotonic() - t0
        pid = runtime.pid_of(prefix)
    finally:
        for c in idle or ():
            c.close()
        for p in (sender, receiver):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()

    n_listed, list_s = listed[0]
    dp0, dp1 = st0["dataplane"], st["dataplane"]
    ring_drops = {p["ifname"]: p["rx_kernel_drops"] - next(
        (q["rx_kernel_drops"] for q in st0["ports"] if q["index"] == p["index"]), 0)
        for p in st["ports"]}
    delays = sorted((rx - sent) / 1e6 for sent, rx in got.values())
    lost = count - len(got)
    worst = sorted(((rx - sent) / 1e6, (sent - load_ns) / 1e9) for sent, rx in got.values())[-5:]
    report = (f"{len(got)}/{count} received, lost {lost}, max one-way delay {delays[-1]:.1f} ms "
              f"(p99 {delays[int(len(delays) * 0.99)]:.1f}); conntrack listed {n_listed} of "
              f"{filled} in {list_s:.1f} s; ENIs {len(enis)} (was {enis_before}); stats took "
              f"{stats_s * 1000:.0f} ms; the loop waited for the table lock "
              f"{dp1.get('lock_waits', 0) - dp0.get('lock_waits', 0)} times during the load, at "
              f"most {dp1.get('lock_wait_max_ns', 0) / 1e6:.2f} ms since start (other threads' "
              f"longest hold {st['table_lock']['max_hold_us'] / 1e3:.2f} ms, "
              f"{st['table_lock']['over_budget'] - st0['table_lock']['over_budget']} over the "
              f"budget during the load); kernel ring drops during the load "
              f"{ {k: v for k, v in ring_drops.items() if v} }; forwarding thread "
              f"{st['forwarding']}; worst delays (ms, at s "
              f"after the load began, listing ended at {(listed_ns - load_ns) / 1e9:.1f} s, new "
              f"flows sent by {(grown[0] - load_ns) / 1e9 if grown else -1:.1f} s): "
              f"{', '.join(f'{d:.0f}@{t:.1f}' for d, t in worst)}; meanwhile a process sleeping "
              f"2 ms woke up to {late['late_ms']:.0f} ms late (at "
              f"{(late['at_ns'] - load_ns) / 1e9:.1f} s); slow path "
              f"{ {k: v for k, v in st['slowpath'].items() if 'exhaust' in k} }")
    print(report)
    assert n_listed >= filled >= 100_000, report
    assert len(enis) >= enis_before + NEW_ENIS, report
    assert runtime.pid_of(prefix) == pid and st["connections"] >= 100_000, report
    assert lost <= count * MAX_LOSS, report
    assert delays[-1] <= MAX_GAP_MS, report


@pytest.mark.skipif(not os.environ.get("HP_TEST_CONNTRACK_1M"),
                    reason="1,000,000 connections take minutes: set HP_TEST_CONNTRACK_1M=1")
def test_conntrack_of_a_million_connections_in_bounded_memory(daemon_lab):
    from hyperplane import runtime
    # 25 NAT ports; flow-log intervals of 2 s, so that the flow logs' own per-connection
    # state is built before the listing (it is not the listing's)
    prefix, lab = daemon_lab(536, 1_100_000, flow_interval_s=2)
    filled = fill(lab, prefix, 1_000_000)
    pid = runtime.pid_of(prefix)
    settled = [rss_kb(pid)]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:       # memory steady over 3 flow-log intervals
        time.sleep(6)
        settled.append(rss_kb(pid))
        if settled[-1] <= settled[-2] * 1.01:
            break
    before, total_before = rss_kb(pid), rss_kb(pid, "VmRSS")
    peak = [before]
    done = threading.Event()

    def watch():
        while not done.wait(0.05):
            peak[0] = max(peak[0], rss_kb(pid))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        n_listed, took = listing_count(prefix, timeout=900)
    finally:
        done.set()
        watcher.join()
    growth_mb = (peak[0] - before) / 1024
    report = (f"listed {n_listed} of {filled} in {took:.1f} s; daemon's own memory (RssAnon) "
              f"after the fill {' -> '.join(f'{k / 1024:.0f}' for k in settled)} MB (flow logs), "
              f"{before / 1024:.0f} MB before, peak {peak[0] / 1024:.0f} MB (+{growth_mb:.1f} MB); "
              f"VmRSS {total_before / 1024:.0f} MB before, {rss_kb(pid, 'VmRSS') / 1024:.0f} MB "
              f"after (the state's pages touched)")
    print(report)
    assert n_listed >= filled >= 1_000_000, report
    assert growth_mb < MAX_RSS_GROWTH_MB, report

