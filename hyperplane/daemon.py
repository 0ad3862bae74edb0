"""The data-plane process: runs inside the lab's data-plane namespace.

It builds the NAT from the lab's saved state, opens a ring pair on the inside port and on each
ENI port, and loops: the C loop forwards batches with the GIL released until something is
punted or 100 ms pass; then Python handles the punts (slow path), expires connections (flow
logs), grows ENIs whose ports ran out, and runs the control server's calls (the server
answers clients on threads of its own, see hyperplane.control). Start it with
`hyperplane up`; it stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import secrets
import signal
import sys
import threading
import time

from . import control, flowlog, metrics, runtime
from ._core import DataPlane, Nat
from .lab import Lab
from .lab.topology import EniInfo, RUN_DIR
from .slowpath import PortInfo, SlowPath

log = logging.getLogger("hyperplane.daemon")

EXPIRE_EVERY_MS = 1000
TICK_EVERY_MS = 100


class Daemon:
    def __init__(self, prefix: str, run_dir=None):
        self.prefix = prefix
        self.run_dir = run_dir or RUN_DIR
        self.lab = Lab.attach(prefix, run_dir)
        state = self.lab.state
        self.config = state.config                     # the typed value, validated at `up`
        self.nat = Nat(**self.config.nat_args(),
                       port_seed=secrets.randbits(64),     # RFC 6056: unpredictable ports
                       # connections, ports and counters outlive this process (cleanup removes it)
                       state_path=runtime.paths(prefix, self.run_dir).state)
        if self.nat.attached:
            log.info("attached to the state of a previous data plane: %d connections, %d "
                     "repaired", len(self.nat), self.nat.repaired)
        self.dp = DataPlane(self.nat)
        self.started = time.time()
        self.calls: queue.Queue = queue.Queue()
        self.stopping = threading.Event()
        self.flow_opts = flowlog.options(state.config)
        self.metrics_opts = metrics.options(state.config)
        self.flow_tracker = flowlog.FlowTracker(int(self.flow_opts.interval_s * 1000))
        self.flows = None
        self.flow_write_errors = 0
        if self.flow_opts.enabled:
            ctx = flowlog.Context(account_id=self.flow_opts.account_id,
                                  interface_id=self.interface_id,
                                  subnet_id=lambda e: self.lab.state.eni(e).subnet)
            self.flows = flowlog.FlowLogWriter(
                self.flow_opts.folder or flowlog.default_folder(self.run_dir, prefix),
                self.flow_opts.fields, self.flow_opts.max_bytes, self.flow_opts.keep, ctx)
        self.exhausted_events = 0

        ins = state.inside
        self.inside_port = self.dp.add_port(ins.ifname, role="inside", mac=ins.mac)
        self.slow = SlowPath(self.nat, self.dp, clock=self.dp.now_ms, ports=[PortInfo.inside(
            self.inside_port, ins.mac, gw4=ins.gateway4, gw6=ins.gateway6, cidr4=ins.cidr4,
            cidr6=ins.cidr6, mtu=state.mtu)], on_exhausted=self.grow_eni)
        self.group_ids = {g.key: self.nat.add_group() for g in state.groups}
        self.group_rules: dict[str, list] = {}
        for g in state.groups:      # security groups: the union of the group's egress rules
            self.set_group_rules(g.key, state.group_rules(g.key))
        self.eni_ports: dict[int, int] = {}            # ENI id -> data-plane port
        self.interface_ids: dict[int, str] = {}        # ENI id -> eni-... (flow logs, metrics)
        for eni in state.enis:
            self.attach_eni(eni)
        for f in state.functions:
            # A function's frames must carry its MAC and one of its addresses (anti-spoofing),
            # and only it may claim its addresses in ARP / NDP on the functions' side.
            gid = self.group_ids[f.group]
            self.nat.add_source(f.ipv4, gid, mac=f.mac)
            self.slow.bind_inside(f.ipv4, f.mac)
            if f.ipv6:
                self.nat.add_source(f.ipv6, gid, allow_v6=f.ipv6_allowed, mac=f.mac)
                self.slow.bind_inside(f.ipv6, f.mac)
        self.function_group = {f.ipv4: f.group for f in state.functions}
        self.function_group.update({f.ipv6: f.group for f in state.functions if f.ipv6})

    # --- ENIs ----------------------------------------------------------------------------

    def attach_eni(self, eni: EniInfo) -> None:
        nat_id = self.nat.add_eni(eni.ipv4, eni.ipv6)
        if nat_id != eni.id:
            raise RuntimeError(f"ENI ids out of step: lab {eni.id}, NAT {nat_id}")
        self.nat.group_add_eni(self.group_ids[eni.group], nat_id)
        port = self.dp.add_port(eni.ifname, role="eni", eni=nat_id, mac=eni.mac,
                                v4_subnet=eni.cidr4, v4_gateway=eni.gateway4,
                                v6_subnet=eni.cidr6, v6_gateway=eni.gateway6)
        self.eni_ports[eni.id] = port
        self.interface_ids[eni.id] = getattr(eni, "eni_id", None) or flowlog.eni_name(eni.id)
        self.slow.add_port(PortInfo.for_eni(port, eni.id, eni.mac, addr4=eni.ipv4, addr6=eni.ipv6,
                                            cidr4=eni.cidr4, cidr6=eni.cidr6, gw4=eni.gateway4,
                                            gw6=eni.gateway6, mtu=self.lab.state.mtu))
        log.info("ENI %d (%s, %s) on %s", eni.id, eni.ipv4, eni.ipv6 or "-", eni.ifname)

    def grow_eni(self, frame: bytes, in_port: int) -> bool:
        """The newest ENI of the sending function's group ran out of ports: add one (Lambda
        does the same when an ENI's 65,000 ports are exhausted); it takes the new connections."""
        key = self.function_group.get(source_address(frame))
        if key is None:
            return False
        group = self.lab.state.group(key)
        eni = self.lab.add_eni(group.subnet, group.security_groups)
        self.attach_eni(eni)
        self.exhausted_events += 1
        return True

    def interface_id(self, eni: int) -> str:
        return self.interface_ids.get(eni) or flowlog.eni_name(eni)

    # --- flow logs -----------------------------------------------------------------------

    def log_expired(self, conns, now_ms: int) -> None:
        self.flow_tracker.expired(conns, flowlog.wall_clock(now_ms))
        # REJECT records: the core's reject journal is bounded, so it is drained this often.
        self.flow_tracker.rejected(self.nat.rejected())

    def log_interval(self, now_ms: int) -> None:
        """An aggregation interval ends: a listing of the live connections gives each flow's
        traffic since the last one."""
        wall = flowlog.wall_clock(now_ms)
        self.flow_tracker.rejected(self.nat.rejected())
        records = self.flow_tracker.tick(connection_listing(self.nat), now_ms, wall)
        if self.flows is None:
            return
        try:
            self.flows.write(records)
        except OSError as e:      # a full or broken disk loses records, never the data plane
            self.flow_write_errors += 1
            log.warning("flow log: %d records lost: %s", len(records), e)

    # --- control requests ------------------------------------------------------------------
    # The control server answers on its own threads. Until the table lock (PLAN contract 1)
    # lands, whatever touches the NAT or the data plane runs on the loop thread between
    # batches, one short call (one page) at a time, through on_loop().

    def on_loop(self, fn, timeout: float = 5.0):
        done = threading.Event()
        box = {}

        def call():
            try:
                box["value"] = fn()
            except BaseException as e:
                box["error"] = e
            finally:
                done.set()
        self.calls.put(call)
        self.dp.wake()
        if not done.wait(timeout):
            raise TimeoutError(f"the data plane loop did not answer within {timeout:g} s")
        if "error" in box:
            raise box["error"]
        return box["value"]

    def _run_calls(self) -> None:
        while True:
            try:
                self.calls.get_nowait()()
            except queue.Empty:
                return

    def register_control(self, server: control.ControlServer) -> None:
        server.register("status", lambda req: self.on_loop(self.status))
        server.register("stats", lambda req: {**self.on_loop(self.stats),
                                              "control": server.stats()})
        server.register("eni", lambda req: {"enis": self.on_loop(self.eni_status)})
        server.register("conntrack", self.conntrack_pages)
        server.register("secgroups", lambda req: {"groups": self.on_loop(self.secgroups)})
        server.register("set-rules", lambda req: {"groups": self.on_loop(
            lambda: self.set_group_rules(req["group"], req.get("rules")) or self.secgroups())})
        server.register("stop", self.request_stop)

    def conntrack_pages(self, req: dict):
        """The connections in pages, each page read when the previous one has been sent."""
        size = int(req.get("page_size", control.PAGE_SIZE))
        if hasattr(self.nat, "connections_page"):
            return control.cursor_pages(
                lambda cursor, limit: self.on_loop(lambda: self.nat.connections_page(cursor,
                                                                                     limit)),
                convert=lambda c: c.to_dict(), size=size)
        # until the core reads in pages (PLAN contract 3): one snapshot, sent in pages
        return control.paged((c.to_dict() for c in self.on_loop(self.nat.connections)), size)

    def request_stop(self, req: dict) -> dict:
        self.stopping.set()
        self.dp.wake()
        return {"stopping": True}

    # --- security groups -------------------------------------------------------------------

    def set_group_rules(self, key: str, rules) -> None:
        """Replaces the egress rules of an ENI group, (proto, port_lo, port_hi, family,
        prefix, plen) each, None for allow-all; live connections keep going."""
        if key not in self.group_ids:
            raise ValueError(f"no ENI group {key!r}; known: {', '.join(self.group_ids)}")
        rules = None if rules is None else [tuple(r) for r in rules]
        self.nat.set_group_rules(self.group_ids[key], rules)
        self.group_rules[key] = rules

    def secgroups(self) -> list[dict]:
        out = []
        for key, gid in self.group_ids.items():
            c = self.nat.sg_counters(gid)
            rules = self.group_rules.get(key)
            out.append({"group": key, "rules": None if rules is None else [list(r) for r in rules],
                        "denied": c["denied"], "rule_hits": c["rules"]})
        return out

    def stats(self) -> dict:
        """Counters (punts named punt.<REASON>, apart from drops), ENIs with their pools, ring
        drops per port, the per-ENI NAT-gateway figures and the security groups' counters."""
        return {"nat": metrics.split_reasons(self.nat.counters()),
                "dataplane": metrics.split_reasons(self.dp.counters()),
                "slowpath": self.slow.counters(), "connections": len(self.nat),
                "capacity": self.nat.capacity, "enis": self.eni_status(),
                "ports": self.dp.ports(),
                "per_eni": self.eni_metrics(), "secgroups": self.secgroups(),
                "flow_log": {"lost": self.flow_tracker.lost, "write_errors": self.flow_write_errors,
                             "interval_s": self.flow_opts.interval_s}}

    def eni_metrics(self) -> dict:
        """Per ENI: the core's live counters, and the REJECT packets the flow logs counted."""
        out = {}
        for eni in self.lab.state.enis:
            out[eni.id] = self.nat.eni_counters(eni.id)
            out[eni.id]["rejected_packets"] = \
                self.flow_tracker.published.get(eni.id, {}).get("rejected_packets", 0)
        return out

    def scrape(self) -> str:
        """Prometheus text, asked through the control socket like any client (the answer
        is made on the thread that owns the NAT)."""
        return metrics.render(control.request(self.prefix, "stats", self.run_dir))

    def eni_status(self) -> list[dict]:
        out = []
        for eni in self.lab.state.enis:
            ports = {}
            for fam in (4, 6):
                if (eni.ipv4 if fam == 4 else eni.ipv6) is None:
                    continue
                for proto, name in ((6, "tcp"), (17, "udp")):
                    ports[f"{name}{fam}"] = self.nat.pool_stats(eni.id, fam, proto)
            d = {k: getattr(eni, k) for k in ("id", "ifname", "mac", "ipv4", "ipv6", "subnet",
                                               "group", "security_groups")}
            d["status"] = "Active"
            d["eni_id"] = self.interface_id(eni.id)
            d["port"] = self.eni_ports.get(eni.id)
            d["ports"] = ports
            d["ports_in_use"] = sum(p["in_use"] for p in ports.values())
            out.append(d)
        return out

    def status(self) -> dict:
        return {"pid": os.getpid(), "prefix": self.prefix, "uptime_s": time.time() - self.started,
                "connections": len(self.nat), "enis": self.eni_status(),
                "ports": self.dp.ports(), "eni_growths": self.exhausted_events}

    # --- the loop ------------------------------------------------------------------------

    def run(self) -> None:
        server = control.ControlServer(runtime.paths(self.prefix, self.run_dir).socket)
        self.register_control(server)
        server.start()
        exporter = None
        if self.metrics_opts.enabled:
            exporter = metrics.MetricsServer(self.scrape, self.metrics_opts.port,
                                             self.metrics_opts.address).start()
            log.info("metrics on http://%s:%d/metrics", self.metrics_opts.address, exporter.port)
        next_expire = next_tick = 0
        next_flow = self.dp.now_ms() + int(self.flow_opts.interval_s * 1000)
        log.info("forwarding (pid %d)", os.getpid())
        try:
            while not self.stopping.is_set():
                self.dp.run(timeout_ms=TICK_EVERY_MS)
                punts = self.dp.punts(full=True)
                if punts:
                    self.slow.handle(punts)
                now = self.dp.now_ms()
                if now >= next_tick:
                    self.slow.tick()
                    next_tick = now + TICK_EVERY_MS
                if now >= next_expire:
                    self.log_expired(self.nat.expire(now, max=65536), now)
                    next_expire = now + EXPIRE_EVERY_MS
                if now >= next_flow:
                    self.log_interval(now)
                    next_flow = now + int(self.flow_opts.interval_s * 1000)
                self._run_calls()
        finally:
            self.stopping.set()
            if exporter is not None:
                exporter.stop()
            server.stop()
            self.log_interval(self.dp.now_ms())      # the traffic of the last, short interval
            if self.flows is not None:
                self.flows.close()
            self.dp.close()
            log.info("stopped")


def connection_listing(nat):
    """The live connections, page by page where the Nat can (one locked slice a page)."""
    page = getattr(nat, "connections_page", None)
    if page is None:
        yield from nat.connections()
        return
    cursor = 0
    while cursor is not None:
        conns, cursor = page(cursor, 1000)
        yield from conns


def source_address(frame: bytes) -> str | None:
    """The IP source address of an Ethernet frame, or None."""
    import ipaddress
    ethertype = frame[12:14]
    if ethertype == b"\x08\x00" and len(frame) >= 34:
        return str(ipaddress.IPv4Address(frame[26:30]))
    if ethertype == b"\x86\xdd" and len(frame) >= 54:
        return str(ipaddress.IPv6Address(frame[22:38]))
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hyperplane.daemon",
                                 description="The Hyperplane data-plane process (started by "
                                             "`hyperplane up` inside the lab's namespace).")
    ap.add_argument("--prefix", default="hp")
    ap.add_argument("--run-dir", default=None)
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    os.umask(0o077)                      # everything it writes in the run folder is private
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    daemon = Daemon(args.prefix, args.run_dir)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: (daemon.stopping.set(), daemon.dp.wake()))
    daemon.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
