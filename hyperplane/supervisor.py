"""The supervisor: starts the data plane and starts it again when it dies.

Started by `hyperplane up` (see hyperplane.runtime). It waits on its child, so a data plane
that dies is started again at once (a crash loop backs off up to a few seconds). It counts
every restart, with its time and reason, in the run folder's ``P.restarts.json``. It gives up,
and says why in that file's ``stopped`` (which `hyperplane status` shows), when the data plane
cannot start (its config or state file) or crashes CRASH_LIMIT times within CRASH_WINDOW_S.

Signals: SIGTERM/SIGINT stop the data plane (not a crash: not restarted) and the supervisor;
SIGHUP restarts the data plane on demand (`hyperplane restart`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import deque

from . import runfolder, runtime
from .lab import netns

log = logging.getLogger("hyperplane.supervisor")

HISTORY = 20                 # restarts remembered with their time and reason
QUICK_EXIT_S = 1.0           # a child that dies sooner than this is crash-looping
MAX_BACKOFF_S = 5.0
CRASH_LIMIT, CRASH_WINDOW_S = 5, 60.0      # this many crashes this soon: restarting won't help


class Supervisor:
    def __init__(self, prefix: str, netns: str, run_dir=None):
        self.prefix, self.netns, self.run_dir = prefix, netns, run_dir
        self.paths = runfolder.paths(prefix, run_dir)
        self.stopping = False
        self.restart_requested = False
        self.child: subprocess.Popen | None = None
        self.record = runtime.restarts(prefix, run_dir)
        if self.record.pop("stopped", None):       # a new supervisor: the last one's end is old
            runfolder.write_private(self.paths.restarts, json.dumps(self.record))
        self.crashes: deque[float] = deque(maxlen=CRASH_LIMIT)

    def _on_stop(self, *_):
        self.stopping = True
        self._terminate()

    def _on_restart(self, *_):
        self.restart_requested = True
        self._terminate()

    def _terminate(self):
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signal.SIGTERM)

    def _spawn(self) -> None:
        self.child = runtime.spawn_dataplane(self.prefix, self.netns, self.run_dir)
        runfolder.write_private(self.paths.pid, f"{self.child.pid}\n")
        log.info("data plane started (pid %d)", self.child.pid)

    def _count(self, old_pid: int, reason: str) -> None:
        now = time.time()
        self.record["count"] += 1
        self.record["last"] = now
        self.record["history"] = (self.record["history"]
                                  + [{"time": now, "reason": reason, "pid": old_pid}])[-HISTORY:]
        runfolder.write_private(self.paths.restarts, json.dumps(self.record))

    def _give_up(self, reason: str) -> None:
        log.error("giving up: %s", reason)
        self.record["stopped"] = {"time": time.time(), "reason": reason}
        runfolder.write_private(self.paths.restarts, json.dumps(self.record))

    def _crash_loop(self) -> bool:
        """Counts a crash now; whether CRASH_LIMIT of them came within CRASH_WINDOW_S."""
        now = time.monotonic()
        self.crashes.append(now)
        return len(self.crashes) == CRASH_LIMIT and now - self.crashes[0] < CRASH_WINDOW_S

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_restart)
        backoff = 0.0
        while not self.stopping:
            if not netns.exists(self.netns):      # the lab was removed under us
                log.warning("namespace %s is gone; stopping", self.netns)
                break
            started = time.monotonic()
            self._spawn()
            if self.stopping or self.restart_requested:   # asked while it was being spawned
                self._terminate()
            code = self.child.wait()          # signals are handled while it waits (PEP 475)
            old = self.child.pid
            if self.stopping:
                break
            if code == runfolder.EXIT_CANNOT_START and not self.restart_requested:
                log.error("data plane (pid %d) cannot start; not restarting it", old)
                self._give_up(runtime.start_failure(self.prefix, self.run_dir))
                break
            if self.restart_requested:
                reason, backoff = "requested", 0.0
                self.restart_requested = False
            else:
                reason = (f"killed by {signal.Signals(-code).name}" if code < 0
                          else f"exited with code {code}")
                quick = time.monotonic() - started < QUICK_EXIT_S
                backoff = min(MAX_BACKOFF_S, max(0.25, backoff * 2)) if quick else 0.0
                if self._crash_loop():
                    self._count(old, reason)
                    self._give_up(f"the data plane crashed {CRASH_LIMIT} times within "
                                  f"{CRASH_WINDOW_S:.0f} s (last: {reason}); not restarting "
                                  f"it (see the log, then `hyperplane up` again)")
                    break
            log.warning("data plane (pid %d) %s; starting it again%s", old, reason,
                        f" in {backoff:.2f} s" if backoff else "")
            self._count(old, reason)
            if backoff:
                time.sleep(backoff)           # a stop request still ends the loop below
        if self.child is not None and self.child.poll() is None:
            self._terminate()
            try:
                self.child.wait(runfolder.STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.child.kill()
                self.child.wait()
        self.paths.pid.unlink(missing_ok=True)
        log.info("stopped")
        return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hyperplane.supervisor",
                                 description="Keeps a lab's data plane running (started by "
                                             "`hyperplane up`).")
    ap.add_argument("--prefix", required=True)
    ap.add_argument("--run-dir", default=None)
    ap.add_argument("--netns", required=True, help="the lab's data-plane namespace")
    args = ap.parse_args(argv)
    os.umask(0o077)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return Supervisor(args.prefix, args.netns, args.run_dir).run()


if __name__ == "__main__":
    sys.exit(main())
