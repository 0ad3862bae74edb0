"""V2N end to end: real programs in function namespaces reach customer servers through the
running data plane (`hyperplane up`), and nothing from the customer side gets in."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import TEST_LAB, _sweep, new_prefix

TOOLS = [sys.executable, "-m", "hyperplane.labtools"]
CLI = [sys.executable, "-m", "hyperplane.cli"]
ECHO = 7
SHORT_TIMEOUTS = """
[nat.timeouts]
UDP_FIRST = 2
UDP_STREAM = 2
TIME_WAIT = 1
CLOSE = 1
LAST_ACK = 2
"""


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.05)


def cli(*args, check=True, timeout=60):
    p = subprocess.Popen(CLI + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env={**os.environ, "PYTHONFAULTHANDLER": "1"})
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGABRT)          # faulthandler: where it was stuck, every thread
        out, err = p.communicate()
        raise AssertionError(f"hyperplane {' '.join(args)} took over {timeout} s:\n"
                             f"{out}\n{err[-6000:]}") from None
    r = subprocess.CompletedProcess(p.args, p.returncode, out, err)
    if check and r.returncode != 0:
        raise AssertionError(f"hyperplane {' '.join(args)} failed ({r.returncode}):\n"
                             f"{r.stdout}\n{r.stderr}")
    return r


class Running:
    """A lab with its data plane, built by the CLI."""

    def __init__(self, prefix, tmp_path, timeouts=SHORT_TIMEOUTS):
        from hyperplane.lab import Lab
        cfg = tmp_path / "lab.toml"
        cfg.write_text(f'prefix = "{prefix}"\n' + timeouts + TEST_LAB)
        self.prefix = prefix
        cli("up", "--detach", "-c", str(cfg))
        self.lab = Lab.attach(prefix)
        self.state = self.lab.state
        self.servers = []

    def exec(self, name, argv, timeout=20.0):
        return self.lab.exec(name, argv, timeout=timeout)

    def serve(self, host, *argv):
        p = self.lab.popen(host, list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
        self.servers.append(p)
        return p

    def echo(self, fn, proto, host, port=ECHO, text="ping"):
        return self.exec(fn, TOOLS + ["echo", f"--{proto}", host, str(port), text,
                                      "--timeout", "2"])

    def stats(self):
        from hyperplane import control
        return control.request(self.prefix, "stats")

    def conntrack(self):
        return json.loads(cli("conntrack", "--json", "--prefix", self.prefix).stdout)

    def stop_servers(self):
        for p in self.servers:
            p.kill()
            p.wait()
        self.servers.clear()


@contextlib.contextmanager
def running_lab(tmp_path, timeouts=SHORT_TIMEOUTS):
    """A lab up through the CLI with an echo server on host web; down afterwards, always."""
    prefix = new_prefix()
    r = None
    try:
        r = Running(prefix, tmp_path, timeouts)
        echo = r.serve("web", *TOOLS, "serve", "--tcp", str(ECHO), "--udp", str(ECHO))
        assert echo.stdout.readline().strip() == "ready"
        from hyperplane.labtools import LineCollector
        r.echo_server = LineCollector(echo)
        yield r
    finally:
        if r:
            r.stop_servers()
        cli("down", "--prefix", prefix, check=False)
        _sweep(prefix)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    with running_lab(tmp_path_factory.mktemp("lab")) as r:
        yield r


def peers_seen(log, wait=0.5):
    """Lines "tcp|udp ADDR PORT" the echo server printed since the last call, split."""
    return [line.split() for line in log.take(wait)]


def eni_of(run, fn):
    f = run.state.function(fn)
    return run.state.enis_of(f.group)[0]


@pytest.mark.parametrize("proto", ["tcp", "udp"])
@pytest.mark.parametrize("family", [4, 6])
def test_echo_through_the_eni(run, proto, family):
    web = run.state.host("web")
    dst = web.ipv4 if family == 4 else web.ipv6
    peers_seen(run.echo_server, wait=0)           # forget earlier lines
    r = run.echo("api", proto, dst, text=f"hello {proto}{family}")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"hello {proto}{family}"
    eni = eni_of(run, "api")
    api = run.state.function("api")
    seen = [p for p in peers_seen(run.echo_server) if p[0] == proto]
    assert seen, "the server saw nobody"
    want = eni.ipv4 if family == 4 else eni.ipv6
    assert {p[1] for p in seen} == {want}, seen
    assert api.ipv4 not in {p[1] for p in seen} and api.ipv6 not in {p[1] for p in seen}


def test_functions_sharing_a_group_share_the_eni(run):
    peers_seen(run.echo_server, wait=0)
    assert run.echo("worker", "tcp", run.state.host("web").ipv4).returncode == 0
    seen = peers_seen(run.echo_server)
    assert {p[1] for p in seen} == {eni_of(run, "api").ipv4}
    assert eni_of(run, "worker").id == eni_of(run, "api").id


def test_ipv6_only_for_functions_that_allow_it(run):
    before = run.stats()["nat"]["drop.V6_NOT_ALLOWED"]
    r = run.echo("worker", "udp", run.state.host("web").ipv6)
    assert r.returncode != 0
    assert run.stats()["nat"]["drop.V6_NOT_ALLOWED"] > before


def test_http_get(run):
    web = run.state.host("web")
    run.serve("web", sys.executable, "-m", "http.server", "8080", "--bind", "::")
    code = ("import urllib.request as u, time\n"
            "for i in range(50):\n"
            "    try:\n"
            f"        r = u.urlopen('http://{web.ipv4}:8080/', timeout=3); break\n"
            "    except OSError: time.sleep(0.1)\n"
            "print(r.status, len(r.read()))\n")
    r = run.exec("api", [sys.executable, "-c", code])
    assert r.returncode == 0, r.stderr
    status, size = r.stdout.split()
    assert status == "200" and int(size) > 0


def _iperf_bytes(report: dict) -> tuple[int, int]:
    """(sent, received) bytes of an iperf3 -J report."""
    return int(report["end"]["sum_sent"]["bytes"]), int(report["end"]["sum_received"]["bytes"])


# iperf3 at most this fast, so that 1 GiB takes 4.3 s at least: a conntrack listing (a CLI
# process; over a second on a loaded machine) falls inside the transfer, and the receiver keeps
# up. Its socket buffers this big (-w), which bounds what its receiver total leaves out.
IPERF_RATE = "2G"
IPERF_WINDOW = 1 << 20


@pytest.mark.parametrize("reverse", [False, True], ids=["function-to-server", "server-to-function"])
def test_iperf3_one_gigabyte(run, reverse):
    from hyperplane import metrics
    web = run.state.host("web")
    port = 5201 + reverse
    server = run.serve("web", "iperf3", "-s", "-1", "-p", str(port), "--forceflush")
    ready = next((line for line in server.stdout if "listening" in line), None)
    assert ready, "iperf3 -s exited before listening"      # listening before the client connects
    args = ["iperf3", "-c", web.ipv4, "-p", str(port), "-n", "1G", "-J", "-b", IPERF_RATE,
            "-w", str(IPERF_WINDOW)] + (["-R"] if reverse else [])
    client = run.lab.popen("api", args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # While the transfer runs, conntrack shows it with both tuples, ESTABLISHED, and its ENI.
    eni = eni_of(run, "api")
    found, polls = None, 0
    deadline = time.monotonic() + 30
    while found is None and time.monotonic() < deadline and client.poll() is None:
        polls += 1
        for c in run.conntrack():
            if c["dport"] == port and c["state"] == "ESTABLISHED" and c["bytes_out"] + c["bytes_in"] > 1 << 20:
                found = c
    out, err = client.communicate(timeout=120)
    assert client.returncode == 0, err or out
    sent, received = _iperf_bytes(json.loads(out))
    stats = run.stats()
    end = json.loads(out)["end"]["sum_sent"]
    print(f"iperf3 {'-R ' * reverse}1 GiB: received {received} of {sent} in "
          f"{end['seconds']:.2f} s, {end.get('retransmits')} retransmits; conntrack polls "
          f"{polls}; drops {metrics.by_reason(stats, 'drop')}; ring drops "
          f"{[(p['role'], p['rx_kernel_drops'], p['tx_full']) for p in stats['ports']]}")
    # -n 1G sends exactly 1 GiB. iperf3's receiver total ignores what is still in flight when
    # the sender's end-of-test message arrives (esnet/iperf#382): at most what the sender's
    # send buffer and the receiver's receive buffer hold, 2 x WINDOW each (Linux doubles -w).
    assert sent >= 1 << 30 and received >= sent - 4 * IPERF_WINDOW, (sent, received)
    assert found is not None, f"conntrack never showed the transfer as ESTABLISHED ({polls} polls)"
    api = run.state.function("api")
    assert found["original"] == {"src": api.ipv4, "sport": found["sport"], "dst": web.ipv4,
                                 "dport": port}
    assert found["reply"]["src"] == web.ipv4 and found["reply"]["dst"] == eni.ipv4
    assert found["eni"] == eni.id


def _send_frames(run, host, frames_py: str):
    """Sends scapy frames (a Python expression building a list) from a host's eth0."""
    code = ("from scapy.all import *\nconf.verb = 0\n"
            f"sendp({frames_py}, iface='eth0')\n")
    r = run.exec(host, [sys.executable, "-c", code])
    assert r.returncode == 0, r.stderr


def test_unsolicited_inbound_is_dropped_and_counted(run):
    from conftest import Tap
    web = run.state.host("web")
    eni = eni_of(run, "api")
    api = run.state.function("api")
    before = run.stats()
    tap = Tap(api.ns, api.ifname)
    # TCP SYN and UDP to the ENI address, through the real stack of the customer host.
    assert run.echo("web", "tcp", eni.ipv4, port=22).returncode != 0
    assert run.echo("web", "udp", eni.ipv4, port=53).returncode != 0
    from hyperplane.lab import netns
    assert not netns.ping(web.ns, eni.ipv4, timeout=1.0)
    # Frames addressed to a function's own address, handed straight to the ENI's MAC.
    _send_frames(run, "web",
                 f"[Ether(dst='{eni.mac}')/IP(src='{web.ipv4}', dst='{api.ipv4}')/TCP(dport=80, flags='S'),"
                 f" Ether(dst='{eni.mac}')/IP(src='{web.ipv4}', dst='{api.ipv4}')/UDP(dport=53),"
                 f" Ether(dst='{eni.mac}')/IP(src='{web.ipv4}', dst='{api.ipv4}')/ICMP()]")
    leaked = [f for f in tap.frames(1.0) if f[12:14] == b"\x08\x00" and f[26:30] == bytes(map(int, web.ipv4.split(".")))]
    assert not leaked, "a frame from the customer side reached the function"
    after = run.stats()
    nat_b, nat_a = before["nat"], after["nat"]
    assert nat_a["drop.IN_UNSOLICITED_SYN"] > nat_b["drop.IN_UNSOLICITED_SYN"]
    assert nat_a["drop.IN_NO_MATCH_UDP"] > nat_b["drop.IN_NO_MATCH_UDP"]
    assert nat_a["drop.IN_NOT_ENI_ADDR"] >= nat_b["drop.IN_NOT_ENI_ADDR"] + 2
    sp_b, sp_a = before["slowpath"], after["slowpath"]
    assert sum(sp_a.values()) > sum(sp_b.values())   # the ICMP echoes were handled (dropped)
    assert not any(v > sp_b.get(k, 0) for k, v in sp_a.items() if "echo_repl" in k), \
        "the data plane answered an echo for the ENI"


def test_late_reply_after_timeout_is_dropped(run):
    """A UDP flow expires (UDP timeouts are 2 s in this lab); a late reply to its old
    mapping is dropped as unsolicited and never reaches the function."""
    web = run.state.host("web")
    r = run.echo("api", "udp", web.ipv4, text="soon to expire")
    assert r.returncode == 0
    conns = [c for c in run.conntrack() if c["protocol"] == "udp" and c["dport"] == ECHO]
    assert conns
    c = conns[-1]
    time.sleep(3.5)                       # > UDP_STREAM, and the data plane expires every 1 s
    assert not [x for x in run.conntrack() if x["id"] == c["id"] and x["sport"] == c["sport"]
                and x["dport"] == ECHO and x["protocol"] == "udp"]
    before = run.stats()["nat"]["drop.IN_NO_MATCH_UDP"]
    code = ("import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
            f"s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
            f"s.sendto(b'late', ('{c['nat_addr']}', {c['nat_port']}))")
    assert run.exec("web", [sys.executable, "-c", code]).returncode == 0
    time.sleep(0.5)
    assert run.stats()["nat"]["drop.IN_NO_MATCH_UDP"] > before


def test_closed_tcp_connection_times_out_then_late_segments_drop(run):
    """Waits for conditions, not for time: the control socket's listing (no CLI start-up, so
    the closed connection is seen within its 1 s TIME_WAIT even on a busy machine)."""
    from hyperplane import control

    def echo_conns():
        return {(c["sport"], c["nat_port"]): c for c in control.request(
            run.prefix, "conntrack")["items"] if c["protocol"] == "tcp" and c["dport"] == ECHO}

    web = run.state.host("web")
    before = set(echo_conns())
    assert run.echo("api", "tcp", web.ipv4, text="short-lived").returncode == 0
    new = {k: c for k, c in echo_conns().items() if k not in before}
    assert len(new) == 1, new
    (key, c), = new.items()
    assert c["state"] in ("TIME_WAIT", "CLOSE", "LAST_ACK", "FIN_WAIT", "CLOSE_WAIT"), c
    wait_for(lambda: key not in echo_conns(), 15, "the closed connection expired")
    before = run.stats()["nat"]["drop.IN_NO_MATCH_TCP"]
    eni = eni_of(run, "api")
    _send_frames(run, "web", f"[Ether(dst='{eni.mac}')/IP(src='{web.ipv4}', dst='{c['nat_addr']}')"
                             f"/TCP(sport={ECHO}, dport={c['nat_port']}, flags='A')]")
    wait_for(lambda: run.stats()["nat"]["drop.IN_NO_MATCH_TCP"] > before, 10,
             "the late segment dropped as IN_NO_MATCH_TCP")


def test_status_json_describes_the_lab(run):
    st = json.loads(cli("status", "--json", "--prefix", run.prefix).stdout)
    assert st["dataplane"]["running"] and st["dataplane"]["pid"] > 0
    roles = {n["role"] for n in st["namespaces"]}
    assert {"dataplane", "function", "host", "vpc", "lambda"} <= roles
    eni = st["enis"][0]
    for key in ("id", "subnet", "ipv4", "mac", "ports_in_use"):
        assert key in eni


def test_down_leaves_nothing(tmp_path):
    from hyperplane.lab import netns
    from hyperplane.lab.cleanup import find
    prefix = new_prefix()
    try:
        Running(prefix, tmp_path)
        pid = json.loads(cli("status", "--json", "--prefix", prefix).stdout)["dataplane"]["pid"]
        cli("down", "--prefix", prefix)
        assert not find(prefix)
        assert not [n for n in netns.list_namespaces() if n.startswith(prefix + "-")]
        from hyperplane.lab.topology import RUN_DIR
        assert not list(RUN_DIR.glob(prefix + "[.-]*")), "files of the lab left in the run dir"

        import os
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        assert "nothing left" in cli("down", "--prefix", prefix).stdout   # idempotent
    finally:
        _sweep(prefix)


def test_down_after_sigkill(tmp_path):
    import os
    import signal
    from hyperplane.lab.cleanup import find
    prefix = new_prefix()
    try:
        Running(prefix, tmp_path)
        pid = json.loads(cli("status", "--json", "--prefix", prefix).stdout)["dataplane"]["pid"]
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
        cli("down", "--prefix", prefix)
        assert not find(prefix)
    finally:
        _sweep(prefix)


def test_up_refuses_a_lab_that_is_already_up(run):
    r = cli("up", "--detach", "--prefix", run.prefix, check=False)
    assert r.returncode != 0 and "already up" in r.stderr


@pytest.mark.parametrize("family", [4, 6])
def test_icmp_port_unreachable_reaches_the_function(run, family):
    """The customer host's kernel answers a UDP datagram to a closed port with an ICMP error
    addressed to the ENI; the data plane translates it back, so the function's connected
    socket sees ECONNREFUSED."""
    web = run.state.host("web")
    dst = web.ipv4 if family == 4 else web.ipv6
    code = ("import socket, sys\n"
            f"s = socket.socket(socket.AF_INET{'6' if family == 6 else ''}, socket.SOCK_DGRAM)\n"
            "s.settimeout(3)\n"
            f"s.connect(('{dst}', 9)); s.send(b'anyone?')\n"
            "try:\n    s.recv(64); print('data')\n"
            "except ConnectionRefusedError: print('refused')\n"
            "except socket.timeout: print('timeout')\n")
    before = run.stats()["slowpath"].get("icmp_error_translated_in", 0)
    r = run.exec("api", [sys.executable, "-c", code])
    assert r.stdout.strip() == "refused", (r.stdout, r.stderr)
    assert run.stats()["slowpath"]["icmp_error_translated_in"] > before


@pytest.mark.parametrize("family", [4, 6])
def test_fragmented_datagrams_cross_both_ways(run, family):
    """3000-byte UDP datagrams leave the function in fragments and come back in fragments; the
    slow path reassembles, translates and fragments them again."""
    web = run.state.host("web")
    dst = web.ipv4 if family == 4 else web.ipv6
    text = "F" * 3000
    r = run.echo("api", "udp", dst, text=text)
    assert r.returncode == 0 and r.stdout.strip() == text, r.stderr
    assert run.stats()["slowpath"]["frag_reassembled"] >= 2


def test_the_gateway_answers_ping_and_the_eni_does_not(run):
    from hyperplane.lab import netns
    api, web = run.state.function("api"), run.state.host("web")
    ins = run.state.inside
    assert netns.ping(api.ns, ins.gateway4, timeout=2.0)
    assert netns.ping(api.ns, ins.gateway6, timeout=2.0)
    eni = eni_of(run, "api")
    assert not netns.ping(web.ns, eni.ipv6, timeout=1.0)
