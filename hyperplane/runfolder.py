"""The run folder and the processes it names: what the lab, the control socket, the runtime,
the supervisor, the data plane and the flow logs share. A leaf module: it imports nothing of
Hyperplane, so any layer may use it.

Files of lab P in the run folder D (default /run/hyperplane, or $HYPERPLANE_RUN_DIR), all
0600, D itself 0700:

    P.json            the lab's saved state          P.sock            control socket
    P.pid             data plane pid                 P.supervisor.pid  supervisor pid
    P-dataplane.log   both processes' output         P-flowlogs/       flow logs (0700)
    P.state           shared-memory connection state P.restarts.json   restart count and times

A pid file is trusted only when the process it names is alive and its command line is ours
(same role, same prefix): a stale pid file, or a pid reused by another program, is never
signalled. Signals go through a pidfd, so the process checked is the process signalled.
"""

from __future__ import annotations

import os
import select
import signal
from dataclasses import dataclass
from pathlib import Path

RUN_DIR = Path(os.environ.get("HYPERPLANE_RUN_DIR", "/run/hyperplane"))
DATAPLANE, SUPERVISOR = "daemon", "supervisor"        # module names, also the pid-file roles
STOP_TIMEOUT_S = 5.0
START_TIMEOUT_S = 20.0
# The data plane's exit code when it cannot start for a reason a restart would not change (its
# config, its state file): the supervisor does not restart it. Its log's last line says why,
# after CANNOT_START.
EXIT_CANNOT_START = 78                                  # EX_CONFIG
CANNOT_START = "cannot start: "
_RESTARTS_SUFFIX = ".restarts.json"


@dataclass(frozen=True)
class RunPaths:
    """The files of one lab in one run folder."""
    prefix: str
    dir: Path

    def _f(self, suffix: str) -> Path:
        return self.dir / f"{self.prefix}{suffix}"

    @property
    def lab_state(self) -> Path:
        return self._f(".json")

    @property
    def socket(self) -> Path:
        return self._f(".sock")

    @property
    def pid(self) -> Path:
        return self._f(".pid")

    @property
    def supervisor_pid(self) -> Path:
        return self._f(".supervisor.pid")

    @property
    def log(self) -> Path:
        return self._f("-dataplane.log")

    @property
    def flow_logs(self) -> Path:
        """The flow-log folder (unless the lab's config names another)."""
        return self._f("-flowlogs")

    @property
    def state(self) -> Path:
        """The shared-memory file the data plane keeps its connection table in."""
        return self._f(".state")

    @property
    def state_rejected(self) -> Path:
        """Where a refused state file is kept for inspection (csrc/nat/hp_state.h,
        HP_STATE_REJECTED_SUFFIX) until `down`."""
        return self._f(".state.rejected")

    @property
    def restarts(self) -> Path:
        return self._f(_RESTARTS_SUFFIX)

    def pid_file(self, role: str) -> Path:
        return self.pid if role == DATAPLANE else self.supervisor_pid

    def runtime_files(self) -> list[Path]:
        """What a stopped data plane leaves that `down` removes (not the logs, not the lab)."""
        return [self.socket, self.pid, self.supervisor_pid, self.restarts, self.state]


def paths(prefix: str, run_dir: str | Path | None = None) -> RunPaths:
    return RunPaths(prefix, Path(run_dir or RUN_DIR))


def prefixes(run_dir: str | Path | None = None) -> list[str]:
    """The labs with a saved state in the run folder."""
    d = Path(run_dir or RUN_DIR)
    return sorted(p.stem for p in d.glob("*.json")
                  if not p.name.endswith(_RESTARTS_SUFFIX)) if d.is_dir() else []


# --- private files ------------------------------------------------------------------------

def ensure_run_dir(run_dir: str | Path | None = None) -> Path:
    d = Path(run_dir or RUN_DIR)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    if d == Path(RUN_DIR) or run_dir is None:
        os.chmod(d, 0o700)
    return d


def private_file(path: Path) -> Path:
    """Creates ``path`` if missing; either way, mode 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    os.fchmod(fd, 0o600)
    os.close(fd)
    return path


def write_private(path: Path, text: str) -> None:
    """Writes ``text`` atomically, mode 0600."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(fd, 0o600)
        f.write(text)
    os.replace(tmp, path)


# --- process identity ---------------------------------------------------------------------

def proc_stat(pid: int | str, tid: int | None = None) -> list[str] | None:
    """The fields of /proc/PID/stat (of thread ``tid`` when given; "self" for this process)
    after the command name: [0] is the state (field 3 of proc(5)), [36] the CPU it last ran
    on (field 39). None when the process is gone. The command name may hold spaces and
    parentheses, so the fields start after its last ")"."""
    where = f"/proc/{pid}/task/{tid}/stat" if tid is not None else f"/proc/{pid}/stat"
    try:
        with open(where, "rb") as f:
            text = f.read()
    except OSError:
        return None
    end = text.rfind(b")")
    return text[end + 2:].decode().split() if end >= 0 else None


def is_alive(pid: int) -> bool:
    """True unless the process is gone or a zombie (a zombie holds no namespace)."""
    stat = proc_stat(pid)
    return bool(stat) and stat[0] not in ("Z", "X")


def is_ours(pid: int, role: str, prefix: str) -> bool:
    """Whether ``pid`` is a live (not zombie) process of this role for this lab."""
    if not is_alive(pid):
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().split(b"\0")
    except OSError:
        return False
    want = f"hyperplane.{role}".encode()
    return want in args and any(a == b"--prefix" and b == prefix.encode()
                                for a, b in zip(args, args[1:]))


class Proc:
    """A verified process of ours, held by a pidfd (signals reach this process, never one
    that reused its pid)."""

    def __init__(self, pid: int, fd: int):
        self.pid, self.fd = pid, fd

    @classmethod
    def find(cls, prefix: str, role: str, run_dir=None) -> "Proc | None":
        try:
            pid = int(paths(prefix, run_dir).pid_file(role).read_text())
        except (OSError, ValueError):
            return None
        return cls.of(pid, role, prefix)

    @classmethod
    def of(cls, pid: int, role: str, prefix: str) -> "Proc | None":
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            return None
        if not is_ours(pid, role, prefix):       # checked after the pidfd pins the process
            os.close(fd)
            return None
        return cls(pid, fd)

    def signal(self, sig: int) -> None:
        try:
            signal.pidfd_send_signal(self.fd, sig)
        except ProcessLookupError:
            pass

    def wait(self, timeout: float) -> bool:
        """True once the process has exited (a zombie counts), False after ``timeout``."""
        p = select.poll()
        p.register(self.fd, select.POLLIN)
        return bool(p.poll(max(0, timeout) * 1000))

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        self.signal(signal.SIGTERM)
        if not self.wait(timeout):
            self.signal(signal.SIGKILL)
            self.wait(timeout)

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def pid_of(prefix: str, role: str = DATAPLANE, run_dir=None) -> int | None:
    """The pid of the lab's data plane (or supervisor) if it runs, else None."""
    p = Proc.find(prefix, role, run_dir)
    if p is None:
        return None
    p.close()
    return p.pid
