"""The tests: each sends the same traffic through one middle and returns its figures.

A test is run once per middle per repeat (table-scale tests once per middle: tables only
grow). Figures are named as in the ``results`` of bench.json; see ``METRICS``.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

from ..api import Lab
from ..runfolder import proc_stat
from .args import TEST_NAMES
from .middles import (ECHO_PORT, IPERF_PORT, SINK_PORTS, TCP_PORT, Middle, conntrack_count,
                      sink_count)
from .tools import Procs, wait_listening

PAYLOAD = 18           # 18 + 8 UDP + 20 IPv4 + 14 Ethernet + 4 FCS = a 64-byte frame
MAX_LOSS = 0.001       # "zero loss" (RFC 2544 asks for none; we allow under 0.1 %)
SPORT = 10000          # the generator's first source port

# metric -> (unit, higher is better)
METRICS = {
    "tcp-1": ("Gbit/s", True), "tcp-1-reverse": ("Gbit/s", True),
    "tcp-1-conntrack-poll": ("Gbit/s", True), "conntrack-poll-ratio": ("x tcp-1", True),
    "tcp-4": ("Gbit/s", True), "tcp-4-reverse": ("Gbit/s", True),
    "udp64-1flow-zeroloss": ("kpps", True), "udp64-10kflows-zeroloss": ("kpps", True),
    "tcp-conn-rate": ("conn/s", True), "udp-flow-rate": ("flows/s", True),
    "scale-10k-zeroloss": ("kpps", True), "scale-100k-zeroloss": ("kpps", True),
    "scale-1m-zeroloss": ("kpps", True),
    "rtt-idle-p50": ("us", False), "rtt-idle-p99": ("us", False),
    "rtt-idle-p99.9": ("us", False),
    "rtt-loaded-p50": ("us", False), "rtt-loaded-p99": ("us", False),
    "rtt-loaded-p99.9": ("us", False),
    "cpu-per-mpkt-udp64": ("CPU s/Mpkt", False), "cpu-per-gb-tcp": ("CPU s/GB", False),
    "dataplane-cpu-per-mpkt-udp64": ("CPU s/Mpkt", False),
}


@dataclass
class Settings:
    quick: bool = False
    tcp_seconds: int = 4
    trial_seconds: float = 1.0
    max_trials: int = 7
    conn_seconds: float = 3.0
    conn_max: int = 12000              # per repeat, all clients together (ENI port budget)
    pings: int = 5000
    scale: dict = field(default_factory=lambda: {"scale-10k": 10_000, "scale-100k": 100_000,
                                                 "scale-1m": 1_000_000})

    @classmethod
    def for_run(cls, quick: bool) -> "Settings":
        if not quick:
            return cls()
        return cls(quick=True, tcp_seconds=1, trial_seconds=0.25, max_trials=3,
                   conn_seconds=0.5, conn_max=1000, pings=300,
                   scale={"scale-10k": 2_000, "scale-100k": 5_000, "scale-1m": 20_000})


# --- CPU accounting -----------------------------------------------------------------------
# What a middle costs: the CPU time of the processes that carry the traffic (the generator or
# iperf3, the data plane) and of the kernel's softirq threads. With tick accounting the
# kernel's per-packet work inside a process's system calls (veth runs the receiving side's
# stack in the sender's softirq) is charged to that process, so this counts the kernel
# middles' forwarding too; other tenants of the machine are left out.

def cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs: busy is all but idle and iowait."""
    with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:9]]
    return sum(vals) - vals[3] - vals[4], sum(vals)


def process_cpu(pid: int | None) -> float:
    stat = proc_stat(pid) if pid else None
    if not stat:
        return 0.0
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")     # utime + stime


def softirq_threads() -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/comm") as f:
                    if f.read().startswith("ksoftirqd/"):
                        out.append(int(d))
            except OSError:
                pass
    return out


class CpuWindow:
    """CPU seconds of the data plane, the softirq threads and the whole machine between start
    and stop; the traffic tools report their own."""
    _softirqd: list[int] | None = None

    def __init__(self, dp_pid: int | None):
        if CpuWindow._softirqd is None:
            CpuWindow._softirqd = softirq_threads()
        self.dp_pid = dp_pid
        self.b0, self.t0 = cpu_jiffies()
        self.p0 = process_cpu(dp_pid)
        self.k0 = sum(process_cpu(p) for p in self._softirqd)

    def stop(self, tools_cpu_s: float) -> dict:
        b1, t1 = cpu_jiffies()
        dp = process_cpu(self.dp_pid) - self.p0 if self.dp_pid else 0.0
        ksoft = sum(process_cpu(p) for p in self._softirqd) - self.k0
        return {"cpu_s": tools_cpu_s + dp + ksoft, "tools_cpu_s": tools_cpu_s,
                "dataplane_cpu_s": dp if self.dp_pid else None, "ksoftirqd_cpu_s": ksoft,
                "machine_busy": (b1 - self.b0) / max(1, t1 - self.t0)}


def machine_busy(seconds: float = 1.0) -> float:
    b0, t0 = cpu_jiffies()
    time.sleep(seconds)
    b1, t1 = cpu_jiffies()
    return (b1 - b0) / max(1, t1 - t0)


# --- the context of a run -------------------------------------------------------------------

@dataclass
class Ctx:
    settings: Settings
    procs: Procs
    middles: dict[str, Middle]
    server_ns: str
    server_addr: str
    prefix: str
    dp_pid: int | None
    samples: list = field(default_factory=list)
    values: dict = field(default_factory=dict)         # (metric, middle) -> [values]
    cursor: dict = field(default_factory=dict)         # flow index per (middle, flow set)
    limited: set = field(default_factory=set)          # (metric, middle) the sender capped

    label: str | None = None        # what the running measurement's figures are recorded as

    def earlier(self, metric: str, m: Middle) -> float | None:
        """The median so far of metric for what is being measured now (a placement of
        Hyperplane's forwarding thread has its own)."""
        return self.median(metric, self.label or m.name)

    def record(self, metric: str, middle: str, value: float) -> None:
        self.values.setdefault((metric, middle), []).append(value)

    def median(self, metric: str, middle: str) -> float | None:
        v = self.values.get((metric, middle))
        return statistics.median(v) if v else None


@dataclass(frozen=True)
class Flows:
    """Datagram i goes from SPORT + i % nsports to dport + (i // nsports) % ndports."""
    key: str
    ns_attr: str          # the Middle's client namespace attribute: "bulk" or "scale"
    n: int
    dport: int = SINK_PORTS[0]

    @property
    def nsports(self) -> int:
        return min(self.n, 50_000)

    @property
    def ndports(self) -> int:
        return math.ceil(self.n / self.nsports)


def _stable_count(ctx: Ctx, before: int, deadline_s: float = 1.0) -> int:
    """The server's count once datagrams in flight have arrived."""
    last, still = sink_count(ctx.server_ns), 0
    deadline = time.monotonic() + deadline_s
    while still < 2 and time.monotonic() < deadline:
        time.sleep(0.03)
        now = sink_count(ctx.server_ns)
        still = still + 1 if now == last else 0
        last = now
    return last - before


def send(ctx: Ctx, m: Middle, flows: Flows, rate: float, seconds: float, count: int = 0) -> dict:
    """One trial: `rate` datagrams/s (0: as fast as the generator goes) for `seconds` (or until
    `count` were sent)."""
    ns = getattr(m, flows.ns_attr)
    start = ctx.cursor.get((m.name, flows.key), 0)
    c0 = sink_count(ctx.server_ns)
    cpu = CpuWindow(ctx.dp_pid if m.name == "hyperplane" else None)
    r = ctx.procs.result(ctx.procs.generator(ns, ctx.server_addr, flows.dport, flows.ndports,
                                             SPORT, flows.nsports, int(rate), seconds, start,
                                             PAYLOAD, count=count), seconds + 15, "the generator")
    received = _stable_count(ctx, c0)
    used = cpu.stop(r.get("cpu_s", 0.0))
    ctx.cursor[(m.name, flows.key)] = r["next"] % (flows.nsports * flows.ndports)
    offered = r["offered"]
    return {"rate": rate, "offered": offered, "offered_pps": offered / r["elapsed"],
            "sent_pps": r["sent"] / r["elapsed"], "sender_errors": r["errors"],
            "sender": r.get("via"),
            "received": received,
            "loss": (offered - received) / offered if offered else 1.0, **used}


def zero_loss(ctx: Ctx, m: Middle, flows: Flows, hint: float | None = None,  # packets/s
              max_trials: int | None = None, warm: bool = True) -> tuple[float, list[dict]]:
    """RFC 2544-style binary search for the highest offered rate losing under MAX_LOSS; returns
    it (packets/s) and every trial (the loss curve). `warm` first opens every flow."""
    s = ctx.settings
    n = max_trials or s.max_trials
    if warm:
        send(ctx, m, flows, 50_000, max(0.05, min(flows.n / 50_000, 30)))
    first = send(ctx, m, flows, 0, s.trial_seconds)
    trials = [first]
    if first["loss"] < MAX_LOSS:
        first["limited_by_generator"] = True
        return first["offered_pps"], trials
    lo, hi = 0.0, first["sent_pps"]      # what the path took in, not the refused rest
    rate = min(hint or first["received"] / s.trial_seconds, hi * 0.95)
    for _ in range(n - 1):
        t = send(ctx, m, flows, rate, s.trial_seconds)
        trials.append(t)
        if t["loss"] < MAX_LOSS:
            lo = max(lo, t["offered_pps"])
        else:
            hi = min(hi, rate)
        if hi - lo < 0.03 * hi:
            break
        rate = (lo + hi) / 2
    return lo, trials


def _best_trial(trials: list[dict]) -> dict | None:
    """The fastest trial without loss, else the one that lost least (for the CPU cost)."""
    ok = [t for t in trials if t["loss"] < MAX_LOSS and t["received"]]
    if ok:
        return max(ok, key=lambda t: t["offered_pps"])
    got = [t for t in trials if t["received"]]
    return min(got, key=lambda t: t["loss"]) if got else None


# --- the tests ------------------------------------------------------------------------------

def _iperf(ctx: Ctx, m: Middle, streams: int, reverse: bool) -> tuple[dict, dict]:
    s = ctx.settings
    server = ctx.procs.start(ctx.server_ns, ["iperf3", "-s", "-1", "-J", "-p", str(IPERF_PORT)])
    wait_listening(server, ctx.server_ns, IPERF_PORT)
    cpu = CpuWindow(ctx.dp_pid if m.name == "hyperplane" else None)
    argv = ["iperf3", "-c", ctx.server_addr, "-p", str(IPERF_PORT), "-t", str(s.tcp_seconds),
            "-P", str(streams), "-J", "--connect-timeout", "3000", *(["-R"] if reverse else [])]
    client = ctx.procs.start(m.bulk, argv)
    try:
        cout, cerr = client.communicate(timeout=s.tcp_seconds + 20)
        sout, _ = server.communicate(timeout=10)
    except Exception:
        raise RuntimeError(f"iperf3 through {m.name} did not finish in time") from None
    try:
        cj, sj = json.loads(cout), json.loads(sout)
    except json.JSONDecodeError:
        raise RuntimeError(f"iperf3 through {m.name}: {cerr.strip()[:300]}") from None
    util = cj["end"].get("cpu_utilization_percent", {})
    secs = cj["end"]["sum_received"].get("seconds", s.tcp_seconds)
    used = cpu.stop((util.get("host_total", 0) + util.get("remote_total", 0)) / 100 * secs)
    for j in (cj, sj):
        if j.get("error"):
            raise RuntimeError(f"iperf3 through {m.name}: {j['error']}")
    seen = {c.get("remote_host") for c in sj.get("start", {}).get("connected", [])}
    if seen != {m.seen_as}:
        raise RuntimeError(f"{m.name}: the server saw {sorted(seen)}, not {m.seen_as}: the "
                           "traffic did not take that middle")
    end = cj["end"]["sum_received"]
    return end, used


def tcp_bulk(streams: int, reverse: bool):
    name = f"tcp-{streams}" + ("-reverse" if reverse else "")

    def run(ctx: Ctx, m: Middle) -> tuple[dict, dict]:
        end, used = _iperf(ctx, m, streams, reverse)
        gbit = end["bits_per_second"] / 1e9
        out = {name: gbit}
        detail = {"bytes": end["bytes"], **used}
        if streams == 1 and not reverse and end["bytes"]:
            out["cpu-per-gb-tcp"] = used["cpu_s"] / (end["bytes"] / 1e9)
        return out, detail
    return name, run


# What polls each middle's connection table, over and over, like `conntrack --watch`: the
# Hyperplane CLI through the control socket; the kernel's table for the kernel NAT; routing
# keeps no table (its figure is plain tcp-1).
POLL_INTERVAL_S = 0.1
KERNEL_POLL = f"while :; do cat /proc/net/nf_conntrack > /dev/null; sleep {POLL_INTERVAL_S}; done"


WATCHER_START_S = 30.0


def _start_watcher(ctx: Ctx):
    """`hyperplane conntrack --watch`, returned once its first listing is out: the
    interpreter's start (imports, about a CPU second) is not what listing costs forwarding.
    Its output is read and dropped from then on, so it never waits on a full pipe."""
    import select
    import subprocess
    import sys
    import threading
    poller = subprocess.Popen([sys.executable, "-m", "hyperplane.cli", "conntrack", "--watch",
                               "--interval", str(POLL_INTERVAL_S), "--prefix", ctx.prefix],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    ctx.procs.procs.append(poller)
    fd = poller.stdout.fileno()
    ready, _, _ = select.select([fd], [], [], WATCHER_START_S)
    if not ready or not os.read(fd, 1 << 16):
        raise RuntimeError(f"hyperplane conntrack --watch printed no listing in "
                           f"{WATCHER_START_S:.0f} s (exit status {poller.poll()})")
    threading.Thread(target=_drain, args=(fd,), daemon=True).start()
    return poller


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 1 << 16):
            pass
    except OSError:          # closed under us: the watcher is gone
        pass


def tcp_conntrack_poll(ctx: Ctx, m: Middle) -> tuple[dict, dict]:
    """tcp-1 while the middle's connection table is listed continuously; the ratio to tcp-1's
    median so far (issue 6: listing never slows forwarding down)."""
    poller = None
    if m.name == "hyperplane":
        poller = _start_watcher(ctx)
    elif m.name.startswith("kernel-nat"):
        poller = ctx.procs.start(m.ns, ["sh", "-c", KERNEL_POLL])
    try:
        end, used = _iperf(ctx, m, 1, False)
    finally:
        if poller is not None:
            ctx.procs.kill(poller)
    gbit = end["bits_per_second"] / 1e9
    out = {"tcp-1-conntrack-poll": gbit}
    base = ctx.earlier("tcp-1", m)
    if base:
        out["conntrack-poll-ratio"] = gbit / base
    return out, {"bytes": end["bytes"], "poll_interval_s": POLL_INTERVAL_S, **used}


def udp64(key: str, n: int):
    def run(ctx: Ctx, m: Middle) -> tuple[dict, dict]:
        flows = Flows(key, "bulk", n)
        earlier = ctx.earlier(f"{key}-zeroloss", m)      # kpps, from earlier repeats
        rate, trials = zero_loss(ctx, m, flows, earlier * 1e3 if earlier else None)
        out = {f"{key}-zeroloss": rate / 1e3}
        if trials[0].get("limited_by_generator"):
            ctx.limited.add((f"{key}-zeroloss", ctx.label or m.name))
        best = _best_trial(trials)
        if key == "udp64-1flow" and best:
            mpkt = best["received"] / 1e6
            out["cpu-per-mpkt-udp64"] = best["cpu_s"] / mpkt
            if best["dataplane_cpu_s"] is not None:
                out["dataplane-cpu-per-mpkt-udp64"] = best["dataplane_cpu_s"] / mpkt
        return out, {"flows": n, "trials": trials}
    return key, run


def scale(key: str):
    def run(ctx: Ctx, m: Middle) -> tuple[dict, dict]:
        n = ctx.settings.scale[key]
        flows = Flows("scale", "scale", n, dport=SINK_PORTS[0] + 1000)
        # open every flow, a little below the rate this middle takes 10k flows without loss
        fill_rate = 0.8 * (ctx.earlier("udp64-10kflows-zeroloss", m) or 50) * 1e3
        fill_rate = min(max(fill_rate, 20_000), 500_000)
        ctx.cursor[(m.name, "scale")] = 0
        fill = send(ctx, m, flows, fill_rate, 120, count=n)
        live = live_connections(ctx, m)
        rate, trials = zero_loss(ctx, m, flows, warm=False)
        if trials[0].get("limited_by_generator"):
            ctx.limited.add((f"{key}-zeroloss", ctx.label or m.name))
        return ({f"{key}-zeroloss": rate / 1e3},
                {"flows": n, "fill": fill, "live_connections": live,
                 "live_after": live_connections(ctx, m), "trials": trials})
    return key, run


def live_connections(ctx: Ctx, m: Middle) -> int | None:
    if m.name.startswith("kernel-nat"):
        return conntrack_count(m)
    if m.name == "hyperplane":
        try:
            return int(Lab.attach(ctx.prefix).stats(timeout=5.0).get("connections"))
        except Exception:
            return None
    return None


def conn_rate(proto: str):
    name = "tcp-conn-rate" if proto == "tcp" else "udp-flow-rate"

    def run(ctx: Ctx, m: Middle) -> tuple[dict, dict]:
        s = ctx.settings
        port = TCP_PORT if proto == "tcp" else ECHO_PORT
        server = ctx.procs.tool(ctx.server_ns, "tcpsrv" if proto == "tcp" else "echo", port,
                                s.conn_seconds + 30)
        wait_listening(server, ctx.server_ns, port, "t" if proto == "tcp" else "u")
        each = s.conn_max // len(m.conn)
        clients = [ctx.procs.tool(ns, "crr" if proto == "tcp" else "urr", ctx.server_addr,
                                  port, s.conn_seconds, each, 16) for ns in m.conn]
        outs = [ctx.procs.result(c, s.conn_seconds + 15, f"{name} client") for c in clients]
        ctx.procs.kill(server)
        done = sum(o["done"] for o in outs)
        elapsed = max(o["elapsed"] for o in outs)
        return {name: done / elapsed}, {"clients": outs, "done": done,
                                        "failed": sum(o["failed"] for o in outs)}
    return name, run


def _percentiles(rtts_ns: list[float]) -> dict:
    ok = sorted(r for r in rtts_ns if r >= 0)
    if not ok:
        raise RuntimeError("no ping came back")

    def q(p):
        return ok[min(len(ok) - 1, int(p * len(ok)))] / 1e3
    return {"p50": q(0.50), "p99": q(0.99), "p99.9": q(0.999), "max": ok[-1] / 1e3,
            "n": len(rtts_ns), "lost": len(rtts_ns) - len(ok)}


def rtt(loaded: bool):
    name = "rtt-loaded" if loaded else "rtt-idle"

    def run(ctx: Ctx, m: Middle) -> tuple[dict, dict]:
        s = ctx.settings
        gap_us = 100
        est = s.pings * (gap_us + 100) / 1e6 + 1
        detail = {}
        load = None
        if loaded:
            zl = ctx.earlier("udp64-1flow-zeroloss", m)
            if zl is None:     # the small-packet test was not selected: find the rate here
                zl = zero_loss(ctx, m, Flows("udp64-1flow", "bulk", 1), max_trials=4)[0] / 1e3
            detail["background_pps"] = rate = 0.5 * zl * 1e3
            load = ctx.procs.generator(m.bulk, ctx.server_addr, SINK_PORTS[0], 1, SPORT, 1,
                                       int(rate), est + 1, 0, PAYLOAD)
            time.sleep(0.2)
        echo = ctx.procs.tool(ctx.server_ns, "echo", ECHO_PORT, est + 30)
        wait_listening(echo, ctx.server_ns, ECHO_PORT, "u")
        rtts = ctx.procs.run(m.bulk, "ping", ctx.server_addr, ECHO_PORT, s.pings, gap_us,
                             timeout=est * 3 + 10, what="ping")
        ctx.procs.kill(echo)
        if load is not None:
            detail["background"] = ctx.procs.result(load, est + 15, "background generator")
        p = _percentiles(rtts)
        detail.update(p)
        return {f"{name}-p50": p["p50"], f"{name}-p99": p["p99"],
                f"{name}-p99.9": p["p99.9"]}, detail
    return name, run


@dataclass(frozen=True)
class Test:
    name: str
    run: Callable
    once: bool = False        # table-scale: tables only grow, so one pass in size order


def _tests() -> list[Test]:
    out = [Test(*tcp_bulk(1, False)), Test("tcp-1-conntrack-poll", tcp_conntrack_poll),
           Test(*tcp_bulk(1, True)), Test(*tcp_bulk(4, False)),
           Test(*tcp_bulk(4, True)), Test(*udp64("udp64-1flow", 1)),
           Test(*udp64("udp64-10kflows", 10_000)), Test(*conn_rate("tcp")),
           Test(*conn_rate("udp")), Test(*rtt(False)), Test(*rtt(True))]
    out += [Test(*scale(k), once=True) for k in ("scale-10k", "scale-100k", "scale-1m")]
    return out


TESTS = _tests()
assert tuple(t.name for t in TESTS) == TEST_NAMES, "args.TEST_NAMES lists the tests in order"
