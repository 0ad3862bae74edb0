"""The public API against a real lab (root): ``hyperplane.Lab`` up from a config, names that
resolve in every namespace (through ``lab.exec``, ``lab.popen`` and ``hyperplane exec``),
connection filters, counter deltas, crash and restart, and nothing left after ``down`` -- also
when the owning process was killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import hyperplane
from hyperplane import runtime
from hyperplane.lab import netns
from hyperplane.lab.hostsfile import ETC_NETNS

from conftest import ROOT, TEST_LAB

HTTP = 8080


def leftovers(prefix: str) -> list[str]:
    """Everything of lab ``prefix`` still on the machine."""
    found = [f"netns {n}" for n in netns.list_namespaces() if n.startswith(prefix + "-")]
    found += [f"link {n}" for _, n in __import__("socket").if_nameindex()
              if n.startswith(prefix + "-")]
    found += [f"run file {p.name}" for p in Path(runtime.RUN_DIR).glob(f"{prefix}[.-]*")]
    found += [f"hosts {p}" for p in ETC_NETNS.glob(f"{prefix}-*")] if ETC_NETNS.is_dir() else []
    return found


@pytest.fixture(scope="module")
def lab():
    with hyperplane.Lab.up(hyperplane.config.loads_config(TEST_LAB)) as lab:
        yield lab
    assert leftovers(lab.prefix) == []


def serve_http(lab, host: str):
    proc = lab.popen(host, [sys.executable, "-m", "http.server", str(HTTP), "--bind", "::"],
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lab.wait_for(lambda: lab.run(host, f"ss -Hltn 'sport = :{HTTP}'"), timeout=15)
    return proc


def test_every_function_and_host_resolves_every_other(lab):
    names = lab.functions + lab.hosts
    assert len(names) == 6
    for viewer in names:
        for other in names:
            out = lab.run(viewer, f"getent ahostsv4 {other}")
            assert out.split()[0] == lab.address(other), (viewer, other, out)
    # IPv6 only where the viewer may use it: api may (ipv6 = true), worker may not
    assert lab.address("web", 6) in lab.run("api", "getent ahosts web")
    assert lab.address("web", 6) not in lab.run("worker", "getent ahosts web")


def test_a_function_reaches_a_host_by_name_through_the_nat(lab):
    serve_http(lab, "web")
    with lab.counting() as c:
        assert lab.run("api", f"curl -s -o /dev/null -w '%{{http_code}}' "
                              f"http://web:{HTTP}/") == "200"
        # popen goes the same way (ip netns exec, the namespace's hosts file)
        p = lab.popen("worker", ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                                 f"http://web:{HTTP}/"], stdout=subprocess.PIPE, text=True)
        assert p.communicate(timeout=30)[0] == "200"
        # and so does the CLI
        r = subprocess.run([sys.executable, "-m", "hyperplane.cli", "exec", "--prefix",
                            lab.prefix, "api", "--", "curl", "-s", "-o", "/dev/null", "-w",
                            "%{http_code}", f"http://web:{HTTP}/"],
                           capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert r.stdout == "200", r.stderr
    assert c["conn_created"] == 3
    eni = lab.enis()[0]
    api = lab.connections(function="api", dport=HTTP, proto="tcp")
    # api may use IPv6 and curl prefers it: the ENI's IPv6 address then
    assert len(api) == 2 and all(x.assured for x in api)
    assert {x.nat_addr for x in api} == {eni["ipv6"]} and {x.family for x in api} == {6}
    worker = lab.connection(function="worker", dport=HTTP)
    assert worker.src == lab.address("worker") and worker.dst == lab.address("web")
    assert lab.connections(function="report") == []
    assert lab.connections(eni=eni["id"], dport=HTTP) == lab.connections(eni=0, dport=HTTP)
    with pytest.raises(LookupError, match="2 connections match function='api'"):
        lab.connection(function="api", dport=HTTP)
    with pytest.raises(TypeError, match="unknown connection filter"):
        lab.connections(port=HTTP)
    # counted and deleted in the data plane (conntrack -C / -D)
    assert lab.count(function="api", dport=HTTP) == 2 and lab.count(dport=f"1-{HTTP - 1}") >= 0
    assert lab.delete(function="worker", dport=HTTP) == 1
    assert lab.connections(function="worker", dport=HTTP) == []
    assert lab.count(function="api", dport=HTTP) == 2


def test_unsolicited_inbound_is_counted(lab):
    eni = lab.enis()[0]["ipv4"]
    with lab.counting() as c:
        r = lab.exec("web", ["curl", "-s", "--max-time", "1", f"http://{eni}:{HTTP}/"])
        assert r.returncode != 0
    assert c["drop.IN_UNSOLICITED_SYN"] >= 1
    with pytest.raises(KeyError, match="no counter 'drop.NO_SUCH'"):
        c["drop.NO_SUCH"]


def test_connections_survive_a_killed_and_a_restarted_data_plane(lab):
    assert lab.run("report", f"{sys.executable} -m hyperplane.labtools echo --udp db 9 "
                             f"--timeout 0.3", check=False) is not None   # opens a UDP entry
    before = {c.id for c in lab.connections(function="report", proto="udp")}
    assert before
    old = lab.pid
    new = lab.kill_dataplane()
    assert new is not None and new != old and lab.pid == new
    assert before <= {c.id for c in lab.connections(function="report")}
    again = lab.restart_dataplane()
    assert again != new and lab.pid == again
    assert before <= {c.id for c in lab.connections(function="report")}
    assert "killed by SIGKILL" in lab.log_tail(50)


def test_set_function_moves_new_connections(lab):
    key = lab.set_function("worker", "data", ["sg-db"])
    assert key == "data|sg-db"
    assert lab.state.function("worker").group == key


def test_a_prefix_is_owned_by_one_lab(lab):
    with pytest.raises(hyperplane.LabError, match="owned by another process"):
        hyperplane.Lab.up(prefix=lab.prefix)
    attached = hyperplane.Lab.attach(lab.prefix)
    with attached:
        assert attached.pid == lab.pid
    assert lab.pid is not None                       # leaving an attached lab keeps it up


def test_a_killed_owner_leaves_what_down_removes(tmp_path):
    """The owning process dies without cleaning up (SIGKILL): `hyperplane down` still
    removes the namespaces, the run files, the hosts files and the prefix lock."""
    script = tmp_path / "own.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        import hyperplane
        lab = hyperplane.Lab.up()
        print(lab.prefix, flush=True)
        time.sleep(600)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    prefix = ""
    try:
        prefix = proc.stdout.readline().strip()
        assert prefix and (ETC_NETNS / f"{prefix}-f-api" / "hosts").exists()
        assert (Path(runtime.RUN_DIR) / f"{prefix}.lock").exists()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    if not prefix:
        pytest.fail("the lab did not come up")
    r = subprocess.run([sys.executable, "-m", "hyperplane.cli", "down", "--prefix", prefix],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert leftovers(prefix) == []
