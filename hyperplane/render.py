"""Text renderings for the CLI: the lab as a picture, and tables of connections, ENIs and
counters."""

from __future__ import annotations

import json
import time

from typing import TYPE_CHECKING

if TYPE_CHECKING:                  # the lab's modules are heavy: `conntrack` prints without them
    from .lab.state import LabState
from .metrics import by_reason, split_reasons


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _addr(addr: str, port) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def restarts_line(restarts: dict | None) -> str:
    if not restarts or not restarts.get("count"):
        return "never restarted"
    last = restarts["history"][-1] if restarts.get("history") else {}
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(restarts["last"]))
    return (f"restarted {restarts['count']} time{'s' if restarts['count'] != 1 else ''}, "
            f"last at {when}" + (f" ({last['reason']})" if last.get("reason") else ""))


def lab_picture(state: LabState, dp: dict | None, restarts: dict | None = None) -> str:
    """Functions on the left, the data plane in the middle, ENIs, subnets and hosts on the
    right: what talks to what, at a glance."""
    ports_in_use = {e.get("index", e["id"]): e.get("ports_in_use", 0)
                    for e in (dp or {}).get("enis", [])}
    out = [f"lab {state.prefix!r}   data plane: "
           + (f"pid {dp['pid']}, {dp['connections']} connections" if dp else
              "NOT RUNNING" + (f" ({restarts['stopped']['reason']})"
                               if restarts and restarts.get("stopped") else ""))
           + f"; {restarts_line(restarts)}"]
    ins = state.inside
    out.append("")
    out.append(f"  Lambda side ({ins.cidr4}{', ' + ins.cidr6 if ins.cidr6 else ''})"
               f"        gateway {ins.gateway4}{' / ' + ins.gateway6 if ins.gateway6 else ''}")
    for f in state.functions:
        v6 = f" {f.ipv6}" if f.ipv6 else ""
        allowed = "" if f.ipv6_allowed else " (IPv6 not allowed)"
        out.append(f"    fn {f.name:<10} {f.ipv4}{v6}{allowed}  -> ENI group {f.group}")
    out.append(f"        |  {ins.ifname}")
    out.append(f"  [ hyperplane ({state.dataplane_ns}) ]")
    for e in state.enis:
        v6 = f" {e.ipv6}" if e.ipv6 else ""
        used = f"  ports in use {ports_in_use.get(e.id, '?')}" if dp is not None else ""
        out.append(f"        |- ENI {e.id} {e.ifname} {e.mac} {e.ipv4}{v6}  subnet {e.subnet}"
                   + used)
    out.append("")
    out.append(f"  customer VPC ({state.vpc_ns})")
    for s in state.subnets:
        v6 = f" {s.cidr6}" if s.cidr6 else ""
        out.append(f"    subnet {s.name:<8} {s.cidr4}{v6}  router {s.gateway4}")
        for h in state.hosts:
            if h.subnet == s.name:
                hv6 = f" {h.ipv6}" if h.ipv6 else ""
                out.append(f"      host {h.name:<8} {h.ipv4}{hv6}")
    return "\n".join(out)


def lab_plan(state: LabState) -> str:
    """What `hyperplane check` prints: the lab a valid config would build."""
    out = [f"lab {state.prefix!r}: valid, nothing built; {len(state.functions)} functions, "
           f"{len(state.groups)} ENI groups, {len(state.enis)} ENIs at start", "",
           "  ENI groups (one per subnet and security-group set)"]
    for g in state.groups:
        out.append(f"    {g.key:<20} subnet {g.subnet:<8} security groups "
                   f"{','.join(g.security_groups) or '-'}; functions {', '.join(g.functions)}")
    return "\n".join(out + lab_picture(state, None).splitlines()[1:])


CONNTRACK_HEADER = ["proto", "state", "timeout", "original", "reply", "eni", "function",
                    "pkts out/in", "bytes out/in", "assured"]


def _tuples(c: dict) -> tuple[str, str]:
    return (f"{_addr(c['src'], c['sport'])} -> {_addr(c['dst'], c['dport'])}",
            f"{_addr(c['dst'], c['dport'])} -> {_addr(c['nat_addr'], c['nat_port'])}")


def _conn_row(c: dict) -> list:
    timeout = c.get("timeout_s")
    return [c["protocol"], c["state"], "" if timeout is None else f"{timeout}s", *_tuples(c),
            c["eni"], c.get("function") or "", f"{c['packets_out']}/{c['packets_in']}",
            f"{c['bytes_out']}/{c['bytes_in']}", "yes" if c["assured"] else ""]


def event_line(e: dict) -> str:
    """One event as `conntrack -E` prints it: [NEW] / [UPDATE] / [DESTROY] / [LOST]."""
    if e["event"] == "LOST":
        return (f"[LOST] {e['lost']} events this reader was too slow to take "
                f"({e['lost_total']} in all)")
    original, reply = _tuples(e)
    change = (f"{e['old_state']} -> {e['state']}" if e["event"] == "UPDATE"
              and e["old_state"] != e["state"] else e["state"])
    out = [f"[{e['event']}]", e["protocol"], change, original, " " + reply, f"eni {e['eni']}"]
    if e.get("function"):
        out.append(f"function {e['function']}")
    if e["event"] == "DESTROY":
        out.append(f"reason {e['reason']} pkts {e['packets_out']}/{e['packets_in']} "
                   f"bytes {e['bytes_out']}/{e['bytes_in']}")
    elif e["assured"]:
        out.append("[ASSURED]")
    return " ".join(out)


def conntrack_table(conns: list[dict]) -> str:
    if not conns:
        return "no tracked connections"
    rows = [_conn_row(c) for c in
            sorted(conns, key=lambda c: (c["eni"], c["protocol"], c["src"], c["sport"]))]
    return _table(rows, CONNTRACK_HEADER)


class ConntrackPrinter:
    """The conntrack table, written page by page as a listing streams in: the column widths
    come from the first page and only grow, rows keep the daemon's table order."""

    def __init__(self, out):
        self.out = out
        self.widths: list[int] | None = None
        self.count = 0

    def _line(self, row) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(row, self.widths)).rstrip() + "\n"

    def page(self, conns: list[dict]) -> None:
        rows = [_conn_row(c) for c in conns]
        if not rows:
            return
        if self.widths is None:
            self.widths = [max(len(str(r[i])) for r in [CONNTRACK_HEADER] + rows)
                           for i in range(len(CONNTRACK_HEADER))]
            self.out.write(self._line(CONNTRACK_HEADER)
                           + self._line(["-" * w for w in self.widths]))
        else:
            self.widths = [max(w, *(len(str(r[i])) for r in rows))
                           for i, w in enumerate(self.widths)]
        self.out.write("".join(self._line(r) for r in rows))
        self.count += len(rows)

    def end(self) -> None:
        self.out.write(f"{self.count} connections\n" if self.count
                       else "no tracked connections\n")


class JsonArrayPrinter:
    """A JSON array written item by item: the whole is valid JSON, nothing is held."""

    def __init__(self, out):
        self.out = out
        self.count = 0

    def page(self, items: list) -> None:
        for item in items:
            self.out.write(("[\n  " if self.count == 0 else ",\n  ")
                           + json.dumps(item, default=str))
            self.count += 1

    def end(self) -> None:
        self.out.write("[]\n" if self.count == 0 else "\n]\n")


class JsonLinesPrinter:
    """One JSON object a line (`--json-lines`), as they arrive."""

    def __init__(self, out):
        self.out = out
        self.count = 0

    def page(self, items: list) -> None:
        self.out.write("".join(json.dumps(item, default=str) + "\n" for item in items))
        self.count += len(items)

    def end(self) -> None:
        pass


def eni_table(enis: list[dict]) -> str:
    rows = [[e["id"], e["status"], e["ifname"], e["mac"], e["ipv4"], e["ipv6"] or "-",
             e["subnet"], ",".join(e["security_groups"]), e["ports_in_use"]] for e in enis]
    return _table(rows, ["id", "status", "port", "mac", "ipv4", "ipv6", "subnet",
                         "security groups", "ports in use"])


# NAT-gateway style metric names for the counters we keep.
METRICS = [
    ("ActiveConnectionCount", lambda s: s["connections"]),
    ("ConnectionAttemptCount", lambda s: s["nat"]["conn_created"]),
    ("ConnectionEstablishedCount", lambda s: s["nat"]["conn_established"]),
    ("ErrorPortAllocation", lambda s: by_reason(s, "punt").get("PORTS_EXHAUSTED", 0)),
    # Established TCP connections that idled out before closing (semantics 9.2), all ENIs.
    ("IdleTimeoutCount", lambda s: sum(e.get("idle_timeouts", 0)
                                       for e in s.get("per_eni", {}).values())),
    ("PacketsOutToDestination", lambda s: s["nat"]["fwd_out_packets"]),
    ("BytesOutToDestination", lambda s: s["nat"]["fwd_out_bytes"]),
    ("PacketsInFromDestination", lambda s: s["nat"]["fwd_in_packets"]),
    ("BytesInFromDestination", lambda s: s["nat"]["fwd_in_bytes"]),
    ("PacketsDropCount", lambda s: sum(by_reason(s, "drop").values())),
]


def function_rows(functions: list[dict]) -> list[str]:
    """Per function: connections and ports against their quotas, what it was refused."""
    if not functions:
        return []
    def quota(n):
        return n or "-"
    rows = [[f["name"], f"{f['connections']}/{quota(f['max_connections'])}",
             f"{f['ports']} (max {quota(f['max_ports'])}/pool)", f["created"],
             f["refused_connections"] + f["refused_ports"], f["table_full"],
             f["ports_exhausted"], f["early_dropped"]] for f in functions]
    table = _table(rows, ["function", "connections", "ports", "created", "over quota",
                          "table full", "ports exhausted", "early dropped"])
    return ["functions"] + ["  " + line for line in table.splitlines()]


def stats_table(stats: dict) -> str:
    out = ["metrics (by the NAT gateway's CloudWatch names)"]
    out += [f"  {name:<28} {fn(stats)}" for name, fn in METRICS]
    for kind, title in (("drop", "drops by reason"),
                        ("punt", "punts to the slow path by reason (not drops)"),
                        ("policed", "punts dropped by the policer in C, by reason")):
        out.append(title)
        for src in ("nat", "dataplane"):
            for k, v in sorted(split_reasons(stats[src]).items()):
                if k.startswith(kind + ".") and v:
                    out.append(f"  {src:<9} {k[len(kind) + 1:]:<21} {v}")
    enis = sorted(stats.get("per_eni", {}).items(), key=lambda x: int(x[0]))
    per_eni = [(eni, r, n) for eni, c in enis
               for r, n in sorted(c.get("drops_by_reason", {}).items())]
    if per_eni:
        out.append("drops by ENI and reason (frames dropped on its port, its SG denials)")
        out += [f"  {eni!s:<9} {r:<21} {n}" for eni, r, n in per_eni]
    out += function_rows(stats.get("functions", []))
    out.append("data plane")
    if stats.get("forwarding"):
        out.append(f"  {'forwarding thread':<28} {stats['forwarding']}")
    for t in stats.get("forwarding_threads", []):
        out.append(f"  {'  thread ' + str(t['tid']):<28} {t['policy']} nice {t['nice']}, on CPU "
                   f"{t['cpu']} of {t['cpus_allowed']}, switches {t['voluntary_switches']} "
                   f"slept / {t['involuntary_switches']} preempted")
    # Counter names are lower snake case in every layer; reasons keep their upper-case names
    # (a vocabulary, as states are), the metrics AWS's CloudWatch names.
    out += [f"  {k:<28} {v}" for k, v in stats["dataplane"].items()
            if "." not in k and v]
    out.append("slow path")
    out += [f"  {k:<28} {v}" for k, v in sorted(stats["slowpath"].items()) if v]
    if stats.get("conntrack"):
        out.append("conntrack (deletions, event readers)")
        out += [f"  {k:<28} {v}" for k, v in stats["conntrack"].items()]
    return "\n".join(out)
