"""Issue 6.4: a data plane killed with SIGKILL leaves its connections to the next one, which the
supervisor starts. An established TCP connection with data flowing and a UDP flow carry on
through the restart with the same external ports, and `conntrack` shows them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from conftest import TEST_LAB, _sweep, new_prefix
from test_v2n import ECHO, TOOLS, cli

# One TCP connection and one UDP socket, used round after round (every 50 ms) until stdin
# closes; each round sends a numbered line both ways and reports whether it came back. TCP
# must never fail (its retransmissions bridge the outage); a UDP datagram may be lost while
# the data plane is down.
CLIENT = r"""
import socket, sys, threading, time
host, port = sys.argv[1], int(sys.argv[2])
t = socket.create_connection((host, port), timeout=20)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind(("0.0.0.0", 0))
u.settimeout(0.3)
print("ports", t.getsockname()[1], u.getsockname()[1], flush=True)
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
n = 0
while not stop.is_set():
    n += 1
    msg = b"%d\n" % n
    try:
        t.sendall(msg)
        got = b""
        while not got.endswith(b"\n"):
            chunk = t.recv(100)
            if not chunk:
                break
            got += chunk
        tcp_ok = got == msg
    except OSError:
        tcp_ok = False
    try:
        u.sendto(msg, (host, port))
        udp_ok = u.recvfrom(100)[0] == msg
    except OSError:
        udp_ok = False
    print("round", n, int(tcp_ok), int(udp_ok), flush=True)
    if not tcp_ok:
        break
    time.sleep(0.05)
"""


def read_line(proc, deadline):
    """The next line of proc's output, before the deadline."""
    import select
    while True:
        left = deadline - time.monotonic()
        assert left > 0, "no output in time"
        if select.select([proc.stdout], [], [], left)[0]:
            line = proc.stdout.readline()
            assert line, f"the client ended: {proc.stderr.read()}"
            return line.split()


def rounds_until(proc, want_ok: int, timeout: float):
    """Reads rounds until want_ok rounds in a row got both answers; returns every round."""
    seen, in_row = [], 0
    deadline = time.monotonic() + timeout
    while in_row < want_ok:
        kind, n, tcp_ok, udp_ok = read_line(proc, deadline)
        assert kind == "round"
        seen.append((int(n), tcp_ok == "1", udp_ok == "1"))
        assert seen[-1][1], f"the TCP connection broke at round {n}"
        in_row = in_row + 1 if seen[-1][2] else 0
    return seen


def flows(prefix, fn_addr, tcp_port, udp_port):
    """The two connections as `conntrack` lists them: {proto: connection}."""
    listing = json.loads(cli("conntrack", "--json", "--prefix", prefix).stdout)
    conns = listing["connections"] if isinstance(listing, dict) else listing
    found = {}
    for c in conns:
        if c["src"] == fn_addr and (c["proto"], c["sport"]) in ((6, tcp_port), (17, udp_port)):
            found[c["proto"]] = c
    return found


def test_tcp_and_udp_survive_a_sigkill_of_the_data_plane(tmp_path):
    from hyperplane import runtime
    from hyperplane.lab import Lab
    prefix = new_prefix()
    cfg = tmp_path / "lab.toml"
    cfg.write_text(f'prefix = "{prefix}"\n' + TEST_LAB)
    procs = []
    try:
        cli("up", "--detach", "-c", str(cfg))
        lab = Lab.attach(prefix)
        web = lab.state.host("web").ipv4
        server = lab.popen("web", TOOLS + ["serve", "--tcp", str(ECHO), "--udp", str(ECHO)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        procs.append(server)
        assert server.stdout.readline().strip() == "ready"
        client = lab.popen("api", [sys.executable, "-c", CLIENT, web, str(ECHO)],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
        procs.append(client)
        kind, tcp_port, udp_port = read_line(client, time.monotonic() + 20)
        assert kind == "ports"
        rounds_until(client, 5, timeout=20)
        fn_addr = lab.state.function("api").ipv4
        before = flows(prefix, fn_addr, int(tcp_port), int(udp_port))
        assert set(before) == {6, 17} and before[6]["state"] == "ESTABLISHED"

        old_pid = runtime.pid_of(prefix)
        os.kill(old_pid, signal.SIGKILL)
        runtime.wait_ready(prefix, old_pid=old_pid, timeout=30)     # the supervisor's doing
        st = json.loads(cli("status", "--json", "--prefix", prefix).stdout)["dataplane"]
        assert st["pid"] != old_pid and st["restarts"]["count"] == 1

        rounds = rounds_until(client, 10, timeout=60)
        assert all(tcp_ok for _, tcp_ok, _ in rounds)
        after = flows(prefix, fn_addr, int(tcp_port), int(udp_port))
        for proto in (6, 17):
            assert (after[proto]["eni"], after[proto]["nat_addr"], after[proto]["nat_port"]) == \
                (before[proto]["eni"], before[proto]["nat_addr"], before[proto]["nat_port"])
            assert after[proto]["packets_out"] > before[proto]["packets_out"]
        assert after[6]["state"] == "ESTABLISHED"
        stats = json.loads(cli("stats", "--json", "--prefix", prefix).stdout)
        assert stats["nat"]["drop.TCP_NOT_SYN"] == 0
    finally:
        for p in procs:
            p.kill()
            p.wait()
        cli("down", "--prefix", prefix, check=False)
        _sweep(prefix)
        assert not runtime.paths(prefix).state.exists()


def replace_state_and_restart(prefix, damage):
    """Kills the data plane while its supervisor is stopped, damages the state file
    (``damage(path)``), lets the supervisor go on; returns the supervisor once it ended."""
    from hyperplane import runtime
    state = runtime.paths(prefix).state
    sup = runtime.Proc.find(prefix, runtime.SUPERVISOR)
    sup.signal(signal.SIGSTOP)                  # no restart while the file is replaced
    os.kill(runtime.pid_of(prefix), signal.SIGKILL)
    damage(state)
    sup.signal(signal.SIGCONT)
    assert sup.wait(30), "the supervisor kept restarting a data plane that cannot start"
    return sup


def test_a_data_plane_that_cannot_start_is_not_restarted_forever(tmp_path):
    """A state file that is not one (here: overwritten while no data plane ran) makes the
    restarted data plane exit with its one-line reason; the supervisor stops instead of
    restarting it again and again, and `status` says it does not run, and why."""
    from hyperplane import runtime
    prefix = new_prefix()
    cfg = tmp_path / "lab.toml"
    cfg.write_text(f'prefix = "{prefix}"\n' + TEST_LAB)
    sup = None

    def overwrite(state):
        size = state.stat().st_size
        state.unlink()
        state.write_bytes(os.urandom(size))
    try:
        cli("up", "--detach", "-c", str(cfg))
        sup = replace_state_and_restart(prefix, overwrite)
        restarts = runtime.restarts(prefix)["count"]
        assert restarts == 1, restarts
        assert "cannot start: " in runtime.log_tail(prefix)
        assert runtime.start_failure(prefix).startswith("the data plane cannot start: ")
        assert len(runtime.start_failure(prefix).splitlines()) == 1
        st = cli("status", "--prefix", prefix, check=False)
        assert st.returncode == 3, st
        assert "not a Hyperplane state file" in st.stdout, st.stdout
    finally:
        if sup is not None:
            sup.close()
        cli("down", "--prefix", prefix, check=False)
        _sweep(prefix)


def test_a_truncated_state_file_is_refused_and_status_says_so(tmp_path):
    """A state file cut short while no data plane ran: the next data plane refuses it in one
    line, never maps it (no SIGBUS), moves it aside; `status` (text and JSON) says why it
    stopped; the next `up` starts afresh."""
    from hyperplane import runtime
    prefix = new_prefix()
    cfg = tmp_path / "lab.toml"
    cfg.write_text(f'prefix = "{prefix}"\n' + TEST_LAB)
    sup = None
    try:
        cli("up", "--detach", "-c", str(cfg))
        state = runtime.paths(prefix).state
        sup = replace_state_and_restart(prefix, lambda p: os.truncate(p, p.stat().st_size // 2))
        aside = state.with_name(state.name + ".rejected")
        assert aside.exists() and not state.exists()
        st = cli("status", "--prefix", prefix, check=False)
        assert st.returncode == 3, st
        assert "is truncated" in st.stdout and f"kept as {aside}" in st.stdout, st.stdout
        js = json.loads(cli("status", "--json", "--prefix", prefix, check=False).stdout)
        reason = js["dataplane"]["stopped_reason"]
        assert "is truncated" in reason and "\n" not in reason, reason
        assert "SIGBUS" not in runtime.log_tail(prefix, lines=50)
        sup.close()
        sup = None
        cli("down", "--prefix", prefix)
        assert not aside.exists()                   # kept for inspection until `down`
        cli("up", "--detach", "-c", str(cfg))
        st = json.loads(cli("status", "--json", "--prefix", prefix).stdout)["dataplane"]
        assert st["running"] and st["stopped_reason"] is None
    finally:
        if sup is not None:
            sup.close()
        cli("down", "--prefix", prefix, check=False)
        _sweep(prefix)
