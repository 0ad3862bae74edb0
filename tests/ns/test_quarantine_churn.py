"""A function churning TCP connections leaves the others alone (issue 15, item 2; docs/
semantics.md section 13): `churn` opens, establishes and resets connections as fast as it can
for CHURN_S seconds against a small pool, each reset port spending CLOSE's 10 s and then the
quarantine charged to churn; `calm` meanwhile opens a new connection every CALM_EVERY_S and
holds one from the start. None of calm's connections is refused; churn's refusals are its own;
once churn stops, the group comes back to the ENIs its live connections need (the idle ones
reclaimed).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from test_eni_growth import Lab, live
from test_observe import wait_for
from test_v2n import ECHO, TOOLS

CHURN_S = 60
CHURN_MAX = 300_000          # connections at most, whatever the speed
CALM_EVERY_S = 1.0
ENI_LIMIT = 3
CONFIG = """
prefix = "{prefix}"
[inside]
cidr4 = "10.200.0.0/24"
cidr6 = ""
[hyperplane]
port_range = [60000, 60199]
eni_limit = %d
eni_idle_reclaim_s = 2
[vpc.subnets.app]
cidr4 = "10.0.1.0/24"
[hosts.web]
subnet = "app"
[functions.churn]
subnet_ids = ["app"]
[functions.calm]
subnet_ids = ["app"]
""" % ENI_LIMIT

# Opens, establishes and resets (SO_LINGER 0) TCP connections to host:port until the time or
# the count is up; prints what became of them as one JSON line.
CHURN = r"""
import errno, json, socket, struct, sys, time
host, port, seconds, most = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
end = time.monotonic() + seconds
done = {"established": 0, "refused": 0, "timeout": 0, "other": 0}
while time.monotonic() < end and sum(done.values()) < most:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.settimeout(1)
    try:
        s.connect((host, port))
        done["established"] += 1
    except socket.timeout:
        done["timeout"] += 1
    except OSError as e:
        done["refused" if e.errno == errno.ECONNREFUSED else "other"] += 1
    s.close()                      # a RST when it was established
print(json.dumps(done), flush=True)
"""

# Holds one connection from the start; opens, uses and closes one more every `every` seconds
# for `seconds`, using the held one each time; prints the
# failures (errno and when) and the count as one JSON line.
CALM = r"""
import json, socket, sys, time
host, port, seconds, every = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
held = socket.create_connection((host, port), timeout=5)
print("holding", flush=True)
start = time.monotonic()
failed, opened = [], 0
while time.monotonic() - start < seconds:
    t = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=3) as s:
            s.sendall(b"hi")
            if s.recv(16) != b"hi":
                raise OSError(0, "no echo")
        opened += 1
        held.sendall(b"on")        # the held one too (the server closes it idle 30 s)
        if held.recv(16) != b"on":
            raise OSError(0, "the held connection broke")
    except OSError as e:
        failed.append([e.errno, round(t - start, 1)])
    time.sleep(max(0.0, every - (time.monotonic() - t)))
print(json.dumps({"opened": opened, "failed": failed}), flush=True)
sys.stdin.read()
"""


def test_a_churning_function_refuses_no_one_else_and_its_enis_go_back(tmp_path):
    import hyperplane
    with Lab(tmp_path, config=CONFIG) as lab:
        api = hyperplane.Lab.attach(lab.prefix)
        web = lab.lab.state.host("web").ipv4
        server = lab.popen("web", TOOLS + ["serve", "--tcp", str(ECHO)])
        assert server.stdout.readline().strip() == "ready"
        calm = lab.lab.popen("calm", [sys.executable, "-c", CALM, web, str(ECHO),
                                      str(CHURN_S), str(CALM_EVERY_S)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        lab.procs.append(calm)
        assert calm.stdout.readline().strip() == "holding"
        churn = lab.popen("churn", [sys.executable, "-c", CHURN, web, str(ECHO), str(CHURN_S),
                                    str(CHURN_MAX)])
        out, err = churn.communicate(timeout=CHURN_S + 30)
        assert churn.returncode == 0, err
        churned = json.loads(out)
        line = calm.stdout.readline()
        assert line, calm.stderr.read() if calm.poll() is not None else "calm said nothing"
        calm_report = json.loads(line)
        stats = lab.stats()
        funcs = {f["name"]: f for f in stats["functions"]}
        grown = len(live(lab.enis()))
        why = (f"churn: {churned}\ncalm: {calm_report}\nfunctions: {funcs}\n"
               f"ENIs: {json.dumps(lab.enis())}\nlog: {lab.log()[-3000:]}")
        print(f"{CHURN_S} s of churn: {churned}; calm opened {calm_report['opened']}, "
              f"failed {len(calm_report['failed'])}; the group grew to {grown} ENIs")
        assert churned["established"] > 200, why           # past its share of one pool
        assert calm_report["failed"] == [] and calm_report["opened"] >= CHURN_S // 2, why
        c = funcs["calm"]
        assert (c["refused_connections"], c["refused_ports"], c["ports_exhausted"]) == \
            (0, 0, 0), why
        assert grown <= ENI_LIMIT, why
        # Churn stopped: its reset connections leave CLOSE (10 s), the ENIs without a live
        # connection are reclaimed, and the group keeps the ones its live connections use.
        def settled():
            enis = live(lab.enis())
            used = {c.eni for c in api.connections()}
            return len(enis) == len(used) and enis
        enis = wait_for(settled, "the ENIs the live connections need", timeout=60)
        holding = api.connections(function="calm", state="ESTABLISHED")
        assert len(holding) >= 1 and len(enis) >= 1, why
        print(f"settled at {len(enis)} ENIs; ENI manager: {lab.stats()['eni_manager']}")
        calm.stdin.close()
        calm.wait(timeout=10)
