"""Names inside the lab: a hosts file per function and host namespace, so that every function
and host reaches every other by name (``curl http://web:8080/`` from a function).

``ip netns exec NAME`` bind-mounts each file of ``/etc/netns/NAME/`` over its namesake in
``/etc`` for the command it runs; every way the lab runs a command in a namespace goes through
it (``netns.exec`` / ``netns.popen``, ``hyperplane exec``, ``Lab.exec`` / ``Lab.popen``), so
this file is the namespace's ``/etc/hosts`` there.

Each namespace lists the addresses it can use: a function sees IPv6 addresses of the customer
hosts only when it may use IPv6 (``ipv6_allowed_for_dual_stack``), a host in an IPv4-only
subnet sees IPv4 only, so a client never waits on an address the NAT drops. Customer hosts
see the functions' inside addresses too: the name resolves, and the connection is refused
as V2N refuses it (one-way NAT).

The machine's own host name resolves to loopback there too (servers such as Python's
``http.server`` look it up as they bind), and a ``resolv.conf`` beside the hosts file names
the namespace's own loopback as its only name server: a name the lab does not know fails at
once, and no lookup leaves the namespace for the machine's name server.

The files are found again by the lab's prefix (``remove``), also after a crash.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Iterable

from .names import is_lab_namespace
from .state import FunctionInfo, HostInfo, LabState

ETC_NETNS = Path("/etc/netns")
HOSTS = "hosts"
RESOLV = "resolv.conf"
WRITTEN_BY = "# written by hyperplane for this lab namespace; removed by `hyperplane down`\n"
LOOPBACK = "127.0.0.1\tlocalhost{machine}\n::1\tlocalhost ip6-localhost ip6-loopback\n"
RESOLV_TEXT = WRITTEN_BY + "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n"


def _v6_usable(viewer: FunctionInfo | HostInfo) -> bool:
    if isinstance(viewer, FunctionInfo):
        return viewer.ipv6 is not None and viewer.ipv6_allowed
    return viewer.ipv6 is not None


def entries(state: LabState, viewer: FunctionInfo | HostInfo) -> list[tuple[str, str]]:
    """(address, name) pairs the namespace of ``viewer`` resolves, its own name first."""
    others = [x for x in (*state.functions, *state.hosts) if x.name != viewer.name]  # unique
    out: list[tuple[str, str]] = []
    for other in (viewer, *others):
        out.append((other.ipv4, other.name))
        # functions talk to functions on the inside network, to hosts through the NAT
        same_side = isinstance(other, FunctionInfo) == isinstance(viewer, FunctionInfo)
        v6_ok = viewer.ipv6 is not None if same_side else _v6_usable(viewer)
        if other.ipv6 and v6_ok:
            out.append((other.ipv6, other.name))
    return out


def render(state: LabState, viewer: FunctionInfo | HostInfo) -> str:
    machine = socket.gethostname()
    header = WRITTEN_BY + LOOPBACK.format(
        machine=f" {machine}" if machine and machine != "localhost" else "")
    return header + "".join(f"{addr}\t{name}\n" for addr, name in entries(state, viewer))


def path(ns: str) -> Path:
    return ETC_NETNS / ns / HOSTS


def _write_public(p: Path, text: str) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.chmod(tmp, 0o644)            # read by whatever user a command inside runs as
    os.replace(tmp, p)
    return p


def write(state: LabState) -> list[Path]:
    """Writes the hosts file and resolv.conf of every function and host namespace of
    ``state``."""
    written = []
    for viewer in (*state.functions, *state.hosts):
        written.append(_write_public(path(viewer.ns), render(state, viewer)))
        written.append(_write_public(ETC_NETNS / viewer.ns / RESOLV, RESOLV_TEXT))
    return written


def lab_folders(prefix: str, root: Path = ETC_NETNS) -> list[Path]:
    """The ``/etc/netns`` folders of lab ``prefix``'s namespaces (by name: no state needed)."""
    try:
        names: Iterable[str] = os.listdir(root)
    except FileNotFoundError:
        return []
    return sorted(root / n for n in names if is_lab_namespace(prefix, n))


def remove(prefix: str, root: Path = ETC_NETNS) -> list[Path]:
    """Removes the hosts files and resolv.conf of lab ``prefix`` (and their folders when
    nothing else is in them); returns the files removed."""
    removed = []
    for folder in lab_folders(prefix, root):
        for f in (folder / HOSTS, folder / RESOLV):
            try:
                if f.name == RESOLV and not f.read_text().startswith(WRITTEN_BY):
                    continue                # the user's own: theirs to keep
                f.unlink()
                removed.append(f)
            except FileNotFoundError:
                pass
        try:
            folder.rmdir()
        except OSError:             # another file of the user's: theirs to keep
            pass
    return removed
