"""Prometheus metrics: the daemon's `stats` answer written in the text exposition format
(version 0.0.4), and a small HTTP endpoint that serves it on localhost.

The format is written directly: it is a few lines of text, and the daemon then needs no
dependency for it (the unit tests check the output with prometheus_client's parser).

Per-ENI figures use the AWS NAT gateway metric names in snake case under `hyperplane_eni_`
(ActiveConnectionCount -> hyperplane_eni_active_connection_count, counters end in _total).
"""

from __future__ import annotations

import http.server
import logging
import re
import threading
from dataclasses import asdict
from typing import Callable, Iterable, Mapping

from . import vocab
from .config import MetricsConfig
from .flowlog import EniTotals, eni_name

log = logging.getLogger("hyperplane.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ENI_STATES = ("Pending", "Active", "Idle", "Deleted")


# --- drops and punts -------------------------------------------------------------------------

def split_reasons(counters: Mapping[str, int]) -> dict:
    """The C core counts drops and punts in one array ("drop.<REASON>"); a punt is handed to
    the slow path (and often forwarded after all), so it is renamed "punt.<REASON>"."""
    out = {}
    for k, v in counters.items():
        if k.startswith("drop.") and k[5:] in vocab.PUNT_REASONS:
            k = "punt." + k[5:]
        out[k] = v
    return out


def by_reason(stats: Mapping, kind: str) -> dict[str, int]:
    """{reason: count} over the NAT and the loop, kind "drop" or "punt"."""
    out: dict[str, int] = {}
    for stage in ("nat", "dataplane"):
        for k, v in split_reasons(stats.get(stage, {})).items():
            if k.startswith(kind + ".") and v:
                out[k[len(kind) + 1:]] = out.get(k[len(kind) + 1:], 0) + v
    return out


# --- exposition ------------------------------------------------------------------------------

_NAME_OK = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")


def _escape(value) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Exposition:
    """Metric families in the text format: HELP and TYPE once, then the samples."""

    def __init__(self):
        self.lines: list[str] = []
        self.names: set[str] = set()

    def family(self, name: str, kind: str, help_: str,
               samples: Iterable[tuple[Mapping[str, object], float]]) -> None:
        if not _NAME_OK.match(name) or name in self.names:
            raise ValueError(f"bad or repeated metric name {name!r}")
        self.names.add(name)
        sample_name = name + "_total" if kind == "counter" else name
        self.lines.append(f"# HELP {name} {_escape(help_)}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            lab = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            self.lines.append(f"{sample_name}{{{lab}}} {value}" if lab else f"{sample_name} {value}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


ZERO_TOTALS = {**asdict(EniTotals()), "packets_out": 0, "packets_in": 0, "bytes_out": 0,
               "bytes_in": 0, "attempts": {}, "established": {}, "active": {}, "port_errors": 0,
               "idle_timeouts": 0, "drops": 0, "rst_sent": 0, "drops_by_reason": {}}
# (AWS NAT gateway metric, Prometheus type, help, its value from an ENI's totals)
ENI_METRICS = (
    ("ActiveConnectionCount", "gauge", "live connections of the ENI",
     lambda t: t["active"]),
    ("ConnectionAttemptCount", "counter", "connections created through the ENI",
     lambda t: t["attempts"]),
    ("ConnectionEstablishedCount", "counter",
     "connections that reached ESTABLISHED (TCP) or saw a reply (UDP)",
     lambda t: t["established"]),
    ("IdleTimeoutCount", "counter",
     "TCP connections that went from active to idle: established, not closed (no FIN both "
     "ways, no RST), expired by the idle timeout of their state; one whose next segment got "
     "the idle RST is among them",
     lambda t: t["idle_timeouts"]),
    ("IdleTimeoutRstCount", "counter",
     "RSTs sent for segments of connections this ENI's lookup had just found expired "
     "(not an AWS metric)",
     lambda t: t["rst_sent"]),
    ("ErrorPortAllocation", "counter", "new connections that found no free port on the ENI",
     lambda t: t["port_errors"]),
    ("PacketsDropCount", "counter",
     "frames the NAT dropped on the ENI's port (any reason), and egress security-group "
     "denials charged to it",
     lambda t: t["drops"]),
    *((f"{unit}{way}", "counter", f"{unit.lower()} {what}",
       lambda t, k=f"{unit.lower()}_{side}": t[k])
      for unit in ("Packets", "Bytes")
      for way, side, what in (("OutToDestination", "out", "sent through the ENI to destinations"),
                              ("InFromSource", "out", "received from functions for the ENI"),
                              ("InFromDestination", "in", "received by the ENI from destinations"),
                              ("OutToSource", "in", "of the ENI sent to functions"))),
)


def eni_index(x: Mapping) -> int:
    """An ENI's id in the NAT: `index` in the daemon's listing (`id` is its eni-... name)."""
    return int(x["index"] if "index" in x else x["id"])


def render(stats: Mapping) -> str:
    """The `stats` answer of the daemon as Prometheus text."""
    e = Exposition()
    enis = stats.get("enis", [])
    eni_label = {eni_index(x): x.get("eni_id") or eni_name(eni_index(x)) for x in enis}

    def label(eni) -> dict:
        return {"eni": eni_label.get(int(eni), eni_name(int(eni)))}

    e.family("hyperplane_connections", "gauge", "connections in the table",
             [({}, stats.get("connections", 0))])
    e.family("hyperplane_connection_capacity", "gauge", "connections the table can hold",
             [({}, stats.get("capacity", 0))])
    for stage in ("nat", "dataplane"):
        for k, v in stats.get(stage, {}).items():
            if "." not in k:
                e.family(f"hyperplane_{stage}_{k.lower()}", "counter",
                         f"{stage} counter {k}", [({}, v)])
    e.family("hyperplane_drops", "counter", "packets dropped, by reason (punts excluded)",
             [({"reason": r}, v) for r, v in sorted(by_reason(stats, "drop").items())])
    e.family("hyperplane_punts", "counter",
             "packets handed to the slow path, by reason (not drops: many are forwarded)",
             [({"reason": r}, v) for r, v in sorted(by_reason(stats, "punt").items())])
    e.family("hyperplane_punts_policed", "counter",
             "frames the data plane's policer kept from the slow path, by punt reason",
             [({"reason": r}, v) for r, v in sorted(by_reason(stats, "policed").items())])
    e.family("hyperplane_slowpath_events", "counter", "slow-path events, by name",
             [({"event": k}, v) for k, v in sorted(stats.get("slowpath", {}).items())])

    functions = stats.get("functions", [])
    e.family("hyperplane_function_connections", "gauge", "connections a function holds",
             [({"function": f["name"]}, f["connections"]) for f in functions])
    e.family("hyperplane_function_refused", "counter",
             "new connections of a function refused for lack of resources, by kind",
             [({"function": f["name"], "kind": k}, f[k]) for f in functions
              for k in ("refused_connections", "refused_ports", "table_full", "ports_exhausted")])

    ports = stats.get("ports", [])
    for field, help_ in (("rx_kernel_drops", "frames the kernel dropped because a ring was full"),
                         ("tx_full", "frames not sent because a tx ring was full"),
                         ("tx_direct", "frames sent from their own buffer past the tx ring "
                                       "(GSO super-frames)")):
        e.family(f"hyperplane_ring_{field}", "counter", help_,
                 [({"port": p["index"], "ifname": p["ifname"], "role": p["role"]}, p.get(field, 0))
                  for p in ports])

    pools = [(x, key, p) for x in enis for key, p in sorted(x.get("ports", {}).items())]
    def pool_labels(x, key):
        return {**label(eni_index(x)), "family": "ipv" + key[-1], "protocol": key[:-1]}
    e.family("hyperplane_pool_size", "gauge", "ports in the ENI's pool",
             [(pool_labels(x, k), p["size"]) for x, k, p in pools])
    e.family("hyperplane_pool_ports", "gauge", "ports of the ENI's pool by use",
             [({**pool_labels(x, k), "use": use}, p[use]) for x, k, p in pools
              for use in ("in_use", "free", "quarantined")])
    states = {s: 0 for s in ENI_STATES}
    for x in enis:
        states[x.get("status", "Active")] = states.get(x.get("status", "Active"), 0) + 1
    e.family("hyperplane_enis", "gauge", "ENIs by state",
             [({"state": s}, n) for s, n in states.items()])

    # Every ENI gets every metric, zero until its first connection.
    per_eni = {eni_index(x): {} for x in enis if x.get("status") != "Deleted"}
    per_eni.update({int(k): v for k, v in stats.get("per_eni", {}).items()})
    for aws, kind, help_, get in ENI_METRICS:
        samples = []
        for eni, t in sorted(per_eni.items()):
            v = get({**ZERO_TOTALS, **t})
            if isinstance(v, Mapping):
                v = {**dict.fromkeys(("tcp", "udp"), 0), **v}
                samples += [({**label(eni), "protocol": p}, n) for p, n in sorted(v.items())]
            else:
                samples.append((label(eni), v))
        e.family("hyperplane_eni_" + _snake(aws), kind, f"{aws}: {help_}", samples)

    e.family("hyperplane_eni_packets_drop_by_reason", "counter",
             "PacketsDropCount of the ENI by reason (they add up to it)",
             [({**label(eni), "reason": r}, n) for eni, t in sorted(per_eni.items())
              for r, n in sorted(t.get("drops_by_reason", {}).items())])

    punts = by_reason(stats, "punt")
    e.family("hyperplane_error_port_allocation", "counter",
             "ErrorPortAllocation: new connections that found no free port (all ENIs)",
             [({}, punts.get("PORTS_EXHAUSTED", 0))])
    e.family("hyperplane_packets_drop_count", "counter",
             "PacketsDropCount: packets dropped (all ENIs and the inside port)",
             [({}, sum(by_reason(stats, "drop").values()))])
    sgs = stats.get("secgroups", [])
    e.family("hyperplane_security_group_denied", "counter",
             "new connections an ENI group's egress rules refused (SG_DENIED)",
             [({"group": g["group"]}, g["denied"]) for g in sgs])
    e.family("hyperplane_security_group_rule_hits", "counter",
             "new connections each egress rule let out (first match; a new rule set restarts)",
             [({"group": g["group"], "rule": i}, n) for g in sgs
              for i, n in enumerate(g["rule_hits"] or ())])
    fl = stats.get("flow_log", {})
    e.family("hyperplane_flow_log_write_errors", "counter",
             "flow-log writes that failed (their records are lost)",
             [({}, fl.get("write_errors", 0))])
    return e.text()


# --- the endpoint ----------------------------------------------------------------------------

class MetricsServer:
    """GET /metrics on address:port from a daemon thread; `fetch` returns the text."""

    def __init__(self, fetch: Callable[[], str], port: int = MetricsConfig.port,
                 address: str = MetricsConfig().address):
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path.split("?")[0] not in ("/metrics", "/"):
                    self.send_error(404, "try /metrics")
                    return
                try:
                    body = fetch().encode()
                except Exception as e:   # a failed scrape must not kill the thread
                    log.warning("metrics scrape failed: %s", e)
                    self.send_error(503, f"{type(e).__name__}: {e}")
                    return
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

            timeout = 5          # a scraper that stops reading holds its thread this long
        self.httpd = http.server.ThreadingHTTPServer((address, port), Handler)
        # Not daemon threads: server_close() (stop) joins every scrape, so none is still
        # reading the data plane when the daemon frees it.
        self.httpd.daemon_threads = False
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="metrics",
                                       daemon=True)

    def start(self) -> "MetricsServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
