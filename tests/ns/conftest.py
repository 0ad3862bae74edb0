"""Namespace tests: they need root. Every test here is marked ``ns`` and skipped, with the
reason, when not run as root.

Fixtures build labs under fresh short prefixes ("t" + 3 random characters) and remove them by
prefix afterwards, whether the test passed or not; a session finalizer sweeps every prefix the
session used as a last resort.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import string
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run from a fresh clone without installing
    sys.path.insert(0, str(ROOT))

HERE = Path(__file__).resolve().parent


def _skip_reason() -> str | None:
    if sys.platform != "linux":
        return "namespace tests need Linux network namespaces"
    if os.geteuid() != 0:
        return ("namespace tests need root (CAP_NET_ADMIN + CAP_SYS_ADMIN to create network "
                "namespaces); run as root, e.g. `sudo python -m pytest tests/ns`")
    if shutil.which("ip") is None:
        return "namespace tests need iproute2's `ip` (ip netns exec)"
    return None


SKIP_REASON = _skip_reason()


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.ns)
            if SKIP_REASON:
                item.add_marker(pytest.mark.skip(reason=SKIP_REASON))


_USED: set[str] = set()


def new_prefix() -> str:
    """A fresh prefix "t" + 3 of [a-z0-9] that no namespace or link uses yet."""
    from hyperplane.lab import netns
    alphabet = string.ascii_lowercase + string.digits
    taken = netns.list_namespaces()
    links = {name for _, name in socket.if_nameindex()}
    while True:
        p = "t" + "".join(random.choice(alphabet) for _ in range(3))
        if p in _USED or any(n.startswith(p + "-") for n in taken) \
                or any(n.startswith(p + "-") for n in links):
            continue
        _USED.add(p)
        return p


TEST_LAB = """
[inside]
cidr4 = "10.200.0.0/24"
cidr6 = "fd00:200::/64"

[[subnets]]
name = "app"
cidr4 = "10.0.1.0/24"
cidr6 = "fd00:1::/64"

[[subnets]]
name = "data"
cidr4 = "10.0.2.0/24"

[[subnets]]
name = "cache"
cidr4 = "10.0.3.0/24"
cidr6 = "fd00:3::/64"

[[hosts]]
name = "web"
subnet = "app"

[[hosts]]
name = "db"
subnet = "data"

[[hosts]]
name = "cache"
subnet = "cache"
address4 = "10.0.3.50"

[[functions]]
name = "api"
subnets = ["app"]
security_groups = ["sg-web"]
ipv6 = true

[[functions]]
name = "worker"
subnets = ["app"]
security_groups = ["sg-web"]

[[functions]]
name = "report"
subnets = ["data"]
security_groups = ["sg-db"]
"""


def lab_config(prefix: str):
    from hyperplane.config import loads_config
    return loads_config(f'prefix = "{prefix}"\n' + TEST_LAB)



def _sweep(prefix: str) -> None:
    from hyperplane.lab.cleanup import cleanup
    cleanup(prefix)


@contextmanager
def detached_lab(make):
    """The lab ``make(prefix)`` starts (``hyperplane up --detach``) under a fresh prefix; it is
    closed, brought down and swept afterwards, whether the test passed or not."""
    prefix = new_prefix()
    lab = None
    try:
        lab = make(prefix)
        yield lab
    finally:
        if lab:
            lab.close()
        subprocess.run([sys.executable, "-m", "hyperplane.cli", "down", "--prefix", prefix],
                       capture_output=True, timeout=120)
        _sweep(prefix)


@pytest.fixture(scope="session", autouse=True)
def _sweep_session_prefixes():
    yield
    if SKIP_REASON:
        return
    for p in sorted(_USED):
        try:
            _sweep(p)
        except Exception as e:  # keep sweeping the others
            print(f"cleanup of {p} failed: {e}", file=sys.stderr)


@pytest.fixture(scope="session")
def lab():
    """One running lab (TEST_LAB) shared by the read-mostly tests of the session."""
    from hyperplane.lab import Lab
    prefix = new_prefix()
    lab = Lab(lab_config(prefix))
    try:
        lab.up()
        yield lab
    finally:
        _sweep(prefix)


@pytest.fixture
def make_lab():
    """Builds labs under fresh prefixes; all of them are removed after the test."""
    from hyperplane.lab import Lab
    made: list[str] = []

    def make(config=None, up: bool = True):
        prefix = new_prefix()
        made.append(prefix)
        lab = Lab(config(prefix) if callable(config) else lab_config(prefix))
        if up:
            lab.up()
        return lab

    try:
        yield make
    finally:
        for p in made:
            _sweep(p)


class Tap:
    """An AF_PACKET socket on one interface of a namespace: sees every frame the interface
    receives, before tc ingress (so also what the lab's ingress drop discards)."""

    def __init__(self, ns: str, ifname: str):
        from hyperplane.lab import netns
        self.sock = netns.socket(ns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        self.sock.bind((ifname, 0))
        self.sock.setblocking(False)

    def frames(self, timeout: float):
        end = time.monotonic() + timeout
        import select
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return
            r, _, _ = select.select([self.sock], [], [], left)
            if r:
                data, addr = self.sock.recvfrom(65535)
                if addr[2] != socket.PACKET_OUTGOING:
                    yield data

    def wait_for(self, predicate, timeout: float = 2.0, poke=None, interval: float = 0.2):
        """The first frame matching ``predicate``; ``poke()`` is called now and then to make
        traffic. None on timeout."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if poke:
                poke()
            for f in self.frames(min(interval, end - time.monotonic())):
                if predicate(f):
                    return f
        return None

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@pytest.fixture
def tap():
    taps: list[Tap] = []

    def open_tap(ns: str, ifname: str) -> Tap:
        t = Tap(ns, ifname)
        taps.append(t)
        return t

    yield open_tap
    for t in taps:
        t.close()
