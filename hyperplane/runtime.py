"""The runtime layer: starting, stopping and restarting the data plane and its supervisor.
The CLI, the demo and the benchmarks call this; it imports no CLI.

Processes of a lab (prefix P, run folder D, default /run/hyperplane):

    supervisor   python -m hyperplane.supervisor --prefix P   (root namespace, own session)
      data plane   python -m hyperplane.daemon --prefix P     (in the lab's data-plane netns)

Both start with cwd "/" and PYTHONPATH set to the folder holding the package this process
imported, so they run the same code whatever the caller's working directory. Their files in
D, and how a pid file is trusted: hyperplane.runfolder.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import control, scheduling
from .errors import RuntimeFailure
from .lab.state import LabState
# RUN_DIR and prefixes too: callers of the runtime name the run folder through it
from .runfolder import (CANNOT_START, DATAPLANE, RUN_DIR, START_TIMEOUT_S,  # noqa: F401
                        STOP_TIMEOUT_S, SUPERVISOR, Proc, ensure_run_dir, paths, pid_of, prefixes,
                        private_file, write_private)


# --- our processes ------------------------------------------------------------------------

def package_root() -> Path:
    """The folder holding the `hyperplane` package this process runs."""
    return Path(__file__).resolve().parent.parent


def child_env() -> dict:
    env = dict(os.environ)
    root = str(package_root())
    rest = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != root]
    env["PYTHONPATH"] = os.pathsep.join([root] + rest)
    return env


def argv(role: str, prefix: str, run_dir: str | Path | None = None, *extra: str) -> list[str]:
    a = [sys.executable, "-m", f"hyperplane.{role}", "--prefix", prefix]
    if run_dir is not None:
        a += ["--run-dir", str(run_dir)]
    return a + list(extra)


def restarts(prefix: str, run_dir=None) -> dict:
    """``{"count": N, "last": unix time or None, "history": [{"time", "reason", "pid"}]}``,
    and ``"stopped": {"time", "reason"}`` when the supervisor gave up on the data plane."""
    try:
        d = json.loads(paths(prefix, run_dir).restarts.read_text())
        out = {"count": int(d["count"]), "last": d.get("last"),
               "history": list(d.get("history", []))}
        if isinstance(d.get("stopped"), dict):
            out["stopped"] = {"time": d["stopped"].get("time"),
                              "reason": str(d["stopped"].get("reason"))}
        return out
    except (OSError, ValueError, KeyError, TypeError):
        return {"count": 0, "last": None, "history": []}


def status(prefix: str, run_dir=None) -> dict:
    """What runs for the lab, from the run folder (no control request)."""
    pid = pid_of(prefix, DATAPLANE, run_dir)
    return {"running": pid is not None, "pid": pid,
            "supervisor_pid": pid_of(prefix, SUPERVISOR, run_dir),
            "restarts": restarts(prefix, run_dir)}


def log_tail(prefix: str, run_dir=None, lines: int = 15) -> str:
    try:
        text = paths(prefix, run_dir).log.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n  ".join(text.splitlines()[-lines:])


def start_failure(prefix: str, run_dir=None) -> str:
    """Why the data plane exited while starting: its one-line reason when it gave one, else
    the log's tail."""
    tail = log_tail(prefix, run_dir)
    reasons = [line.split(CANNOT_START, 1)[1] for line in tail.splitlines()
               if CANNOT_START in line]
    if reasons:
        return f"the data plane cannot start: {reasons[-1]}"
    return "the data plane exited while starting:\n  " + tail


# --- start / stop / restart ---------------------------------------------------------------

def spawn_dataplane(prefix: str, netns_name: str, run_dir=None, **popen) -> subprocess.Popen:
    """Starts the data-plane process in its namespace (the supervisor calls this)."""
    from .lab import netns
    return netns.popen(netns_name, argv(DATAPLANE, prefix, run_dir), cwd="/", env=child_env(),
                       stdin=subprocess.DEVNULL, **popen)


def wait_ready(prefix: str, run_dir=None, timeout: float = START_TIMEOUT_S, old_pid=None,
               watch: Proc | None = None, progress=None) -> int:
    """Waits until a data plane (not ``old_pid``) answers on the control socket; its pid.
    Fails at once when ``watch`` (the supervisor) exits."""
    deadline = time.monotonic() + timeout
    while True:
        pid = pid_of(prefix, DATAPLANE, run_dir)
        if pid is not None and pid != old_pid:
            try:
                answer = control.request(prefix, "status", run_dir=run_dir, timeout=2.0)
                if answer.get("pid") == pid:
                    return pid
            except control.ControlError:
                pass
        if watch is not None and watch.wait(0):
            raise RuntimeFailure(start_failure(prefix, run_dir))
        if time.monotonic() >= deadline:
            raise RuntimeFailure(f"the data plane did not answer within {timeout:.0f} s "
                                 f"(log: {paths(prefix, run_dir).log})")
        if progress:
            progress()
        time.sleep(0.1)


def start(state: LabState, run_dir=None, timeout: float = START_TIMEOUT_S,
          progress=None) -> int:
    """Starts the supervisor, which starts the data plane; returns the data plane's pid once
    it answers. Fails if one of them already runs."""
    prefix = state.prefix
    if pid_of(prefix, SUPERVISOR, run_dir) or pid_of(prefix, DATAPLANE, run_dir):
        raise RuntimeFailure(f"the data plane of {prefix!r} already runs "
                             f"(stop it with: hyperplane down --prefix {prefix})")
    ensure_run_dir(run_dir)
    p = paths(prefix, run_dir)
    for f in (p.pid, p.supervisor_pid, p.restarts):
        f.unlink(missing_ok=True)
    private_file(p.log)
    p.flow_logs.mkdir(mode=0o700, exist_ok=True)
    os.chmod(p.flow_logs, 0o700)
    with open(p.log, "ab") as log:           # the supervisor keeps its own copy
        proc = subprocess.Popen(argv(SUPERVISOR, prefix, run_dir, "--netns", state.dataplane_ns),
                                cwd="/", env=child_env(), stdin=subprocess.DEVNULL, stdout=log,
                                stderr=log, start_new_session=True)
    write_private(p.supervisor_pid, f"{proc.pid}\n")
    sup = Proc.of(proc.pid, SUPERVISOR, prefix)
    deadline = time.monotonic() + timeout
    while sup is None and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)         # between fork and exec the child still shows our command line
        sup = Proc.of(proc.pid, SUPERVISOR, prefix)
    try:
        if sup is None:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            raise RuntimeFailure("the supervisor exited at once:\n  " + log_tail(prefix, run_dir))
        return wait_ready(prefix, run_dir, timeout, watch=sup, progress=progress)
    except BaseException:
        stop(prefix, run_dir)
        raise
    finally:
        if sup:
            sup.close()


def stop(prefix: str, run_dir=None, timeout: float = STOP_TIMEOUT_S) -> list[int]:
    """Stops the supervisor first (so nothing restarts), then the data plane; removes their
    pid files and socket. Returns the pids stopped. Safe when nothing runs."""
    stopped = []
    for role in (SUPERVISOR, DATAPLANE):
        proc = Proc.find(prefix, role, run_dir)
        if proc is not None:
            with proc:
                proc.stop(timeout)
            stopped.append(proc.pid)
    p = paths(prefix, run_dir)
    for f in (p.pid, p.supervisor_pid, p.socket):
        f.unlink(missing_ok=True)
    scheduling.release(prefix)         # the forwarding thread's cgroup, left by a killed one
    return stopped


def restart(prefix: str, run_dir=None, timeout: float = START_TIMEOUT_S) -> int:
    """Restarts the data plane on demand: the supervisor does it (and counts it); without a
    supervisor, one is started. Returns the new data plane's pid once it answers."""
    old = pid_of(prefix, DATAPLANE, run_dir)
    sup = Proc.find(prefix, SUPERVISOR, run_dir)
    if sup is None:
        try:
            state = LabState.load(prefix, run_dir)
        except FileNotFoundError:
            raise RuntimeFailure(f"lab {prefix!r} is not up (start it with: hyperplane up)") \
                from None
        stop(prefix, run_dir)
        return start(state, run_dir, timeout)
    with sup:
        sup.signal(signal.SIGHUP)
        return wait_ready(prefix, run_dir, timeout, old_pid=old, watch=sup)


def remove_files(prefix: str, run_dir=None, keep_logs: bool = False) -> None:
    p = paths(prefix, run_dir)
    for f in p.runtime_files():
        f.unlink(missing_ok=True)
    if not keep_logs:
        p.log.unlink(missing_ok=True)
        shutil.rmtree(p.flow_logs, ignore_errors=True)


# --- a whole lab ---------------------------------------------------------------------------

def up(config, run_dir=None, progress=None, notice=lambda text: None) -> tuple[LabState, int]:
    """Builds the lab of ``config`` and starts its supervised data plane; returns the saved
    state and the data plane's pid. Refuses when the lab's supervisor or data plane runs;
    what a crashed lab left (namespaces, stale pid files, state) is removed first."""
    from .lab import Lab
    from .lab.cleanup import cleanup, find
    prefix = config.prefix
    if pid_of(prefix, SUPERVISOR, run_dir) or pid_of(prefix, DATAPLANE, run_dir):
        raise RuntimeFailure(f"lab {prefix!r} is already up; run: sudo hyperplane down "
                             f"--prefix {prefix}")
    if find(prefix, run_dir):
        notice(f"removing what an earlier lab {prefix!r} left behind (nothing of it runs)")
        cleanup(prefix, run_dir)
    remove_files(prefix, run_dir, keep_logs=True)
    ensure_run_dir(run_dir)
    lab = Lab(config, run_dir)
    try:
        state = lab.up(clean=False)
        return state, start(state, run_dir, progress=progress)
    except BaseException:
        stop(prefix, run_dir)
        lab.down()
        raise


def down(prefix: str, run_dir=None, keep_logs: bool = False):
    """Stops the supervisor and the data plane, removes the lab's namespaces, links and
    run-folder files; returns the cleanup report. Safe to repeat, also after a crash."""
    from .lab.cleanup import cleanup
    stop(prefix, run_dir)
    report = cleanup(prefix, run_dir)
    remove_files(prefix, run_dir, keep_logs=keep_logs)
    return report
