"""Where the data plane's threads run: the forwarding thread as [hyperplane.forwarding] says
(docs/performance.md), the Python threads behind it (nice), long system calls away from the
forwarding thread's CPU, and thread names the kernel shows (top -H, perf sched). Used by the
daemon and the ENI backend.

"fair" (the default): a normal (SCHED_OTHER) thread that sleeps in poll() as soon as there is
nothing to forward, so it only ever takes the CPU time its frames cost, with a large weight so
that, woken, it runs ahead of the threads and processes beside it. The weight is its own: in
a cgroup of its own (cgroup v1 cpu controller: one thread can be moved, cpu.shares = weight x
1024), else through nice. Nice alone is not enough on a kernel with autogroups: the whole
process is one scheduling entity against the other sessions, and while a listing kept the
daemon's Python threads busy, a woken forwarding thread waited behind other processes for
longer than the forwarding gap the load tests allow (issue 6).

"realtime": SCHED_FIFO priority 1, ahead of every normal thread of its CPU; with a busy poll it
keeps the CPU (the kernel leaves the others 5% of each second), so a busy poll is only allowed
on CPUs given to the forwarding thread alone (config check).
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import threading

from .runfolder import proc_stat

BACKGROUND_NICE = 10        # the Python threads yield the CPU to forwarding on a busy machine
FORWARDING_THREAD = "hp-forward"
FORWARDING_RT_PRIORITY = 1
NORMAL_SHARES = 1024                  # cpu.shares of a cgroup as heavy as one normal thread
CGROUP_V1_CPU = "/sys/fs/cgroup/cpu"


def forwarding_threads(pid: int | str = "self") -> list[int]:
    """The forwarding threads of process ``pid`` (this one by default); none when it is gone."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    return [int(t) for t in tasks if _read(f"/proc/{pid}/task/{t}/comm") == FORWARDING_THREAD]


def nice_for(weight: int) -> int:
    """The nice value whose weight is `weight` times a normal thread's (1.25x a step)."""
    return -min(20, round(math.log(weight, 1.25)))


PRIVATE_MOUNT = "/tmp/hyperplane-cgroup-cpu"


def cpu_hierarchy() -> str | None:
    """Where the cgroup v1 cpu hierarchy is mounted for this process. `ip netns exec` gives the
    daemon a mount namespace of its own with a fresh /sys and no cgroups in it: there it is
    mounted privately (gone with the namespace; nothing changes for other processes)."""
    if os.path.exists(os.path.join(CGROUP_V1_CPU, "cpu.shares")):
        return CGROUP_V1_CPU
    if os.path.exists(os.path.join(PRIVATE_MOUNT, "cpu.shares")):
        return PRIVATE_MOUNT
    try:
        if os.readlink("/proc/self/ns/mnt") == os.readlink(f"/proc/{os.getppid()}/ns/mnt"):
            return None                   # the starting process's mounts: not ours to add to
        os.makedirs(PRIVATE_MOUNT, exist_ok=True)
    except OSError:
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"cgroup", PRIVATE_MOUNT.encode(), b"cgroup", 0, b"cpu") != 0:
        return None                       # no v1 cpu controller (a cgroup v2 machine)
    return PRIVATE_MOUNT


def cgroup_path(prefix: str, root: str | None = None) -> str:
    return os.path.join(root or cpu_hierarchy() or CGROUP_V1_CPU, f"hyperplane-{prefix}-forward")


def _own_cgroup(tid: int, prefix: str, weight: int) -> str:
    """Moves thread tid into a cpu cgroup of its own with `weight` times a normal thread's
    share; returns what it did or why not."""
    root = cpu_hierarchy()
    if root is None:
        return "no cgroup of its own (no cgroup v1 cpu controller)"
    path = cgroup_path(prefix, root)
    try:
        os.makedirs(path, exist_ok=True)
        _write(os.path.join(path, "cpu.shares"), str(weight * NORMAL_SHARES))
        _write(os.path.join(path, "tasks"), str(tid))
    except OSError as e:
        return f"no cgroup of its own ({path}: {e.strerror})"
    return f"cgroup {path} cpu.shares {weight * NORMAL_SHARES}"


def _process_cgroup() -> str | None:
    """The cgroup v1 cpu directory of this process (its threads start there)."""
    root = cpu_hierarchy()
    for line in _read("/proc/self/cgroup").splitlines():
        _, controllers, path = line.split(":", 2)
        if root and "cpu" in controllers.split(","):
            return os.path.join(root, path.lstrip("/"))
    return None


def _leave_own_cgroup(tid: int, prefix: str) -> None:
    """Back to the process's cgroup (a new cgroup has no realtime budget: SCHED_FIFO fails)."""
    home = _process_cgroup()
    if home and home != cgroup_path(prefix) and os.path.exists(cgroup_path(prefix)):
        try:
            _write(os.path.join(home, "tasks"), str(tid))
        except OSError:
            pass


def release(prefix: str) -> None:
    """Removes the forwarding thread's cgroup once it is empty (the process is stopping)."""
    try:
        os.rmdir(cgroup_path(prefix))
    except OSError:
        pass


def _schedule(tid: int, cfg, prefix: str) -> list[str]:
    done = []
    if cfg.scheduling == "realtime":
        _leave_own_cgroup(tid, prefix)
        try:
            os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(FORWARDING_RT_PRIORITY))
            return [f"SCHED_FIFO {FORWARDING_RT_PRIORITY}"]
        except OSError as e:
            done.append(f"no SCHED_FIFO ({e.strerror}), fair instead")
    nice = nice_for(cfg.weight)
    try:
        os.setpriority(os.PRIO_PROCESS, tid, nice)
        done.append(f"SCHED_OTHER nice {nice}")
    except OSError as e:
        done.append(f"SCHED_OTHER, normal priority (nice {nice}: {e.strerror})")
    done.append(_own_cgroup(tid, prefix, cfg.weight))
    return done


def _pin(tid: int, cpus: tuple[int, ...]) -> str:
    if not cpus:
        return "any CPU"
    usable = set(cpus) & os.sched_getaffinity(0)
    if not usable:
        return f"any CPU (CPUs {list(cpus)} are not this process's)"
    os.sched_setaffinity(tid, usable)
    return f"CPUs {sorted(usable)} only"


def forwarding_first(cfg, prefix: str) -> str:
    """Schedules every forwarding thread as `cfg` (a ForwardingConfig) says; returns what it
    did, for stats and logs."""
    tids = forwarding_threads()
    if not tids:
        return f"{cfg.scheduling}: thread {FORWARDING_THREAD} not found"
    parts = []
    for tid in tids:
        did = _schedule(tid, cfg, prefix) + [_pin(tid, cfg.cpus)]
        parts.append(f"thread {tid}: " + ", ".join(did))
    spin = f"busy poll {cfg.spin_us} us" if cfg.spin_us else "no busy poll"
    return f"{cfg.scheduling} ({spin}); " + "; ".join(parts)


POLICIES = {os.SCHED_OTHER: "SCHED_OTHER", os.SCHED_FIFO: "SCHED_FIFO", os.SCHED_RR: "SCHED_RR",
            os.SCHED_BATCH: "SCHED_BATCH", os.SCHED_IDLE: "SCHED_IDLE"}


def forwarding_now() -> list[dict]:
    """Each forwarding thread as the kernel sees it now: policy, nice, the CPUs it may use, the
    CPU it last ran on, and how often it gave the CPU up (sleeping) or had it taken
    (involuntary: something else ran on its CPU while it had work)."""
    out = []
    for tid in forwarding_threads():
        try:
            policy = POLICIES.get(os.sched_getscheduler(tid), "?")
            nice = os.getpriority(os.PRIO_PROCESS, tid)
            allowed = sorted(os.sched_getaffinity(tid))
        except OSError:
            continue
        status = dict(line.split(":\t", 1) for line in
                      _read(f"/proc/self/task/{tid}/status").splitlines() if ":\t" in line)
        out.append({"tid": tid, "policy": policy, "nice": nice, "cpus_allowed": allowed,
                    "cpu": cpu_of(tid),
                    "voluntary_switches": int(status.get("voluntary_ctxt_switches", 0)),
                    "involuntary_switches": int(status.get("nonvoluntary_ctxt_switches", 0))})
    return out


def cpu_of(tid: int) -> int | None:
    """The CPU a thread of this process last ran on."""
    stat = proc_stat("self", tid)
    try:
        return int(stat[36]) if stat else None
    except (ValueError, IndexError):
        return None




def lower_priority() -> None:
    """This thread (and the commands it starts) runs at BACKGROUND_NICE: listings, expiry and
    ENI creation take what CPU the forwarding thread leaves (Linux: nice is per thread)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)
    except OSError:
        pass


@contextlib.contextmanager
def away_from_forwarding():
    """Runs the block on CPUs other than the ones the forwarding threads are on (when there
    are others): for system calls that run long without giving the CPU up. A kernel built
    without full preemption (PREEMPT_NONE, as on the test machines) lets no thread, realtime
    or not, take the CPU from one inside a system call, and opening an ENI's rings
    (packet_set_ring zeroing megabytes) ran 19-23 ms in one go: the loop, woken on that CPU,
    waited behind the ENI worker. A sleeping thread wakes on the CPU it slept on unless
    another is idle, and the one this block runs on is not, so where it is now is where it
    will be."""
    before = os.sched_getaffinity(0)
    busy = {cpu for cpu in map(cpu_of, forwarding_threads()) if cpu is not None}
    rest = before - busy
    moved = bool(busy and rest)
    if moved:
        os.sched_setaffinity(0, rest)
    try:
        yield
    finally:
        if moved:
            os.sched_setaffinity(0, before)


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


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
