"""One lab, three middles between the same functions and the same server.

    hyperplane:  p-f-a, p-f-b1..b4, p-f-s ─ p-lbr ─ p-hp (userspace NAT) ─ENI─ p-s0 ─ p-h-web
    kernel-nat:  p-f-n1..n4 ─ p-lbr ─ p-h-knat (nftables masquerade) ─────── p-s0 ─ p-h-web
    kernel-nat-flowtable:
                 p-f-t1..t4 ─ p-lbr ─ p-h-kt   (masquerade + flowtable) ──── p-s0 ─ p-h-web
    routing:     p-f-r1..r4 ─ p-lbr ─ p-h-krt  (ip_forward, no NAT)  ─────── p-s0 ─ p-h-web

The kernel middles are namespaces with one veth on the functions' bridge (a free address of the
inside network) and one on the server's subnet bridge (a free address of the subnet); their
clients are function-like namespaces whose default route is that middle. The server host gets
a /32 route back to each routing client (nothing NATs them). Names follow the lab's naming, so
the lab's cleanup removes them too. The flowtable middle is the kernel's NAT at its fastest: an
nftables flowtable takes a connection's packets past the forward and NAT hooks once the
connection has seen its reply (so TCP, not the one-way UDP of the small-packet tests). Hyperplane's functions get three ENIs of their own (one
per security group): ``a`` for the bulk, small-packet and latency tests, ``b1..b4`` for the
connection rates, ``s`` for the table-scale tests, so that no test runs out of another's ports.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from dataclasses import dataclass, field

from ..config import parse_config
from ..lab import netns
from ..lab.names import if_function_peer
from ..lab.topology import LabState, ns_function, ns_host

MIDDLES = ("routing", "kernel-nat", "kernel-nat-flowtable", "hyperplane")
CLIENTS = 4                      # functions sending at once in the connection-rate tests
SINK_PORTS = (20000, 29999)      # UDP the server counts and drops (the generator's traffic)
ECHO_PORT, TCP_PORT, IPERF_PORT = 7007, 8080, 5201
BENCH_UDP_TIMEOUT_S = 300        # both NATs keep unanswered UDP flows this long (table scale)


def bench_config(prefix: str, capacity: int, forwarding: dict | None = None):
    fn = [{"name": "a", "subnets": ["app"], "security_groups": ["sg-bulk"]}]
    fn += [{"name": f"b{i}", "subnets": ["app"], "security_groups": ["sg-conn"]}
           for i in range(1, CLIENTS + 1)]
    fn += [{"name": "s", "subnets": ["app"], "security_groups": ["sg-scale"]}]
    return parse_config({
        "prefix": prefix,
        "inside": {"cidr4": "10.200.0.0/24"},
        # One function opens the table-scale tests' 100,000+ flows: the default quotas (half
        # of the table and of each ENI's ports per function) would stop it at 65,000.
        "nat": {"capacity": capacity, "timeouts": {"UDP_FIRST": BENCH_UDP_TIMEOUT_S},
                "quotas": {"connections_share": 1.0, "ports_share": 1.0},
                "forwarding": forwarding or {}},
        "subnets": [{"name": "app", "cidr4": "10.0.1.0/24"}],
        "hosts": [{"name": "web", "subnet": "app"}],
        "functions": fn,
    })


class Unavailable(RuntimeError):
    """A middle this kernel cannot build; the run goes on without it."""


@dataclass
class Middle:
    name: str
    bulk: str                     # client namespace of the bulk, small-packet, latency tests
    conn: list[str]               # client namespaces of the connection-rate tests
    scale: str                    # client namespace of the table-scale tests
    seen_as: str                  # the source address the server sees from `bulk`
    ns: str | None = None         # the kernel middle's namespace
    addrs: dict = field(default_factory=dict)


def sh(argv, timeout=10.0, input=None) -> str:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {r.stderr.strip() or r.stdout.strip()}")
    return r.stdout


def _free(net: str, taken: set[str], n: int) -> list[str]:
    """The n highest host addresses of net not in taken."""
    out = [str(a) for a in reversed(list(ipaddress.ip_network(net).hosts()))
           if str(a) not in taken]
    if len(out) < n:
        raise RuntimeError(f"no {n} free addresses in {net}")
    return out[:n]


def _client_sysctls(ns: str) -> None:
    """Room for many short connections from one client."""
    netns.sysctl_write(ns, "net/ipv4/ip_local_port_range", "1024 65000")
    netns.sysctl_write(ns, "net/ipv4/tcp_tw_reuse", 1)


def _kernel_middle(state: LabState, name: str, short: str, nat: bool, taken_in: set[str],
                   taken_out: set[str], flowtable: bool = False) -> Middle:
    p, sn = state.prefix, state.subnets[0]
    lam, vpc, lbr, mtu = state.lambda_ns, state.vpc_ns, f"{p}-lbr", str(state.mtu)
    in_net = state.inside.cidr4
    plen_in = ipaddress.ip_network(in_net).prefixlen
    plen_out = ipaddress.ip_network(sn.cidr4).prefixlen
    inside, *clients = _free(in_net, taken_in, 1 + CLIENTS)
    outside, = _free(sn.cidr4, taken_out, 1)
    taken_in.update([inside, *clients])
    taken_out.add(outside)
    ns = ns_host(p, f"k{short}")
    client_ns = [ns_function(p, f"{short}{i}") for i in range(1, CLIENTS + 1)]
    for n in (ns, *client_ns):
        netns.create(n)
        netns.sysctl_write(n, "net/ipv6/conf/all/disable_ipv6", 1)
        sh(["ip", "-n", n, "link", "set", "lo", "up"])
    netns.sysctl_write(ns, "net/ipv4/ip_forward", 1)
    sh(["ip", "-n", lam, "link", "add", f"{p}-{short}i", "mtu", mtu, "type", "veth", "peer",
        "name", "kin", "netns", ns, "mtu", mtu])
    sh(["ip", "-n", vpc, "link", "add", f"{p}-{short}o", "mtu", mtu, "type", "veth", "peer",
        "name", "kout", "netns", ns, "mtu", mtu])
    sh(["ip", "-n", lam, "link", "set", f"{p}-{short}i", "master", lbr, "up"])
    sh(["ip", "-n", vpc, "link", "set", f"{p}-{short}o", "master", sn.bridge, "up"])
    sh(["ip", "-n", ns, "addr", "add", f"{inside}/{plen_in}", "dev", "kin"])
    sh(["ip", "-n", ns, "addr", "add", f"{outside}/{plen_out}", "dev", "kout"])
    sh(["ip", "-n", ns, "link", "set", "kin", "up"])
    sh(["ip", "-n", ns, "link", "set", "kout", "up"])
    sh(["ip", "-n", ns, "route", "add", "default", "via", sn.gateway4])
    for i, (cns, addr) in enumerate(zip(client_ns, clients), 1):
        sh(["ip", "-n", lam, "link", "add", f"{p}-{short}{i}", "mtu", mtu, "type", "veth",
            "peer", "name", "eth0", "netns", cns, "mtu", mtu])
        sh(["ip", "-n", lam, "link", "set", f"{p}-{short}{i}", "master", lbr, "up"])
        sh(["ip", "-n", cns, "addr", "add", f"{addr}/{plen_in}", "dev", "eth0"])
        sh(["ip", "-n", cns, "link", "set", "eth0", "up"])
        sh(["ip", "-n", cns, "route", "add", "default", "via", inside])
        _client_sysctls(cns)
    spread_receive(ns, ("kin", "kout"))
    spread_receive(lam, [f"{p}-{short}{i}" for i in range(1, CLIENTS + 1)])
    if nat:
        netns.sysctl_write(ns, "net/netfilter/nf_conntrack_udp_timeout", BENCH_UDP_TIMEOUT_S)
        offload = ("flowtable ft {\n  hook ingress priority 0; devices = { kin, kout };\n }\n"
                   " chain forward {\n  type filter hook forward priority 0; policy accept;\n"
                   "  ip protocol { tcp, udp } flow add @ft\n }\n") if flowtable else ""
        try:
            sh(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=(
                "table ip hpbench {\n" + offload + " chain postrouting {\n"
                "  type nat hook postrouting priority srcnat; policy accept;\n"
                "  oifname \"kout\" counter masquerade\n }\n}\n"))
        except RuntimeError as e:
            if flowtable:        # its links and namespace go with the lab
                raise Unavailable(f"{name}: this kernel has no nftables flowtables "
                                  f"(CONFIG_NF_FLOW_TABLE; nft: "
                                  f"{str(e).splitlines()[0][-60:]})") from None
            raise
    else:
        host = state.hosts[0]
        for addr in clients:     # the server's way back to un-NATed clients
            sh(["ip", "-n", host.ns, "route", "add", f"{addr}/32", "via", outside])
    return Middle(name=name, bulk=client_ns[0], conn=client_ns, scale=client_ns[0],
                  seen_as=outside if nat else clients[0], ns=ns,
                  addrs={"inside": inside, "outside": outside, "clients": clients})


def other_cpus() -> str | None:
    """The RPS mask of every CPU but the first (the generator's), None on one CPU."""
    n = os.cpu_count() or 1
    return f"{((1 << n) - 1) & ~1:x}" if n > 1 else None


def spread_receive(ns: str, ifnames) -> None:
    """veth runs each hop in the sender's softirq, so the kernel middles would forward on the
    generator's CPU while Hyperplane's thread has a core of its own: RPS moves their receive
    processing (routing, NAT, the hops after them) to the other CPUs."""
    mask = other_cpus()
    if mask is None:
        return
    for ifname in ifnames:
        sh(["ip", "netns", "exec", ns, "sh", "-c",
            f"echo {mask} > /sys/class/net/{ifname}/queues/rx-0/rps_cpus"])


def build_middles(state: LabState, unavailable: dict[str, str]) -> dict[str, Middle]:
    """The middles this kernel can build, in MIDDLES order; why the others are missing goes
    into `unavailable`."""
    sn = state.subnets[0]
    taken_in = {state.inside.gateway4, *(f.ipv4 for f in state.functions)}
    taken_out = {sn.gateway4, *(h.ipv4 for h in state.hosts), *(e.ipv4 for e in state.enis)}
    fns = {f.name: f for f in state.functions}
    eni_of = {f.name: state.enis_of(f.group)[0] for f in state.functions}
    for f in state.functions:
        _client_sysctls(f.ns)
    hp = Middle(name="hyperplane", bulk=fns["a"].ns,
                conn=[fns[f"b{i}"].ns for i in range(1, CLIENTS + 1)], scale=fns["s"].ns,
                seen_as=eni_of["a"].ipv4, ns=state.dataplane_ns,
                addrs={"enis": {n: e.ipv4 for n, e in eni_of.items()}})
    # the same share of the other CPUs for the hop through the functions' bridge
    spread_receive(state.lambda_ns, [if_function_peer(state.prefix, i)
                                     for i in range(len(state.functions))])
    out = {"routing": _kernel_middle(state, "routing", "r", False, taken_in, taken_out),
           "kernel-nat": _kernel_middle(state, "kernel-nat", "n", True, taken_in, taken_out)}
    try:
        out["kernel-nat-flowtable"] = _kernel_middle(state, "kernel-nat-flowtable", "t", True,
                                                     taken_in, taken_out, flowtable=True)
    except Unavailable as e:
        unavailable["kernel-nat-flowtable"] = str(e)
    out["hyperplane"] = hp
    return out


def prepare_server(state: LabState) -> None:
    """The server counts and drops the generator's datagrams before any socket (so the figure
    is the path's, not a receiving application's)."""
    lo, hi = SINK_PORTS
    sh(["ip", "netns", "exec", state.hosts[0].ns, "nft", "-f", "-"], input=(
        "table ip hpsink {\n chain pre {\n"
        "  type filter hook prerouting priority raw; policy accept;\n"
        f"  udp dport {lo}-{hi} counter drop\n }}\n}}\n"))


def sink_count(server_ns: str) -> int:
    out = json.loads(sh(["ip", "netns", "exec", server_ns, "nft", "-j", "list", "table", "ip",
                         "hpsink"]))
    for item in out.get("nftables", []):
        for expr in item.get("rule", {}).get("expr", []):
            if "counter" in expr:
                return int(expr["counter"]["packets"])
    raise RuntimeError("the server's counter rule is gone")


def masquerade_count(m: Middle) -> int:
    out = json.loads(sh(["ip", "netns", "exec", m.ns, "nft", "-j", "list", "table", "ip",
                         "hpbench"]))
    for item in out.get("nftables", []):
        for expr in item.get("rule", {}).get("expr", []):
            if "counter" in expr:
                return int(expr["counter"]["packets"])
    return 0


def conntrack_count(m: Middle) -> int | None:
    try:
        return int(netns.sysctl_read(m.ns, "net/netfilter/nf_conntrack_count"))
    except (OSError, ValueError):
        return None
