"""Where the data plane's threads run: the forwarding thread first (realtime), the Python
threads behind it (nice), long system calls away from the forwarding thread's CPU, and thread
names the kernel shows (top -H, perf sched). Used by the daemon and the ENI backend."""

from __future__ import annotations

import contextlib
import os
import threading

from .runfolder import proc_stat

BACKGROUND_NICE = 10        # the Python threads yield the CPU to forwarding on a busy machine
FORWARDING_RT_PRIORITY = 1  # SCHED_FIFO: the forwarding thread runs the moment a frame wakes it
FORWARDING_NICE = -10       # without the right to SCHED_FIFO (CAP_SYS_NICE)
# A realtime thread woken for every frame forwards one frame per wake-up. Polling on for a
# short while after the last frame keeps it awake through a stream and costs nothing when the
# traffic stops; a much longer poll starves the rest of a small machine (the figures:
# docs/history/benchmarks.md, "The forwarding thread's poll").
FORWARDING_SPIN_US = 50


def lower_priority() -> None:
    """This thread (and the commands it starts) runs at BACKGROUND_NICE: listings, expiry and
    ENI creation take what CPU the forwarding thread leaves (Linux: nice is per thread)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)
    except OSError:
        pass


def forwarding_first() -> str:
    """Puts the forwarding thread ("hp-forward"; every one, should the process run several)
    ahead of every other thread of the machine: SCHED_FIFO, else nice FORWARDING_NICE.

    Nice alone is not enough: Linux groups a session's threads (autogroup), so while a
    listing or expiry keeps this process's group busy, the group has used its share and a
    woken forwarding thread waited 20-30 ms for the CPU behind other processes (perf sched
    timehist, issue 6). It sleeps in poll() when idle, so a realtime class costs the others
    nothing then; the kernel's realtime throttling (sched_rt_runtime_us) still leaves them a
    share of the CPU if it were ever kept busy. Returns what it did, for stats and logs."""
    tids = forwarding_threads()
    if not tids:
        return "normal priority (thread hp-forward not found)"
    done = []
    for tid in tids:
        try:
            os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(FORWARDING_RT_PRIORITY))
            done.append(f"SCHED_FIFO {FORWARDING_RT_PRIORITY} (thread {tid})")
            continue
        except OSError:
            pass
        try:
            os.setpriority(os.PRIO_PROCESS, tid, FORWARDING_NICE)
            done.append(f"nice {FORWARDING_NICE} (thread {tid}; no right to SCHED_FIFO)")
        except OSError as e:
            done.append(f"normal priority (thread {tid}: {e.strerror})")
    return ", ".join(done)


def forwarding_threads() -> list[int]:
    return [int(t) for t in os.listdir("/proc/self/task")
            if _read(f"/proc/self/task/{t}/comm") == "hp-forward"]


@contextlib.contextmanager
def away_from_forwarding():
    """Runs the block on CPUs other than the ones the forwarding threads are on (when there
    are others): for system calls that run long without giving the CPU up. A kernel built
    without full preemption (PREEMPT_NONE, as on the test machines) lets no thread, realtime
    or not, take the CPU from one inside a system call, and opening an ENI's rings
    (packet_set_ring zeroing megabytes) ran 19-23 ms in one go: the loop, woken on that CPU,
    waited behind the ENI worker. A realtime thread that sleeps wakes on the CPU it slept on,
    so where it is now is where it will be."""
    before = os.sched_getaffinity(0)
    busy = {cpu for cpu in map(_cpu_of, forwarding_threads()) if cpu is not None}
    rest = before - busy
    moved = bool(busy and rest)
    if moved:
        os.sched_setaffinity(0, rest)
    try:
        yield
    finally:
        if moved:
            os.sched_setaffinity(0, before)


def _cpu_of(tid: int) -> int | None:
    """The CPU a thread of this process last ran on."""
    stat = proc_stat("self", tid)
    try:
        return int(stat[36]) if stat else None
    except (ValueError, IndexError):
        return None


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def in_background(handler):
    """A control handler that runs (and streams its pages) at background priority."""
    def run(req):
        os_thread_name("hp-control")
        lower_priority()
        return handler(req)
    return run


def os_thread_name(name: str) -> None:
    """Names this thread for the kernel (top -H, perf sched, /proc/PID/task/*/comm): a
    profile of the daemon then says which of its threads ran, not only "python3"."""
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/comm", "w") as f:
            f.write(name[:15])
    except OSError:
        pass
