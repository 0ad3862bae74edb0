"""Issue 17, `hyperplane conntrack` as conntrack-tools users drive it, against a live lab:
filters, -C, -D and -F checked against the table; a deleted TCP connection's next segment
(docs/semantics.md 2.5); `-E` following a curl through the NAT."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from test_observe import running_lab
from test_v2n import CLI, ECHO, cli

HTTP = 8080
# Opens UDP flows (a datagram each, echoed) and keeps their sockets until stdin closes:
# argv: dst, port, n, first source port.
UDP_FLOWS = r"""
import socket, sys
dst, port, n, first = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
socks = []
for i in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("", first + i))
    s.settimeout(1)
    for attempt in range(5):     # UDP: a datagram lost on a busy machine is sent again
        s.sendto(b"flow", (dst, port))
        try:
            s.recv(100)
            break
        except socket.timeout:
            continue
    else:
        sys.exit(f"no echo from {dst}:{port} for source port {first + i}")
    socks.append(s)
print("ready", flush=True)
sys.stdin.read()
"""
# One TCP connection to the echo server: one echo, prints "up" and its port; on "go", sends
# again and prints what happened: "reset" (ECONNRESET) or "echoed".
TCP_TALKER = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
s.sendall(b"one"); s.recv(100)
print("up", s.getsockname()[1], flush=True)
sys.stdin.readline()
try:
    for _ in range(20):          # the RST answers the first segment; the socket fails on it
        s.sendall(b"two")
        if not s.recv(100):
            print("closed", flush=True); break
    else:
        print("echoed", flush=True)
except ConnectionResetError:
    print("reset", flush=True)
except socket.timeout:
    print("timeout", flush=True)
"""


@pytest.fixture(scope="module")
def ct_lab():
    """The test lab, short TIME_WAIT / CLOSE timeouts, echo servers and an HTTP server on
    web; UDP flows from api (to web and db) and from worker (to web), held open."""
    with running_lab("[hyperplane.timeouts]\nTIME_WAIT = 1\nCLOSE = 1\n",
                     ["--tcp", str(ECHO), "--udp", str(ECHO)]) as lab:
        web, db = lab.state.host("web").ipv4, lab.state.host("db").ipv4
        http = lab.popen("web", [sys.executable, "-m", "http.server", str(HTTP), "--bind", web],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        holders = []
        try:
            db_server = lab.popen("db", [sys.executable, "-m", "hyperplane.labtools", "serve",
                                         "--udp", str(ECHO)], stdout=subprocess.PIPE, text=True)
            holders.append(db_server)
            assert db_server.stdout.readline().strip() == "ready"
            for fn, dst, n, first in (("api", web, 12, 21000), ("api", db, 5, 22000),
                                      ("worker", web, 7, 23000)):
                p = lab.popen(fn, [sys.executable, "-c", UDP_FLOWS, dst, str(ECHO), str(n),
                                   str(first)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
                holders.append(p)
                assert p.stdout.readline().strip() == "ready"
            yield lab
        finally:
            for p in [http] + holders:
                p.kill()
                p.wait()


def listing(lab, *filters) -> list[dict]:
    return json.loads(cli("conntrack", "--prefix", lab.prefix, "-j", *filters).stdout)


def count(lab, *filters) -> int:
    return int(cli("conntrack", "--prefix", lab.prefix, "-C", *filters).stdout)


def ids(conns) -> set[int]:
    return {c["id"] for c in conns}


def test_filters_and_count_select_what_the_table_holds(ct_lab):
    lab = ct_lab
    web, db = lab.state.host("web").ipv4, lab.state.host("db").ipv4
    api = lab.state.function("api").ipv4
    eni_app = lab.state.enis[0].ipv4
    table = [c for c in listing(lab) if c["protocol"] == "udp" and c["dport"] == ECHO]
    assert len(table) >= 24, table
    cases = {
        ("-p", "udp", "-d", web): lambda c: c["dst"] == web,
        ("-d", db): lambda c: c["dst"] == db,
        ("-s", api, "--dport", str(ECHO)): lambda c: c["src"] == api,
        ("--function", "worker"): lambda c: c["function"] == "worker",
        ("--sport", "21000-21005"): lambda c: 21000 <= c["sport"] <= 21005,
        ("-r", db): lambda c: c["dst"] == db,
        ("-q", eni_app, "-p", "udp"): lambda c: c["nat_addr"] == eni_app,
        ("--state", "UDP_FIRST,UDP_STREAM"): lambda c: True,
        ("--unassured", "-p", "udp"): lambda c: not c["assured"],
        ("--eni", "1"): lambda c: c["eni"] == 1,
    }
    for filters, want in cases.items():
        got = [c for c in listing(lab, *filters) if c["protocol"] == "udp" and
               c["dport"] == ECHO]
        assert ids(got) == {c["id"] for c in table if want(c)}, filters
    assert count(lab, "-p", "udp", "-d", web) == 19
    assert count(lab, "-d", db, "--function", "api") == 5
    assert count(lab, "--function", "report") == 0
    # Every listing says how long each connection has left, and when it began.
    c = table[0]
    assert 0 < c["timeout_s"] <= 30 and c["start"].endswith("Z")
    assert abs(c["last_seen_epoch"] - time.time()) < 120
    # A bad filter is a usage error, named.
    r = cli("conntrack", "--prefix", lab.prefix, "-p", "udp", "--dport", "99999", check=False)
    assert r.returncode == 2 and "dport" in r.stderr
    r = cli("conntrack", "--prefix", lab.prefix, "--function", "nobody", check=False)
    assert r.returncode == 1 and "no function 'nobody'" in r.stderr


def test_delete_and_flush_remove_what_they_select(ct_lab):
    lab = ct_lab
    web, db = lab.state.host("web").ipv4, lab.state.host("db").ipv4
    r = cli("conntrack", "--prefix", lab.prefix, "-D", check=False)
    assert r.returncode == 2 and "-F" in r.stderr            # -D wants a filter
    before = {c["id"]: c for c in listing(lab)}
    doomed = {i for i, c in before.items() if c["function"] == "worker" and c["dst"] == web}
    r = cli("conntrack", "--prefix", lab.prefix, "-D", "--function", "worker", "-d", web, "-j")
    assert ids(json.loads(r.stdout)) == doomed and len(doomed) == 7
    assert r.stderr.strip() == "7 connections deleted"
    after = ids(listing(lab))
    assert not after & doomed and (set(before) - doomed) <= after
    assert json.loads(cli("stats", "-j", "--prefix", lab.prefix).stdout)["conntrack"][
        "deleted"] >= 7
    # A flush with a filter, then without: the table is empty.
    r = cli("conntrack", "--prefix", lab.prefix, "-F", "-d", db, "--json-lines")
    flushed = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(flushed) == 5 and all(c["dst"] == db for c in flushed)
    assert count(lab, "-d", db) == 0
    cli("conntrack", "--prefix", lab.prefix, "-F")
    assert count(lab) == 0


def test_a_deleted_tcp_connection_is_reset_on_its_next_segment(ct_lab):
    """docs/semantics.md 2.5: the function's next segment matches nothing and is not a SYN:
    dropped as TCP_NOT_SYN and answered with a RST, so its socket fails with ECONNRESET."""
    lab = ct_lab
    web = lab.state.host("web").ipv4
    talker = lab.popen("api", [sys.executable, "-c", TCP_TALKER, web, str(ECHO)],
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        word, port = talker.stdout.readline().split()
        assert word == "up"
        sel = ("-p", "tcp", "--sport", port, "--dport", str(ECHO))
        (conn,) = listing(lab, *sel)
        assert conn["state"] == "ESTABLISHED" and conn["assured"]
        stats0 = json.loads(cli("stats", "-j", "--prefix", lab.prefix).stdout)["nat"]
        (gone,) = json.loads(cli("conntrack", "--prefix", lab.prefix, "-D", *sel, "-j").stdout)
        assert gone["id"] == conn["id"]
        talker.stdin.write("go\n")
        talker.stdin.flush()
        assert talker.stdout.readline().strip() == "reset"
    finally:
        talker.kill()
        talker.wait()
    stats1 = json.loads(cli("stats", "-j", "--prefix", lab.prefix).stdout)["nat"]
    assert stats1["drop.TCP_NOT_SYN"] > stats0["drop.TCP_NOT_SYN"]
    assert stats1["rst_sent"] > stats0["rst_sent"]
    assert listing(lab, *sel) == []          # the RST opened nothing


def wait_for(what, predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.1)
    return value


def test_events_follow_a_curl_through_the_nat(ct_lab):
    lab = ct_lab
    web = lab.state.host("web").ipv4
    api = lab.state.function("api").ipv4
    readers = lambda: json.loads(cli("stats", "-j", "--prefix", lab.prefix).stdout)[
        "conntrack"]["event_readers"]
    base = readers()
    watch = subprocess.Popen(CLI + ["conntrack", "--prefix", lab.prefix, "-E", "-j", "-p",
                                    "tcp", "--dport", str(HTTP)],
                             stdout=subprocess.PIPE, text=True)
    text = subprocess.Popen(CLI + ["conntrack", "--prefix", lab.prefix, "-E", "-p", "tcp",
                                   "--dport", str(HTTP), "--max-events", "2"],
                            stdout=subprocess.PIPE, text=True)
    try:
        wait_for("both readers subscribed", lambda: readers() >= base + 2)
        r = lab.exec("api", ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                             f"http://{web}:{HTTP}/"], timeout=30)
        assert r.stdout == "200", r
        events = []
        deadline = time.monotonic() + 20
        while not events or events[-1]["event"] != "DESTROY":
            assert time.monotonic() < deadline, events
            events.append(json.loads(watch.stdout.readline()))
        lines = text.communicate(timeout=10)[0].splitlines()
    finally:
        for p in (watch, text):
            p.kill()
            p.wait()
    kinds = [(e["event"], e["state"]) for e in events]
    assert kinds[0] == ("NEW", "SYN_SENT"), kinds
    states = [s for k, s in kinds if k == "UPDATE"]
    assert states[:2] == ["SYN_RECV", "ESTABLISHED"], kinds
    assert "TIME_WAIT" in states and kinds[-1][0] == "DESTROY", kinds
    assert events[-1]["reason"] == "EXPIRED"
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    assert len({e["id"] for e in events}) == 1
    for e in events:        # both tuples, the ENI, the function, wall-clock time
        assert (e["original"]["src"], e["original"]["dst"], e["original"]["dport"]) == \
            (api, web, HTTP)
        assert e["reply"] == {"src": web, "sport": HTTP, "dst": lab.state.enis[0].ipv4,
                              "dport": e["nat_port"]}
        assert e["function"] == "api" and e["eni"] == 0 and e["time"].endswith("Z")
    assert lines[0].startswith("[NEW] tcp SYN_SENT") and \
        lines[1].startswith("[UPDATE] tcp SYN_SENT -> SYN_RECV"), lines


def test_lab_events_sees_what_follows_its_creation(ct_lab):
    """hyperplane.Lab.events (ctcontrol.EventStream): subscribed once it returns, so the NEW
    of a datagram sent right after it is never missed; filtered as Lab.connections."""
    import hyperplane
    lab = hyperplane.Lab.attach(ct_lab.prefix)
    web = lab.address("web")
    for attempt in range(3):
        sport = 24000 + attempt
        with lab.events(proto="udp", sport=sport, function="api", timeout=10) as events:
            r = lab.exec("api", [sys.executable, "-c", UDP_FLOWS, web, str(ECHO), "1",
                                 str(sport)], input="", timeout=30)
            assert r.returncode == 0, r.stderr
            first = next(iter(events))
        assert (first["event"], first["sport"], first["function"]) == ("NEW", sport, "api")
        assert first["reply"]["dst"] == lab.connections(sport=sport)[0].nat_addr
    with pytest.raises(TypeError, match="colour"):
        lab.events(colour="red")
