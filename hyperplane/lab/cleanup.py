"""Finds and removes everything a lab with a given prefix left behind (like ``mn -c``).

Works from names alone — no saved state needed — so it also cleans up after a data plane or a
builder that was SIGKILLed. Idempotent: running it on a clean system does nothing.

Order matters (see DESIGN.md, lab pitfalls): ``ip netns del`` only unmounts a name, and a process
still inside keeps the namespace and its links alive. So:

1. stop the processes inside the lab's namespaces (SIGTERM, then SIGKILL after a grace period);
2. delete every link inside those namespaces (a veth takes its peer with it, synchronously,
   even when something outside still holds a reference to the namespace);
3. unmount and delete the namespace names;
4. delete links left in the calling (root) namespace whose names carry the prefix;
5. remove the saved state file and the namespaces' hosts files (``hostsfile``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import fcntl
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..runfolder import SUPERVISOR, Proc, is_alive, paths
from . import hostsfile, netns, portguard
from .names import ns_lambda
from .topology import LabState, is_lab_link, is_lab_namespace


@dataclass
class Leftovers:
    namespaces: list[str] = field(default_factory=list)
    pids: dict[str, list[int]] = field(default_factory=dict)   # namespace -> pids
    root_links: list[str] = field(default_factory=list)
    state_file: Path | None = None
    hosts_folders: list[Path] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.namespaces or any(self.pids.values()) or self.root_links
                    or self.state_file or self.hosts_folders)


@dataclass
class CleanupReport:
    prefix: str
    killed: list[int] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)             # "ns/ifname" or "ifname" (root)
    state_file: str | None = None
    files: list[str] = field(default_factory=list)     # hosts files, a refused state file
    errors: list[str] = field(default_factory=list)

    @property
    def removed_anything(self) -> bool:
        return bool(self.killed or self.namespaces or self.links or self.state_file
                    or self.files)


def lab_namespaces(prefix: str) -> list[str]:
    return [n for n in netns.list_namespaces() if is_lab_namespace(prefix, n)]


def _root_links(prefix: str) -> list[str]:
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        return sorted(name for link in ipr.get_links()
                      if (name := link.get("ifname")) and is_lab_link(prefix, name))


def find(prefix: str, run_dir: str | Path | None = None) -> Leftovers:
    """What a lab with ``prefix`` left behind, without touching it."""
    names = lab_namespaces(prefix)
    sf = LabState.path(prefix, run_dir)
    return Leftovers(namespaces=names, pids=netns.pids_by_namespace(names),
                     root_links=_root_links(prefix), state_file=sf if sf.exists() else None,
                     hosts_folders=hostsfile.lab_folders(prefix))


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)   # our own child: collect it so it does not linger
    except ChildProcessError:
        pass


def kill_processes(pids: list[int], grace: float = 1.0, report: CleanupReport | None = None
                   ) -> list[int]:
    """SIGTERM, wait up to ``grace`` seconds, SIGKILL what is left, wait for it to die."""
    me = os.getpid()
    pids = [p for p in dict.fromkeys(pids) if p != me]
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        live = [p for p in pids if is_alive(p)]
        if not live:
            break
        for p in live:
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                pass
            except OSError as e:
                if report is not None:
                    report.errors.append(f"kill {p}: {e}")
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            for p in live:
                _reap(p)
            if not any(is_alive(p) for p in live):
                break
            time.sleep(0.01)
    return pids


def _delete_links_in(ns: str, report: CleanupReport) -> None:
    from pyroute2.netlink.exceptions import NetlinkError
    try:
        ipr = netns.iproute(ns)
    except OSError as e:
        report.errors.append(f"{ns}: cannot enter: {e}")
        return
    with ipr:
        # bridge ports and veths first, bridges last; a veth's peer goes with it
        links = [(l["index"], l.get("ifname"), l.get(("linkinfo", "kind")))
                 for l in ipr.get_links()]
        links.sort(key=lambda x: x[2] == "bridge")
        for index, ifname, kind in links:
            if ifname == "lo":
                continue
            try:
                ipr.link("del", index=index)
                report.links.append(f"{ns}/{ifname}")
            except NetlinkError as e:
                if e.code not in (errno.ENODEV, errno.ENOENT, errno.EOPNOTSUPP):
                    report.errors.append(f"{ns}/{ifname}: {e}")


def _remove_free_lock(path: Path) -> None:
    """Removes the prefix lock a dead owner left (``hyperplane.Lab``); one a live process
    holds stays (flock: the owner goes with its process)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        path.unlink(missing_ok=True)
    except BlockingIOError:
        pass
    finally:
        os.close(fd)


def cleanup(prefix: str, run_dir: str | Path | None = None, grace: float = 1.0
            ) -> CleanupReport:
    """Removes every namespace, process, link and state file of lab ``prefix``."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _cleanup(prefix, run_dir, grace)
    # pyroute2's synchronous API cannot run inside a running event loop: use a helper thread
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        return ex.submit(_cleanup, prefix, run_dir, grace).result()


def _cleanup(prefix: str, run_dir: str | Path | None, grace: float) -> CleanupReport:
    from pyroute2.netlink.exceptions import NetlinkError
    report = CleanupReport(prefix=prefix)
    names = lab_namespaces(prefix)

    # 0. the supervisor (root namespace) first, or it would start the data plane again
    sup = Proc.find(prefix, SUPERVISOR, run_dir)
    if sup is not None:
        with sup:
            sup.stop()
        report.killed.append(sup.pid)

    # 1. processes (all namespaces at once, so one grace period)
    pids = [p for ps in netns.pids_by_namespace(names).values() for p in ps]
    if pids:
        report.killed += kill_processes(pids, grace=grace, report=report)
        for n, ps in netns.pids_by_namespace(names).items():
            # survived SIGKILL (uninterruptible sleep?): go on anyway, and say so
            if ps := [p for p in ps if p != os.getpid()]:
                report.errors.append(f"{n}: processes still inside: {ps}")

    # 2-3. the functions' port filter (it would go with its namespace; said explicitly so a
    # namespace kept alive by a straggler holds no rules), links inside, then the names
    if ns_lambda(prefix) in names and portguard.remove(prefix):
        report.links.append(f"{ns_lambda(prefix)}/nft {portguard.table_name(prefix)}")
    for n in names:
        _delete_links_in(n, report)
    for n in names:
        try:
            if netns.remove(n):
                report.namespaces.append(n)
        except OSError as e:
            report.errors.append(f"{n}: {e}")

    # 4. links in the root namespace carrying the prefix
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        for link in ipr.get_links():
            name = link.get("ifname")
            if name and is_lab_link(prefix, name):
                try:
                    ipr.link("del", index=link["index"])
                    report.links.append(name)
                except NetlinkError as e:
                    if e.code not in (errno.ENODEV, errno.ENOENT):
                        report.errors.append(f"{name}: {e}")

    # 5. the saved state, the NAT's (connections, ports: csrc/nat/hp_state.h), the names
    report.files += [str(f) for f in hostsfile.remove(prefix)]
    sf = LabState.path(prefix, run_dir)
    paths(prefix, run_dir).state.unlink(missing_ok=True)
    rejected = paths(prefix, run_dir).state_rejected       # tens of MB of tmpfs each
    if rejected.exists():
        rejected.unlink()
        report.files.append(str(rejected))
    _remove_free_lock(paths(prefix, run_dir).dir / f"{prefix}.lock")
    try:
        sf.unlink()
        report.state_file = str(sf)
    except FileNotFoundError:
        pass
    return report
