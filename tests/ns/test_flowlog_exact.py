"""Flow-log records carry what the core saw on the forwarding path (docs/observability.md):
`start` and `end` are the first and last packet of the interval in that direction, not the
interval's bounds, `tcp-flags` is the OR of the flags sent (AWS's encoding), a conntrack
listing resets nothing, and an expired connection gives its last interval."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time

import pytest

from test_observe import flow_records as records, running_lab, wait_for
from test_v2n import CLI, ECHO

INTERVAL_S = 5
FIELDS = ["interface-id", "srcaddr", "dstaddr", "srcport", "dstport", "protocol", "packets",
          "bytes", "start", "end", "action", "pkt-srcaddr", "tcp-flags", "flow-direction"]
# One UDP flow: a datagram, then on "go" (from stdin) two more, 1.2 s and 2.4 s later, each
# echoed; prints its port, then the wall-clock time of each later send.
UDP_CLIENT = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
s.connect((sys.argv[1], int(sys.argv[2])))
s.send(b"first"); s.recv(100)
print(s.getsockname()[1], flush=True)
sys.stdin.readline()
for delay in (1.2, 1.2):
    time.sleep(delay)              # the traffic's own timing, not a wait for a condition
    print(time.time(), flush=True)
    s.send(b"later"); s.recv(100)
"""
# One TCP connection: 10 bytes echoed; prints its port; on "go" 5 bytes more, echoed, then a
# RST (SO_LINGER 0); prints the wall-clock time of the RST.
TCP_RST_CLIENT = """
import socket, struct, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
def echo(n):
    s.sendall(b"x" * n)
    got = b""
    while len(got) < n:
        got += s.recv(100)
echo(10)
print(s.getsockname()[1], flush=True)
sys.stdin.readline()
echo(5)
s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
print(time.time(), flush=True)
s.close()
"""
# One TCP connection: handshake, 10 bytes each way, the function closes first, then the
# server; prints its port.
TCP_CLIENT = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
s.sendall(b"x" * 10)
got = b""
while len(got) < 10:
    got += s.recv(100)
s.shutdown(socket.SHUT_WR)
while s.recv(100):
    pass
print(s.getsockname()[1])
s.close()
"""


@pytest.fixture(scope="module")
def lab_5s():
    fields = " ".join(f"${{{f}}}" for f in FIELDS)
    # A reset connection (CLOSE) expires 1 s after its RST, well within an interval.
    with running_lab(f'[hyperplane.timeouts]\nCLOSE = 1\n'
                     f'[hyperplane.flow_logs]\ninterval_s = {INTERVAL_S}\nformat = "{fields}"\n',
                     ["--tcp", str(ECHO), "--udp", str(ECHO)]) as lab:
        yield lab


def drops(lab) -> dict:
    """What the NAT and the loop counted, for a failure's message."""
    r = subprocess.run(CLI + ["stats", "--json", "--prefix", lab.prefix], capture_output=True,
                       text=True, timeout=30)
    d = json.loads(r.stdout) if r.returncode == 0 else {}
    return {k: v for stage in ("nat", "dataplane") for k, v in d.get(stage, {}).items() if v}


def test_start_and_end_are_the_first_and_last_packet_of_the_interval(lab_5s):
    lab = lab_5s
    web = lab.state.host("web").ipv4
    client = lab.popen("api", [sys.executable, "-c", UDP_CLIENT, web, str(ECHO)],
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        port = client.stdout.readline().strip()
        assert port, "the UDP client did not start"
        mine = lambda r: (r["flow-direction"] == "egress" and r["protocol"] == "17"
                          and r["dstaddr"] == web)
        # The first datagram's interval has ended once its record is written: the next
        # interval started at or before now.
        first = wait_for(lambda: [r for r in records(lab) if mine(r)], "the first record",
                         timeout=3 * INTERVAL_S)
        seen_at = time.time()
        assert len(first) == 1 and first[0]["packets"] == "1"
        client.stdin.write("go\n")
        client.stdin.flush()
        times = [client.stdout.readline().strip() for _ in range(2)]
        assert client.wait(timeout=10) == 0 and all(times), (times, drops(lab))
        t1, t2 = map(float, times)
    finally:
        client.kill()
        client.wait()
    # A conntrack listing shows the interval so far and resets nothing: the record below
    # still has both datagrams. (Unless the interval already ended: then it shows none.)
    r = subprocess.run(CLI + ["conntrack", "--json", "--prefix", lab.prefix],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    (conn,) = [c for c in json.loads(r.stdout) if c["proto"] == 17 and c["dst"] == web
               and c["sport"] == int(port)]
    if conn["flow_out"] is not None:
        f = conn["flow_out"]
        assert f["packets"] == 2 and abs((f["last_ms"] - f["first_ms"]) / 1000 - (t2 - t1)) < 0.3, f
    later = wait_for(lambda: [r for r in records(lab) if mine(r)][1:], "the later records",
                     timeout=3 * INTERVAL_S)
    # Both later datagrams, 1.2 s apart, fall in the interval after the first (5 s long):
    # one record, its start at the first of them, its end at the second.
    assert [(r["packets"], r["bytes"]) for r in later] == [("2", str(2 * (20 + 8 + 5)))]
    start, end = int(later[0]["start"]), int(later[0]["end"])
    assert math.floor(t1) <= start <= t1 + 0.5 and math.floor(t2) <= end <= t2 + 0.5, \
        (start, end, t1, t2)
    # The interval began before the first record was seen; the first packet came >= 1.2 s
    # later: start is not the interval's start (what an estimate from listings gave).
    assert start > math.floor(seen_at) and end > start


def test_tcp_flags_are_the_or_of_the_flags_sent(lab_5s):
    lab = lab_5s
    web = lab.state.host("web").ipv4
    r = lab.exec("api", [sys.executable, "-c", TCP_CLIENT, web, str(ECHO)], timeout=30)
    assert r.returncode == 0, r.stderr
    port = r.stdout.strip()
    api = lab.state.function("api").ipv4

    def flags():
        recs = [r for r in records(lab) if r["protocol"] == "6"]
        out = [x for x in recs if x["flow-direction"] == "egress" and x["pkt-srcaddr"] == api
               and x["dstaddr"] == web and x["dstport"] == str(ECHO)]
        back = [x for x in recs if x["flow-direction"] == "ingress" and x["srcaddr"] == web
                and x["srcport"] == str(ECHO)]
        # Every segment of the exchange is logged: 10 bytes of data each way at least.
        if sum(int(x["bytes"]) for x in out) < 3 * 40 + 10 or not back:
            return None
        or_ = lambda rs: [int(x["tcp-flags"]) for x in rs]
        return or_(out), or_(back), out, back

    got = wait_for(flags, f"the TCP records of port {port}", timeout=3 * INTERVAL_S)
    out_flags, back_flags, out, back = got
    acc = lambda fs: __import__("functools").reduce(lambda a, b: a | b, fs, 0)
    # SYN, ACK, PSH|ACK, FIN|ACK, ACK out: SYN and FIN (ACK and PSH are not reported).
    assert acc(out_flags) == 2 | 1, out
    # SYN|ACK, ACK, PSH|ACK, FIN|ACK back: SYN-ACK and FIN.
    assert acc(back_flags) == 18 | 1, back
    for x in out + back:
        assert int(x["start"]) <= int(x["end"])


def conntrack(lab) -> list[dict]:
    r = subprocess.run(CLI + ["conntrack", "--json", "--prefix", lab.prefix],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_an_expired_connection_gives_its_last_interval(lab_5s):
    """A connection reset right after an interval began expires (CLOSE: 1 s) long before the
    interval ends: its last record comes from its expiry record, not from a harvest (it is
    gone from the table by then), with its last packets and the RST's flag."""
    lab = lab_5s
    web = lab.state.host("web").ipv4
    client = lab.popen("api", [sys.executable, "-c", TCP_RST_CLIENT, web, str(ECHO)],
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        port = int(client.stdout.readline().strip() or 0)
        assert port, "the TCP client did not start"
        (conn,) = [c for c in conntrack(lab) if c["proto"] == 6 and c["sport"] == port]
        nat_port = str(conn["nat_port"])
        mine = lambda: [r for r in records(lab) if r["protocol"] == "6"
                        and nat_port in (r["srcport"], r["dstport"])]
        # Its first interval's records: the next interval began at or before now.
        first = wait_for(mine, "the first records", timeout=3 * INTERVAL_S)
        client.stdin.write("go\n")
        client.stdin.flush()
        rst_at = float(client.stdout.readline())
        assert client.wait(timeout=10) == 0
    finally:
        client.kill()
        client.wait()
    # Expired (gone from the table) while the interval still runs: no new record yet.
    wait_for(lambda: not [c for c in conntrack(lab) if c["proto"] == 6 and c["sport"] == port],
             "the reset connection to expire", timeout=INTERVAL_S)
    assert mine() == first, "a record came before the interval ended"
    last = wait_for(lambda: mine()[len(first):], "the last records", timeout=3 * INTERVAL_S)
    egress = [r for r in last if r["flow-direction"] == "egress"]
    ingress = [r for r in last if r["flow-direction"] == "ingress"]
    # Out: 5 bytes, the ACK of their echo, the RST; back: the echo (and ACKs).
    assert len(egress) == 1 and int(egress[0]["tcp-flags"]) == 4, last
    assert int(egress[0]["packets"]) >= 2 and int(egress[0]["bytes"]) >= 40 + 5 + 40, last
    assert math.floor(rst_at) - 1 <= int(egress[0]["end"]) <= rst_at + 0.5, (last, rst_at)
    assert len(ingress) == 1 and int(ingress[0]["bytes"]) >= 40 + 5, last
