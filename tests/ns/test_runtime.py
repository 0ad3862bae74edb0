"""The runtime layer for real (root): `up --detach` starts a supervisor that restarts a killed
data plane, `restart` does it on demand, `status` says so with its exit codes, idle control
clients do not delay others, the run folder is private, and `down` never signals a process
that is not ours."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import statistics
import subprocess
import time

import pytest

from conftest import TEST_LAB, _sweep, new_prefix
from test_v2n import cli

from hyperplane import control, runfolder, runtime


def wait_for(cond, timeout: float, interval: float = 0.005):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = cond()
        if value:
            return value
        time.sleep(interval)
    return None


def status_json(prefix):
    r = cli("status", "--json", "--prefix", prefix, check=False)
    return r.returncode, json.loads(r.stdout)


def stats_latency(prefix, n=7) -> float:
    """Median time of a `stats` request (in-process: no interpreter start-up in the figure)."""
    times = []
    for _ in range(n):
        t0 = time.monotonic()
        control.request(prefix, "stats", timeout=5.0)
        times.append(time.monotonic() - t0)
    return statistics.median(times)


@pytest.fixture
def up(tmp_path):
    prefix = new_prefix()
    cfg = tmp_path / "lab.toml"
    cfg.write_text(f'prefix = "{prefix}"\n' + TEST_LAB)
    try:
        cli("up", "--detach", "-c", str(cfg))
        yield prefix, cfg
    finally:
        cli("down", "--prefix", prefix, check=False)
        _sweep(prefix)


def test_status_restart_and_down(up):
    prefix, cfg = up
    paths = runtime.paths(prefix)

    code, d = status_json(prefix)
    assert code == 0 and d["dataplane"]["running"]
    first = d["dataplane"]["pid"]
    assert first == runtime.pid_of(prefix) and d["dataplane"]["restarts"]["count"] == 0
    sup = runtime.pid_of(prefix, runtime.SUPERVISOR)
    assert sup and d["dataplane"]["supervisor_pid"] == sup

    # everything in the run folder for this lab is private
    found = [f for f in paths.dir.glob(f"{prefix}*")]
    found += [f for f in paths.flow_logs.rglob("*")]
    assert paths.socket in found and paths.pid in found and paths.log in found
    for f in found:
        assert stat.S_IMODE(f.stat().st_mode) == (0o700 if f.is_dir() else 0o600), f
    assert stat.S_IMODE(paths.dir.stat().st_mode) == 0o700

    # kill -9: the supervisor starts a new data plane within a second
    t0 = time.monotonic()
    os.kill(first, signal.SIGKILL)
    second = wait_for(lambda: (p := runtime.pid_of(prefix)) and p != first and p, timeout=1.0)
    assert second, f"no new data plane within 1 s ({time.monotonic() - t0:.2f} s)"
    runtime.wait_ready(prefix, old_pid=first, timeout=20)
    code, d = status_json(prefix)
    assert code == 0 and d["dataplane"]["pid"] == second
    r = d["dataplane"]["restarts"]
    assert r["count"] == 1 and r["history"][-1]["reason"] == "killed by SIGKILL"
    assert r["history"][-1]["pid"] == first
    assert "restarted 1 time" in cli("status", "--prefix", prefix).stdout

    # on demand
    out = cli("restart", "--prefix", prefix).stdout
    third = runtime.pid_of(prefix)
    assert third not in (first, second) and f"pid {third}" in out
    assert status_json(prefix)[1]["dataplane"]["restarts"]["count"] == 2
    assert runtime.pid_of(prefix, runtime.SUPERVISOR) == sup

    # a crash of both: status says not running (3); up works again without "already up"
    os.kill(sup, signal.SIGKILL)
    os.kill(third, signal.SIGKILL)
    assert wait_for(lambda: runtime.pid_of(prefix) is None, timeout=5)
    code, d = status_json(prefix)
    assert code == 3 and d["dataplane"]["running"] is False and d["dataplane"]["pid"] is None
    r = cli("up", "--detach", "-c", str(cfg), check=False)
    assert r.returncode == 0 and "already up" not in r.stderr, r.stderr
    assert "left behind" in r.stderr
    assert status_json(prefix)[0] == 0

    # down, with a stale pid file naming some other live process: that one is left alone
    dp = runtime.pid_of(prefix)
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        cli("down", "--prefix", prefix)
        assert wait_for(lambda: not runfolder.is_ours(dp, runfolder.DATAPLANE, prefix), 5)
        paths.pid.write_text(f"{bystander.pid}\n")
        paths.supervisor_pid.write_text(f"{bystander.pid}\n")
        assert runtime.stop(prefix) == []
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()
    assert cli("status", "--prefix", prefix, check=False).returncode == 3


def test_idle_control_clients_do_not_delay_stats(up):
    prefix, _ = up
    before = stats_latency(prefix)
    idle = []
    try:
        for _ in range(20):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(str(runtime.paths(prefix).socket))
            idle.append(s)
        never_read = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        never_read.connect(str(runtime.paths(prefix).socket))
        never_read.sendall(b'{"command": "status"}\n')       # an answer nobody takes
        idle.append(never_read)
        # (idle clients are dropped at their 2 s read deadline: measure well before that)
        assert control.request(prefix, "stats")["control"]["clients"] >= 21
        during = stats_latency(prefix)
        assert during - before < 0.100, (before, during)
    finally:
        for s in idle:
            s.close()
