"""The pytest plugin, run by pytester in pytest processes of their own: a failing lab test's
report shows the lab; a non-root run is skipped with the reason; scopes and markers choose
the lab; parallel runs (pytest-xdist) do not collide and leave nothing behind; Ctrl-C in the
middle of a test still removes its lab."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from docfiles import ROOT, plugin_args
from test_api import leftovers

pytest_plugins = ["pytester"]

RECORD = "print('LAB', hyperplane_lab.prefix)"


@pytest.fixture
def run(pytester, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))

    def run(*args: str, timeout: float = 600):
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-s", *plugin_args(),
                                               *args, timeout=timeout)
        prefixes = re.findall(r"\bLAB (\w+)\b", result.stdout.str())
        return result, prefixes
    return run


def test_a_failing_test_reports_the_lab(pytester, run):
    pytester.makepyfile(test_fails=f"""
        def test_fails(hyperplane_lab):
            {RECORD}
            hyperplane_lab.run("api", "curl -4 -s --max-time 2 http://web:7/", check=False)
            assert hyperplane_lab.connections() == []
    """)
    result, (prefix,) = run()
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert f"hyperplane lab {prefix}" in out
    section = out[out.index(f"hyperplane lab {prefix}"):]
    assert "-- connections" in section and "10.200.0.11" in section      # api's connection
    assert "-- counters (not zero)" in section and "conn_created = 1\n" in section
    assert "-- ENIs" in section and f"{prefix}-e0" in section
    assert "-- data plane log" in section and "forwarding" in section
    assert leftovers(prefix) == []


def test_a_passing_test_has_no_lab_section(pytester, run):
    pytester.makepyfile(test_passes=f"""
        def test_passes(hyperplane_lab):
            {RECORD}
            assert hyperplane_lab.functions == ["api", "worker", "report"]
        def test_fails_without_a_lab():
            assert False
    """)
    result, (prefix,) = run()
    result.assert_outcomes(passed=1, failed=1)
    assert "hyperplane lab" not in result.stdout.str()
    assert leftovers(prefix) == []


def test_markers_and_ini_choose_the_lab_and_its_scope(pytester, run):
    pytester.makefile(".toml", one=(
        '[vpc.subnets.app]\ncidr4 = "10.0.1.0/24"\n[vpc.security_groups.sg-a]\n'
        '[hosts.web]\nsubnet = "app"\n'
        '[functions.solo]\nsubnet_ids = ["app"]\nsecurity_group_ids = ["sg-a"]\n'))
    pytester.makeini("[pytest]\nhyperplane_lab_config = one.toml\n")
    pytester.makepyfile(test_choose=f"""
        import pytest
        DICT = {{"vpc": {{"subnets": {{"app": {{"cidr4": "10.0.1.0/24"}}}},
                          "security_groups": {{"sg-a": {{}}}}}},
                 "functions": {{"fa": {{"subnet_ids": ["app"], "security_group_ids": ["sg-a"]}},
                               "fb": {{"subnet_ids": ["app"], "security_group_ids": ["sg-a"]}}}}}}

        def test_ini(hyperplane_lab):
            {RECORD}
            assert hyperplane_lab.functions == ["solo"]

        @pytest.mark.hyperplane_lab(config=DICT)
        def test_dict(hyperplane_lab):
            {RECORD}
            assert hyperplane_lab.functions == ["fa", "fb"]

        @pytest.mark.hyperplane_lab(scope="module")
        def test_module_1(hyperplane_lab):
            {RECORD}

        @pytest.mark.hyperplane_lab(scope="module")
        def test_module_2(hyperplane_lab):
            {RECORD}
    """)
    result, prefixes = run()
    result.assert_outcomes(passed=4)
    ini, dict_, mod1, mod2 = prefixes
    assert mod1 == mod2 and len({ini, dict_, mod1}) == 3
    for p in set(prefixes):
        assert leftovers(p) == []


def test_without_root_the_lab_tests_are_skipped_with_the_reason(pytester, run):
    """As an unprivileged user (uid 65534 in a user namespace of its own, with no capability
    where the lab would be built): the lab test is skipped and says why; the others run."""
    if shutil.which("unshare") is None:
        pytest.skip("needs util-linux's unshare to run without privileges")
    pytester.makepyfile(test_lab="""
        import os
        def test_needs_a_lab(hyperplane_lab):
            pass
        def test_plain():
            assert os.geteuid() != 0
    """)
    r = subprocess.run(["unshare", "--user", sys.executable, "-m", "pytest", "-p",
                        "no:cacheprovider", "-rs", *plugin_args(), "test_lab.py"],
                       cwd=pytester.path, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 passed, 1 skipped" in r.stdout, r.stdout
    assert re.search(r"SKIPPED \[1\] .*a hyperplane lab needs root", r.stdout), r.stdout


def test_eight_lab_tests_in_four_workers_pass_and_leave_nothing(pytester, run):
    pytest.importorskip("xdist")
    record = pytester.path / "prefixes"
    record.mkdir()
    pytester.makepyfile(test_parallel=f"""
        import pytest

        @pytest.mark.parametrize("n", range(8))
        def test_lab(hyperplane_lab, n):
            open({str(record)!r} + f"/{{n}}", "w").write(hyperplane_lab.prefix)
            out = hyperplane_lab.run("api", "getent ahostsv4 web")
            assert out.split()[0] == hyperplane_lab.address("web")
            assert hyperplane_lab.run("web", "echo $((6 * 7))") == "42\\n"
    """)
    result, _ = run("-n", "4")
    result.assert_outcomes(passed=8)
    prefixes = [f.read_text() for f in sorted(record.iterdir())]
    assert len(set(prefixes)) == 8, prefixes
    for p in prefixes:
        assert leftovers(p) == [], p


def test_ctrl_c_in_a_test_still_removes_its_lab(pytester, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    marker = pytester.path / "prefix"
    pytester.makepyfile(test_slow=f"""
        import time
        def test_slow(hyperplane_lab):
            open({str(marker)!r}, "w").write(hyperplane_lab.prefix)
            time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                             *plugin_args(), "test_slow.py"], cwd=pytester.path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (marker.exists() and marker.read_text()) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.1)
        prefix = marker.read_text()
        assert prefix and leftovers(prefix)                 # the lab is up
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "KeyboardInterrupt" in out
    assert leftovers(prefix) == []
