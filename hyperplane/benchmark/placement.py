"""Where things run: the CPU of every process of a measurement, sampled while it runs, and the
data plane's forwarding thread put on one CPU or another before a test (the benchmark reports
Hyperplane's worst placement: a thread that is fast on one CPU and starves the generator on
the other is as slow as the second case)."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter

from ..runfolder import proc_stat
from ..scheduling import forwarding_threads

SAMPLE_EVERY_S = 0.05
SETTLE_S = 2.0            # the forwarding thread sleeps in poll() up to 1 s between wake-ups


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _state_and_cpu(pid: int, tid: int) -> tuple[str, int] | None:
    """(scheduler state, CPU it last ran on) of a thread."""
    stat = proc_stat(pid, tid)
    try:
        return (stat[0], int(stat[36])) if stat else None
    except (ValueError, IndexError):
        return None


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def place_forwarding(pid: int, cpu: int) -> bool:
    """Moves the data plane's forwarding threads onto `cpu` and gives them back the CPUs they
    were allowed before: from there the kernel keeps them or moves them, as it would a thread
    that happened to wake there. True once every one was seen on `cpu`."""
    tids = forwarding_threads(pid)
    allowed = {t: os.sched_getaffinity(t) for t in tids}
    try:
        for t in tids:
            os.sched_setaffinity(t, {cpu})
        deadline = time.monotonic() + SETTLE_S
        while time.monotonic() < deadline:
            if all((_state_and_cpu(pid, t) or ("", -1))[1] == cpu for t in tids):
                return bool(tids)
            time.sleep(0.01)
        return False
    finally:
        for t, cpus in allowed.items():
            try:
                os.sched_setaffinity(t, cpus)
            except OSError:
                pass


def allowed_cpus(pid: int) -> list[int]:
    """The CPUs the forwarding threads may use (the placements the benchmark tries)."""
    cpus: set[int] = set()
    for t in forwarding_threads(pid):
        try:
            cpus |= os.sched_getaffinity(t)
        except OSError:
            pass
    return sorted(cpus)


def _label(args) -> str:
    """A short name for a tool the benchmark started: `hpbench send`, `iperf3 -c`, ..."""
    argv = list(args) if isinstance(args, (list, tuple)) else [str(args)]
    if argv[:3] == ["ip", "netns", "exec"]:
        argv = argv[4:]
    if argv[:1] == ["taskset"]:
        argv = argv[3:]
    if not argv:
        return "?"
    return " ".join([os.path.basename(argv[0]).split("-")[0], *argv[1:2]])


class Sampler:
    """Samples, every SAMPLE_EVERY_S while a test runs, the CPU of each running thread of the
    tools (the list is read at every sample: generators come and go) and of the data plane.
    Result: {name: {"cpus": {cpu: share of the samples it was running there}, "samples": n,
    "allowed": "0-1"}}."""

    def __init__(self, procs: list, dp_pid: int | None):
        self.procs, self.dp_pid = procs, dp_pid
        self.seen: dict[str, Counter] = {}
        self.allowed: dict[str, str] = {}
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self._run, name="bench-placement", daemon=True)

    def __enter__(self) -> "Sampler":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_flag.set()
        self.thread.join(timeout=2)

    def _watch(self) -> list[tuple[str, int, int]]:
        out = []
        for p in list(self.procs):
            if p.poll() is None:
                out += [(_label(p.args), p.pid, int(t)) for t in _listdir(f"/proc/{p.pid}/task")]
        if self.dp_pid:
            for t in _listdir(f"/proc/{self.dp_pid}/task"):
                comm = _read(f"/proc/{self.dp_pid}/task/{t}/comm").strip()
                out.append((f"dataplane {comm}", self.dp_pid, int(t)))
        return out

    def _run(self) -> None:
        while not self.stop_flag.wait(SAMPLE_EVERY_S):
            for name, pid, tid in self._watch():
                sc = _state_and_cpu(pid, tid)
                if sc is None:
                    continue
                seen = self.seen.setdefault(name, Counter())
                if sc[0] == "R":
                    seen[sc[1]] += 1
                if name not in self.allowed:
                    for line in _read(f"/proc/{pid}/task/{tid}/status").splitlines():
                        if line.startswith("Cpus_allowed_list:"):
                            self.allowed[name] = line.split(":", 1)[1].strip()

    def result(self) -> dict:
        out = {}
        for name, seen in self.seen.items():
            n = sum(seen.values())
            out[name] = {"cpus": {c: round(k / n, 3) for c, k in sorted(seen.items())} if n
                         else {}, "samples": n, "allowed": self.allowed.get(name)}
        return out
