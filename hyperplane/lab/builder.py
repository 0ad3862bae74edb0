"""Applies a Topology with pyroute2: namespaces, bridges, veths, addresses, routes, tc drops.

    lab = Lab(default_config())
    state = lab.up()                    # LabState, also saved to /run/hyperplane/{prefix}.json
    eni = lab.add_eni("app", ["sg-web"])  # a new ENI port in the running lab
    lab.down()                          # removes everything with the prefix

``Lab.attach(prefix)`` picks up a running lab from its saved state (another process, the CLI).

No forks: every netlink socket is opened by switching only the calling thread into the target
namespace (``netns.iproute``), so ``add_eni`` is safe in a process that runs threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import errno
import functools
import os
import platform
import socket
import struct
import threading
from pathlib import Path
from typing import Iterable

from ..config import Config, default_config
from . import hostsfile, netns, portguard
from .cleanup import CleanupReport, cleanup, find
from .topology import (BridgeSpec, EniInfo, LabError, LabState, LinkEnd, NamespaceSpec,
                       RouteSpec, Topology, VethSpec, build_topology, eni_veth)

IFA_F_NODAD = 0x02
TC_H_CLSACT_INGRESS = "ffff:fff2"


class _Sockets:
    """One pyroute2 IPRoute per namespace, opened on first use."""

    def __init__(self):
        self._ipr = {}

    def __getitem__(self, ns: str):
        ipr = self._ipr.get(ns)
        if ipr is None:
            ipr = self._ipr[ns] = netns.iproute(ns)
        return ipr

    def close(self) -> None:
        for ipr in self._ipr.values():
            with contextlib.suppress(Exception):
                ipr.close()
        self._ipr.clear()


def _index(ipr, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise LabError(f"interface {ifname!r} not found")
    return found[0]


# -- the ingress drop: a two-instruction eBPF program, "return TC_ACT_SHOT" ------------------

_BPF_NR = {"x86_64": 321, "aarch64": 280, "armv7l": 386, "riscv64": 280, "ppc64le": 361,
           "s390x": 351, "i686": 357}
_BPF_PROG_LOAD = 5
_BPF_PROG_TYPE_SCHED_CLS = 3
_TC_ACT_SHOT = 2


def _load_drop_program() -> int:
    """Loads ``r0 = TC_ACT_SHOT; exit`` as a tc classifier and returns its fd."""
    nr = _BPF_NR.get(platform.machine())
    if nr is None:
        raise OSError(errno.ENOSYS, f"bpf(2) number unknown on {platform.machine()}")
    insns = struct.pack("<BBhi", 0xB7, 0, 0, _TC_ACT_SHOT) + struct.pack("<BBhi", 0x95, 0, 0, 0)
    ibuf = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(b"GPL")
    attr = ctypes.create_string_buffer(128)
    struct.pack_into("<IIQQIIQII16s", attr, 0, _BPF_PROG_TYPE_SCHED_CLS, 2,
                     ctypes.addressof(ibuf), ctypes.addressof(lic), 0, 0, 0, 0, 0, b"hp_drop")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    fd = libc.syscall(ctypes.c_long(nr), ctypes.c_long(_BPF_PROG_LOAD), attr, ctypes.c_long(128))
    if fd < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"bpf(BPF_PROG_LOAD): {os.strerror(e)}")
    return fd


def add_ingress_drop(ipr, ns: str, ifname: str) -> None:
    """clsact + an ingress filter dropping every frame. AF_PACKET taps see frames before tc
    ingress, so the data plane still reads them while the kernel never handles them. Uses a
    direct-action cls_bpf filter (this needs no act_gact/cls_matchall kernel modules); falls
    back to ``tc`` with a classic-BPF bytecode when bpf(2) is not available."""
    index = _index(ipr, ifname)
    ipr.tc("add", "clsact", index)
    try:
        fd = _load_drop_program()
    except OSError:
        r = netns.exec(ns, ["tc", "filter", "add", "dev", ifname, "ingress", "prio", "1",
                            "protocol", "all", "bpf", "da", "bytecode", "1,6 0 0 2"])
        if r.returncode != 0:
            raise LabError(f"{ns}/{ifname}: cannot add the ingress drop: {r.stderr.strip()}")
        return
    try:
        ipr.tc("add-filter", "bpf", index, ":1", fd=fd, name="hp_drop",
               parent=TC_H_CLSACT_INGRESS, classid=1, direct_action=True, prio=1)
    finally:
        os.close(fd)


# -- applying specs --------------------------------------------------------------------------

# Where br_netfilter is loaded (Docker loads it), frames crossing a bridge go through
# iptables and conntrack: malformed ones are dropped before the data plane sees them and every
# flow is tracked twice. The lab's bridges are plain L2.
BRIDGE_NETFILTER_OFF = ("net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables",
                        "net.bridge.bridge-nf-call-arptables")


def _apply_namespace(spec: NamespaceSpec, socks: _Sockets) -> None:
    netns.create(spec.name)
    for key, value in spec.sysctls:
        netns.sysctl_write(spec.name, key, value)
    for key in BRIDGE_NETFILTER_OFF:
        with contextlib.suppress(FileNotFoundError):
            netns.sysctl_write(spec.name, key, 0)
    ipr = socks[spec.name]
    ipr.link("set", index=_index(ipr, "lo"), state="up")


def _add_addresses(ipr, index: int, addresses: Iterable[str]) -> None:
    for a in addresses:
        addr, plen = a.split("/")
        if ":" in addr:
            ipr.addr("add", index=index, address=addr, prefixlen=int(plen), family=socket.AF_INET6,
                     flags=IFA_F_NODAD)
        else:
            ipr.addr("add", index=index, address=addr, prefixlen=int(plen),
                     family=socket.AF_INET)


def _apply_bridge(b: BridgeSpec, mtu: int, socks: _Sockets) -> None:
    ipr = socks[b.ns]
    ipr.link("add", ifname=b.ifname, kind="bridge", address=b.mac, mtu=mtu, br_stp_state=0,
             br_forward_delay=0, br_mcast_snooping=0)
    index = _index(ipr, b.ifname)
    if not b.ipv6:
        netns.sysctl_write(b.ns, f"net/ipv6/conf/{b.ifname}/disable_ipv6", 1)
    _add_addresses(ipr, index, b.addresses)
    ipr.link("set", index=index, state="up")


def _configure_end(e: LinkEnd, socks: _Sockets) -> None:
    ipr = socks[e.ns]
    index = _index(ipr, e.ifname)
    if not e.ipv6:
        netns.sysctl_write(e.ns, f"net/ipv6/conf/{e.ifname}/disable_ipv6", 1)
    if e.master:
        ipr.link("set", index=index, master=_index(ipr, e.master))
    _add_addresses(ipr, index, e.addresses)
    if e.drop_ingress:
        add_ingress_drop(ipr, e.ns, e.ifname)
    ipr.link("set", index=index, state="up")


def _apply_veth(v: VethSpec, mtu: int, socks: _Sockets) -> None:
    peer = {"ifname": v.peer.ifname, "mtu": mtu}
    if v.peer.mac:
        peer["address"] = v.peer.mac
    kw = {"address": v.end.mac} if v.end.mac else {}
    fd = os.open(netns.path(v.peer.ns), os.O_RDONLY | os.O_CLOEXEC)
    try:
        peer["net_ns_fd"] = fd
        socks[v.end.ns].link("add", ifname=v.end.ifname, kind="veth", mtu=mtu, peer=peer, **kw)
    finally:
        os.close(fd)
    # the peer first: by the time the data-plane end comes up, its wire is ready
    _configure_end(v.peer, socks)
    if v.end.mac and v.peer.master:
        _pin_mac(socks[v.peer.ns], v.end.mac, v.peer.ifname, v.peer.master)
    _configure_end(v.end, socks)


NUD_NOARP, NTF_MASTER, NTF_STICKY = 0x40, 0x04, 0x40


def _pin_mac(ipr, mac: str, port: str, bridge: str) -> None:
    """A static, sticky forwarding entry: the bridge sends frames for mac to port only, and
    never learns mac elsewhere, so a frame forged with that source address on another port
    (the fuzz tests send such frames) cannot divert what belongs to the data plane or a
    function."""
    ipr.fdb("replace", ifindex=_index(ipr, port), lladdr=mac, master=_index(ipr, bridge),
            state=NUD_NOARP, flags=NTF_MASTER | NTF_STICKY)


def _apply_route(r: RouteSpec, socks: _Sockets) -> None:
    ipr = socks[r.ns]
    family = socket.AF_INET if r.family == 4 else socket.AF_INET6
    ipr.route("add", dst=r.dst, gateway=r.gateway, oif=_index(ipr, r.ifname), family=family)


def apply(topo: Topology) -> None:
    """Creates everything in ``topo`` (which must not exist yet). Not transactional: on error
    the caller cleans up by prefix."""
    socks = _Sockets()
    try:
        for n in topo.namespaces:
            _apply_namespace(n, socks)
        for b in topo.bridges:
            _apply_bridge(b, topo.mtu, socks)
        for v in topo.veths:
            _apply_veth(v, topo.mtu, socks)
        for r in topo.routes:
            _apply_route(r, socks)
    finally:
        socks.close()


# -- the lab ---------------------------------------------------------------------------------

def _outside_event_loop(fn):
    """pyroute2's synchronous API runs its own event loop, which fails in a thread whose loop
    is running (an asyncio control plane): there, do the work on a helper thread and wait."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return fn(*args, **kwargs)
        result: list = []

        def run():
            try:
                result.append((True, fn(*args, **kwargs)))
            except BaseException as e:  # re-raised in the caller
                result.append((False, e))
        t = threading.Thread(target=run, name=f"hyperplane-lab-{fn.__name__}")
        t.start()
        t.join()
        ok, value = result[0]
        if ok:
            return value
        raise value
    return wrapper


class Lab:
    """A lab built from a Config (or found running with ``Lab.attach``)."""

    def __init__(self, config: Config | None = None, run_dir: str | Path | None = None):
        self.config = config if config is not None else default_config()
        self.topology: Topology | None = build_topology(self.config)
        self.prefix = self.config.prefix
        self.run_dir = run_dir
        self.state: LabState | None = None
        self._lock = threading.Lock()

    @classmethod
    def attach(cls, prefix: str, run_dir: str | Path | None = None) -> "Lab":
        """The running lab ``prefix``, from its saved state (LabError when there is none)."""
        try:
            state = LabState.load(prefix, run_dir)
        except FileNotFoundError:
            raise LabError(f"no running lab {prefix!r} (no {LabState.path(prefix, run_dir)})") \
                from None
        lab = cls.__new__(cls)
        lab.config = state.config              # the typed value the lab was built from
        lab.topology = None
        lab.prefix = prefix
        lab.run_dir = run_dir
        lab.state = state
        lab._lock = threading.Lock()
        return lab

    def __repr__(self) -> str:
        return f"<Lab {self.prefix!r} {'up' if self.state else 'down'}>"

    def __enter__(self) -> "Lab":
        if self.state is None:
            self.up()
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    @_outside_event_loop
    def up(self, clean: bool = True) -> LabState:
        """Builds the lab and saves its state. Leftovers of a lab with the same prefix are
        removed first (``clean=False``: raise LabError instead). On failure everything made so
        far is removed again and the error raised."""
        if self.topology is None:
            raise LabError("an attached lab cannot be built again; down() it and build from "
                           "a Config")
        with self._lock:
            left = find(self.prefix, self.run_dir)
            if left:
                if not clean:
                    raise LabError(f"lab {self.prefix!r} already exists "
                                   f"({', '.join(left.namespaces) or left.root_links}); "
                                   "run down first")
                cleanup(self.prefix, self.run_dir)
            try:
                apply(self.topology)
                portguard.install(self.prefix, self.topology.functions)
                state = self.topology.state()
                hostsfile.write(state)
                state.save(self.run_dir)
            except BaseException:
                cleanup(self.prefix, self.run_dir)
                raise
            self.state = state
            return state

    @_outside_event_loop
    def down(self) -> CleanupReport:
        """Removes everything with the lab's prefix (processes inside included). Idempotent."""
        with self._lock:
            report = cleanup(self.prefix, self.run_dir)
            self.state = None
            return report

    def _require_state(self) -> LabState:
        if self.state is None:
            raise LabError(f"lab {self.prefix!r} is not up")
        return self.state

    @_outside_event_loop
    def add_eni(self, subnet: str, security_groups: Iterable[str] = (),
                scale_out: bool = False) -> EniInfo:
        """Adds an ENI port to the running lab for (subnet, security groups): the next ENI id,
        the next free address of the subnet from .4, its own MAC; the veth ``p-eN`` in the
        data-plane namespace with its peer on the subnet's bridge. Saves the new state."""
        with self._lock:
            state = self._require_state()
            eni = dataclasses.replace(state.next_eni(subnet, security_groups),
                                      scale_out=scale_out)
            spec = eni_veth(self.prefix, eni, state.subnet(subnet))
            socks = _Sockets()
            try:
                _apply_veth(spec, state.mtu, socks)
            except BaseException:
                with contextlib.suppress(Exception):
                    ipr = socks[spec.end.ns]
                    ipr.link("del", index=_index(ipr, spec.end.ifname))
                raise
            finally:
                socks.close()
            state.with_eni(eni)
            state.save(self.run_dir)
            return eni

    @_outside_event_loop
    def remove_eni(self, eni_id: int) -> EniInfo:
        """Deletes an ENI's port (and its peer) and forgets it."""
        with self._lock:
            state = self._require_state()
            eni = state.eni(eni_id)
            with netns.iproute(state.dataplane_ns) as ipr:
                found = ipr.link_lookup(ifname=eni.ifname)
                if found:
                    ipr.link("del", index=found[0])
            state.without_eni(eni_id)
            state.save(self.run_dir)
            return eni

    def forget_eni(self, eni_id: int) -> None:
        """A Deleted ENI that the NAT released: its id and addresses go to the next ENI."""
        with self._lock:
            state = self._require_state()
            state.without_eni(eni_id)
            state.save(self.run_dir)

    @_outside_event_loop
    def delete_eni(self, eni_id: int) -> EniInfo:
        """Deletes an ENI's veth (its peer goes with it) and records it Deleted: its id and
        addresses stay its own until the NAT releases it (forget_eni)."""
        with self._lock:
            state = self._require_state()
            with netns.iproute(state.dataplane_ns) as ipr:
                found = ipr.link_lookup(ifname=state.eni(eni_id).ifname)
                if found:
                    ipr.link("del", index=found[0])
            eni = state.with_eni_status(eni_id, "Deleted")
            state.save(self.run_dir)
            return eni

    def move_function(self, name: str, subnet: str, security_groups=()) -> str:
        """A function's (subnet, security groups) changed: records it (and the ENI group,
        when new) and saves; returns the group key."""
        with self._lock:
            key = self._require_state().with_function_pair(name, subnet, security_groups)
            self.state.save(self.run_dir)
            return key

    def exec(self, name: str, argv, **kwargs):
        """Runs a command in a function's, host's or named namespace (netns.exec)."""
        return netns.exec(self._require_state().namespace_of(name), argv, **kwargs)

    def popen(self, name: str, argv, **kwargs):
        return netns.popen(self._require_state().namespace_of(name), argv, **kwargs)


def up(config: Config | None = None, run_dir: str | Path | None = None) -> Lab:
    """Builds a lab (the built-in default when ``config`` is None) and returns it."""
    lab = Lab(config, run_dir=run_dir)
    lab.up()
    return lab


def down(prefix: str = "hp", run_dir: str | Path | None = None) -> CleanupReport:
    """Removes lab ``prefix``, whether or not it is running or its state file exists."""
    return cleanup(prefix, run_dir)
