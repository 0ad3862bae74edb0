"""Named network namespaces without forking: create, enter, list, remove, run commands.

Namespaces are the ones ``ip netns`` knows (files under /run/netns). Everything here switches
only the *calling thread* (``setns(2)`` on Linux is per thread), so it is safe in a process that
already runs threads, unlike helpers that fork (pyroute2's netns helpers do).

- ``entered(name)``: a context manager running its block in the namespace (this thread only).
  Sockets created inside stay in that namespace: ``iproute(name)``, ``socket(name, ...)``.
- ``exec(name, argv)`` / ``popen(name, argv)``: a command in the namespace (``ip netns exec``,
  which also mounts the namespace's /sys so ``ethtool``, ``ip``, ``tc`` see its interfaces).
- ``pids(name)``: processes inside the namespace (``ip netns pids``, scanning /proc).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import socket as _socket
import subprocess
from pathlib import Path
from typing import Iterator, Sequence

NETNS_DIR = Path("/run/netns")

CLONE_NEWNET = 0x40000000
MS_BIND = 4096
MS_REC = 16384
MS_SHARED = 1 << 20
MNT_DETACH = 2

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_void_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]


def _oserror(what: str, path=None) -> OSError:
    e = ctypes.get_errno()
    return OSError(e, f"{what}: {os.strerror(e)}", str(path) if path else None)


def path(name: str) -> Path:
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"bad namespace name {name!r}")
    return NETNS_DIR / name


def list_namespaces() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def exists(name: str) -> bool:
    return path(name).exists()


def _thread_ns() -> int:
    return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)


def _setns(fd: int, what) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        raise _oserror("setns", what)


def _ensure_netns_dir() -> None:
    """/run/netns as a shared mount point, like iproute2, so that namespaces mounted in it are
    seen from every mount namespace."""
    NETNS_DIR.mkdir(parents=True, exist_ok=True)
    d = str(NETNS_DIR).encode()
    if _libc.mount(b"none", d, None, MS_SHARED | MS_REC, None) == 0:
        return
    if ctypes.get_errno() != errno.EINVAL:  # EINVAL: not a mount point yet
        raise _oserror("mount --make-rshared", NETNS_DIR)
    if _libc.mount(d, d, b"none", MS_BIND | MS_REC, None) != 0:
        raise _oserror("mount --bind", NETNS_DIR)
    if _libc.mount(b"none", d, None, MS_SHARED | MS_REC, None) != 0:
        raise _oserror("mount --make-rshared", NETNS_DIR)


def create(name: str, exist_ok: bool = False) -> None:
    """Creates a named network namespace (``ip netns add``) without forking: this thread
    unshares a new namespace, binds it to /run/netns/NAME and returns to where it was."""
    p = path(name)
    _ensure_netns_dir()
    try:
        os.close(os.open(p, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))
    except FileExistsError:
        if exist_ok:
            return
        raise
    saved = _thread_ns()
    try:
        if _libc.unshare(CLONE_NEWNET) != 0:
            raise _oserror("unshare", name)
        try:
            if _libc.mount(b"/proc/thread-self/ns/net", str(p).encode(), b"none", MS_BIND,
                           None) != 0:
                raise _oserror("mount --bind", p)
        finally:
            _setns(saved, "the original namespace")
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(p)
        raise
    finally:
        os.close(saved)


def remove(name: str) -> bool:
    """Unmounts and deletes the name (``ip netns del``); False when there was none. The
    namespace itself lives on while a process or socket still uses it."""
    p = path(name)
    if _libc.umount2(str(p).encode(), MNT_DETACH) != 0:
        e = ctypes.get_errno()
        if e not in (errno.EINVAL, errno.ENOENT):  # EINVAL: a stale file, not mounted
            raise OSError(e, f"umount: {os.strerror(e)}", str(p))
    try:
        os.unlink(p)
    except FileNotFoundError:
        return False
    return True


@contextlib.contextmanager
def entered(name: str | None) -> Iterator[None]:
    """Runs the block with this thread in namespace ``name`` (None: stay where we are)."""
    if name is None:
        yield
        return
    fd = os.open(path(name), os.O_RDONLY | os.O_CLOEXEC)
    saved = _thread_ns()
    try:
        _setns(fd, name)
        try:
            yield
        finally:
            _setns(saved, "the original namespace")
    finally:
        os.close(saved)
        os.close(fd)


def iproute(name: str | None):
    """A pyroute2 IPRoute whose netlink socket lives in namespace ``name`` (no fork)."""
    from pyroute2 import IPRoute
    with entered(name):
        return IPRoute()


def socket(name: str | None, family: int = _socket.AF_INET, type: int = _socket.SOCK_STREAM,
           proto: int = 0) -> _socket.socket:
    """A socket created in namespace ``name``: it keeps working there from any thread."""
    with entered(name):
        return _socket.socket(family, type, proto)


def _sysctl_path(key: str) -> Path:
    key = key.strip("/")
    if "/" not in key:
        key = key.replace(".", "/")
    return Path("/proc/sys") / key


def sysctl_write(name: str | None, key: str, value) -> None:
    """Sets a sysctl in namespace ``name``. ``key`` is dotted (net.ipv4.ip_forward) or a path
    under /proc/sys (net/ipv6/conf/hp-in/disable_ipv6: use this form for names with dots)."""
    with entered(name):
        with open(_sysctl_path(key), "w") as f:
            f.write(str(value))


def sysctl_read(name: str | None, key: str) -> str:
    with entered(name):
        with open(_sysctl_path(key)) as f:
            return f.read().strip()


def inode(name: str) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the namespace, or None when the name does not exist."""
    try:
        st = os.stat(path(name))
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def pids(name: str) -> list[int]:
    """Processes with any thread inside namespace ``name`` (``ip netns pids``); zombies, which
    no longer have a namespace, are not listed."""
    return pids_by_namespace([name]).get(name, [])


def pids_by_namespace(names) -> dict[str, list[int]]:
    """{namespace: pids} for the given names, in one pass over /proc (namespaces without
    processes are left out). Our own process is listed too if one of its threads is inside."""
    targets = {}
    for n in names:
        ino = inode(n)
        if ino is not None:
            targets[ino] = n
    found: dict[str, list[int]] = {}
    if not targets:
        return found
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            tasks = os.listdir(f"/proc/{entry}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                st = os.stat(f"/proc/{entry}/task/{tid}/ns/net")
            except OSError:
                continue
            n = targets.get((st.st_dev, st.st_ino))
            if n is not None:
                found.setdefault(n, []).append(int(entry))
                break
    return found


def _argv(name: str, argv: Sequence[str] | str) -> list[str]:
    if isinstance(argv, str):
        argv = ["sh", "-c", argv]
    if not exists(name):
        raise FileNotFoundError(errno.ENOENT, f"no network namespace {name!r}", str(path(name)))
    return ["ip", "netns", "exec", name, *argv]


def exec(name: str, argv: Sequence[str] | str, check: bool = False, capture: bool = True,
         timeout: float | None = None, **kwargs) -> subprocess.CompletedProcess:
    """Runs a command inside namespace ``name`` and waits for it. ``argv`` as a string runs
    through ``sh -c``. Output is captured as text unless ``capture=False``."""
    if capture:
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        kwargs.setdefault("text", True)
    return subprocess.run(_argv(name, argv), check=check, timeout=timeout, **kwargs)


def popen(name: str, argv: Sequence[str] | str, **kwargs) -> subprocess.Popen:
    """Starts a command inside namespace ``name`` (its pid is the command's own: ``ip netns
    exec`` execs it)."""
    return subprocess.Popen(_argv(name, argv), **kwargs)


def _icmp_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ping(name: str | None, dst: str, timeout: float = 2.0, interval: float = 0.2,
         ident: int | None = None) -> bool:
    """True when ``dst`` answers an ICMP/ICMPv6 echo sent from namespace ``name`` within
    ``timeout`` seconds (one request every ``interval``). No ``ping`` binary needed."""
    import ipaddress
    import select
    import time
    v6 = ipaddress.ip_address(dst).version == 6
    if v6:
        s = socket(name, _socket.AF_INET6, _socket.SOCK_RAW, _socket.IPPROTO_ICMPV6)
        req, rep = 128, 129
    else:
        s = socket(name, _socket.AF_INET, _socket.SOCK_RAW, _socket.IPPROTO_ICMP)
        req, rep = 8, 0
    ident = (os.getpid() if ident is None else ident) & 0xFFFF
    with s:
        end = time.monotonic() + timeout
        seq = 0
        while time.monotonic() < end:
            seq += 1
            msg = bytes([req, 0, 0, 0]) + ident.to_bytes(2, "big") + seq.to_bytes(2, "big") \
                + b"hyperplane lab"
            if not v6:  # the kernel fills in ICMPv6 checksums itself
                msg = msg[:2] + _icmp_checksum(msg).to_bytes(2, "big") + msg[4:]
            try:
                s.sendto(msg, (dst, 0))
            except OSError:
                pass            # unreachable for now (no route / neighbour): try again
            next_send = min(time.monotonic() + interval, end)
            while True:
                left = next_send - time.monotonic()
                if left <= 0:
                    break
                r, _, _ = select.select([s], [], [], left)
                if not r:
                    break
                data = s.recv(65535)
                if not v6:
                    data = data[(data[0] & 0x0F) * 4:]
                if len(data) >= 8 and data[0] == rep and \
                        int.from_bytes(data[4:6], "big") == ident:
                    return True
    return False
