"""The ENI manager in a running lab (issue 9.2): scale-out before exhaustion with 70,000 UDP
flows, the group limit with a 10-port range, an ENI's lifecycle (Pending, Active, Idle,
Deleted, released) with its veth gone after the idle time and its NAT id and address taken by
the next ENI, and a function moved to another pair."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from conftest import _sweep, new_prefix
from hyperplane.lab.state import LabState
from test_observe import wait_for
from test_v2n import ECHO, TOOLS, cli

SINK_PORT = 9000
# A UDP sink in the customer host: counts datagrams and distinct (address, port) sources (one
# per flow after the NAT) until `count` distinct ones, 3 s without a datagram, or the
# deadline; prints them as JSON.
SINK = r"""
import json, socket, sys, time
want, deadline = int(sys.argv[1]), time.monotonic() + float(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, 33, 32 << 20)     # SO_RCVBUFFORCE: past rmem_max (root)
s.bind(("0.0.0.0", %d))
s.settimeout(0.2)
print("ready", flush=True)
seen, total, last = set(), 0, None
while len(seen) < want and time.monotonic() < deadline:
    try:
        _, src = s.recvfrom(2048)
    except socket.timeout:
        if last is not None and time.monotonic() - last > 3:
            break
        continue
    last = time.monotonic()
    seen.add(src)
    total += 1
print(json.dumps({"flows": len(seen), "datagrams": total,
                  "sources": sorted({a for a, _ in seen})}), flush=True)
""" % SINK_PORT


def lab_config(prefix: str, hyperplane: str, timeouts: str = "") -> str:
    return f"""
prefix = "{prefix}"
[inside]
cidr4 = "10.200.0.0/24"
cidr6 = ""
[hyperplane]
{hyperplane}
[hyperplane.quotas]
ports_share = 1.0
{timeouts}
[vpc.subnets.app]
cidr4 = "10.0.1.0/24"
[vpc.security_groups.sg-web]
[vpc.security_groups.sg-db]
[hosts.web]
subnet = "app"
[functions.api]
subnet_ids = ["app"]
security_group_ids = ["sg-web"]
[functions.worker]
subnet_ids = ["app"]
security_group_ids = ["sg-web"]
"""


class Lab:
    """A lab up for one test, down afterwards whatever happens."""

    def __init__(self, tmp_path, hyperplane: str = "", timeouts: str = "", config=None):
        """config: the whole lab config, with {prefix} for the prefix (else this file's)."""
        self.prefix = new_prefix()
        self.cfg = tmp_path / "lab.toml"
        self.cfg.write_text(config.replace("{prefix}", self.prefix) if config is not None
                            else lab_config(self.prefix, hyperplane, timeouts))
        self.procs: list[subprocess.Popen] = []

    def __enter__(self):
        from hyperplane.lab import Lab as LabApi
        try:
            cli("up", "--detach", "-c", str(self.cfg))
            self.lab = LabApi.attach(self.prefix)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        cli("down", "--prefix", self.prefix, check=False)
        _sweep(self.prefix)

    def popen(self, name, argv):
        p = self.lab.popen(name, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
        self.procs.append(p)
        return p

    def enis(self) -> list[dict]:
        return json.loads(cli("eni", "--json", "--prefix", self.prefix).stdout)

    def stats(self) -> dict:
        return json.loads(cli("stats", "--json", "--prefix", self.prefix).stdout)

    def log(self) -> str:
        from hyperplane import runtime
        return runtime.paths(self.prefix).log.read_text(errors="replace")

    def sink(self, want: int, seconds: float) -> subprocess.Popen:
        p = self.popen("web", [sys.executable, "-c", SINK, str(want), str(seconds)])
        assert p.stdout.readline().strip() == "ready"
        return p

    def send(self, fn: str, sport: int, flows: int, rate: int, seconds: float):
        """hpbench: one datagram per flow, flows from sport.. to the sink, at rate per s."""
        from hyperplane.benchmark.tools import hpbench_binary
        web = self.lab.state.host("web").ipv4
        return self.popen(fn, [hpbench_binary(), "send", web, str(SINK_PORT), "1", str(sport),
                               str(flows), str(rate), str(seconds), "0", "16", str(flows)])


def loss_counters(stats: dict) -> dict:
    """Every non-zero counter that can account for a datagram the server did not get: the
    NAT's and the loop's drops and punts (punt.NEIGH_MISS ...), what the punt policer dropped
    (punt_policed, policed.<REASON>), a full punt buffer (punt_overflow), and the slow path's
    neighbour queue and parking (neigh_*, exhausted_*), ring drops per port."""
    out = {f"{part}.{k}": v for part in ("nat", "dataplane") for k, v in stats[part].items()
           if v and (k.startswith(("drop.", "punt.", "policed."))
                   or k in ("punt_policed", "punt_overflow"))}
    out.update({f"slowpath.{k}": v for k, v in stats["slowpath"].items()
                if v and k.startswith(("neigh_", "exhausted", "punt.", "inject_failed"))})
    for p in stats["ports"]:
        for k in ("rx_kernel_drops", "rx_truncated", "tx_full", "tx_errors"):
            if p.get(k):
                out[f"{p['ifname']}.{k}"] = p[k]
    return out


def live(enis):
    return [e for e in enis if e["status"] != "Deleted"]


def test_70000_udp_flows_scale_out_to_exactly_two_enis(tmp_path):
    # 65,000 ports per ENI: past 90% (58,500) one more ENI is made ready before the first runs
    # out; 35,000 flows from each of two functions of one pair at a steady 3,500 flows/s.
    with Lab(tmp_path, "eni_high_water = 0.9\ncapacity = 131072") as lab:
        per_fn, rate = 35_000, 1_750
        sink = lab.sink(2 * per_fn, 60)
        senders = [lab.send(fn, 20_000, per_fn, rate, 40) for fn in ("api", "worker")]
        for s in senders:
            out, err = s.communicate(timeout=60)
            assert s.returncode == 0, err
            assert json.loads(out)["sent"] == per_fn, out
        out, _ = sink.communicate(timeout=60)
        got = json.loads(out.splitlines()[-1])
        enis = lab.enis()
        stats = lab.stats()
        lost = loss_counters(stats)
        print("loss counters:", lost)
        rings = {p["ifname"]: (p["rx_kernel_drops"], p["tx_full"], p["tx_errors"])
                 for p in stats["ports"]}
        # Every datagram the NAT was handed reached the server. The kernel may drop some
        # before that when the forwarding thread is starved of CPU (a shared machine): counted
        # on the inside ring, shown, and no business of the ENI manager's.
        inside_drops = sum(p["rx_kernel_drops"] for p in stats["ports"] if p["role"] == "inside")
        harmless = {"punt.ARP", "punt.NEIGH_MISS", "neigh_queued", "neigh_queue_sent",
                    "neigh_learned", "neigh_resolved", "rx_kernel_drops"}
        # Messages as text: pytest cuts the repr of anything else short.
        why = f"{lost}\nENIs: {json.dumps(enis)}\nlog: {lab.log()[-3000:]}"
        assert all(k.split(".", 1)[1] in harmless for k in lost), why
        # The lab's hosts are known on each ENI's port before it takes connections: no frame
        # waited for ARP (one that did could be lost while a loaded slow path resolved it).
        assert stats["dataplane"].get("punt.NEIGH_MISS", 0) == 0, why
        udp = lab.lab.exec("web", ["cat", "/proc/net/snmp"]).stdout.split("Udp:")[-2:]
        assert got["flows"] + inside_drops == 2 * per_fn, f"{got}\n{rings}\n{udp}\n{why}"
        assert len(live(enis)) == 2, enis
        first, second = live(enis)
        print(f"70,000 flows: {got['flows']} reached the server, {inside_drops} dropped by the "
              f"kernel on the inside ring before the NAT; scale-out Pending -> Active in "
              f"{second['history'][1]['at'] - second['history'][0]['at']:.3f} s; "
              + [x for x in lab.log().splitlines() if "made in" in x][-1])
        assert second["scale_out"] and [h["status"] for h in second["history"]][:2] == \
            ["Pending", "Active"]
        assert set(got["sources"]) == {first["ipv4"], second["ipv4"]}
        assert first["ports"]["udp4"]["in_use"] >= 0.9 * 65_000
        assert stats["nat"].get("punt.PORTS_EXHAUSTED", 0) == 0
        assert all(c["port_errors"] == 0 for c in stats["per_eni"].values())
        assert stats["eni_manager"]["scale_outs"] == 1
        assert stats["eni_manager"]["create_errors"] == 0


def default_lab_config() -> str:
    """The built-in lab (hyperplane/default_lab.toml) under a test's prefix."""
    from importlib import resources
    text = resources.files("hyperplane").joinpath("default_lab.toml").read_text()
    return re.sub(r'(?m)^prefix = ".*"', 'prefix = "{prefix}"', text, count=1)


def test_one_function_alone_grows_its_group_past_its_port_share(tmp_path):
    """The default lab (ports_share 0.5: a function may hold 32,500 ports of a pool): api
    alone opens 40,000 UDP flows to web. Its group grows instead of refusing it: every flow
    arrives, from exactly two ENIs of api's group (the second one made before api reached its
    share), and worker, on the same group, still opens connections meanwhile."""
    with Lab(tmp_path, config=default_lab_config()) as lab:
        flows, rate, worker_flows = 40_000, 1_500, 200
        sink = lab.sink(flows + worker_flows, 90)
        api = lab.send("api", 20_000, flows, rate, 60)
        worker = lab.send("worker", 61_000, worker_flows, worker_flows // 20, 40)
        for s, n in ((api, flows), (worker, worker_flows)):
            out, err = s.communicate(timeout=90)
            assert s.returncode == 0, err
            assert json.loads(out)["sent"] == n, out
        out, _ = sink.communicate(timeout=90)
        got = json.loads(out.splitlines()[-1])
        group = lab.lab.state.function("api").group
        enis = [e for e in live(lab.enis()) if e["group"] == group]
        stats = lab.stats()
        lost = loss_counters(stats)
        inside_drops = sum(p["rx_kernel_drops"] for p in stats["ports"] if p["role"] == "inside")
        funcs = {f["name"]: f for f in stats["functions"]}
        why = (f"{got}\nlost: {lost}\nENIs: {json.dumps(enis)}\nfunctions: {funcs}\n"
               f"log: {lab.log()[-3000:]}")
        print(f"40,000 flows of one function: {got['flows'] - worker_flows} of api's and "
              f"worker's {worker_flows} reached the server, {inside_drops} dropped by the kernel "
              f"on the inside ring; ENIs of the group: {[e['ipv4'] for e in enis]}")
        assert got["flows"] + inside_drops == flows + worker_flows, why
        assert len(enis) == 2, why
        assert set(got["sources"]) == {e["ipv4"] for e in enis}, why
        assert stats["nat"].get("drop.FUNCTION_LIMIT", 0) == 0, why
        for fn in ("api", "worker"):
            f = funcs[fn]
            assert f["refused_ports"] == f["refused_connections"] == 0, why
        assert stats["eni_manager"]["scale_outs"] == 1, why


def test_ten_port_range_stops_at_the_group_limit(tmp_path):
    # 800 flows against 10 ports per ENI: the group grows to its limit of 3, then stops with
    # one logged error and a counter; the subnet keeps its addresses; once the flows time out,
    # both functions reach the customer through the ENIs the group has.
    with Lab(tmp_path, "port_range = [60000, 60009]\neni_limit = 3",
             "[hyperplane.timeouts]\nUDP_FIRST = 3\nUDP_STREAM = 3") as lab:
        sink = lab.sink(800, 15)
        senders = [lab.send(fn, 20_000, 400, 200, 10) for fn in ("api", "worker")]
        for s in senders:
            out, err = s.communicate(timeout=30)
            assert s.returncode == 0, err
        enis = wait_for(lambda: len(live(lab.enis())) == 3 and lab.enis(), "3 ENIs")
        stats = lab.stats()
        assert stats["eni_manager"]["limit_reached"] == 1
        assert stats["eni_manager"]["create_errors"] == 0
        assert lab.log().count("is at its limit of 3 ENIs") == 1
        assert len(live(enis)) == 3 and len(enis) == 3      # nothing created and thrown away
        sink.communicate(timeout=30)
        # The subnet (a /24) keeps free addresses: three ENIs and the host use four.
        state = LabState.load(lab.prefix)
        assert len(state.enis) == 3
        spare = state.next_eni("app", ("sg-web",))        # raises when the subnet is full
        assert spare.ipv4 not in {e.ipv4 for e in state.enis}
        web = lab.lab.state.host("web").ipv4
        server = lab.popen("web", TOOLS + ["serve", "--udp", str(ECHO)])
        assert server.stdout.readline().strip() == "ready"
        for fn in ("api", "worker"):
            def echo():
                r = lab.lab.exec(fn, TOOLS + ["echo", "--udp", web, str(ECHO), f"hi {fn}"])
                return r.returncode == 0
            wait_for(echo, f"{fn} to reach the customer", timeout=20)
        assert len(live(lab.enis())) == 3


def test_idle_eni_is_reclaimed_and_made_again_on_demand(tmp_path):
    from hyperplane.lab import netns
    # A Deleted ENI is released once its flow-log records are written: a short interval.
    with Lab(tmp_path, "eni_idle_reclaim_s = 1",
             "[hyperplane.timeouts]\nUDP_FIRST = 1\nUDP_STREAM = 1\n"
             "[hyperplane.flow_logs]\ninterval_s = 2") as lab:
        seen: list[tuple[str, str]] = []

        def statuses():
            enis = lab.enis()
            for e in enis:
                if (e["id"], e["status"]) not in seen:
                    seen.append((e["id"], e["status"]))
            return enis

        def deleted(eni_id):
            return lambda: any(e["id"] == eni_id and e["status"] == "Deleted"
                               for e in statuses())

        (first,) = statuses()
        # No connection: Idle, and Deleted one idle time later, its veth gone.
        wait_for(deleted(first["id"]), "the first ENI reclaimed", timeout=20)
        with netns.iproute(lab.lab.state.dataplane_ns) as ipr:
            assert not ipr.link_lookup(ifname=first["ifname"])
        with netns.iproute(lab.lab.state.vpc_ns) as ipr:
            assert not ipr.link_lookup(ifname=lab.lab.state.eni(first["index"]).peer)
        # Nothing left of it in the NAT (no port was quarantined): released, its NAT id and
        # address given back, the lab's record gone; the listing keeps its history.
        wait_for(lambda: LabState.load(lab.prefix).enis == [], "the first ENI released",
                 timeout=20)
        assert [(e["id"], e["released"]) for e in lab.enis()] == [(first["id"], True)]
        # A function's next connection gets a new ENI: Pending, then Active, on demand.
        web = lab.lab.state.host("web").ipv4
        server = lab.popen("web", TOOLS + ["serve", "--udp", str(ECHO)])
        assert server.stdout.readline().strip() == "ready"
        r = lab.lab.exec("api", TOOLS + ["echo", "--udp", web, str(ECHO), "wake up"])
        assert r.returncode == 0, r.stderr
        enis = statuses()
        second = enis[-1]
        assert second["id"] != first["id"] and second["id"].startswith("eni-")
        # A new ENI, with the released one's NAT id, interface and address.
        assert (second["index"], second["ifname"], second["ipv4"]) == \
            (first["index"], first["ifname"], first["ipv4"])
        wait_for(deleted(second["id"]), "the second ENI reclaimed", timeout=20)
        history = [h["status"] for h in lab.enis()[-1]["history"]]
        assert history[:2] == ["Pending", "Active"] and history[-1] == "Deleted"
        assert "Idle" in history
        polled = {s for i, s in seen if i == second["id"]}
        assert {"Active", "Idle", "Deleted"} <= polled, seen
        assert lab.stats()["eni_manager"]["reclaimed"] == 2
        wait_for(lambda: lab.stats()["eni_manager"]["released"] == 2, "both released",
                 timeout=20)



def test_a_deleted_eni_waits_for_its_quarantine_across_a_kill(tmp_path):
    """A TCP connection's port keeps a reclaimed ENI's NAT id and address (Deleted, not
    released) until its quarantine ends (2 * TIME_WAIT), also across a kill -9 of the data
    plane; meanwhile a new ENI takes another id and address; then the first is released and
    its id and address go to the ENI after."""
    with Lab(tmp_path, "eni_idle_reclaim_s = 1",
             "[hyperplane.timeouts]\nTIME_WAIT = 4\nUDP_FIRST = 1\nUDP_STREAM = 1\n"
             "[hyperplane.flow_logs]\ninterval_s = 1") as lab:
        web = lab.lab.state.host("web").ipv4
        server = lab.popen("web", TOOLS + ["serve", "--tcp", str(ECHO), "--udp", str(ECHO)])
        assert server.stdout.readline().strip() == "ready"
        r = lab.lab.exec("api", TOOLS + ["echo", "--tcp", web, str(ECHO), "held"])
        assert r.returncode == 0, r.stderr
        (first,) = lab.enis()

        def status_of(eni_id):
            return next((e for e in lab.enis() if e["id"] == eni_id), None)

        wait_for(lambda: status_of(first["id"])["status"] == "Deleted",
                 "the ENI reclaimed once its connection left TIME_WAIT", timeout=30)
        assert status_of(first["id"])["released"] is False     # its port in quarantine
        import hyperplane
        hyperplane.Lab.attach(lab.prefix).kill_dataplane()     # a new one, on the same state
        assert [e.id for e in LabState.load(lab.prefix).enis] == [first["index"]]
        r = lab.lab.exec("api", TOOLS + ["echo", "--udp", web, str(ECHO), "after the kill"])
        assert r.returncode == 0, r.stderr
        second = lab.enis()[-1]
        assert second["status"] in ("Active", "Idle") and second["index"] != first["index"]
        assert second["ipv4"] != first["ipv4"]
        wait_for(lambda: (status_of(first["id"]) or {}).get("released"),
                 "the first ENI released after its quarantine", timeout=30)
        wait_for(lambda: (status_of(second["id"]) or {}).get("released"),
                 "the second ENI released", timeout=30)
        assert LabState.load(lab.prefix).enis == []
        r = lab.lab.exec("api", TOOLS + ["echo", "--udp", web, str(ECHO), "third"])
        assert r.returncode == 0, r.stderr
        third = lab.enis()[-1]
        assert (third["index"], third["ipv4"]) == (first["index"], first["ipv4"])


def test_a_function_moved_to_another_pair_opens_new_connections_on_its_eni(tmp_path):
    from hyperplane import control
    from hyperplane.labtools import LineCollector
    with Lab(tmp_path, "") as lab:
        web = lab.lab.state.host("web").ipv4
        server = lab.popen("web", TOOLS + ["serve", "--udp", str(ECHO)])
        assert server.stdout.readline().strip() == "ready"
        peers = LineCollector(server)

        def echo(fn, text):
            r = lab.lab.exec(fn, TOOLS + ["echo", "--udp", web, str(ECHO), text])
            assert r.returncode == 0, r.stderr

        echo("api", "before")
        (shared,) = live(lab.enis())
        out = cli("set-function", "api", "--subnet", "app", "--security-groups", "sg-db",
                  "--prefix", lab.prefix).stdout
        assert out.strip() == "api: new connections on the ENIs of app|sg-db"
        echo("api", "after")            # the new pair's first connection: its ENI on demand
        echo("worker", "still")
        enis = live(lab.enis())
        assert [e["group"] for e in enis] == ["app|sg-web", "app|sg-db"]
        moved = enis[1]
        assert moved["security_groups"] == ["sg-db"] and not moved["scale_out"]
        seen = [line.split()[1] for line in peers.take()]
        assert seen == [shared["ipv4"], moved["ipv4"], shared["ipv4"]], seen
        assert LabState.load(lab.prefix).function("api").group == "app|sg-db"
        try:
            control.request(lab.prefix, "set-function", function="api", subnet="nowhere")
        except control.ControlError as e:
            assert "unknown" in str(e) and "nowhere" in str(e)
        else:
            raise AssertionError("an unknown subnet was accepted")
