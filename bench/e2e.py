#!/usr/bin/env python3
"""End-to-end benchmark: iperf3 through Hyperplane beside the kernel's nftables masquerade.

Measured, not asserted. One lab (the built-in default config under a fresh prefix ``beXX``),
two paths of the same shape through it, run alternately in the same process:

    hyperplane:  p-f-api ─veth─ p-lbr ─ p-hp (userspace NAT)       ─ENI veth─ p-s0 ─ p-h-web
    kernel:      p-f-kfn ─veth─ p-lbr ─ p-h-knat (nft masquerade)  ─veth───── p-s0 ─ p-h-web

The kernel NAT namespace has one veth on the functions' bridge (an unused address of the
inside network) and one on the same subnet bridge as the ENI (an unused address of the
subnet), ``ip_forward`` on, and ``masquerade`` in an nftables postrouting chain on its outside
interface; ``kfn`` is a function-like namespace whose default route is that namespace. Its
names (``p-h-knat``, ``p-f-kfn``) follow the lab's naming, so ``hyperplane down --prefix p``
removes them too should this script be killed.

Tests (one flow each, one iperf3 server per test in the server host, the client in the
function namespace):

- TCP, function -> server: receiver bits/s;
- TCP, server -> function (``-R``): receiver bits/s;
- UDP, 64-byte frames (``-l 18``: 18 + 8 + 20 + 14 + 4 FCS), unlimited rate (``-b 0``):
  packets the server received (sent minus lost) per second. Both ends get 4 MB socket
  buffers (``-w 4M``) so that the receiving iperf3's own socket does not drop and the figure
  is the path's, not the tool's.

Each repeat runs every test on the Hyperplane path, then on the kernel path, and so on, so
noise hits both. The table shows medians over repeats and the ratio Hyperplane / kernel
against the targets (TCP >= 0.5x, UDP pps >= 1.0x). Per test it logs the data plane's counters
(forwarded, rx ring drops, TX_FULL), the data-plane process's own CPU time (softirq work done
in its send() calls is not charged to it) and how busy each CPU was; ``--json`` keeps them all.
The machines are shared: a warning says when other processes already load the CPUs.

    sudo python bench/e2e.py [--seconds N] [--repeat K] [--json out.json]

Everything it makes is removed in a ``finally`` block, also after an error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import random
import signal
import statistics
import string
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from hyperplane import control
from hyperplane.config import default_config
from hyperplane.lab import Lab, LabState, netns
from hyperplane.lab.topology import RUN_DIR, ns_function, ns_host

PORT_HP, PORT_KERNEL = 5201, 5202
UDP_PAYLOAD = 18                       # 18 + 8 UDP + 20 IP + 14 Ethernet + 4 FCS = 64 bytes
TARGETS = {"tcp": 0.5, "tcp-r": 0.5, "udp": 1.0}


@dataclass(frozen=True)
class Test:
    key: str
    label: str
    unit: str
    args: tuple[str, ...]


TESTS = (
    Test("tcp", "TCP 1 stream, function -> server", "Gbit/s", ()),
    Test("tcp-r", "TCP 1 stream, server -> function (-R)", "Gbit/s", ("-R",)),
    Test("udp", "UDP 64-byte frames, 1 flow, received", "kpps",
         ("-u", "-b", "0", "-l", str(UDP_PAYLOAD), "-w", "4M")),
)


@dataclass
class Path_:
    key: str                           # "hyperplane" | "kernel"
    client_ns: str
    server_addr: str
    nat_addr: str                      # the source address the server must see
    port: int


@dataclass
class Run:
    results: dict = field(default_factory=dict)   # (test, path) -> [values]
    details: list = field(default_factory=list)
    busy_before: float = 0.0                      # the machine's load before we started


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def sh(argv, timeout=10.0, check=True) -> subprocess.CompletedProcess:
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {r.stderr.strip() or r.stdout.strip()}")
    return r


# --- the kernel NAT beside the lab ---------------------------------------------------------

def _free_address(net: str, taken: set[str]) -> str:
    """The highest host address of ``net`` not in ``taken``."""
    n = ipaddress.ip_network(net)
    for a in reversed(list(n.hosts())):
        if str(a) not in taken:
            return str(a)
    raise RuntimeError(f"no free address in {net}")


@dataclass
class KernelNat:
    prefix: str
    ns: str                             # the NAT namespace
    fn_ns: str                          # the function-like client namespace
    fn_addr: str
    inside_addr: str
    outside_addr: str

    @property
    def namespaces(self) -> list[str]:
        return [self.fn_ns, self.ns]


def build_kernel_nat(state: LabState, subnet: str) -> KernelNat:
    p = state.prefix
    sn = state.subnet(subnet)
    lam, vpc = state.lambda_ns, state.vpc_ns
    lbr = f"{p}-lbr"
    in_net = ipaddress.ip_network(state.inside.cidr4)
    taken_in = {state.inside.gateway4, *(f.ipv4 for f in state.functions)}
    inside_addr = _free_address(str(in_net), taken_in)
    fn_addr = _free_address(str(in_net), taken_in | {inside_addr})
    taken_out = {sn.gateway4, *(h.ipv4 for h in state.hosts), *(e.ipv4 for e in state.enis)}
    outside_addr = _free_address(sn.cidr4, taken_out)
    k = KernelNat(prefix=p, ns=ns_host(p, "knat"), fn_ns=ns_function(p, "kfn"),
                  fn_addr=fn_addr, inside_addr=inside_addr, outside_addr=outside_addr)
    plen_in, plen_out = in_net.prefixlen, ipaddress.ip_network(sn.cidr4).prefixlen
    mtu = str(state.mtu)

    for ns in k.namespaces:
        netns.create(ns)
        netns.sysctl_write(ns, "net/ipv6/conf/all/disable_ipv6", 1)
        netns.sysctl_write(ns, "net/ipv6/conf/default/disable_ipv6", 1)
        sh(["ip", "-n", ns, "link", "set", "lo", "up"])
    netns.sysctl_write(k.ns, "net/ipv4/ip_forward", 1)

    # kfn: eth0 on the functions' bridge, default route via the kernel NAT
    sh(["ip", "-n", lam, "link", "add", f"{p}-kfp", "mtu", mtu, "type", "veth",
        "peer", "name", "eth0", "netns", k.fn_ns, "mtu", mtu])
    # knat: kin on the functions' bridge, kout on the subnet bridge (where the ENI is)
    sh(["ip", "-n", lam, "link", "add", f"{p}-kip", "mtu", mtu, "type", "veth",
        "peer", "name", "kin", "netns", k.ns, "mtu", mtu])
    sh(["ip", "-n", vpc, "link", "add", f"{p}-kop", "mtu", mtu, "type", "veth",
        "peer", "name", "kout", "netns", k.ns, "mtu", mtu])
    sh(["ip", "-n", lam, "link", "set", f"{p}-kfp", "master", lbr, "up"])
    sh(["ip", "-n", lam, "link", "set", f"{p}-kip", "master", lbr, "up"])
    sh(["ip", "-n", vpc, "link", "set", f"{p}-kop", "master", sn.bridge, "up"])

    sh(["ip", "-n", k.fn_ns, "addr", "add", f"{fn_addr}/{plen_in}", "dev", "eth0"])
    sh(["ip", "-n", k.fn_ns, "link", "set", "eth0", "up"])
    sh(["ip", "-n", k.fn_ns, "route", "add", "default", "via", inside_addr])
    sh(["ip", "-n", k.ns, "addr", "add", f"{inside_addr}/{plen_in}", "dev", "kin"])
    sh(["ip", "-n", k.ns, "addr", "add", f"{outside_addr}/{plen_out}", "dev", "kout"])
    sh(["ip", "-n", k.ns, "link", "set", "kin", "up"])
    sh(["ip", "-n", k.ns, "link", "set", "kout", "up"])
    sh(["ip", "-n", k.ns, "route", "add", "default", "via", sn.gateway4])

    ruleset = ("table ip hpbench {\n"
               "  chain postrouting {\n"
               "    type nat hook postrouting priority srcnat; policy accept;\n"
               "    oifname \"kout\" counter masquerade\n"
               "  }\n"
               "}\n")
    r = subprocess.run(["ip", "netns", "exec", k.ns, "nft", "-f", "-"], input=ruleset,
                       text=True, capture_output=True, timeout=10)
    if r.returncode != 0:
        raise RuntimeError(f"nft: {r.stderr.strip()}")
    return k


def set_bridge_nf(state: LabState, on: bool) -> None:
    """br_netfilter's hooks on the lab's bridges (the functions' bridge, the subnet bridges),
    which both paths cross: the kernel's default (on, when the module is loaded) sends every
    bridged frame through the netfilter hooks, a large share of the per-frame cost."""
    for ns in (state.lambda_ns, state.vpc_ns):
        for key in ("iptables", "ip6tables", "arptables"):
            try:
                netns.sysctl_write(ns, f"net/bridge/bridge-nf-call-{key}", int(on))
            except FileNotFoundError:   # br_netfilter not loaded: nothing to switch
                return


def masquerade_counter(k: KernelNat) -> int:
    r = sh(["ip", "netns", "exec", k.ns, "nft", "-j", "list", "table", "ip", "hpbench"])
    for item in json.loads(r.stdout).get("nftables", []):
        for expr in item.get("rule", {}).get("expr", []):
            if "counter" in expr:
                return int(expr["counter"]["packets"])
    return 0


# --- iperf3 ---------------------------------------------------------------------------------

class Procs:
    """Every process this script starts, so the finally block can kill what is left."""

    def __init__(self):
        self.procs: list[subprocess.Popen] = []

    def popen(self, ns: str, argv, **kw) -> subprocess.Popen:
        p = netns.popen(ns, argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, text=True, start_new_session=True, **kw)
        self.procs.append(p)
        return p

    def kill_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
        self.procs.clear()


def _listening(ns: str, port: int) -> bool:
    r = netns.exec(ns, ["ss", "-Hltn", f"sport = :{port}"], timeout=5)
    return r.returncode == 0 and bool(r.stdout.strip())


def iperf3(procs: Procs, server_ns: str, path: Path_, test: Test, seconds: int) -> dict:
    """One test: a one-off server (JSON), the client (JSON); returns both parsed."""
    server = procs.popen(server_ns, ["iperf3", "-s", "-1", "-J", "-p", str(path.port),
                                     "-B", path.server_addr])
    deadline = time.monotonic() + 5
    while not _listening(server_ns, path.port):
        if server.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"iperf3 server on port {path.port} did not start: "
                               f"{server.stderr.read() if server.poll() is not None else ''}")
        time.sleep(0.05)
    argv = ["iperf3", "-c", path.server_addr, "-p", str(path.port), "-t", str(seconds), "-J",
            "--connect-timeout", "3000", *test.args]
    client = procs.popen(path.client_ns, argv)
    try:
        cout, cerr = client.communicate(timeout=seconds + 20)
        sout, _ = server.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"iperf3 {test.key} on the {path.key} path did not finish in time")
    try:
        cj = json.loads(cout)
        sj = json.loads(sout)
    except json.JSONDecodeError:
        raise RuntimeError(f"iperf3 {test.key} on the {path.key} path: no JSON "
                           f"(rc {client.returncode}): {cerr.strip()[:300]}")
    for j, who in ((cj, "client"), (sj, "server")):
        if j.get("error"):
            raise RuntimeError(f"iperf3 {test.key} on the {path.key} path: {who}: {j['error']}")
    return {"client": cj, "server": sj}


def measure(out: dict, path: Path_, test: Test) -> tuple[float, dict]:
    """The figure of one test (Gbit/s or kpps at the receiver) and a few details."""
    cj, sj = out["client"], out["server"]
    seen = [c.get("remote_host") for c in sj.get("start", {}).get("connected", [])]
    if path.nat_addr not in seen:
        raise RuntimeError(f"{path.key} path: the server saw {seen}, not the NAT address "
                           f"{path.nat_addr}: traffic did not go through the NAT")
    if test.key.startswith("tcp"):
        bps = cj["end"]["sum_received"]["bits_per_second"]
        retr = cj["end"].get("sum_sent", {}).get("retransmits")
        return bps / 1e9, {"bits_per_second": bps, "retransmits": retr}
    s = sj["end"]["sum"]                  # the server's own count: what was received
    received = s["packets"] - s["lost_packets"]
    pps = received / s["seconds"]
    sent = cj["end"]["sum"]["packets"]
    sent_pps = sent / cj["end"]["sum"]["seconds"]
    return pps / 1e3, {"received_pps": pps, "sent_pps": sent_pps, "packets": s["packets"],
                       "lost_packets": s["lost_packets"], "lost_percent": s["lost_percent"]}


# --- the data plane's view ------------------------------------------------------------------

def _flatten(d, prefix="") -> dict[str, float]:
    out = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
    elif isinstance(d, (int, float)) and not isinstance(d, bool):
        out[prefix[:-1]] = d
    return out


PORT_STATS = ("rx_frames", "rx_kernel_drops", "rx_truncated", "tx_frames", "tx_full",
              "tx_sends", "tx_errors")


def dp_stats(prefix: str) -> dict[str, float]:
    """The data plane's counters (``stats``) and its ports' ring counters (``status``), flat:
    "dataplane.drop.TX_FULL", "port.p-e0.rx_kernel_drops", ..."""
    try:
        out = _flatten(control.request(prefix, "stats", timeout=5.0))
        for p in control.request(prefix, "status", timeout=5.0).get("ports", []):
            for k in PORT_STATS:
                if isinstance(p.get(k), (int, float)):
                    out[f"port.{p['ifname']}.{k}"] = p[k]
        return out
    except Exception as e:  # the figures matter more than the counters
        log(f"  (stats unavailable: {e})")
        return {}


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of a process, all threads."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            parts = f.read().rsplit(")", 1)[1].split()
        return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return float("nan")


def cpu_times() -> dict[str, list[int]]:
    """/proc/stat per CPU: [user, nice, system, idle, iowait, irq, softirq, steal] jiffies."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3:4].isdigit():
                name, *vals = line.split()
                out[name] = [int(v) for v in vals[:8]]
    return out


def cpu_busy(before: dict, after: dict) -> dict[str, dict[str, float]]:
    """Share of each CPU's time between two cpu_times(): busy (all but idle and iowait), and
    the system and softirq parts of it."""
    out = {}
    for cpu, a in after.items():
        b = before.get(cpu)
        if not b:
            continue
        d = [x - y for x, y in zip(a, b)]
        total = sum(d) or 1
        out[cpu] = {"busy": 1 - (d[3] + d[4]) / total, "system": d[2] / total,
                    "softirq": d[6] / total}
    return out


def machine_load(seconds: float = 1.0) -> float:
    """How busy the machine is before we start, 0..1 averaged over CPUs."""
    a = cpu_times()
    time.sleep(seconds)
    busy = cpu_busy(a, cpu_times())
    return statistics.mean(v["busy"] for v in busy.values()) if busy else 0.0


# --- the run --------------------------------------------------------------------------------

def median(xs):
    return statistics.median(xs) if xs else float("nan")


def table(run: Run, seconds: int, repeat: int) -> str:
    rows = [("test", "unit", "hyperplane", "kernel NAT", "ratio", "target", "met")]
    for t in TESTS:
        hp = median(run.results.get((t.key, "hyperplane"), []))
        kn = median(run.results.get((t.key, "kernel"), []))
        ratio = hp / kn if kn and kn == kn else float("nan")
        target = TARGETS[t.key]
        met = "yes" if ratio >= target else "no"
        rows.append((t.label, t.unit, f"{hp:.2f}" if t.unit == "Gbit/s" else f"{hp:.0f}",
                     f"{kn:.2f}" if t.unit == "Gbit/s" else f"{kn:.0f}", f"{ratio:.2f}x",
                     f">= {target:.1f}x", met))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, r in enumerate(rows):
        lines.append("  ".join(c.ljust(widths[i]) if i < 2 else c.rjust(widths[i])
                               for i, c in enumerate(r)))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    head = (f"medians over {repeat} repeat(s) of {seconds} s each; both paths in the same lab, "
            f"run alternately; machine {run.busy_before * 100:.0f}% busy before the start")
    return head + "\n" + "\n".join(lines)


def summary(run: Run) -> dict:
    out = {}
    for t in TESTS:
        hp = run.results.get((t.key, "hyperplane"), [])
        kn = run.results.get((t.key, "kernel"), [])
        r = median(hp) / median(kn) if hp and kn else None
        out[t.key] = {"label": t.label, "unit": t.unit, "hyperplane": hp, "kernel": kn,
                      "hyperplane_median": median(hp) if hp else None,
                      "kernel_median": median(kn) if kn else None, "ratio": r,
                      "target": TARGETS[t.key], "met": r is not None and r >= TARGETS[t.key]}
    return out


def pick_pair(state: LabState) -> tuple:
    """The first function with a host in its ENI's subnet: (function, host, its ENI)."""
    for f in state.functions:
        enis = state.enis_of(f.group)
        if not enis:
            continue
        eni = enis[-1]
        for h in state.hosts:
            if h.subnet == eni.subnet:
                return f, h, eni
    raise RuntimeError("the lab has no function with a host in its ENI's subnet")


def start_dataplane(state: LabState) -> int:
    from hyperplane.cli import CliError, start_dataplane as _start
    try:
        return _start(state)
    except CliError as e:
        raise RuntimeError(f"the data plane did not start: {e}") from None


def run_bench(prefix: str, seconds: int, repeat: int, json_out: str | None,
              only: str | None = None, bridge_nf: str = "default") -> int:
    lab = Lab(default_config().with_prefix(prefix))
    procs = Procs()
    kernel: KernelNat | None = None
    dp_pid = None
    state = None
    try:
        log(f"building lab {prefix!r} (the default config) and the kernel NAT beside it")
        state = lab.up()
        fn, host, eni = pick_pair(state)
        kernel = build_kernel_nat(state, eni.subnet)
        if bridge_nf != "default":
            set_bridge_nf(state, bridge_nf == "on")
        if only != "kernel":
            dp_pid = start_dataplane(state)
        log(f"data plane pid {dp_pid}; hyperplane: {fn.ns} {fn.ipv4} -> ENI {eni.ipv4} -> "
            f"{host.ns} {host.ipv4}; kernel: {kernel.fn_ns} {kernel.fn_addr} -> "
            f"{kernel.ns} {kernel.outside_addr} -> {host.ns} {host.ipv4}")
        paths = [Path_("hyperplane", fn.ns, host.ipv4, eni.ipv4, PORT_HP),
                 Path_("kernel", kernel.fn_ns, host.ipv4, kernel.outside_addr, PORT_KERNEL)]
        paths = [p for p in paths if only in (None, p.key)]

        # warm-up: ARP, conntrack, and a check that both paths NAT (not counted)
        for p in paths:
            for t in (TESTS[0], TESTS[2]):
                measure(iperf3(procs, host.ns, p, t, 1), p, t)
        if only != "hyperplane" and masquerade_counter(kernel) == 0:
            raise RuntimeError("the kernel path did not go through the masquerade rule")

        load = machine_load()
        if load > 0.15:
            log(f"WARNING: the machine is {load * 100:.0f}% busy before the benchmark starts "
                "(other processes): the figures will be noisy, the Hyperplane path (which "
                "needs a core of its own) hurt more than the kernel's")
        run = Run()
        run.busy_before = load
        for rep in range(repeat):
            for t in TESTS:
                for p in paths:
                    before = dp_stats(prefix) if p.key == "hyperplane" else {}
                    cpu0 = cpu_seconds(dp_pid) if dp_pid else 0.0
                    cpus0 = cpu_times()
                    t0 = time.monotonic()
                    value, detail = measure(iperf3(procs, host.ns, p, t, seconds), p, t)
                    wall = time.monotonic() - t0
                    detail.update(repeat=rep, test=t.key, path=p.key, value=value,
                                  cpus=cpu_busy(cpus0, cpu_times()))
                    if p.key == "hyperplane":
                        detail["dataplane_cpu"] = (cpu_seconds(dp_pid) - cpu0) / wall
                        after = dp_stats(prefix)
                        detail["dataplane_counters"] = {
                            k: after[k] - before.get(k, 0) for k in after
                            if after[k] - before.get(k, 0)}
                    run.results.setdefault((t.key, p.key), []).append(value)
                    run.details.append(detail)
                    extra = ""
                    if "lost_percent" in detail:
                        extra = (f" (sent {detail['sent_pps'] / 1e3:.0f} kpps, lost "
                                 f"{detail['lost_percent']:.1f}%)")
                    if "retransmits" in detail and detail["retransmits"] is not None:
                        extra = f" (retransmits {detail['retransmits']})"
                    if "dataplane_cpu" in detail:
                        c = detail["dataplane_counters"]
                        ring = sum(v for k, v in c.items() if k.endswith("rx_kernel_drops"))
                        extra += (f" [data plane task {detail['dataplane_cpu'] * 100:.0f}% CPU, "
                                  f"forwarded {c.get('dataplane.FORWARDED', 0):.0f}, rx ring "
                                  f"drops {ring:.0f}, TX_FULL "
                                  f"{c.get('dataplane.drop.TX_FULL', 0):.0f}]")
                    extra += " cpus busy " + " ".join(f"{v['busy'] * 100:.0f}%"
                                                 for v in detail["cpus"].values())
                    log(f"  repeat {rep + 1}/{repeat} {t.key:6} {p.key:10} {value:9.2f} "
                        f"{t.unit}{extra}")

        print(table(run, seconds, repeat))
        counters = dp_stats(prefix) if dp_pid else {}
        drops = {k: v for k, v in counters.items()
                 if v and any(w in k.lower() for w in ("drop", "full", "punt", "error", "trunc"))}
        if drops:
            print("data plane counters (drops, punts, full rings) over the whole run:")
            for k in sorted(drops):
                print(f"  {k:50} {drops[k]:.0f}")
        if json_out:
            doc = {"prefix": prefix, "seconds": seconds, "repeat": repeat,
                   "bridge_nf": bridge_nf,
                   "machine": {"cpus": os.cpu_count(), "kernel": os.uname().release,
                               "busy_before": run.busy_before},
                   "paths": {p.key: vars(p) for p in paths},
                   "summary": summary(run), "runs": run.details,
                   "dataplane_counters": counters,
                   "masquerade_rule_packets": masquerade_counter(kernel)}
            Path(json_out).write_text(json.dumps(doc, indent=2, default=str))
            log(f"wrote {json_out}")
        return 0
    except RuntimeError as e:
        gone = [n for n in (f"{prefix}-hp", f"{prefix}-h-knat") if not netns.exists(n)]
        if state is not None and gone:
            raise RuntimeError(f"{e}; meanwhile {', '.join(gone)} disappeared: something "
                               "outside removed the lab (`hyperplane down --all`?)") from None
        raise
    finally:
        procs.kill_all()
        teardown(prefix, kernel)


def teardown(prefix: str, kernel: KernelNat | None) -> None:
    """Stops the data plane and removes the lab, the kernel NAT and their files."""
    from hyperplane.cli import stop_dataplane
    try:
        stop_dataplane(prefix)
    except Exception as e:
        log(f"stopping the data plane: {e}")
    try:
        from hyperplane.lab.cleanup import cleanup
        report = cleanup(prefix)  # every namespace named like the lab's, ours included
        for err in report.errors:
            log(f"cleanup: {err}")
    except Exception as e:
        log(f"cleanup: {e}")
    mine = [f"{prefix}-h-knat", f"{prefix}-f-kfn"] + (kernel.namespaces if kernel else [])
    for ns in dict.fromkeys(mine):
        try:
            for pid in netns.pids(ns):
                if pid != os.getpid():
                    os.kill(pid, signal.SIGKILL)
            netns.remove(ns)
        except OSError:
            pass
    control.socket_path(prefix).unlink(missing_ok=True)
    for name in (f"{prefix}.pid", f"{prefix}-dataplane.log", f"{prefix}-flows.log",
                 f"{prefix}.json"):
        (Path(RUN_DIR) / name).unlink(missing_ok=True)
    left = [n for n in netns.list_namespaces() if n.startswith(f"{prefix}-")]
    if left:
        log(f"WARNING: namespaces still present: {', '.join(left)}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=5, help="length of each iperf3 test")
    ap.add_argument("--repeat", type=int, default=3, help="repeats (medians are reported)")
    ap.add_argument("--json", dest="json_out", help="write every figure and counter here")
    ap.add_argument("--only", choices=("hyperplane", "kernel"),
                    help="run one path only (no ratios): for debugging either side")
    ap.add_argument("--bridge-nf", choices=("default", "on", "off"), default="default",
                    help="br_netfilter hooks on the lab's bridges, for both paths (default: "
                         "as the lab leaves them, i.e. the kernel's default)")
    ap.add_argument("--prefix", help="lab prefix (default: 'be' + two random characters)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("e2e.py needs root (network namespaces)", file=sys.stderr)
        return 2
    if args.seconds < 1 or args.repeat < 1:
        ap.error("--seconds and --repeat must be >= 1")
    prefix = args.prefix or "be" + "".join(random.choices(string.ascii_lowercase
                                                          + string.digits, k=2))

    def on_term(signum, _frame):
        raise SystemExit(128 + signum)    # runs the finally blocks
    signal.signal(signal.SIGTERM, on_term)
    try:
        return run_bench(prefix, args.seconds, args.repeat, args.json_out, args.only,
                         args.bridge_nf)
    except RuntimeError as e:
        print(f"e2e: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
