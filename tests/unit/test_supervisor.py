"""The supervisor gives up on a data plane that crashes again and again, and says why where
`hyperplane status` reads it (the run folder's restarts record)."""

import subprocess
import sys

from hyperplane import runtime, supervisor


def test_a_crash_loop_ends_with_a_reason(tmp_path, monkeypatch):
    spawned = []

    def crash(prefix, netns_name, run_dir=None, **popen):       # dies of SIGSEGV at once
        p = subprocess.Popen([sys.executable, "-c", "import os; os.kill(os.getpid(), 11)"])
        spawned.append(p)
        return p

    monkeypatch.setattr(runtime, "spawn_dataplane", crash)
    monkeypatch.setattr(supervisor.netns, "exists", lambda name: True)
    monkeypatch.setattr(supervisor.time, "sleep", lambda s: None)     # no back-off wait
    sup = supervisor.Supervisor("hpt", "hpt-ns", run_dir=tmp_path)
    assert sup.run() == 0
    assert len(spawned) == supervisor.CRASH_LIMIT
    record = runtime.restarts("hpt", tmp_path)
    assert record["count"] == supervisor.CRASH_LIMIT
    reason = record["stopped"]["reason"]
    assert f"crashed {supervisor.CRASH_LIMIT} times" in reason and "SIGSEGV" in reason

    # A data plane that cannot start (its config, its state file): one try, and its reason.
    monkeypatch.setattr(runtime, "spawn_dataplane",
                        lambda *a, **k: subprocess.Popen([sys.executable, "-c", "exit(78)"]))
    monkeypatch.setattr(runtime, "start_failure", lambda *a: "the data plane cannot start: x")
    assert supervisor.Supervisor("hpt", "hpt-ns", run_dir=tmp_path).run() == 0
    assert runtime.restarts("hpt", tmp_path)["stopped"]["reason"] == \
        "the data plane cannot start: x"
