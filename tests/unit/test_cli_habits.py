"""Issue 17, the habits of the command line: `hyperplane check` without root, the global -j,
every command's --help, shell completion generated from the parser, docs/cli.md generated
from it too, and the stable JSON keys of a connection."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hyperplane import cli
from hyperplane.clidocs import _subcommands, render

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.toml"))


def _python_for_nobody() -> list[str] | None:
    """How to run this checkout as the user nobody (root's own interpreter may sit in a
    folder nobody cannot enter): [setpriv ..., python] or None."""
    if os.geteuid() != 0:
        return [sys.executable]          # already not root
    if not shutil.which("setpriv"):
        return None
    drop = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    for python in (sys.executable, "/usr/bin/python3"):
        probe = subprocess.run(drop + ["env", f"PYTHONPATH={ROOT}", python, "-c",
                                       "import hyperplane.config"], capture_output=True,
                               cwd="/", timeout=60)
        if probe.returncode == 0:
            return drop + ["env", f"PYTHONPATH={ROOT}", python]
    return None


NOBODY = _python_for_nobody()
as_nobody = pytest.mark.skipif(NOBODY is None, reason="no interpreter the user nobody can run")


def check(*argv, stdin=None) -> subprocess.CompletedProcess:
    return subprocess.run(NOBODY + ["-m", "hyperplane.cli", "check", *argv], input=stdin,
                          capture_output=True, text=True, cwd="/", timeout=60)


@as_nobody
@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_checks_as_a_user_without_root(path):
    r = check("-c", str(path))
    assert r.returncode == 0, r.stderr
    assert "valid, nothing built" in r.stdout and "ENI groups" in r.stdout
    d = json.loads(check("-c", str(path), "--json").stdout)
    assert d["valid"] and d["lab"]["functions"] and d["lab"]["groups"]
    for fn in d["lab"]["functions"]:
        assert fn["ipv4"] in r.stdout and fn["group"] in r.stdout


BAD = [
    ('prefix = "TOO-LONG"\n', "prefix"),
    ('[vpc.subnets.app]\n', "vpc.subnets.app.cidr4"),
    ('[vpc.subnets.app]\ncidr4 = "10.0.1.0/33"\n', "vpc.subnets.app.cidr4"),
    ('[vpc.subnets.app]\ncidr4 = "10.0.1.0/24"\n[functions.f]\nsubnet_ids = ["nowhere"]\n'
     'security_group_ids = ["sg-a"]\n', "functions.f.subnet_ids[0]"),
    ('[vpc.subnets.app]\ncidr4 = "10.0.1.0/24"\n[functions.f]\nsubnet_ids = ["app"]\n'
     'security_group_ids = ["sg-missing"]\n', "functions.f.security_group_ids[0]"),
    ('[hyperplane]\nport_range = [2000, 1000]\n', "hyperplane.port_range"),
    ('[hyperplane.timeouts]\nNOT_A_STATE = 3\n', "hyperplane.timeouts.NOT_A_STATE"),
    ("this is = not toml [", "toml"),
]


@as_nobody
@pytest.mark.parametrize("text, field", BAD, ids=[f for _, f in BAD])
def test_a_bad_config_fails_with_its_field_and_exit_1(text, field):
    r = check("-c", "-", stdin=text)           # as `nft -c -f -`: the config on stdin
    assert r.returncode == cli.EXIT_INVALID == 1, (r.stdout, r.stderr)
    assert f"<stdin>: invalid: {field}" in r.stderr and "Traceback" not in r.stderr, r.stderr
    d = json.loads(check("-c", "-", "-j", stdin=text).stdout)
    assert not d["valid"] and d["errors"][0]["field"] == field


@as_nobody
def test_check_usage_errors_exit_2():
    assert check().returncode == 2                       # -c is required
    r = check("-c", "/nonexistent/lab.toml")
    assert r.returncode == 1 and "invalid: file" in r.stderr


def test_json_before_or_after_the_command():
    for argv in (["-j", "stats"], ["stats", "-j"], ["stats", "--json"], ["--json", "eni"]):
        assert cli.parser().parse_args(argv).json, argv
    assert not cli.parser().parse_args(["stats"]).json


def test_every_command_has_a_description_and_examples(capsys):
    for name, sub in _subcommands(cli.parser()).items():
        text = sub.format_help()
        assert "examples:\n  " in text and f"hyperplane {name}" in text.split("examples:")[1], name
        assert len(sub.description or "") > 60, name


def test_bash_completes_conntrack_state_from_the_generated_script(tmp_path):
    """`hyperplane conntrack --st<TAB>`: the script shtab generated from the parser."""
    script = tmp_path / "hyperplane.bash"
    r = subprocess.run([sys.executable, "-m", "hyperplane.cli", "completion", "bash"],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    script.write_text(r.stdout)
    driver = (f'source {script}\n'
              'COMP_LINE="hyperplane conntrack --st"; COMP_POINT=${#COMP_LINE}\n'
              'COMP_WORDS=(hyperplane conntrack --st); COMP_CWORD=2\n'
              '_shtab_hyperplane hyperplane --st conntrack\n'
              'printf "%s\\n" "${COMPREPLY[@]}"\n')
    out = subprocess.run(["bash", "-c", driver], capture_output=True, text=True, timeout=30)
    assert out.stdout.split() == ["--state"], (out.stdout, out.stderr)
    # The same for a subcommand's name, and the zsh script exists.
    driver = driver.replace("conntrack --st", "conn").replace(
        "(hyperplane conn)", "(hyperplane conn)").replace("COMP_CWORD=2", "COMP_CWORD=1")
    driver = driver.replace("_shtab_hyperplane hyperplane --st conntrack",
                            "_shtab_hyperplane hyperplane conn hyperplane")
    out = subprocess.run(["bash", "-c", driver], capture_output=True, text=True, timeout=30)
    assert "conntrack" in out.stdout.split(), (out.stdout, out.stderr)
    assert cli.completion_script("zsh").startswith("#compdef hyperplane")


def test_completion_installs_with_one_command(tmp_path):
    r = subprocess.run([sys.executable, "-m", "hyperplane.cli", "completion", "bash",
                        "--install"], capture_output=True, text=True, timeout=60, cwd=ROOT,
                       env={**os.environ, "HOME": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    installed = tmp_path / ".local/share/bash-completion/completions/hyperplane"
    assert "_shtab_hyperplane" in installed.read_text()


def test_docs_cli_md_is_generated_from_the_parser():
    page = ROOT / "docs" / "cli.md"
    assert page.read_text() == render(), "docs/cli.md is stale: run `make cli-docs`"


def test_a_connection_has_exactly_the_documented_keys():
    from hyperplane._core import Nat
    from hyperplane.ctcontrol import CONNECTION_KEYS, EVENT_KEYS, Clock, ConntrackService
    from hyperplane.vocab import OUT
    import framegen as fg
    nat = Nat()
    nat.group_add_eni(nat.add_group(), nat.add_eni("10.0.1.4"))
    nat.add_source("10.200.0.11", 0)
    reader = nat.events()
    nat.translate([fg.udp("10.200.0.11", "10.0.9.9", 1000, 53)], OUT, 5000)
    service = ConntrackService(nat, lambda: 6000, lambda: {0: "api"})
    (conn,) = nat.connections()
    d = service.describe(conn, Clock(6000), {0: "api"})
    assert list(d) and set(d) == {k for k, _ in CONNECTION_KEYS}
    assert d["function"] == "api" and d["timeout_s"] == 29 and d["start"].endswith("Z")
    (event,), _ = reader.read()
    e = service.describe_event(event, Clock(6000), {0: "api"})
    assert set(e) == {k for k, _ in CONNECTION_KEYS} | {k for k, _ in EVENT_KEYS} - {
        "lost", "lost_total"}


# What `hyperplane conntrack -C` needs is the control socket; building or supervising a lab
# (asyncio, pyroute2, the HTTP metrics server, scapy) is loaded only by the commands that do it.
HEAVY = ("asyncio", "http.server", "pyroute2", "scapy", "rich", "hyperplane.lab.builder",
         "hyperplane.runtime", "hyperplane.metrics", "hyperplane.slowpath")


def test_conntrack_count_starts_without_the_lab_builders_imports(tmp_path):
    probe = ("import sys\n"
             "from hyperplane import cli\n"
             "code = cli.main(['conntrack', '-p', 'udp', '-d', '10.0.1.10', '-C',\n"
             "                 '--prefix', 'zz9'])\n"
             f"print(code, sorted(m for m in {HEAVY!r} if m in sys.modules))\n")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                       timeout=60, cwd=ROOT, env={**os.environ, "HYPERPLANE_RUN_DIR":
                                                  str(tmp_path)})
    assert r.stdout.split(None, 1) == [str(cli.EXIT_NOT_RUNNING), "[]\n"], r.stdout + r.stderr


MANY_PROBLEMS = ('mtu = 99\n[vpc]\nid = "bad id"\n'
                 '[vpc.subnets.a]\ncidr4 = "10.0.1.0/24"\n'
                 '[vpc.subnets.b]\ncidr4 = "10.0.2.0/33"\n'
                 '[functions.f1]\nsubnet_ids = ["nope"]\nmax_connections = -3\n'
                 '[functions.f2]\nsubnet_ids = ["b"]\nbogus = 1\n')
MANY_FIELDS = ["mtu", "vpc.id", "vpc.subnets.b.cidr4", "functions.f1.max_connections",
               "functions.f2.bogus", "functions.f1.subnet_ids[0]"]


def test_a_config_with_several_problems_names_each_once():
    """Every problem is told, each with its field; a function on a subnet that failed is not
    told again that the subnet is unknown."""
    from hyperplane.config import loads_config
    from hyperplane.errors import ConfigError
    with pytest.raises(ConfigError) as e:
        loads_config(MANY_PROBLEMS, source="<stdin>")
    assert [x.field for x in e.value.errors] == MANY_FIELDS
    assert e.value.field == "mtu" and "and 5 more problems" in str(e.value)
    assert all(x.source == "<stdin>" and x.errors == (x,) for x in e.value.errors)


@as_nobody
def test_check_lists_every_problem():
    r = check("-c", "-", stdin=MANY_PROBLEMS)
    assert r.returncode == cli.EXIT_INVALID, (r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    assert [ln.split(": ")[2] for ln in lines[:-1]] == MANY_FIELDS, r.stderr
    assert lines[-1] == f"<stdin>: {len(MANY_FIELDS)} problems"
    d = json.loads(check("-c", "-", "--json", stdin=MANY_PROBLEMS).stdout)
    assert [x["field"] for x in d["errors"]] == MANY_FIELDS
