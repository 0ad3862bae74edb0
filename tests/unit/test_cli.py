"""The CLI's answers to mistakes: clear messages and a non-zero exit, no traceback."""

from __future__ import annotations

import pytest

from hyperplane import cli


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


def test_commands_on_a_lab_that_is_not_up(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(cli, "RUN_DIR", tmp_path)
    monkeypatch.setattr(cli.control, "socket_path", lambda prefix, run_dir=None: tmp_path / "x.sock")
    for argv in (["status", "--prefix", "zz9"], ["conntrack", "--prefix", "zz9"],
                 ["stats", "--prefix", "zz9"], ["eni", "--prefix", "zz9"]):
        code, _, err = run(capsys, *argv)
        assert code == cli.EXIT_FAIL, argv
        assert "not up" in err or "no data plane is running" in err, (argv, err)


def test_exec_without_a_command(monkeypatch, capsys):
    monkeypatch.setattr(cli, "attach_state", lambda prefix: object())
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
