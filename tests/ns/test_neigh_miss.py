"""A next hop the data plane does not know yet (docs/semantics.md section 13, punt policing):
the frames of tracked connections that arrive while ARP resolves it wait in the slow path and
leave once it is resolved, none lost to the punt policer or the neighbour queue."""

from __future__ import annotations

import json
import sys

from test_eni_growth import SINK, SINK_PORT, Lab, loss_counters
from test_observe import wait_for

BURST = 400          # more than the old limits let through (burst 100, 16 queued per hop)
UNKNOWN = "10.0.1.200"    # added to host web later: in no lab state, resolved by ARP


def test_a_burst_to_an_unresolved_neighbour_arrives_whole(tmp_path):
    from hyperplane.benchmark.tools import hpbench_binary
    from hyperplane import control
    with Lab(tmp_path, "") as lab:
        state = lab.lab.state
        # The function's kernel knows its gateway already, so that it sends the whole burst
        # at once instead of queueing it behind its own ARP (its queue is bounded too).
        fn = state.function("api")
        r = lab.lab.exec("api", ["ip", "neigh", "replace", fn.gateway4, "lladdr",
                                 state.inside.mac, "dev", fn.ifname])
        assert r.returncode == 0, r.stderr
        sink = lab.popen("web", [sys.executable, "-c", SINK, str(BURST), "30"])
        assert sink.stdout.readline().strip() == "ready"
        # BURST datagrams, one flow each, to an address no one answers ARP for yet: every one
        # is tracked, punted NEIGH_MISS and must wait in the slow path.
        send = lab.popen("api", [hpbench_binary(), "send", UNKNOWN, str(SINK_PORT), "1",
                                 "20000", str(BURST), "0", "10", "0", "16", str(BURST)])
        out, err = send.communicate(timeout=30)
        assert send.returncode == 0 and json.loads(out)["sent"] == BURST, (out, err)

        def settled():      # every frame of the burst queued, or dropped on the way there
            s = control.request(lab.prefix, "stats")
            sp, dp = s["slowpath"], s["dataplane"]
            return (sp.get("neigh_queued", 0) + sp.get("neigh_queue_dropped", 0)
                    + dp["policed.NEIGH_MISS"] + dp["punt_overflow"] >= BURST)
        wait_for(settled, "the burst punted and queued", timeout=2)
        # Now web answers the ENI's next ARP retry (250 ms, then 500, 1,000: within the
        # queue's 3 s): the queue leaves.
        r = lab.lab.exec("web", ["ip", "addr", "add", UNKNOWN + "/24", "dev", "eth0"])
        assert r.returncode == 0, r.stderr
        got = json.loads(sink.communicate(timeout=40)[0].splitlines()[-1])
        stats = lab.stats()
        lost = loss_counters(stats)
        print(f"{BURST} datagrams to an unresolved neighbour: {got['datagrams']} arrived; {lost}")
        assert got["flows"] == BURST, (got, lost)
        assert stats["dataplane"]["punt.NEIGH_MISS"] == BURST, lost
        assert stats["dataplane"]["policed.NEIGH_MISS"] == 0, lost
        assert stats["slowpath"].get("neigh_queue_dropped", 0) == 0, lost
        assert stats["slowpath"]["neigh_queue_sent"] == BURST, lost
