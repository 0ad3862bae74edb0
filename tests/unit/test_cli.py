"""The CLI's answers to mistakes: clear messages and a non-zero exit, no traceback."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys

import pytest

from hyperplane import cli, control, runfolder, runtime


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    monkeypatch.setattr("hyperplane.runfolder.RUN_DIR", tmp_path)
    return tmp_path


def saved_lab(run_dir, prefix):
    from hyperplane.config import default_config
    from hyperplane.lab.topology import build_topology
    build_topology(default_config().with_prefix(prefix)).state().save(run_dir)


def connection(i):
    return {"protocol": "udp", "state": "UDP_STREAM", "src": "10.200.0.11", "sport": 10000 + i,
            "dst": "10.0.1.20", "dport": 7, "nat_addr": "10.0.1.4", "nat_port": 20000 + i,
            "eni": 0, "packets_out": 1, "packets_in": 1, "bytes_out": 10, "bytes_in": 10,
            "assured": True}


@contextlib.contextmanager
def fake_dataplane(run_dir, prefix, n=10, broken=False):
    """A control server with handlers shaped like the daemon's."""
    s = control.ControlServer(runtime.paths(prefix, run_dir).socket)
    s.register("status", lambda req: {"pid": 4242, "uptime_s": 1.0, "connections": n,
                                      "enis": [], "ports": []})

    def stats(req):
        raise RuntimeError("counters lost")

    def conntrack(req):
        if broken:
            raise RuntimeError("table gone")
        return control.paged((connection(i) for i in range(n)), 1000)
    s.register("stats", stats)
    s.register("conntrack", conntrack)
    with s:
        yield s


def run(capsys, *argv):
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_up_needs_root(monkeypatch, capsys):
    monkeypatch.setattr(cli.os, "geteuid", lambda: 1000)
    code, _, err = run(capsys, "up")
    assert code == cli.EXIT_FAIL
    assert "needs root" in err and "sudo" in err and "Traceback" not in err


def test_up_with_a_bad_config_names_the_field(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(cli.os, "geteuid", lambda: 0)
    bad = tmp_path / "lab.toml"
    bad.write_text('prefix = "hp"\n[[subnets]]\nname = "app"\ncidr4 = "10.0.1.0/33"\n')
    code, _, err = run(capsys, "up", "-c", str(bad))
    assert code == cli.EXIT_FAIL
    assert "bad config" in err and "cidr4" in err


def test_up_with_a_missing_config(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(cli.os, "geteuid", lambda: 0)
    code, _, err = run(capsys, "up", "-c", str(tmp_path / "nope.toml"))
    assert code == cli.EXIT_FAIL and "No such file" in err and "Traceback" not in err


def test_missing_kernel_feature_is_named(monkeypatch, capsys):
    monkeypatch.setattr(cli.os, "geteuid", lambda: 0)
    real_exists = cli.Path.exists
    monkeypatch.setattr(cli.Path, "exists",
                        lambda self: False if str(self) == "/proc/net/packet" else real_exists(self))
    code, _, err = run(capsys, "up")
    assert code == cli.EXIT_FAIL and "AF_PACKET" in err


def test_commands_on_a_lab_that_is_not_up(run_dir, capsys):
    code, _, err = run(capsys, "status", "--prefix", "zz9")
    assert code == cli.EXIT_NOT_RUNNING and "not up" in err
    for argv in (["conntrack", "--prefix", "zz9"], ["stats", "--prefix", "zz9"],
                 ["eni", "--prefix", "zz9"]):
        code, _, err = run(capsys, *argv)
        assert code == cli.EXIT_NOT_RUNNING, argv
        # conntrack asks the data plane's socket; stats and eni attach the lab (hyperplane.Lab)
        assert ("no data plane is running" in err or "'zz9' is not up" in err) \
            and "Traceback" not in err, (argv, err)
        assert len(err.strip().splitlines()) == 1


def test_status_exit_codes(run_dir, capsys):
    """3 while the lab is up but its data plane does not run; 0 once it answers (and the pid
    file names a live process of ours)."""
    saved_lab(run_dir, "zz8")
    code, out, _ = run(capsys, "status", "--prefix", "zz8")
    assert code == cli.EXIT_NOT_RUNNING and "NOT RUNNING" in out
    code, out, _ = run(capsys, "status", "--prefix", "zz8", "--json")
    d = json.loads(out)
    assert code == 3 and d["dataplane"]["running"] is False and d["dataplane"]["pid"] is None
    assert d["dataplane"]["restarts"]["count"] == 0
    # a stale pid file naming some other live process is not a data plane
    runtime.paths("zz8", run_dir).pid.write_text(f"{os.getpid()}\n")
    assert run(capsys, "status", "--prefix", "zz8")[0] == cli.EXIT_NOT_RUNNING


def test_status_of_a_running_data_plane(run_dir, capsys, monkeypatch):
    saved_lab(run_dir, "zz7")
    runfolder.write_private(runfolder.paths("zz7", run_dir).restarts, json.dumps(
        {"count": 2, "last": 1700000000.0,
         "history": [{"time": 1700000000.0, "reason": "killed by SIGKILL", "pid": 5}]}))
    monkeypatch.setattr(runtime, "pid_of", lambda prefix, role="daemon", run_dir=None: 4242)
    with fake_dataplane(run_dir, "zz7"):
        code, out, _ = run(capsys, "status", "--prefix", "zz7", "--json")
        d = json.loads(out)
        assert code == cli.EXIT_OK
        assert d["dataplane"]["pid"] == 4242 and d["dataplane"]["running"]
        assert d["dataplane"]["restarts"]["count"] == 2
        code, out, _ = run(capsys, "status", "--prefix", "zz7")
        assert code == 0 and "restarted 2 times" in out and "killed by SIGKILL" in out


def test_conntrack_streams_a_table_and_a_json_array(run_dir, capsys):
    with fake_dataplane(run_dir, "zz6", n=2500):
        code, out, _ = run(capsys, "conntrack", "--prefix", "zz6", "--json")
        assert code == 0
        conns = json.loads(out)
        assert len(conns) == 2500 and conns[7]["sport"] == 10007
        code, out, _ = run(capsys, "conntrack", "--prefix", "zz6")
        lines = out.splitlines()
        assert code == 0 and lines[0].split()[:2] == ["proto", "state"]
        assert len(lines) == 2 + 2500 + 1 and lines[-1] == "2500 connections"
    with fake_dataplane(run_dir, "zz5", n=0):
        assert run(capsys, "conntrack", "--prefix", "zz5", "--json")[1] == "[]\n"
        assert "no tracked connections" in run(capsys, "conntrack", "--prefix", "zz5")[1]


def test_conntrack_into_a_closed_pipe_exits_quietly(run_dir):
    """`hyperplane conntrack | head -1` of 200,000 connections: no traceback, exit 141."""
    with fake_dataplane(run_dir, "zz4", n=200_000):
        for extra in ([], ["--json"]):
            cmd = (f"{sys.executable} -m hyperplane.cli conntrack --prefix zz4 {' '.join(extra)}"
                   f" | head -1 >/dev/null; echo \"${{PIPESTATUS[0]}}\" >&2")
            r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=60,
                               env={**os.environ, "HYPERPLANE_RUN_DIR": str(run_dir)})
            assert r.stderr.strip() == str(cli.EXIT_PIPE), r.stderr


def test_a_data_plane_error_is_one_line(run_dir, capsys):
    saved_lab(run_dir, "zz3")
    with fake_dataplane(run_dir, "zz3", broken=True):
        code, _, err = run(capsys, "stats", "--prefix", "zz3")
        assert code == cli.EXIT_FAIL and err == "hyperplane: RuntimeError: counters lost\n"
        code, _, err = run(capsys, "conntrack", "--prefix", "zz3")
        assert code == cli.EXIT_FAIL and err.startswith("hyperplane: ") and "Traceback" not in err


def test_exec_without_a_command(monkeypatch, capsys):
    monkeypatch.setattr(cli, "attach_lab", lambda prefix: object())
    code, _, err = run(capsys, "exec", "--prefix", "zz9", "api", "--")
    assert code == cli.EXIT_FAIL and "give a command" in err


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name in ("up", "down", "status", "exec", "conntrack", "eni", "stats", "demo"):
        assert name in out


def test_up_with_a_non_utf8_config_says_so(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(cli.os, "geteuid", lambda: 0)
    bad = tmp_path / "lab.toml"
    bad.write_bytes(b'prefix = "hp"\n# \xff\n')
    code, _, err = run(capsys, "up", "-c", str(bad))
    assert code == cli.EXIT_FAIL and "Traceback" not in err
    assert err.strip().splitlines()[-1].endswith("file: not UTF-8 text (byte 0xff on line 2); "
                                                 "save it as UTF-8")
    assert err.count(str(bad)) == 1
