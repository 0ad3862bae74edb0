"""The lab itself, built for real (root): namespaces, links, addresses, routes, reachability,
the data plane's quiet ports, runtime ENIs, and cleanup — also after a SIGKILL."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from hyperplane.lab import Lab, LabError, LabState, netns
from hyperplane.lab import builder
from hyperplane.lab.cleanup import cleanup, find
from hyperplane.lab.topology import build_topology, is_lab_link

IFF_UP = 0x1


# -- helpers ---------------------------------------------------------------------------------

def links_in(ns: str) -> dict[str, dict]:
    with netns.iproute(ns) as ipr:
        links = list(ipr.get_links())
        by_index = {l["index"]: l.get("ifname") for l in links}
        out = {}
        for l in links:
            out[l.get("ifname")] = {
                "mac": l.get("address"), "mtu": l.get("mtu"),
                "kind": l.get(("linkinfo", "kind")), "up": bool(l["flags"] & IFF_UP),
                "master": by_index.get(l.get("master")), "index": l["index"], "addresses": []}
        for a in ipr.get_addr():
            name = by_index[a["index"]]
            addr = ipaddress.ip_address(a.get("address"))
            if addr.is_link_local or addr.is_loopback:
                continue
            out[name]["addresses"].append(f"{addr}/{a['prefixlen']}")
    return out


def lab_namespaces(prefix: str) -> list[str]:
    from hyperplane.lab.cleanup import lab_namespaces as ln
    return ln(prefix)


def root_links(prefix: str) -> list[str]:
    return [name for _, name in socket.if_nameindex() if is_lab_link(prefix, name)]


def is_arp_request(frame: bytes, sender_mac: str, target: str) -> bool:
    return (len(frame) >= 42 and frame[12:14] == b"\x08\x06" and frame[20:22] == b"\x00\x01"
            and frame[22:28] == bytes.fromhex(sender_mac.replace(":", ""))
            and frame[38:42] == ipaddress.ip_address(target).packed)


def is_neighbour_solicitation(frame: bytes, target: str) -> bool:
    return (len(frame) >= 78 and frame[12:14] == b"\x86\xdd" and frame[20] == 58
            and frame[54] == 135 and frame[62:78] == ipaddress.ip_address(target).packed)


def udp_poke(ns: str, dst: str):
    """Sends one UDP datagram from ``ns`` to ``dst`` (enough to make the kernel resolve it)."""
    fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
    s = netns.socket(ns, fam, socket.SOCK_DGRAM)

    def poke():
        try:
            s.sendto(b"hello", (dst, 9))
        except OSError:
            pass
    poke.sock = s
    return poke


def clsact_drops(ns: str, ifname: str) -> int:
    r = netns.exec(ns, ["tc", "-s", "-j", "qdisc", "show", "dev", ifname], check=True)
    return sum(q.get("drops", 0) for q in json.loads(r.stdout) if q["kind"] == "clsact")


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def assert_gone(prefix: str):
    assert lab_namespaces(prefix) == []
    assert root_links(prefix) == []
    assert not LabState.path(prefix).exists()
    assert not find(prefix)


# -- the built lab matches its topology ------------------------------------------------------

def test_namespaces_exist_with_their_roles(lab):
    topo = lab.topology
    assert sorted(lab_namespaces(lab.prefix)) == sorted(n.name for n in topo.namespaces)
    roles = {n.name: n.role for n in lab.state.namespaces}
    assert roles[f"{lab.prefix}-hp"] == "dataplane" and roles[f"{lab.prefix}-vpc"] == "vpc"
    assert roles[f"{lab.prefix}-f-api"] == "function" and roles[f"{lab.prefix}-h-db"] == "host"


def test_links_macs_masters_and_addresses_match_the_topology(lab):
    topo = lab.topology
    actual = {n.name: links_in(n.name) for n in topo.namespaces}
    expected_links = {(ns, ifname) for ns, ifname in topo.links()}
    found_links = {(ns, name) for ns, links in actual.items() for name in links if name != "lo"}
    assert found_links == expected_links
    ends = [(b.ns, b.ifname, b.mac, None, b.addresses) for b in topo.bridges]
    ends += [(e.ns, e.ifname, e.mac, e.master, e.addresses)
             for v in topo.veths for e in (v.end, v.peer)]
    for ns, ifname, mac, master, addresses in ends:
        link = actual[ns][ifname]
        assert link["up"], (ns, ifname)
        assert link["mtu"] == 1500, (ns, ifname)
        if mac:
            assert link["mac"] == mac, (ns, ifname)
        assert link["master"] == master, (ns, ifname)
        assert sorted(link["addresses"]) == sorted(addresses), (ns, ifname)
    assert actual[f"{lab.prefix}-vpc"][f"{lab.prefix}-s0"]["kind"] == "bridge"
    assert actual[f"{lab.prefix}-hp"][f"{lab.prefix}-in"]["kind"] == "veth"


def test_nothing_of_the_lab_in_the_root_namespace(lab):
    assert root_links(lab.prefix) == []


def test_ipv6_addresses_are_not_tentative(lab):
    for ns in (f"{lab.prefix}-f-api", f"{lab.prefix}-h-web", f"{lab.prefix}-vpc"):
        out = netns.exec(ns, ["ip", "-6", "addr", "show", "scope", "global"], check=True).stdout
        assert "inet6" in out and "tentative" not in out, out


def test_routes(lab):
    with netns.iproute(f"{lab.prefix}-f-api") as ipr:
        gws = {(r["family"], r.get("gateway")) for r in ipr.get_routes()
               if r.get("gateway")}
    assert gws == {(socket.AF_INET, "10.200.0.1"), (socket.AF_INET6, "fd00:200::1")}
    with netns.iproute(f"{lab.prefix}-h-db") as ipr:
        gws = {(r["family"], r.get("gateway")) for r in ipr.get_routes() if r.get("gateway")}
    assert gws == {(socket.AF_INET, "10.0.2.1")}
    assert netns.sysctl_read(f"{lab.prefix}-vpc", "net.ipv4.ip_forward") == "1"
    assert netns.sysctl_read(f"{lab.prefix}-vpc", "net.ipv6.conf.all.forwarding") == "1"


def test_state_is_saved_and_attachable(lab):
    saved = json.loads(LabState.path(lab.prefix).read_text())
    assert saved["prefix"] == lab.prefix
    assert [e["ifname"] for e in saved["enis"]][:2] == [f"{lab.prefix}-e0", f"{lab.prefix}-e1"]
    attached = Lab.attach(lab.prefix)
    assert attached.state == lab.state
    with pytest.raises(LabError, match="no running lab"):
        Lab.attach("zzzz")


def test_exec_in_a_function_and_a_host(lab):
    out = lab.exec("api", ["ip", "-br", "addr", "show", "dev", "eth0"], check=True).stdout
    assert "10.200.0.11/24" in out and "fd00:200::b/64" in out
    assert "10.0.3.50/24" in lab.exec("cache", "ip -br addr").stdout
    with pytest.raises(FileNotFoundError):
        netns.exec(f"{lab.prefix}-nothing", ["true"])


# -- the data plane's ports ------------------------------------------------------------------

def test_dataplane_ports_are_quiet(lab):
    ns = f"{lab.prefix}-hp"
    ports = [lab.state.inside.ifname] + [e.ifname for e in lab.state.enis]
    assert netns.sysctl_read(ns, "net.ipv4.ip_forward") == "0"
    assert netns.sysctl_read(ns, "net.ipv6.conf.all.forwarding") == "0"
    out = netns.exec(ns, ["ip", "addr"], check=True).stdout
    for port in ports:
        assert netns.sysctl_read(ns, f"net/ipv6/conf/{port}/disable_ipv6") == "1"
        section = out.split(f"{port}@")[1].split("\n")[:4]
        assert not any("inet" in line for line in section), section   # not even link-local
        filters = netns.exec(ns, ["tc", "filter", "show", "dev", port, "ingress"],
                             check=True).stdout
        assert "direct-action" in filters, filters
        offload = netns.exec(ns, ["ethtool", "-k", port]).stdout
        if offload:  # ethtool is optional
            assert "tcp-segmentation-offload: on" in offload
            assert "tx-checksumming: on" in offload


# -- reachability ----------------------------------------------------------------------------

def test_hosts_ping_each_other_across_subnets(lab):
    p = lab.prefix
    web, db, cache = (lab.state.host(n) for n in ("web", "db", "cache"))
    assert netns.ping(f"{p}-h-web", db.ipv4)
    assert netns.ping(f"{p}-h-db", web.ipv4)
    assert netns.ping(f"{p}-h-db", cache.ipv4)
    assert netns.ping(f"{p}-h-web", cache.ipv6)           # dual-stack subnets route IPv6
    assert netns.ping(f"{p}-h-cache", web.ipv6)
    assert netns.ping(f"{p}-h-web", web.gateway6)


def test_functions_reach_the_inside_link_and_the_kernel_stays_out(lab, tap):
    """A function's ARP / neighbour solicitation for its gateway arrives on the data plane's
    inside port, is dropped by tc there, and nobody answers (the data plane will)."""
    hp = f"{lab.prefix}-hp"
    inside = lab.state.inside
    t = tap(hp, inside.ifname)
    drops = clsact_drops(hp, inside.ifname)
    for fn in lab.state.functions:
        poke = udp_poke(fn.ns, fn.gateway4)
        assert t.wait_for(lambda f: is_arp_request(f, fn.mac, fn.gateway4), poke=poke), fn.name
        poke.sock.close()
    api = lab.state.function("api")
    poke = udp_poke(api.ns, api.gateway6)
    assert t.wait_for(lambda f: is_neighbour_solicitation(f, api.gateway6), poke=poke)
    poke.sock.close()
    assert clsact_drops(hp, inside.ifname) > drops
    assert not netns.ping(api.ns, api.gateway4, timeout=0.3)


def test_hosts_reach_their_eni_links(lab, tap):
    hp = f"{lab.prefix}-hp"
    st = lab.state
    app_eni = st.enis_of("app|sg-web")[0]
    data_eni = st.enis_of("data|sg-db")[0]
    web, db = st.host("web"), st.host("db")
    t0, t1 = tap(hp, app_eni.ifname), tap(hp, data_eni.ifname)
    poke = udp_poke(web.ns, app_eni.ipv4)
    assert t0.wait_for(lambda f: is_arp_request(f, web.mac, app_eni.ipv4), poke=poke)
    poke = udp_poke(web.ns, app_eni.ipv6)
    assert t0.wait_for(lambda f: is_neighbour_solicitation(f, app_eni.ipv6), poke=poke)
    poke = udp_poke(db.ns, data_eni.ipv4)
    assert t1.wait_for(lambda f: is_arp_request(f, db.mac, data_eni.ipv4), poke=poke)
    # from another subnet: the VPC router resolves the ENI address on the ENI's subnet
    s0 = st.subnet("app")
    poke = udp_poke(db.ns, app_eni.ipv4)
    assert t0.wait_for(lambda f: is_arp_request(f, s0.mac, app_eni.ipv4), poke=poke)


def test_add_and_remove_an_eni_at_runtime(lab, tap):
    p = lab.prefix
    before = len(lab.state.enis)
    eni = lab.add_eni("app", ["sg-web"])
    try:
        assert eni.ifname == f"{p}-e{eni.id}" and eni.peer == f"{p}-e{eni.id}p"
        assert eni.subnet == "app" and eni.group == "app|sg-web"
        assert (eni.gateway4, eni.cidr4, eni.cidr6) == ("10.0.1.1", "10.0.1.0/24", "fd00:1::/64")
        used = {e.ipv4 for e in lab.state.enis[:-1]} | {h.ipv4 for h in lab.state.hosts}
        assert eni.ipv4 not in used and eni.ipv6
        hp = links_in(f"{p}-hp")[eni.ifname]
        assert hp["mac"] == eni.mac and hp["up"] and hp["addresses"] == []
        assert links_in(f"{p}-vpc")[eni.peer]["master"] == f"{p}-s0"
        assert "direct-action" in netns.exec(f"{p}-hp", ["tc", "filter", "show", "dev",
                                                          eni.ifname, "ingress"]).stdout
        assert len(lab.state.enis) == before + 1
        assert LabState.load(p).eni(eni.id) == eni          # saved for other processes
        web = lab.state.host("web")
        t = tap(f"{p}-hp", eni.ifname)
        poke = udp_poke(web.ns, eni.ipv4)
        assert t.wait_for(lambda f: is_arp_request(f, web.mac, eni.ipv4), poke=poke)
        t.close()
        with pytest.raises(LabError):
            lab.add_eni("nope", [])
    finally:
        lab.remove_eni(eni.id)
    assert eni.ifname not in links_in(f"{p}-hp")
    assert eni.peer not in links_in(f"{p}-vpc")
    assert len(lab.state.enis) == before and len(LabState.load(p).enis) == before


def test_runtime_calls_work_inside_a_running_event_loop(lab):
    """An asyncio control plane can call add_eni/remove_eni directly (pyroute2's own loop
    cannot nest: the lab moves the work to a helper thread)."""
    import asyncio

    async def call(fn, *args):
        return fn(*args)
    eni = asyncio.run(call(lab.add_eni, "cache", ["sg-cache"]))
    assert eni.group == "cache|sg-cache" and eni.ipv4 == "10.0.3.4"
    assert eni.ifname in links_in(f"{lab.prefix}-hp")
    asyncio.run(call(lab.remove_eni, eni.id))
    assert eni.ifname not in links_in(f"{lab.prefix}-hp")


# -- down and cleanup ------------------------------------------------------------------------

def test_down_leaves_nothing_and_twice_is_fine(make_lab):
    lab = make_lab()
    p = lab.prefix
    sleeper = lab.popen("api", ["sleep", "60"])
    hp_sleeper = netns.popen(f"{p}-hp", ["sleep", "60"])
    try:
        time.sleep(0.05)
        assert netns.pids(f"{p}-f-api") == [sleeper.pid]
        report = lab.down()
        assert set(report.killed) == {sleeper.pid, hp_sleeper.pid}
        assert sleeper.wait(timeout=5) is not None and hp_sleeper.wait(timeout=5) is not None
        assert len(report.namespaces) == len(lab.topology.namespaces)
        assert report.errors == []
        assert_gone(p)
        again = lab.down()
        assert not again.removed_anything and again.errors == []
        with pytest.raises(LabError):
            lab.add_eni("app", [])
    finally:
        for proc in (sleeper, hp_sleeper):
            if proc.poll() is None:
                proc.kill()


DATA_PLANE_STANDIN = textwrap.dedent("""
    import socket, subprocess, sys, time
    sys.path.insert(0, {root!r})
    from hyperplane.lab import netns
    # what a data plane holds: packet sockets on its ports, a helper in a function namespace
    socks = []
    for port in {ports!r}:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
        s.bind((port, 0))
        socks.append(s)
    child = netns.popen({fn_ns!r}, ["sleep", "60"])
    # `ip netns exec` enters the namespace, then execs: report the child once it is inside
    deadline = time.monotonic() + 10
    while child.pid not in netns.pids({fn_ns!r}) and time.monotonic() < deadline:
        time.sleep(0.005)
    print(child.pid, flush=True)
    time.sleep(60)
""")


def test_cleanup_after_the_data_plane_was_sigkilled(make_lab):
    lab = make_lab()
    p = lab.prefix
    ports = [lab.state.inside.ifname] + [e.ifname for e in lab.state.enis]
    code = DATA_PLANE_STANDIN.format(root=str(builder.__file__).rsplit("/hyperplane/", 1)[0],
                                     ports=ports, fn_ns=f"{p}-f-worker")
    dp = netns.popen(f"{p}-hp", [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child = int(dp.stdout.readline())
    try:
        assert sorted(netns.pids(f"{p}-hp")) == [dp.pid]
        assert netns.pids(f"{p}-f-worker") == [child]
        os.kill(dp.pid, signal.SIGKILL)                   # the crash: nothing cleans up
        dp.wait(timeout=5)
        assert alive(child)                               # its helper lingers in a namespace
        LabState.path(p).unlink()                         # and cleanup must not need the state
        left = find(p)
        assert left.pids == {f"{p}-f-worker": [child]}
        assert len(left.namespaces) == len(lab.topology.namespaces)
        report = cleanup(p)
        assert report.killed == [child] and report.errors == []
        assert not alive(child)
        assert_gone(p)
    finally:
        if dp.poll() is None:
            dp.kill()
        if alive(child):
            os.kill(child, signal.SIGKILL)


def test_cleanup_removes_prefixed_links_in_the_root_namespace(make_lab):
    lab = make_lab(up=False)
    p = lab.prefix
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        # left down, no address: carries nothing (this kernel has no dummy links)
        ipr.link("add", ifname=f"{p}-junk", kind="veth", peer=f"{p}-junkp")
    try:
        assert sorted(root_links(p)) == [f"{p}-junk", f"{p}-junkp"]
        report = cleanup(p)
        assert report.links and set(report.links) <= {f"{p}-junk", f"{p}-junkp"}
        assert root_links(p) == [] and report.errors == []
    finally:
        with IPRoute() as ipr:
            for i in ipr.link_lookup(ifname=f"{p}-junk"):
                ipr.link("del", index=i)


def test_up_replaces_leftovers_or_refuses(make_lab):
    lab = make_lab()
    p = lab.prefix
    # a new builder finds the old lab's leftovers (as after a crash)
    again = Lab(lab.config)
    with pytest.raises(LabError, match="already exists"):
        again.up(clean=False)
    state = again.up()
    assert state.prefix == p and len(lab_namespaces(p)) == len(lab.topology.namespaces)
    assert netns.ping(f"{p}-h-web", state.host("db").ipv4)


def test_a_failed_up_removes_what_it_made(make_lab, monkeypatch):
    lab = make_lab(up=False)

    def boom(*a, **kw):
        raise RuntimeError("boom")
    monkeypatch.setattr(builder, "_apply_route", boom)
    with pytest.raises(RuntimeError, match="boom"):
        lab.up()
    assert_gone(lab.prefix)
    assert lab.state is None


def test_default_lab_builds(make_lab):
    from hyperplane.config import default_config
    lab = make_lab(config=default_config)
    assert [e.ipv4 for e in lab.state.enis] == ["10.0.1.4", "10.0.2.4"]
    assert netns.ping(lab.state.host("web").ns, lab.state.host("db").ipv4)
    assert build_topology(lab.config).state() == lab.state
