"""The data-plane process: runs inside the lab's data-plane namespace.

It builds the NAT from the lab's saved state, opens a ring pair on the inside port and on each
ENI port, and runs these threads (docs/semantics.md, "Threads and the table lock"):

- forwarding: the C loop (DataPlane.start), never waits on Python; scheduled as the lab config's
  [hyperplane.forwarding] says (hyperplane.scheduling: by default a normal thread with a large
  weight of its own that sleeps when idle, so it never starves what shares its CPU);
- slow path: takes punts (ARP, NDP, ICMP, neighbour misses, fragments, ...) and ticks;
- housekeeping: expires connections in bounded slices, flow-log intervals;
- ENI worker: creates the ENIs the slow path asks for when a group's ports run out;
- exhausted frames: holds the frames that found no free port until their group has a new ENI,
  then re-runs them (the slow path hands them over and goes on answering ARP, NDP, ...);
- control: the control server's threads (hyperplane.control) call the handlers registered
  here, which use only thread-safe calls of the Nat and the DataPlane.

Start it with `hyperplane up`; it stops on SIGTERM/SIGINT or the `stop` command.
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

from . import control, flowlog, metrics, runfolder, scheduling
from ._core import DataPlane, Nat
from .ctcontrol import ConntrackService
from .lab import Lab
from .lab.topology import EniInfo
from .enibackend import DaemonEniBackend
from .enimanager import EniManager
from .scheduling import in_background, lower_priority, os_thread_name
from .slowpath import PortInfo, SlowPath

log = logging.getLogger("hyperplane.daemon")

EXPIRE_EVERY_MS = 1000
TICK_EVERY_MS = 100
ENI_WAIT_S = 2.0            # how long an exhausted frame waits for the ENI it asked for
PARKED_MAX = 1024           # exhausted frames waiting for an ENI; more are dropped (counted)
SHUTDOWN_JOIN_S = 5.0       # how long shutdown waits for each thread that can touch the data plane
# Tx slots of an ENI port: 64 of 68 KB (rounded up to 75, 5 MB); with the data plane's default
# rx ring (8 MB, _dataplane.pxi) about 13 MB an ENI, so 16 ENIs fit in ~210 MB.
ENI_TX_FRAMES = 64


class Daemon:
    def __init__(self, prefix: str, run_dir=None):
        self.prefix = prefix
        self.run_dir = run_dir or runfolder.RUN_DIR
        self.paths = runfolder.paths(prefix, self.run_dir)
        self.lab = Lab.attach(prefix, run_dir)
        state = self.lab.state
        self.config = state.config                     # the typed value, validated at `up`
        self.nat = Nat(**self.config.nat_args(),
                       port_seed=secrets.randbits(64),     # RFC 6056: unpredictable ports
                       # connections, ports and counters outlive this process (cleanup removes it)
                       state_path=self.paths.state)
        if self.nat.attached:
            log.info("attached to the state of a previous data plane: %d connections, %d "
                     "repaired", len(self.nat), self.nat.repaired)
        self.dp = DataPlane(self.nat, spin_us=self.config.hyperplane.forwarding.spin_us)
        self.started = time.time()
        self.stopping = threading.Event()
        self.flow_opts = state.config.hyperplane.flow_logs
        self.metrics_opts = state.config.hyperplane.metrics
        # Each connection's flow-log interval lives in the core (in the state file too): after
        # a restart the next harvest carries on where the previous data plane's last one left.
        self.flow_tracker = flowlog.FlowTracker(int(self.flow_opts.interval_s * 1000))
        self.flows = None
        self.flow_write_errors = 0
        if self.flow_opts.enabled:
            ctx = flowlog.Context(account_id=self.flow_opts.account_id,
                                  interface_id=self.interface_id,
                                  subnet_id=lambda e: self.lab.state.eni(e).subnet)
            self.flows = flowlog.FlowLogWriter(
                self.flow_opts.folder or self.paths.flow_logs,
                self.flow_opts.fields, self.flow_opts.max_bytes, self.flow_opts.keep, ctx)
        self.parked: queue.Queue = queue.Queue(PARKED_MAX)
        self.parked_dropped = 0
        self.eni_generation = 0                        # ENIs attached so far (any group)
        hp = state.config.hyperplane
        self.enis = EniManager(DaemonEniBackend(self), high_water=hp.eni_high_water,
                               limit=hp.eni_limit, idle_reclaim_s=hp.eni_idle_reclaim_s)
        self.threads: list[threading.Thread] = []
        self.forwarding = "not started"                # its scheduling (scheduling.py)
        self._functions_lock = threading.Lock()        # set-function calls, one at a time

        ins = state.inside
        self.inside_port = self.dp.add_port(ins.ifname, role="inside", mac=ins.mac)
        self.slow = SlowPath(self.nat, self.dp, clock=self.dp.now_ms, ports=[PortInfo.inside(
            self.inside_port, ins.mac, gw4=ins.gateway4, gw6=ins.gateway6, cidr4=ins.cidr4,
            cidr6=ins.cidr6, mtu=state.mtu)], on_exhausted=self.park_exhausted)
        self.group_ids = {g.key: self.nat.add_group() for g in state.groups}
        self.group_rules: dict[str, list] = {}
        for g in state.groups:      # security groups: the union of the group's egress rules
            self.set_group_rules(g.key, state.group_rules(g.key))
        self.eni_ports: dict[int, int] = {}            # ENI id -> data-plane port
        self.interface_ids: dict[int, str] = {}        # ENI id -> eni-... (flow logs, metrics)
        for eni in state.enis:
            if eni.status == "Deleted":     # back in the NAT, in no group, to be released
                self.nat.add_eni(eni.ipv4, eni.ipv6, eni=eni.id)
            else:
                self.attach_eni(eni)
            self.enis.adopt(eni, "Active" if eni.status == "Pending" else eni.status)
        for f in state.functions:
            # A function's frames must carry its MAC and one of its addresses (anti-spoofing),
            # and only it may claim its addresses in ARP / NDP on the functions' side.
            gid = self.group_ids[f.group]
            self.nat.add_source(f.ipv4, gid, mac=f.mac)
            self.slow.bind_inside(f.ipv4, f.mac)
            if f.ipv6:
                self.nat.add_source(f.ipv6, gid, allow_v6=f.ipv6_allowed, mac=f.mac)
                self.slow.bind_inside(f.ipv6, f.mac)
            quota = self.config.function(f.name)       # shares already resolved to numbers
            self.nat.set_quota(f.ipv4, quota.max_connections, quota.max_ports_per_pool)
        self.function_names = {f.ipv4: f.name for f in state.functions}
        owners = {s["owner"]: self.function_names.get(s["addr"], s["addr"])
                  for s in self.nat.function_stats()}
        self.conntrack = ConntrackService(self.nat, self.dp.now_ms, lambda: owners)
        if self.nat.attached:                      # state kept across a restart: count it
            self.nat.recount_quotas()
        self.function_group = {f.ipv4: f.group for f in state.functions}
        self.function_group.update({f.ipv6: f.group for f in state.functions if f.ipv6})

    # --- ENIs ----------------------------------------------------------------------------

    def attach_eni(self, eni: EniInfo) -> None:
        """Adds an ENI to the NAT, its port to the loop and the slow path, and only then to its
        group: the forwarding thread sees a ready port appear. Safe while forwarding."""
        nat_id = self.nat.add_eni(eni.ipv4, eni.ipv6, eni=eni.id)
        port = self.dp.add_port(eni.ifname, role="eni", eni=nat_id, mac=eni.mac,
                                v4_subnet=eni.cidr4, v4_gateway=eni.gateway4,
                                v6_subnet=eni.cidr6, v6_gateway=eni.gateway6,
                                tx_frames=ENI_TX_FRAMES)
        # The slow path belongs to the slow-path thread, which may be waiting in grow_eni()
        # for this very ENI: add_port() only assigns dict items, atomic under the GIL.
        self.slow.add_port(PortInfo.for_eni(port, eni.id, eni.mac, addr4=eni.ipv4,
                                            addr6=eni.ipv6, cidr4=eni.cidr4, cidr6=eni.cidr6,
                                            gw4=eni.gateway4, gw6=eni.gateway6,
                                            mtu=self.lab.state.mtu))
        self.known_neighbours(eni, port)
        self.nat.group_add_eni(self.group_ids[eni.group], nat_id)
        self.interface_ids[eni.id] = getattr(eni, "eni_id", None) or flowlog.eni_name(eni.id)
        self.eni_ports[eni.id] = port
        self.eni_generation += 1
        log.info("ENI %d (%s, %s) on %s", eni.id, eni.ipv4, eni.ipv6 or "-", eni.ifname)

    def park_exhausted(self, frame: bytes, in_port: int, vnet=None) -> bool | None:
        """The slow path's on_exhausted: the frame (with its virtio-net header, a GSO batch's
        included) waits on the exhausted-frames thread, so that the slow path never waits for
        an ENI. None: taken; False: too many wait."""
        try:
            self.parked.put_nowait((frame, in_port, vnet, self.eni_generation))
        except queue.Full:
            self.parked_dropped += 1
            return False
        return None

    def rerun_exhausted(self) -> None:
        """Re-runs parked frames: at once if an ENI was attached since the frame was parked
        (the frames that queued up behind one scale-out take its ports instead of asking for
        one ENI each), else once the ENI it asks for is ready. A frame that finds no port again
        comes back here through the slow path, with the newer generation."""
        while not self.stopping.is_set():
            try:
                frame, in_port, vnet, generation = self.parked.get(timeout=0.2)
            except queue.Empty:
                continue
            if generation == self.eni_generation and not self.grow_eni(frame, in_port):
                self.parked_dropped += 1
                continue
            try:
                self.dp.input(in_port, frame, vnet)
            except OSError:
                self.parked_dropped += 1

    def known_neighbours(self, eni: EniInfo, port: int) -> None:
        """The subnet's neighbours the lab knows (its hosts, the subnet's gateway: their MACs
        are fixed when the lab is built), known on the new port before the ENI joins its
        group, as a VPC's mapping service knows every MAC: no connection's first frames wait
        for ARP in the slow path's bounded queue (a cold entry under load lost hundreds of
        datagrams at 3,500 new flows/s). They are pinned: nothing from the wire (a forged ARP
        reply or NA from a customer host) replaces them. Anything else on the subnet is
        resolved by ARP / NDP and learned from the answer to our own solicitation."""
        state = self.lab.state
        sn = next((s for s in state.subnets if s.name == eni.subnet), None)
        known = [(a, h.mac) for h in state.hosts if h.subnet == eni.subnet
                 for a in (h.ipv4, h.ipv6)]
        if sn is not None:
            known += [(sn.gateway4, sn.mac), (sn.gateway6, sn.mac)]
        for addr, mac in known:
            if addr and mac:
                try:
                    self.dp.set_neighbor(addr, mac, port, pinned=True)
                except OSError as e:     # a full neighbour table: ARP / NDP will learn it
                    log.warning("ENI %d: neighbour %s not set: %s", eni.id, addr, e)

    def detach_eni(self, eni: EniInfo) -> None:
        """Undoes attach_eni but for the NAT's record (released later, once its ports'
        quarantine is over): the slow path forgets the port, the loop stops polling it (its
        veth may go)."""
        port = self.eni_ports.pop(eni.id, None)
        if port is not None:
            self.slow.remove_port(port)
            self.dp.remove_port(port)

    def grow_eni(self, frame: bytes, in_port: int) -> bool:
        """The slow path's on_exhausted: no ENI of the sending function's group has a free
        port (or the group has none, all reclaimed). Asks the ENI manager for one and waits
        (on the exhausted-frames thread); True: the frame can be re-run."""
        key = self.function_group.get(source_address(frame))
        if key is None:
            return False
        return self.enis.request(key, ENI_WAIT_S)

    def interface_id(self, eni: int) -> str:
        return self.interface_ids.get(eni) or flowlog.eni_name(eni)

    # --- flow logs -----------------------------------------------------------------------

    def log_expired(self, conns, now_ms: int) -> None:
        self.flow_tracker.expired(conns, flowlog.wall_clock(now_ms))
        # REJECT records: the core's reject journal is bounded, so it is drained this often.
        self.flow_tracker.rejected(self.nat.rejected())

    def log_interval(self, now_ms: int) -> None:
        """An aggregation interval ends: a harvest of the core takes every connection with
        traffic since the last one, with its interval per direction, and starts it again."""
        wall = flowlog.wall_clock(now_ms)
        self.flow_tracker.rejected(self.nat.rejected())
        records = self.flow_tracker.tick(flow_harvest(self.nat), wall)
        if self.flows is None:
            return
        try:
            self.flows.write(records)
        except OSError as e:      # a full or broken disk loses records, never the data plane
            self.flow_write_errors += 1
            log.warning("flow log: %d records lost: %s", len(records), e)

    # --- control requests (on the control server's threads) --------------------------------

    def register_control(self, server: control.ControlServer) -> None:
        handlers = {
            "status": lambda req: self.status(),
            "stats": lambda req: {**self.stats(), "control": server.stats()},
            "eni": lambda req: {"enis": self.eni_status()},
            **self.conntrack.handlers(),
            "secgroups": lambda req: {"groups": self.secgroups()},
            "set-rules": lambda req: {"groups": self.set_group_rules(
                req["group"], req.get("rules")) or self.secgroups()},
            "set-function": self.set_function,
            "stop": self.request_stop}
        for name, handler in handlers.items():
            server.register(name, in_background(handler))

    def set_function(self, req: dict) -> dict:
        """A running function's VPC config changes ({"function", "subnet", "security_groups"}):
        its new connections open on the new pair's ENI (made on demand by the ENI manager);
        live ones stay on the ENI they have until they end."""
        with self._functions_lock:
            try:
                key = self.lab.move_function(req["function"], req["subnet"],
                                             req.get("security_groups", ()))
            except KeyError as e:
                raise ValueError(f"set-function: unknown {e.args[0] if e.args else e}") from None
            if key not in self.group_ids:
                self.group_ids[key] = self.nat.add_group()
                self.set_group_rules(key, self.lab.state.group_rules(key))
            fn = self.lab.state.function(req["function"])
            for addr in filter(None, (fn.ipv4, fn.ipv6)):
                self.nat.set_source_group(addr, self.group_ids[key])
                self.function_group[addr] = key
        log.info("function %s now in group %s", fn.name, key)
        return {"function": fn.name, "group": key}

    def request_stop(self, req: dict) -> dict:
        self.stopping.set()
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
                # How long other threads held the table lock (the loop waits at most that).
                "table_lock": self.nat.lock_stats(), "forwarding": self.forwarding,
                "forwarding_threads": scheduling.forwarding_now(),
                # One C-level dict copy: atomic under the GIL, no lock with the slow path.
                "slowpath": {**self.slow.counters(),
                             "exhausted_parked_dropped": self.parked_dropped},
                "connections": len(self.nat),
                "conntrack": self.conntrack.stats(),
                "capacity": self.nat.capacity, "enis": self.eni_status(),
                "eni_manager": dict(self.enis.counters),
                "functions": [{"name": self.function_names.get(s["addr"], s["addr"]), **s}
                              for s in self.nat.function_stats()],
                "ports": self.dp.ports(),
                "per_eni": self.eni_metrics(), "secgroups": self.secgroups(),
                "flow_log": {"write_errors": self.flow_write_errors,
                             "interval_s": self.flow_opts.interval_s}}

    def eni_metrics(self) -> dict:
        """Per ENI: the core's live counters, and the REJECT packets the flow logs counted."""
        out = {}
        for eni_id in list(self.eni_ports):         # attached ones (the worker may be adding)
            out[eni_id] = self.nat.eni_counters(eni_id)
            out[eni_id]["rejected_packets"] = \
                self.flow_tracker.published.get(eni_id, {}).get("rejected_packets", 0)
        return out

    def scrape(self) -> str:
        """Prometheus text, asked through the control socket like any client."""
        return metrics.render(control.request(self.prefix, "stats", self.run_dir))

    def eni_status(self) -> list[dict]:
        """Every ENI the manager knows (Deleted ones too), with its pools and data-plane port."""
        out = self.enis.listing()
        for d in out:
            d["eni_id"] = d["id"]
            d["port"] = None if d["status"] == "Deleted" else self.eni_ports.get(d["index"])
        return out

    def status(self) -> dict:
        return {"pid": os.getpid(), "prefix": self.prefix, "uptime_s": time.time() - self.started,
                "connections": len(self.nat), "enis": self.eni_status(),
                "ports": self.dp.ports(), "eni_manager": dict(self.enis.counters)}

    # --- the threads ---------------------------------------------------------------------

    def slow_path(self) -> None:
        next_tick = 0
        while not self.stopping.is_set():
            punts = self.dp.punts(timeout_ms=TICK_EVERY_MS)
            now = self.dp.now_ms()
            if punts:
                self.slow.handle(punts)
            if now >= next_tick:
                self.slow.tick()
                next_tick = now + TICK_EVERY_MS

    def housekeeping(self) -> None:
        """Expiry (in slices of the table lock) and flow-log intervals."""
        interval_ms = int(self.flow_opts.interval_s * 1000)
        next_flow = self.dp.now_ms() + interval_ms
        while not self.stopping.wait(EXPIRE_EVERY_MS / 1000):
            now = self.dp.now_ms()
            self.log_expired(self.nat.expire(now, max=65536) + self.conntrack.take_deleted(),
                             now)
            if now >= next_flow:
                self.log_interval(now)
                next_flow = now + interval_ms

    def _thread(self, name: str, target, background: bool = True) -> None:
        def run():
            try:
                os_thread_name("hp-" + name)
                if background:
                    lower_priority()
                target()
            except BaseException:
                log.exception("thread %s failed; stopping", name)
                self.stopping.set()
        t = threading.Thread(target=run, name=name, daemon=True)
        t.start()
        self.threads.append(t)

    def run(self) -> None:
        server = control.ControlServer(self.paths.socket)
        self.register_control(server)
        exporter = None
        self.dp.start()
        self.forwarding = scheduling.forwarding_first(self.config.hyperplane.forwarding,
                                                      self.prefix)
        log.info("forwarding (pid %d, %s)", os.getpid(), self.forwarding)
        try:
            # ARP / NDP answers keep the normal priority, like the forwarding thread.
            self._thread("slow-path", self.slow_path, background=False)
            self._thread("housekeeping", self.housekeeping)
            # Scale-out must be ready before the newest ENI's last 10% of ports go: the ENI
            # worker (a round every 50 ms, creation now and then) keeps the normal priority.
            self._thread("eni-worker", lambda: self.enis.run(
                self.stopping, known_groups=list(self.group_ids)), background=False)
            self._thread("exhausted-frames", self.rerun_exhausted)
            server.start()
            if self.metrics_opts.enabled:
                exporter = metrics.MetricsServer(self.scrape, self.metrics_opts.port,
                                                 self.metrics_opts.address).start()
                log.info("metrics on http://%s:%d/metrics", self.metrics_opts.address,
                         exporter.port)
            while not self.stopping.wait(0.5):     # wakes for signal handlers too
                pass
        finally:
            self.stopping.set()
            # Every thread that can call into the data plane (control clients inside ports()
            # or inject() without the GIL, scrapes, the slow path, the workers) ends before
            # the data plane is freed; one that does not leaves it to the process's exit.
            if exporter is not None:
                exporter.stop()
            running = server.stop(timeout=SHUTDOWN_JOIN_S)
            for t in self.threads:
                t.join(timeout=SHUTDOWN_JOIN_S)
            running += [t for t in self.threads if t.is_alive()]
            self.dp.stop()
            scheduling.release(self.prefix)
            self.log_interval(self.dp.now_ms())      # the traffic of the last, short interval
            if self.flows is not None:
                self.flows.close()
            if running:
                log.error("threads still running at shutdown (%s): the data plane is not "
                          "freed", ", ".join(t.name for t in running))
            else:
                self.dp.close()
            log.info("stopped")


def flow_harvest(nat):
    """The connections with traffic since the last harvest, page by page (one short hold of
    the table lock a page), each with its flow-log interval, reset as it is taken."""
    cursor = 0
    while cursor is not None:
        conns, cursor = nat.flow_harvest_page(cursor, 1000)
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
    try:
        daemon = Daemon(args.prefix, args.run_dir)
    except ValueError as e:          # the config or the state file: restarting will not help
        log.error("%s%s", runfolder.CANNOT_START, e)
        return runfolder.EXIT_CANNOT_START
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: daemon.stopping.set())
    daemon.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

