"""The traffic tools: hpbench (C, built with the system cc on first use) and iperf3, run
inside the lab's namespaces, every one killed by ``Procs.kill_all`` when the run ends."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from ..lab import netns

SOURCE = Path(__file__).with_name("hpbench.c")
GENERATOR_CPU = 0     # where every generator runs (placement.py moves the data plane around it)


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "hyperplane"


def hpbench_binary() -> str:
    """The compiled hpbench, built once per version of its source."""
    src = SOURCE.read_bytes()
    out = cache_dir() / f"hpbench-{hashlib.sha256(src).hexdigest()[:12]}"
    if out.exists():
        return str(out)
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise RuntimeError("no C compiler (cc or gcc) to build the traffic generator: "
                           "install gcc")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=".hpbench-")
    os.close(fd)
    r = subprocess.run([cc, "-O2", "-o", tmp, str(SOURCE)], capture_output=True, text=True,
                       timeout=120)
    if r.returncode != 0:
        os.unlink(tmp)
        raise RuntimeError(f"building hpbench failed: {r.stderr.strip()[:500]}")
    os.replace(tmp, out)
    return str(out)


class Procs:
    """Every process the run starts, so that nothing outlives it."""

    def __init__(self):
        self.procs: list[subprocess.Popen] = []
        self.hpbench = hpbench_binary()
        self.next_hops: dict[tuple[str, str], tuple[str, str]] = {}

    def start(self, ns: str, argv, **kw) -> subprocess.Popen:
        p = netns.popen(ns, argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, text=True, start_new_session=True, **kw)
        self.procs.append(p)
        return p

    def tool(self, ns: str, *args) -> subprocess.Popen:
        return self.start(ns, [self.hpbench, *map(str, args)])

    def generator(self, ns: str, dst: str, *args, count: int = 0) -> subprocess.Popen:
        """hpbench send on the generator's CPU (the middles' receive work goes to the others):
        from an AF_PACKET socket once the next hop's MAC is known, else from a raw socket
        (whose first datagrams make the kernel resolve it)."""
        pin = ["taskset", "-c", str(GENERATOR_CPU)] if (os.cpu_count() or 1) > 1 else []
        hop = self.next_hops.get((ns, dst)) or next_hop(ns, dst)
        if hop:
            self.next_hops[(ns, dst)] = hop
        return self.start(ns, [*pin, self.hpbench, "send", dst, *map(str, args), str(count),
                               *(hop or ())])

    def result(self, p: subprocess.Popen, timeout: float, what: str):
        """Waits for p and returns its output as JSON."""
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill(p)
            raise RuntimeError(f"{what} did not finish within {timeout:.0f} s") from None
        finally:
            if p in self.procs and p.poll() is not None:
                self.procs.remove(p)
        if p.returncode != 0:
            raise RuntimeError(f"{what} failed (rc {p.returncode}): {err.strip()[:300]}")
        try:
            return json.loads(out)
        except json.JSONDecodeError:
            raise RuntimeError(f"{what}: unreadable output {out[:200]!r}") from None

    def run(self, ns: str, *args, timeout: float, what: str):
        return self.result(self.tool(ns, *args), timeout, what)

    @staticmethod
    def kill(p: subprocess.Popen) -> None:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    def kill_all(self) -> None:
        for p in self.procs:
            self.kill(p)
        self.procs.clear()


def listening(ns: str, port: int, proto: str = "t") -> bool:
    r = netns.exec(ns, ["ss", f"-Hl{proto}n", f"sport = :{port}"], timeout=5)
    return r.returncode == 0 and bool(r.stdout.strip())


def wait_listening(p: subprocess.Popen, ns: str, port: int, proto: str = "t",
                   timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not listening(ns, port, proto):
        if p.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the server on port {port} in {ns} did not start")
        time.sleep(0.05)


def next_hop(ns: str, dst: str) -> tuple[str, str] | None:
    """(interface, MAC) of the next hop from ns towards dst, None while the kernel has not
    resolved it."""
    r = netns.exec(ns, ["ip", "-j", "route", "get", dst], timeout=5)
    try:
        route = json.loads(r.stdout)[0]
        dev, via = route["dev"], route.get("gateway", dst)
        r = netns.exec(ns, ["ip", "-j", "neigh", "show", "to", via, "dev", dev], timeout=5)
        mac = next(n["lladdr"] for n in json.loads(r.stdout) if n.get("lladdr"))
    except (ValueError, LookupError, StopIteration):
        return None
    return dev, mac
